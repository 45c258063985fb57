"""Red team on the distribution point's connection-based Windows authentication and its request handling, over
raw sockets (a client library would not send these bytes, or not in this order):

- a failed or malformed re-authentication on an authenticated keep-alive connection leaves it anonymous;
- an NTLM handshake is the connection's: a NEGOTIATE on one connection and its AUTHENTICATE on another is 401;
- a request pipelined behind a NEGOTIATE (same write) is not served as anyone;
- a decoded newline in the path (`%0a`, `%0d%0a`) gets HTTP.sys's 400 and an IIS log line (it got FastAPI's
  JSON 404 and no log line: a probe the IIS log never showed) and cannot forge a line in the service log.

A lab of its own with the DP only.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator

import pytest
import spnego

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses, isolated_lab
from tests.support.sec_attacks import wait_for

LISTING = "/SMS_DP_SMSPKG$/Datalib"


# not lab_fixture: a lab of its own, so that the DP's connection-level attacks reach no other test's DP
@pytest.fixture(scope="module")
def dp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = isolated_lab(tmp_path_factory.mktemp("redteam-dp") / "lab")
    procs = LabProcesses(lab)
    procs.ensure("distribution-point")
    yield lab
    procs.stop_all()


class Conn:
    """One keep-alive connection to the DP's HTTP listener; replies read by Content-Length."""

    def __init__(self, lab: Lab) -> None:
        self.sock = socket.create_connection(("127.0.0.1", lab.config.ports.distribution_point_http), timeout=10)
        self.buf = b""

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def send(self, target: str, authorization: str | None = None, *, extra: bytes = b"") -> None:
        auth = f"Authorization: {authorization}\r\n" if authorization else ""
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: dp.corp.lab.test\r\n{auth}\r\n".encode() + extra)

    def reply(self) -> tuple[int, dict[str, list[str]], bytes]:
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.setdefault(k.strip().lower(), []).append(v.strip())
        size = int(headers.get("content-length", ["0"])[0])
        while len(self.buf) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        body, self.buf = self.buf[:size], self.buf[size:]
        return int(lines[0].split(" ")[1]), headers, body

    def get(self, target: str, authorization: str | None = None) -> tuple[int, dict[str, list[str]], bytes]:
        self.send(target, authorization)
        return self.reply()


def account(lab: Lab) -> tuple[str, str]:
    a = next(x for x in lab.config.active_directory.accounts if x.name == "alice")
    return f"CORP\\{a.name}", a.password


def ntlm(lab: Lab, password: str | None = None) -> spnego.ContextProxy:
    user, right = account(lab)
    return spnego.client(user, password or right, hostname="dp.corp.lab.test", service="HTTP", protocol="ntlm")


def negotiate(ctx: spnego.ContextProxy) -> str:
    return "NTLM " + base64.b64encode(ctx.step() or b"").decode()


def authenticate(ctx: spnego.ContextProxy, challenge_reply: tuple[int, dict[str, list[str]], bytes]) -> str:
    status, headers, _ = challenge_reply
    assert status == 401, status
    challenge = next(v for v in headers["www-authenticate"] if v.startswith("NTLM "))
    return "NTLM " + base64.b64encode(ctx.step(base64.b64decode(challenge[5:])) or b"").decode()


def login(conn: Conn, lab: Lab, password: str | None = None) -> int:
    ctx = ntlm(lab, password)
    return conn.get(LISTING, authenticate(ctx, conn.get(LISTING, negotiate(ctx))))[0]


def test_a_failed_reauthentication_leaves_the_connection_anonymous(dp: Lab) -> None:
    for spoil in ("wrong password", "malformed token", "negotiate only"):
        with Conn(dp) as conn:
            assert login(conn, dp) == 200
            assert conn.get(LISTING)[0] == 200  # authenticated for the connection, as IIS does
            if spoil == "wrong password":
                assert login(conn, dp, "wrong") == 401
            elif spoil == "malformed token":
                assert conn.get(LISTING, "NTLM !!!not-base64")[0] == 401
            else:
                assert conn.get(LISTING, negotiate(ntlm(dp)))[0] == 401
            assert conn.get(LISTING)[0] == 401, spoil


def test_a_handshake_does_not_cross_connections(dp: Lab) -> None:
    ctx = ntlm(dp)
    with Conn(dp) as first, Conn(dp) as second:
        token = authenticate(ctx, first.get(LISTING, negotiate(ctx)))
        assert second.get(LISTING, token)[0] == 401
        assert second.get(LISTING)[0] == 401
        assert first.get(LISTING)[0] == 401  # the pending handshake was not completed on the first either


def test_a_request_pipelined_behind_a_negotiate_is_not_served(dp: Lab) -> None:
    with Conn(dp) as conn:
        conn.send(
            LISTING, negotiate(ntlm(dp)), extra=f"GET {LISTING} HTTP/1.1\r\nHost: dp.corp.lab.test\r\n\r\n".encode()
        )
        assert conn.reply()[0] == 401
        status, _, body = conn.reply()
        assert status == 401 and b"MEM0000" not in body


@pytest.mark.parametrize(
    "target",
    [
        "/SMS_DP_SMSPKG$/%0aFORGED-redteam-1",
        "/%0d%0aFORGED-redteam-2",
        "/SMS_DP_SMSPKG$/x%0d%0a2026-01-01%20cmglab.distribution_point%20FORGED-3",
    ],
)
def test_a_newline_in_the_path_is_http_sys_400_and_logged_as_one_line(dp: Lab, target: str) -> None:
    with Conn(dp) as conn:
        status, headers, body = conn.get(target)
    assert status == 400 and b"Invalid URL" in body, (status, body)
    assert headers["content-type"][0].startswith("text/html")
    iis = dp.dir / "logs" / "distribution-point" / "u_ex.log"
    marker = target.rsplit("FORGED", 1)[1]
    wait_for(
        lambda: any(f"FORGED{marker}" in line and " 400 " in line for line in iis.read_text().splitlines()),
        10,
        "the IIS log line",
    )
    service = (dp.dir / "logs" / "processes" / "distribution-point.out").read_text()
    assert not any(
        line.lstrip().startswith("FORGED") or line.startswith("2026-01-01") for line in service.splitlines()
    ), service[-2000:]
