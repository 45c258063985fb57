"""`cmglab site` / `cmglab tenant`: site settings that apply to the running lab and persist in lab.json,
lab.json as the single source (a hand edit applies at the MP's next start), and `cmglab info` showing
what the services enforce."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from cmglab.core.labconfig import SiteSettings, SiteSettingsChange, load_config, save_config
from cmglab.runtime.lab import Lab
from cmglab.services.management_point.store import Store
from cmglab.tools.processes import LabProcesses
from cmglab.wire import ccm_messaging as cm
from tests.support.agent import run
from tests.support.lab import lab_client, lab_fixture, set_site
from tests.support.mp import Device, register

mp = lab_fixture("management-point")


def cmglab(lab: Lab, *args: str, expect: int = 0) -> str:
    result = run("cmglab", *args, "--lab", str(lab.dir))
    assert result.returncode == expect, result.stdout + result.stderr
    return result.stdout


def enforced(lab: Lab) -> dict[str, object]:
    return {name: v["enforced"] for name, v in json.loads(cmglab(lab, "site", "show", "--json"))["settings"].items()}


def test_bad_setting_or_value_changes_nothing(mp: Lab) -> None:
    before = Lab.config_path(mp.dir).read_text()
    cmglab(mp, "site", "set", "no-such-setting", "true", expect=2)
    cmglab(mp, "site", "set", "auto-approve", "sometimes", expect=2)
    cmglab(mp, "site", "set", "ccm-token-lifetime", "0", expect=2)
    cmglab(mp, "tenant", "onboard", "nobody", expect=2)
    assert Lab.config_path(mp.dir).read_text() == before


def test_https_only(mp: Lab) -> None:
    http = f"http://{mp.config.hosts.management_point}:{mp.config.ports.management_point_http}"
    cmglab(mp, "site", "set", "https-only", "true")
    try:
        assert enforced(mp)["https-only"] is True
        assert load_config(Lab.config_path(mp.dir)).site.https_only is True  # persisted, not only live
        with lab_client(mp) as c:
            r = c.request(
                "CCM_POST", f"{http}/ccm_system/request", content=b"", headers={"Content-Type": cm.CONTENT_TYPE}
            )
            assert r.status_code == 403 and "403.4" in r.text
            assert c.get(f"{http}/SMS_MP/.sms_aut?MPLIST").status_code == 403
            assert c.get(f"{mp.url('management-point')}/SMS_MP/.sms_aut?MPLIST").status_code == 200
    finally:
        cmglab(mp, "site", "set", "https-only", "false")
    with lab_client(mp) as c:
        assert c.get(f"{http}/SMS_MP/.sms_aut?MPLIST").status_code == 200


def test_lab_json_edit_applies_on_restart(mp: Lab, lab_services: LabProcesses) -> None:
    path = Lab.config_path(mp.dir)
    original = path.read_text()
    config = load_config(path)
    config.site.auto_approve = "none"
    config.tenants[1].onboarded = True
    save_config(config, path)
    try:
        assert enforced(mp)["auto-approve"] == mp.config.site.auto_approve  # not yet: the MP holds its copy
        lab_services.stop("management-point")
        lab_services.start("management-point")
        assert enforced(mp)["auto-approve"] == "none"
        info = json.loads(cmglab(mp, "info", "--json"))
        assert info["site"]["settings"]["auto-approve"] == "none"
        assert next(t for t in info["tenants"] if t["tenant_id"] == config.tenants[1].tenant_id)["onboarded"]
        with lab_client(mp) as c:
            site = c.get(f"{mp.url('management-point')}/_lab/site").json()
        assert site["settings"]["auto_approve"] == "none"
    finally:
        path.write_text(original)
        lab_services.stop("management-point")
        lab_services.start("management-point")
    assert enforced(mp)["auto-approve"] == mp.config.site.auto_approve


def test_post_lab_site_takes_the_typed_settings(mp: Lab) -> None:
    """`POST /_lab/site` validates against the one SiteSettings model: a bad value is a 422 and changes
    nothing; a good one is what `cmglab site show` then reports as enforced, with lab.json untouched."""
    before, config = enforced(mp), Lab.config_path(mp.dir).read_text()
    url, admin = f"{mp.url('management-point')}/_lab/site", {"Authorization": f"Bearer {mp.admin_token()}"}
    with lab_client(mp) as c:
        assert c.post(url, json={"auto_approve": "sometimes"}, headers=admin).status_code == 422
        assert c.post(url, json={"ccm_token_lifetime_minutes": 0}, headers=admin).status_code == 422
        assert enforced(mp) == before
        r = c.post(url, json={"ccm_token_lifetime_minutes": 30}, headers=admin)
        assert r.status_code == 200 and r.json()["settings"]["ccm_token_lifetime_minutes"] == 30
    try:
        assert enforced(mp) == {**before, "ccm-token-lifetime": 30}
        assert Lab.config_path(mp.dir).read_text() == config
    finally:
        set_site(mp, ccm_token_lifetime_minutes=mp.config.site.ccm_token_lifetime_minutes)
    assert enforced(mp) == before


def test_auto_approve_applies_live_and_persists(mp: Lab, lab_services: LabProcesses) -> None:
    """`cmglab site set auto-approve all` on the running MP: the next self-signed registration is approved at once,
    lab.json holds the value, and the MP keeps enforcing it after a restart; `domain` (the default) holds the next
    one for approval again."""
    default = mp.config.site.auto_approve
    assert default != "all" and register(mp, Device("HELD01"))["ApprovalStatus"] == "0"
    cmglab(mp, "site", "set", "auto-approve", "all")
    try:
        assert register(mp, Device("AUTO01"))["ApprovalStatus"] == "1"
        assert load_config(Lab.config_path(mp.dir)).site.auto_approve == "all"
        lab_services.stop("management-point")
        lab_services.start("management-point")
        assert enforced(mp)["auto-approve"] == "all"
        assert register(mp, Device("AUTO02"))["ApprovalStatus"] == "1"
    finally:
        cmglab(mp, "site", "set", "auto-approve", default)
    assert load_config(Lab.config_path(mp.dir)).site.auto_approve == default
    assert register(mp, Device("HELD02"))["ApprovalStatus"] == "0"


def _post_site(lab: Lab, settings: dict[str, object]) -> httpx.Response:
    with lab_client(lab) as c:
        return c.post(
            f"{lab.url('management-point')}/_lab/site",
            json=settings,
            headers={"Authorization": f"Bearer {lab.admin_token()}"},
        )


def test_post_lab_site_reads_values_as_lab_json_does(mp: Lab) -> None:
    """The change is validated by SiteSettings itself: `ALL` is `all` over `POST /_lab/site` as in lab.json and
    `cmglab site set`; an unknown setting is a 422 and changes nothing."""
    before = enforced(mp)
    assert _post_site(mp, {"no_such_setting": True}).status_code == 422
    assert _post_site(mp, {"auto_approve": "all", "no_such_setting": True}).status_code == 422
    assert enforced(mp) == before
    r = _post_site(mp, {"auto_approve": "ALL"})
    try:
        assert r.status_code == 200, r.text
        assert r.json()["settings"]["auto_approve"] == "all"
        assert enforced(mp) == {**before, "auto-approve": "all"}
    finally:
        set_site(mp, auto_approve=mp.config.site.auto_approve)
    assert enforced(mp) == before


def test_concurrent_changes_of_different_settings_both_stay(mp: Lab) -> None:
    """Two admins change different settings at the same moment, round after round: each change writes only its
    own row, so neither puts back the other's old value."""
    before = enforced(mp)
    rounds = 12
    start = threading.Barrier(2)

    checked = threading.Barrier(2)  # both changes of a round made: check the round before the next one starts

    def change(setting: str, values: list[object]) -> None:
        for i, value in enumerate(values):
            start.wait(timeout=60)
            r = _post_site(mp, {setting: value})
            assert r.status_code == 200, r.text
            if checked.wait(timeout=60) == 0:  # one thread checks this round: a lost update shows at once
                now = enforced(mp)
                assert (now["ccm-token-lifetime"], now["conflicting-records"]) == (lifetimes[i], records[i]), i

    lifetimes: list[object] = [100 + i for i in range(rounds)]
    records: list[object] = ["manual" if i % 2 == 0 else "automatic" for i in range(rounds)]
    try:
        with ThreadPoolExecutor(2) as pool:
            done = [
                pool.submit(change, "ccm_token_lifetime_minutes", lifetimes),
                pool.submit(change, "conflicting_records", records),
            ]
            for f in done:
                f.result(timeout=120)
        now = enforced(mp)
        assert (now["ccm-token-lifetime"], now["conflicting-records"]) == (lifetimes[-1], records[-1])
    finally:
        set_site(
            mp,
            ccm_token_lifetime_minutes=mp.config.site.ccm_token_lifetime_minutes,
            conflicting_records=mp.config.site.conflicting_records,
        )
    assert enforced(mp) == before


def test_changes_read_together_then_written_both_stay(mp: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic: two changes of different settings that BOTH read the settings before EITHER writes (a
    barrier between the read and the write), the second written after the first is committed (in-process, on a
    site database of its own): neither puts back the other's old value (a read-all/write-all change loses one)."""
    store = Store(mp, url=f"sqlite:///{tmp_path / 'site.db'}")
    read = Store._read_site_settings
    between = threading.Barrier(2)
    first_written = threading.Event()
    mine = threading.local()

    def read_then_wait(s: Any) -> SiteSettings | None:
        settings = read(s)
        if not getattr(mine, "read", False):  # the change's read (not its read-back after the write)
            mine.read = True
            between.wait(timeout=30)
            if mine.second:
                assert first_written.wait(timeout=30)
        return settings

    def change(values: dict[str, object], second: bool) -> None:
        mine.second = second
        try:
            store.change_site_settings(SiteSettingsChange.model_validate(values))
        finally:
            if not second:
                first_written.set()

    monkeypatch.setattr(Store, "_read_site_settings", staticmethod(read_then_wait))
    lifetime = mp.config.site.ccm_token_lifetime_minutes + 11
    records = "automatic" if mp.config.site.conflicting_records == "manual" else "manual"
    with ThreadPoolExecutor(2) as pool:
        done = [
            pool.submit(change, {"ccm_token_lifetime_minutes": lifetime}, False),
            pool.submit(change, {"conflicting_records": records}, True),
        ]
        for f in done:
            f.result(timeout=60)
    monkeypatch.undo()
    now = store.site_settings()
    assert (now.ccm_token_lifetime_minutes, now.conflicting_records) == (lifetime, records)


def test_a_live_change_survives_read_only_commands(mp: Lab) -> None:
    """`cmglab bulk-token list` (and `site show`) only read the site database: a running site's change made over
    `POST /_lab/site` (lab.json untouched) is still enforced after them."""
    before = enforced(mp)
    lifetime = mp.config.site.ccm_token_lifetime_minutes + 7
    set_site(mp, ccm_token_lifetime_minutes=lifetime)
    try:
        cmglab(mp, "bulk-token", "list", "--json")
        cmglab(mp, "bulk-token", "list")
        assert enforced(mp) == {**before, "ccm-token-lifetime": lifetime}
    finally:
        set_site(mp, ccm_token_lifetime_minutes=mp.config.site.ccm_token_lifetime_minutes)
    assert enforced(mp) == before


def console_script(lab: Lab, *args: str) -> str:
    """The installed `cmglab` console script (the command a user types), beside this Python."""
    script = Path(sys.executable).with_name("cmglab")
    result = subprocess.run(
        [str(script), *args, "--lab", str(lab.dir)], capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_cmglab_site_set_and_tenant_write_only_what_they_name(mp: Lab) -> None:
    """A change of setting A over `POST /_lab/site`, then `cmglab site set B` and `cmglab tenant onboard`: A is still
    enforced (the commands write the running site's row of what they name, not all of lab.json's settings), B and
    the tenant are enforced and in lab.json."""
    before, before_config = enforced(mp), load_config(Lab.config_path(mp.dir))
    lifetime = mp.config.site.ccm_token_lifetime_minutes + 13
    records = "automatic" if mp.config.site.conflicting_records == "manual" else "manual"
    other = mp.config.tenants[1]
    assert not other.onboarded
    set_site(mp, ccm_token_lifetime_minutes=lifetime)  # A: the running site only
    try:
        console_script(mp, "site", "set", "conflicting-records", records)  # B
        assert enforced(mp) == {**before, "ccm-token-lifetime": lifetime, "conflicting-records": records}
        config = load_config(Lab.config_path(mp.dir))
        assert config.site.conflicting_records == records
        assert config.site.ccm_token_lifetime_minutes == mp.config.site.ccm_token_lifetime_minutes  # lab.json: B only
        console_script(mp, "tenant", "onboard", other.tenant_id)
        view = json.loads(console_script(mp, "site", "show", "--json"))
        assert {t["tenant_id"]: t["enforced"] for t in view["tenants"]}[other.tenant_id] is True
        assert enforced(mp) == {**before, "ccm-token-lifetime": lifetime, "conflicting-records": records}
    finally:
        console_script(mp, "tenant", "offboard", other.tenant_id)
        console_script(mp, "site", "set", "conflicting-records", mp.config.site.conflicting_records)
        set_site(mp, ccm_token_lifetime_minutes=mp.config.site.ccm_token_lifetime_minutes)
    assert enforced(mp) == before
    assert load_config(Lab.config_path(mp.dir)) == before_config


def test_a_change_of_client_allow_cmg_is_a_new_client_settings_policy(mp: Lab, tmp_path: Path) -> None:
    """`client_allow_cmg` reaches clients by policy: a change of it alone (`cmglab site set client-allow-cmg` or
    `POST /_lab/site`) is a new version of the client settings policy with the new value (in-process, on a site
    database of its own); a change of another setting leaves the policy as it is."""
    from cmglab.services.management_point.policy_defaults import default_policies

    store = Store(mp, url=f"sqlite:///{tmp_path / 'site.db'}", policy_factory=default_policies)

    def client_settings() -> tuple[str, str]:
        policy = next(p for p in store.policies() if p.category == "ClientSettings")
        return policy.version, policy.body

    version, body = client_settings()
    assert 'name="AllowCMG" type="11"><value>1</value>' in body
    store.change_site_settings(SiteSettingsChange.model_validate({"ccm_token_lifetime_minutes": 31}))
    assert client_settings() == (version, body)
    store.change_site_settings(SiteSettingsChange.model_validate({"client_allow_cmg": False}))
    new_version, new_body = client_settings()
    assert float(new_version) > float(version)
    assert 'name="AllowCMG" type="11"><value>0</value>' in new_body
    store.dispose()
