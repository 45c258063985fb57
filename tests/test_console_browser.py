"""The lab console in a real browser (Debian's chromium, driven by Playwright with the system browser as
its executable): a device's Entra install drawn hop by hop in seed 001's order, and a blocked bulk token
refused at the MP, in red with the MP's reason, arriving live. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import SERVICES
from cmglab.wire.tracing import TraceParent
from tests.support.cmg import cmg_has_site_config, wait_for
from tests.support.lab import lab_client, lab_fixture
from tests.support.mp import Device
from tests.support.tracing import bulk_token, traced_sts

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CP, MP = "cmg-connection-point", "management-point"
THROUGH_THE_CMG = [("client", "cmg"), ("cmg", CP), (CP, MP)]


# Runs a client-agent command with `tracing.httpx_hook` on every httpx client it makes: what the agent's own
# HTTP layer does once it carries trace headers itself (see docs/architecture.md, "Tracing").
console = lab_fixture(*SERVICES, autouse=True, ready=cmg_has_site_config)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (apt-get install chromium; .ci/run installs it)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--host-resolver-rules=MAP console.lab.test 127.0.0.1",
            ],
        )  # the URL keeps the console's real name
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, f"the page raised: {errors}"


def shot(page: Any, name: str, *, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


def agent(lab: Lab, module: str, *args: str) -> None:
    env = {**os.environ, "CMGLAB_LAB_DIR": str(lab.dir), "CMGLAB_REGTASK_INTERVAL": "0.2"}
    r = subprocess.run(
        [sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert r.returncode == 0, f"{module} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"


def install_with_entra(lab: Lab, home: Path, name: str) -> None:
    """Seed 001 end to end: Entra join, then ccmsetup through the CMG (AAD info, token, CCM_STS, location,
    download, registration)."""
    shutil.rmtree(home, ignore_errors=True)
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "cmglab",
            "device",
            "create",
            "--lab",
            str(lab.dir),
            "--home",
            str(home),
            "--name",
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    user = lab.config.primary_tenant.users[0]
    agent(
        lab, "cmglab.agent.dsregcmd", "/join", "--home", str(home), "--username", user.upn, "--password", user.password
    )
    cmg = lab.url("cmg").removeprefix("https://")
    agent(
        lab,
        "cmglab.agent.ccmsetup",
        "--home",
        str(home),
        f"CCMHOSTNAME={cmg}/CCM_Proxy_MutualAuth/{lab.config.site.role_id}",
        f"SMSSITECODE={lab.config.site.code}",
    )


def drawn_requests(page: Any) -> list[dict[str, str]]:
    """The diagram's request arrows, top to bottom."""
    return page.eval_on_selector_all(
        "#sequence g.hop.request",
        "gs => gs.map(g => ({step: g.dataset.step, caller: g.dataset.caller, service: g.dataset.service}))",
    )


def test_entra_install_journey_in_seed_order(lab: Lab, page: Any, tmp_path: Path) -> None:
    install_with_entra(lab, tmp_path / "device", "BROWSE01")
    page.goto(f"{lab.url('console')}/?device=BROWSE01")
    expected = ["join", "aadinfo", "token", "ccmsts", "location", "download", "registration"]

    def journey() -> list[dict[str, str]] | None:
        """The drawing once the registration's last hops are in: the view is redrawn as the console collects
        them, service by service (the CMG records its hop after the MP and the point have answered)."""
        page.wait_for_timeout(300)
        drawn = drawn_requests(page)
        hops = {(d["step"], d["service"]) for d in drawn}
        return drawn if {("registration", s) for s in ("cmg", CP, MP)} <= hops else None

    drawn = wait_for(journey, what="the registration drawn")
    steps = [d["step"] for d in drawn]
    at = -1
    for step in expected:  # each step drawn after the one before it (the join has its own login token)
        assert step in steps[at + 1 :], f"seed 001 order {expected}, drawn {steps}"
        at = steps.index(step, at + 1)
        if step in ("ccmsts", "location", "registration"):  # the site only through CMG -> point -> MP
            # (a registration trace starts with its fresh Entra token, seed 001 "Client registration" 2)
            via = next(i for i in range(at, len(drawn)) if drawn[i]["step"] == step and drawn[i]["service"] == "cmg")
            assert [(d["caller"], d["service"]) for d in drawn[via : via + 3]] == THROUGH_THE_CMG, step
    assert {(d["caller"], d["service"]) for d in drawn if d["step"] in ("join", "token")} == {("client", "entra")}
    assert page.locator("#sequence g.hop.reply.fail").count() == 0
    assert "rewritten → " in (page.text_content("#sequence") or "")
    row = page.locator('#devices tr[data-device="BROWSE01"] td')
    assert row.all_inner_texts()[1:4] == ["yes", "yes", "yes"]  # joined, installed, registered
    assert row.nth(4).inner_text().startswith("20")  # the CCM token's expiry
    page.locator("#sequence").scroll_into_view_if_needed()
    shot(page, "console-entra-install.png")
    shot(page, "console-entra-install-viewport.png", full_page=False)


def test_a_trace_collected_while_the_page_loads_is_drawn(lab: Lab, page: Any, tmp_path: Path) -> None:
    """The page's first journey read answers from before the device's install, and the console has the whole
    install before the page subscribes to live updates: the page reads again once its stream is open."""
    stale: list[str] = []
    journey = f"{lab.url('console')}/api/journey"

    def first_read_is_stale(route: Any) -> None:
        if stale:
            route.continue_()
            return
        with lab_client(lab) as c:
            stale.append(c.get(journey, params={"device": "LATE01"}).text)  # before the device runs
            install_with_entra(lab, tmp_path / "device", "LATE01")
            # the console has collected the registration: no event for it will follow
            wait_for(
                lambda: (
                    "registration" in {t["step"] for t in c.get(journey, params={"device": "LATE01"}).json()["traces"]}
                ),
                timeout=45,
                what="the registration at the console",
            )
        route.fulfill(status=200, content_type="application/json", body=stale[0])

    page.route("**/api/journey?*", first_read_is_stale)
    page.goto(f"{lab.url('console')}/?device=LATE01")

    def registration_drawn() -> bool:
        page.wait_for_timeout(300)
        return "registration" in {d["step"] for d in drawn_requests(page)}

    wait_for(registration_drawn, timeout=30, what="the registration drawn")
    assert stale


def test_blocked_bulk_token_refused_at_the_mp_live(lab: Lab, page: Any) -> None:
    page.goto(f"{lab.url('console')}/?device=BLOCK01")
    page.wait_for_selector("#live.on")  # subscribed to the event stream before anything happens
    reply, headers = traced_sts(lab, Device(name="BLOCK01"), bulk_token(lab, blocked=True))
    assert reply.status_code == 403
    # MP -> point -> CMG -> client, all red (drawn as the console collects each service's hop)
    wait_for(
        lambda: page.wait_for_timeout(200) or page.locator("#sequence g.hop.reply.fail").count() == 3,
        what="the refusal drawn on every hop",
    )
    refusal = page.wait_for_selector('#sequence g.hop.reply.fail[data-service="management-point"]')
    assert refusal.get_attribute("data-status") == "403"
    reason = refusal.query_selector("text.reason")
    assert reason is not None and (reason.text_content() or "").startswith("BulkTokenBlocked: bulk registration token")
    color = refusal.evaluate("g => getComputedStyle(g.querySelector('line')).stroke")
    assert color == "rgb(198, 40, 40)"

    trace = TraceParent.parse(headers["traceparent"])
    assert trace is not None
    page.click(f'#traces li[data-trace="{trace.trace_id}"]')
    page.wait_for_url(f"**/trace/{trace.trace_id}")
    page.wait_for_selector('#hops tr.fail td:has-text("BulkTokenBlocked")')
    page.reload()  # the permalink stands on its own
    page.wait_for_selector('#sequence g.hop.reply.fail[data-service="management-point"]')
    assert "ccmsts · BLOCK01" in page.inner_text("#view-title")
    shot(page, "console-blocked-bulk-token.png")
