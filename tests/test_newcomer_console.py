"""The console's static view (`?static=1`, issue 21): rendered once on the server, so that plain curl and
Debian's chromium (`--headless --dump-dom`, `--screenshot`), run unmodified, get a finished page with the
device and its hops; the live page keeps its event stream."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import SERVICES
from cmglab.wire.tracing import TraceContext
from tests.support.lab import lab_client, lab_fixture

CHROMIUM = "/usr/bin/chromium"
DEVICE = "STATIC01"


def wait_for(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.2)
    return found


services = lab_fixture(*SERVICES)


@pytest.fixture(scope="module")
def trace_id(lab: Lab, services: Lab) -> str:
    """One traced request of the device (an OIDC discovery), once the console has it."""
    ctx = TraceContext.begin(DEVICE, "join")
    tenant = lab.config.primary_tenant.tenant_id
    with lab_client(lab) as c:
        assert (
            c.get(f"{lab.url('entra')}/{tenant}/.well-known/openid-configuration", headers=ctx.headers()).status_code
            == 200
        )

        def seen() -> str | None:
            traces = c.get(f"{lab.url('console')}/api/traces", params={"device": DEVICE}).json()["traces"]
            return traces[0]["trace_id"] if traces else None

        return str(wait_for(seen, "the trace at the console"))


def test_static_view_over_plain_http(lab: Lab, trace_id: str) -> None:
    with lab_client(lab) as c:
        page = c.get(f"{lab.url('console')}/", params={"static": "1", "device": DEVICE})
        one = c.get(f"{lab.url('console')}/trace/{trace_id}", params={"static": "1"})
        live = c.get(f"{lab.url('console')}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "<script" not in text and "EventSource" not in text
    assert f"Journey of {DEVICE}" in text and f"/trace/{trace_id}?static=1" in text
    assert "openid-configuration" in text and "client -&gt; entra" in text
    for service in ("entra", "cmg", "management-point"):
        assert f"<td>{service}</td>" in text
    assert one.status_code == 200 and f"trace {trace_id}" in one.text and "openid-configuration" in one.text
    assert "<script" in live.text  # the live page is unchanged


def chromium(lab: Lab, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (apt-get install chromium)"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-sync",
            "--disable-background-networking",
            "--disable-component-update",
            "--ignore-certificate-errors",
            "--host-resolver-rules=MAP console.lab.test 127.0.0.1",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_plain_chromium_dumps_and_screenshots_the_static_view(lab: Lab, trace_id: str, tmp_path: Path) -> None:
    url = f"{lab.url('console')}/?static=1&device={DEVICE}"
    dumped = chromium(lab, "--virtual-time-budget=5000", "--dump-dom", url)  # finishes: nothing stays open
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert f"Journey of {DEVICE}" in dumped.stdout and "openid-configuration" in dumped.stdout
    shot = tmp_path / "console.png"
    taken = chromium(lab, f"--screenshot={shot}", "--window-size=1400,900", url)
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
