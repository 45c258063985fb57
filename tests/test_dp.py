"""The distribution point: its IIS vdirs as tools read them, connection-based Windows authentication,
the content library (Datalib INIs, FileLib, signatures), ranges, and the attacks on its paths over raw
sockets (nothing outside the content library, IIS's own status codes)."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import ssl
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
import spnego

from cmglab.runtime.contentlib import ContentLibrary
from cmglab.runtime.lab import Lab
from cmglab.services.distribution_point.listing import SIGNATURE_MARK
from tests.support.lab import lab_fixture

CANARY = "cmglab-canary-outside-the-content-library"


def _canary(lab: Lab) -> None:
    (lab.dir / "canary.txt").write_text(CANARY)


dp = lab_fixture("management-point", "distribution-point", prepare=_canary)  # the MP builds the client package


def http_base(lab: Lab) -> str:
    return f"http://127.0.0.1:{lab.config.ports.distribution_point_http}"


def alice(lab: Lab) -> tuple[str, str]:
    a = next(x for x in lab.config.active_directory.accounts if x.name == "alice")
    return f"CORP\\{a.name}", a.password


# -- a raw HTTP/1.1 connection (what the attack tests and the NTLM tests speak) -------------------------


class Raw:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def request(
        self, method: str, target: bytes | str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, list[str]], bytes]:
        raw_target = target.encode() if isinstance(target, str) else target
        head = b"%s %s HTTP/1.1\r\nHost: dp.corp.lab.test\r\n" % (method.encode(), raw_target)
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n".encode()
        self.sock.sendall(head + b"\r\n")
        status = int(self._line().split(b" ")[1])
        hdrs: dict[str, list[str]] = {}
        while line := self._line():
            k, _, v = line.decode("latin-1").partition(":")
            hdrs.setdefault(k.strip().lower(), []).append(v.strip())
        if "transfer-encoding" in hdrs:
            body = b""
            while size := int(self._line(), 16):
                body += self._read(size)
                self._line()
            self._line()
        else:
            body = b"" if method == "HEAD" else self._read(int(hdrs.get("content-length", ["0"])[0]))
        return status, hdrs, body

    def login(self, user: str, password: str, path: str = "/SMS_DP_SMSPKG$/") -> tuple[int, bytes]:
        """NTLM on this connection, as requests_ntlm does it: negotiate, challenge, authenticate."""
        ctx = spnego.client(user, password, hostname="dp.corp.lab.test", service="HTTP", protocol="ntlm")
        negotiate = "NTLM " + base64.b64encode(ctx.step() or b"").decode()
        status, hdrs, _ = self.request("GET", path, {"Authorization": negotiate})
        assert status == 401, status
        challenge = next(v for v in hdrs["www-authenticate"] if v.startswith("NTLM "))
        token = ctx.step(base64.b64decode(challenge.split(" ", 1)[1])) or b""
        status, _, body = self.request("GET", path, {"Authorization": "NTLM " + base64.b64encode(token).decode()})
        return status, body


class Links(HTMLParser):
    """A listing read the way impacket's SCCMDPAttack reads it: each link and the text before it."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.previous = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.append((dict(attrs).get("href") or "", self.previous))

    def handle_data(self, data: str) -> None:
        self.previous = data.strip()


def links(html: bytes) -> list[tuple[str, str]]:
    p = Links()
    p.feed(html.decode())
    return p.links


# -- Windows authentication ---------------------------------------------------------------------------


def test_anonymous_request_is_challenged_like_iis(dp: Lab) -> None:
    r = httpx.get(f"{http_base(dp)}/sms_dp_smspkg$/abcdefgh")
    assert r.status_code == 401  # SCCMSecrets: 401 means "anonymous DP access disabled"
    assert r.headers.get_list("www-authenticate") == ["Negotiate", "NTLM"]
    assert r.headers["server"] == "Microsoft-IIS/10.0"
    assert "401 - Unauthorized" in r.text


def test_authentication_holds_for_the_connection_only(dp: Lab) -> None:
    user, password = alice(dp)
    conn = Raw(dp.config.ports.distribution_point_http)
    try:
        status, body = conn.login(user, password, "/sms_dp_smspkg$/Datalib")
        assert status == 200 and b"MEM00001.1" in body
        # no Authorization header: the connection is authenticated, as IIS keeps NTLM per connection
        status, _, body = conn.request("GET", "/sms_dp_smspkg$/MEM00002.1")
        assert status == 200 and b"Scripts" in body
        status, _, _ = conn.request("GET", "/sms_dp_smspkg$/nosuchpkg")
        assert status == 404  # SCCMSecrets' credential check: 404 means the credentials work
    finally:
        conn.close()
    other = Raw(dp.config.ports.distribution_point_http)
    try:
        assert other.request("GET", "/sms_dp_smspkg$/MEM00002.1")[0] == 401  # a new connection starts over
    finally:
        other.close()


def test_wrong_password_and_unknown_account_are_refused(dp: Lab) -> None:
    user, _ = alice(dp)
    for name, password in ((user, "wrong"), ("CORP\\mallory", "x")):
        conn = Raw(dp.config.ports.distribution_point_http)
        try:
            status, _ = conn.login(name, password)
            assert status == 401
            assert conn.request("GET", "/sms_dp_smspkg$/Datalib")[0] == 401
        finally:
            conn.close()


def test_network_access_account_is_accepted(dp: Lab) -> None:
    naa = dp.config.site.network_access_account
    conn = Raw(dp.config.ports.distribution_point_http)
    try:
        assert conn.login(naa.username, naa.password, "/sms_dp_smspkg$/Datalib")[0] == 200
    finally:
        conn.close()


# -- the content library as the tools read it ----------------------------------------------------------


@pytest.fixture()
def session(dp: Lab):  # type: ignore[no-untyped-def]
    conn = Raw(dp.config.ports.distribution_point_http)
    user, password = alice(dp)
    assert conn.login(user, password)[0] == 200
    yield conn
    conn.close()


def test_datalib_lists_contents_and_inis(dp: Lab, session: Raw) -> None:
    status, hdrs, body = session.request("GET", "/sms_dp_smspkg$/Datalib")
    assert status == 200 and hdrs["content-type"][0].startswith("text/html")
    found = links(body)
    library = ContentLibrary(dp.content_dir, dp.config)
    names = {p.content_version for p in library.packages()}
    # the tools take the last path segment of each non-.INI link as a package to walk
    ids = {href.split("/")[-1] for href, _ in found if not href.endswith(".INI")}
    assert ids == names
    assert {href.split("/")[-1] for href, _ in found if href.endswith(".INI")} == {f"{n}.INI" for n in names}
    assert all("<dir>" in text for href, text in found if not href.endswith(".INI"))
    assert re.search(rb"<title>dp\.corp\.lab\.test - /sms_dp_smspkg\$/Datalib/</title>", body)


def test_package_files_listing_download_and_hashes(dp: Lab, session: Raw) -> None:
    library = ContentLibrary(dp.content_dir, dp.config)
    osd = next(p for p in library.packages() if p.name.startswith("Windows 11"))
    status, _, body = session.request("GET", f"/sms_dp_smspkg$/{osd.package_id}")
    assert status == 200
    found = dict(links(body))
    scripts = next(h for h in found if h.endswith("/Scripts"))
    assert "<dir>" in found[scripts] and scripts.startswith("http://")  # absolute links, as the DP writes them
    unattend = next(h for h in found if h.endswith("/unattend.xml"))
    status, hdrs, data = session.request("GET", unattend)  # absolute-form target, as impacket sends it
    assert status == 200 and hdrs["content-type"] == ["application/octet-stream"]
    on_disk = (library.folder(osd) / "unattend.xml").read_bytes()
    assert data == on_disk and b"<AdministratorPassword>" in data
    status, _, ini = session.request("GET", f"/sms_dp_smspkg$/Datalib/{osd.content_version}/unattend.xml.INI")
    digest = re.search(rb"Hash=([0-9A-F]{64})", ini)
    assert status == 200 and digest and digest.group(1).decode() == hashlib.sha256(on_disk).hexdigest().upper()
    h = digest.group(1).decode()
    status, _, blob = session.request("GET", f"/sms_dp_smspkg$/FileLib/{h[:4]}/{h}")
    assert status == 200 and blob == on_disk
    status, _, pkg_ini = session.request("GET", f"/SMS_DP_SMSPKG$/PkgLib/{osd.package_id}.INI")
    assert status == 200 and pkg_ini.startswith(b"[Packages]\r\n" + osd.content_id.encode() + b"=")
    # a DataLib folder shows the Datalib page again (sccm-http-looter's observation of a real DP)
    status, _, page = session.request("GET", f"/sms_dp_smspkg$/Datalib/{osd.content_version}")
    assert status == 200 and b"Datalib/</title>" in page
    # HEAD: a folder has no length, a file its own
    assert session.request("HEAD", f"/sms_dp_smspkg$/{osd.content_version}")[1]["content-length"] == ["0"]
    assert session.request("HEAD", unattend)[1]["content-length"] == [str(len(on_disk))]


def test_signature_names_every_file(dp: Lab, session: Raw) -> None:
    library = ContentLibrary(dp.content_dir, dp.config)
    pkg = next(p for p in library.packages() if p.name.startswith("Drive"))
    status, _, sig = session.request("GET", f"/SMS_DP_SMSSIG$/{pkg.content_version}.tar")
    assert status == 200
    names = []
    for m in re.finditer(re.escape(SIGNATURE_MARK), sig):
        start = m.start() - 512
        names.append(sig[start : sig.index(b"\x00", start)].decode())
    assert sorted(names) == sorted(f.path.replace("/", "\\") for f in library.files(pkg))


def test_ranges(dp: Lab, session: Raw) -> None:
    library = ContentLibrary(dp.content_dir, dp.config)
    pkg = next(p for p in library.packages() if p.kind == "application")
    data = (library.folder(pkg) / "InventoryClient.msi").read_bytes()
    url = f"/sms_dp_smspkg$/{pkg.content_version}/InventoryClient.msi"
    status, hdrs, body = session.request("GET", url, {"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200] and hdrs["content-range"] == [f"bytes 100-199/{len(data)}"]
    assert session.request("GET", url, {"Range": "bytes=-10"})[2] == data[-10:]
    for bad in (f"bytes={len(data)}-", "bytes=0-18446744073709551615", "bytes=99999999999999999999-"):
        status, hdrs, _ = session.request("GET", url, {"Range": bad})
        assert status == 416 and hdrs["content-range"] == [f"bytes */{len(data)}"], bad
    for ignored in ("bytes=abc", "items=0-5", "bytes=5-1", "bytes=0-1,3-4"):
        status, _, body = session.request("GET", url, {"Range": ignored})
        assert status == 200 and body == data, ignored
    status, _, _ = session.request("GET", url, {"Range": "bytes=" + "1" * 20000})
    assert status in (400, 431)  # over the header size limit: refused before the handler


# -- attacks on the paths ----------------------------------------------------------------------------

ATTACKS: list[tuple[bytes, set[int]]] = [
    (b"/sms_dp_smspkg$/../../../etc/passwd", {400}),
    (b"/sms_dp_smspkg$/MEM00002/../../canary.txt", {404}),
    (b"/sms_dp_smspkg$/MEM00002/../../../canary.txt", {400}),
    (b"/sms_dp_smspkg$/MEM00002/%2e%2e/%2e%2e/%2e%2e/canary.txt", {400}),
    (b"/sms_dp_smspkg$/MEM00002/..%2f..%2f..%2fcanary.txt", {400}),
    (b"/sms_dp_smspkg$/MEM00002/..%5c..%5c..%5ccanary.txt", {400}),
    (b"/sms_dp_smspkg$/MEM00002/%252e%252e/%252e%252e/canary.txt", {404}),
    (b"/sms_dp_smspkg$/MEM00002/..\\..\\..\\canary.txt", {400}),
    (b"/sms_dp_smspkg$/\\\\127.0.0.1\\c$\\etc\\passwd", {404}),
    (b"//127.0.0.1/sms_dp_smspkg$/MEM00002", {404}),
    (b"/sms_dp_smspkg$/C:/Windows/win.ini", {400}),
    (b"/sms_dp_smspkg$/MEM00002/readme.txt::$DATA", {400}),
    (b"/sms_dp_smspkg$/MEM00002/readme.txt%00.ps1", {400}),
    (b"/sms_dp_smspkg$/MEM00002/%c0%ae%c0%ae/canary.txt", {400}),
    (b"/sms_dp_smspkg$/MEM00002/evil-link", {404}),
    (b"/sms_dp_smspkg$/MEM00002/.hidden", {404}),
    (b"/sms_dp_smspkg$/NOPE00001", {404}),
    (b"/sms_dp_smspkg$/Datalib/MEM00002.1/../../../canary.txt.INI", {404}),
    (b"/sms_dp_smspkg$/Datalib/MEM00002.1/../../../../canary.txt.INI", {400}),
    (b"/sms_dp_smssig$/..%2f..%2fcanary.txt", {400}),
    (
        b"/sms_dp_smspkg$/FileLib/"
        + hashlib.sha256(CANARY.encode()).hexdigest().upper()[:4].encode()
        + b"/"
        + hashlib.sha256(CANARY.encode()).hexdigest().upper().encode(),
        {404},
    ),
]


def test_path_attacks_never_leave_the_content_library(dp: Lab) -> None:
    library = ContentLibrary(dp.content_dir, dp.config)
    pkg = library.folder(library.find("MEM00002"))  # type: ignore[arg-type]
    (pkg / "evil-link").unlink(missing_ok=True)
    (pkg / "evil-link").symlink_to(dp.dir / "canary.txt")
    (pkg / ".hidden").write_text(CANARY)
    user, password = alice(dp)
    try:
        for target, expected in ATTACKS:
            conn = Raw(dp.config.ports.distribution_point_http)
            try:
                assert conn.login(user, password)[0] == 200
                status, _, body = conn.request("GET", target)
            except ConnectionError:  # the HTTP parser itself refused the request line
                status, body = 400, b""
            finally:
                conn.close()
            assert status in expected, (target, status)
            assert CANARY.encode() not in body, target
        conn = Raw(dp.config.ports.distribution_point_http)
        try:
            conn.login(user, password)
            listing = conn.request("GET", "/sms_dp_smspkg$/MEM00002")[2]
            assert b"evil-link" not in listing and b".hidden" not in listing
        finally:
            conn.close()
    finally:
        (pkg / "evil-link").unlink(missing_ok=True)
        (pkg / ".hidden").unlink(missing_ok=True)


def test_refusals_and_requests_are_in_the_iis_log(dp: Lab, session: Raw) -> None:
    session.request("GET", "/sms_dp_smspkg$/MEM00002.1/readme.txt", {"User-Agent": "SMS CCM 5.0 TS"})
    log = (dp.dir / "logs" / "distribution-point" / "u_ex.log").read_text()
    assert log.startswith("#Software: Microsoft Internet Information Services 10.0")
    assert re.search(
        r" GET /sms_dp_smspkg\$/MEM00002\.1/readme\.txt - \d+ CORP\\alice 127\.0\.0\.1 "
        r"SMS\+CCM\+5\.0\+TS - 200 0 0 \d+",
        log,
    )
    assert re.search(r" 401 2 5 \d+$", log, re.M)  # the anonymous first leg, as IIS logs it


def test_content_add_is_served_at_once(dp: Lab, session: Raw, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cmglab.tools.cli import app

    src = tmp_path / "Backup Scripts"
    (src / "conf").mkdir(parents=True)
    (src / "conf" / "backup.ini").write_text("[smb]\r\nuser=CORP\\svc-backup\r\npassword=Lab-Backup-1\r\n")
    result = CliRunner().invoke(app, ["content", "add", str(src), "--name", "Backup Scripts", "--lab", str(dp.dir)])
    assert result.exit_code == 0, result.output
    package_id = re.search(r"added (\w+)", result.output).group(1)  # type: ignore[union-attr]
    assert f"{package_id}.1" in session.request("GET", "/sms_dp_smspkg$/Datalib")[2].decode()
    status, _, body = session.request("GET", f"/sms_dp_smspkg$/{package_id}/conf/backup.ini")
    assert status == 200 and b"svc-backup" in body


def test_admin_endpoints_and_cmglab_logs(dp: Lab, session: Raw, admin_headers: dict[str, str]) -> None:
    from typer.testing import CliRunner

    from cmglab.tools.cli import app

    session.request("GET", "/sms_dp_smspkg$/MEM00003.1/unattend.xml")
    base = f"https://127.0.0.1:{dp.config.ports.distribution_point}"
    with httpx.Client(verify=ssl.create_default_context(cafile=str(dp.pki.ca_bundle)), timeout=10) as c:
        assert c.get(f"{base}/_lab/health").json()["status"] == "ok"
        records = c.get(f"{base}/_lab/requests", headers=admin_headers).json()
    rows = records if isinstance(records, list) else records.get("requests", [])
    hit = next(r for r in rows if r.get("path", "").endswith("/unattend.xml"))
    assert hit["auth_kind"] == "windows" and hit["auth_subject"] == "CORP\\alice"
    out = CliRunner().invoke(app, ["logs", "distribution-point", "--no-follow", "--lab", str(dp.dir)]).output
    assert "u_ex.log: #Fields: date time s-ip cs-method" in out and "/unattend.xml" in out
