"""Issue 15: no SMSID takeover at registration. A victim registers; an attacker with its own key proposes the
victim's SMSID over every registration door (self-signed, bulk token, client token, AAD, PKI). The victim's
record (key, name, device ID, approval) never changes; the attacker gets a conflicting record, handled as
the hierarchy setting says: automatic -> a new record, manual -> held (Status 1) until `cmglab clients
resolve` says new, merge or block. The record's owner (same key, same Entra device, same PKI certificate)
still updates it. Over real sockets against the lab's MP (and Entra for the AAD proof)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses
from cmglab.tools.reliability.material import Material
from tests.support.lab import lab_fixture, set_site_in_lab_json
from tests.support.sec_registration import (
    Box,
    ccm_token,
    mp_https,
    post_registration,
    site_client,
    site_rows,
    via_tokenauth,
    via_windowsauth,
)

# the running site's setting only: nothing in the module re-seeds the site from lab.json (`cmglab clients`
# opens the site store with seed=False, `cmglab site set` writes only the setting it names)
mp = lab_fixture("entra", "management-point", site={"auto_approve": "all"})


@pytest.fixture(scope="module")
def material(mp: Lab, tmp_path_factory: pytest.TempPathFactory) -> Material:
    return Material(mp, tmp_path_factory.mktemp("sec-reg"))


def cli(lab: Lab, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "cmglab", "clients", *args, "--lab", str(lab.dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def victim(mp: Lab, material: Material) -> tuple[Box, str, dict[str, object]]:
    """A client registered with a bulk token (approved): its box, SMSID and record."""
    box = Box(f"VICTIM{uuid.uuid4().hex[:4].upper()}")
    attrs = via_tokenauth(mp, box, ccm_token(mp, box, "BulkRegistration", material.bulk_token()))
    assert attrs["Status"] == "0" and attrs["ApprovalStatus"] == "1", attrs
    return box, attrs["SMSID"], site_client(mp, attrs["SMSID"])


def attack_self_signed(mp: Lab, material: Material, box: Box, sms_id: str) -> dict[str, str]:
    return post_registration(mp, box, sms_id)


def attack_bulk(mp: Lab, material: Material, box: Box, sms_id: str) -> dict[str, str]:
    return via_tokenauth(mp, box, ccm_token(mp, box, "BulkRegistration", material.bulk_token()), sms_id)


def attack_client_token(mp: Lab, material: Material, box: Box, sms_id: str) -> dict[str, str]:
    own = via_tokenauth(mp, box, ccm_token(mp, box, "BulkRegistration", material.bulk_token()))  # its own record
    token = ccm_token(mp, box, "ClientToken", own["PreAuthToken"], own["SMSID"])
    return via_tokenauth(mp, box, token, sms_id)


def attack_aad(mp: Lab, material: Material, box: Box, sms_id: str) -> dict[str, str]:
    entra = material.entra_token(user=False, deviceid=str(uuid.uuid4()))
    return via_tokenauth(mp, box, ccm_token(mp, box, "AAD", entra, sms_id), sms_id)


def attack_pki(mp: Lab, material: Material, box: Box, sms_id: str) -> dict[str, str]:
    name = f"attacker-{uuid.uuid4().hex[:6]}.corp.lab.test"
    ident = mp.pki.issue_client(name)
    return post_registration(
        mp, box, sms_id, url=f"{mp_https(mp)}/ccm_system/request", cert=(Path(ident.cert_path), Path(ident.key_path))
    )


def attack_domain(mp: Lab, material: Material, box: Box, sms_id: str) -> dict[str, str]:
    """A domain computer of its own (joined while the MP runs, `cmglab device create --domain`)."""
    from cmglab.tools.devicecli import computer_account

    account = computer_account(mp, box.name)
    return via_windowsauth(mp, box, account.name, account.password, sms_id)


ATTACKS: dict[str, Callable[[Lab, Material, Box, str], dict[str, str]]] = {
    "self-signed": attack_self_signed,
    "bulk": attack_bulk,
    "token": attack_client_token,
    "aad": attack_aad,
    "pki": attack_pki,
    "domain": attack_domain,
}
KEPT = (
    "signing_thumbprint",
    "netbios_name",
    "approval",
    "aad_device_id",
    "pki_thumbprint",
    "auth_kind",
    "registered_at",
)


@pytest.mark.parametrize("kind", list(ATTACKS))
def test_proposing_a_registered_smsid_gets_a_new_record(mp: Lab, material: Material, kind: str) -> None:
    box, sms_id, before = victim(mp, material)
    attacker = Box(f"EVIL{uuid.uuid4().hex[:4].upper()}")
    attrs = ATTACKS[kind](mp, material, attacker, sms_id)
    assert attrs["Status"] == "0" and attrs["SMSID"] != sms_id, attrs
    after = site_client(mp, sms_id)
    assert {k: after[k] for k in KEPT} == {k: before[k] for k in KEPT}
    assert site_client(mp, attrs["SMSID"])["signing_thumbprint"] == attacker.thumbprint
    conflict = next(c for c in site_rows(mp, "conflicts") if c["signing_thumbprint"] == attacker.thumbprint)
    assert (conflict["sms_id"], conflict["status"], conflict["new_sms_id"], conflict["kind"]) == (
        sms_id,
        "new",
        attrs["SMSID"],
        kind,
    )
    # its retry is the same new record, not another
    again = ATTACKS[kind](mp, material, attacker, sms_id) if kind in ("self-signed", "bulk", "domain") else attrs
    assert again["SMSID"] == attrs["SMSID"]
    # the owner is untouched: its confirmation still verifies with its registered key
    assert post_registration(mp, box, sms_id, request_type="Confirmation")["Status"] == "0"
    log = (mp.dir / "logs" / "management-point" / "MP_RegistrationManager.log").read_text(errors="replace")
    assert f"Conflicting record detected for client '{sms_id}'" in log


def test_the_owner_still_updates_its_record(mp: Lab, material: Material) -> None:
    box, sms_id, _ = victim(mp, material)
    again = via_tokenauth(mp, box, ccm_token(mp, box, "BulkRegistration", material.bulk_token()), sms_id)
    assert again["Status"] == "0" and again["SMSID"] == sms_id
    # the same Entra device with a new key (a reinstalled client) updates its own record
    device = str(uuid.uuid4())
    first, second = Box("AADPC"), Box("AADPC")
    one = via_tokenauth(mp, first, ccm_token(mp, first, "AAD", material.entra_token(user=False, deviceid=device)))
    two = via_tokenauth(
        mp,
        second,
        ccm_token(mp, second, "AAD", material.entra_token(user=False, deviceid=device), one["SMSID"]),
        one["SMSID"],
    )
    assert two["SMSID"] == one["SMSID"] and two["ApprovalStatus"] == "3"
    assert site_client(mp, one["SMSID"])["signing_thumbprint"] == second.thumbprint


def test_manual_resolution(mp: Lab, material: Material) -> None:
    set_site_in_lab_json(mp, conflicting_records="manual")
    try:
        _, sms_id, before = victim(mp, material)
        held, blocked, merged = (Box(f"HOLD{n}") for n in range(3))
        clients_before = len(site_rows(mp, "clients"))
        for box in (held, blocked, merged):
            attrs = attack_self_signed(mp, material, box, sms_id)
            assert attrs["Status"] == "1" and "SMSID" not in attrs, attrs
        assert len(site_rows(mp, "clients")) == clients_before  # held: no record written
        pending = {c["signing_thumbprint"]: c for c in json.loads(cli(mp, "conflicts", "--json"))}
        assert {pending[b.thumbprint]["status"] for b in (held, blocked, merged)} == {"pending"}
        assert attack_self_signed(mp, material, held, sms_id)["Status"] == "1"  # still pending on retry
        assert pending[held.thumbprint]["attempts"] == 1

        cli(mp, "resolve", str(pending[held.thumbprint]["id"]), "new")
        cli(mp, "resolve", str(pending[blocked.thumbprint]["id"]), "block")
        cli(mp, "resolve", str(pending[merged.thumbprint]["id"]), "merge")
        new = attack_self_signed(mp, material, held, sms_id)
        assert new["Status"] == "0" and new["SMSID"] != sms_id
        assert attack_self_signed(mp, material, blocked, sms_id)["Status"] == "3"
        assert {k: site_client(mp, sms_id)[k] for k in KEPT} == {k: before[k] for k in KEPT}
        merge = attack_self_signed(mp, material, merged, sms_id)  # the admin said: the same machine
        assert merge["Status"] == "0" and merge["SMSID"] == sms_id
        assert site_client(mp, sms_id)["signing_thumbprint"] == merged.thumbprint
        assert "Conflicting client records are resolved manually" in (
            mp.dir / "logs" / "management-point" / "MP_RegistrationManager.log"
        ).read_text(errors="replace")
    finally:
        set_site_in_lab_json(mp, conflicting_records="automatic")


def test_domain_door_conflict_is_held_when_resolution_is_manual(mp: Lab, material: Material) -> None:
    """The domain door (NTLM at ccm_system_windowsauth) under `conflicting-records manual`: the domain computer's
    claim on another client's SMSID is held (Status 1, no record written), listed as pending for the admin, the
    owner's record untouched; `block` then refuses it."""
    set_site_in_lab_json(mp, conflicting_records="manual")
    try:
        _, sms_id, before = victim(mp, material)
        attacker = Box(f"DOM{uuid.uuid4().hex[:4].upper()}")
        clients_before = len(site_rows(mp, "clients"))
        attrs = attack_domain(mp, material, attacker, sms_id)
        assert attrs["Status"] == "1" and "SMSID" not in attrs, attrs
        assert len(site_rows(mp, "clients")) == clients_before
        assert {k: site_client(mp, sms_id)[k] for k in KEPT} == {k: before[k] for k in KEPT}
        pending = next(
            c for c in json.loads(cli(mp, "conflicts", "--json")) if c["signing_thumbprint"] == attacker.thumbprint
        )
        assert (pending["sms_id"], pending["status"], pending["kind"]) == (sms_id, "pending", "domain")
        cli(mp, "resolve", str(pending["id"]), "block")
        assert attack_domain(mp, material, attacker, sms_id)["Status"] == "3"
        assert {k: site_client(mp, sms_id)[k] for k in KEPT} == {k: before[k] for k in KEPT}
        log = (mp.dir / "logs" / "management-point" / "MP_RegistrationManager.log").read_text(errors="replace")
        assert (
            f"Registering device authenticated as domain account {mp.config.active_directory.netbios_name}"
            f"\\{attacker.name}$" in log
        )
        assert f"Conflicting record detected for client '{sms_id}'" in log
    finally:
        set_site_in_lab_json(mp, conflicting_records="automatic")


def test_an_aad_proof_cannot_claim_another_clients_smsid(mp: Lab, material: Material) -> None:
    """CCM_STS with an AAD proof names the SMSID it wants: only the Entra device that registered it gets it."""
    import jwt

    _, sms_id, _ = victim(mp, material)
    attacker = Box("EVILAAD")
    token = ccm_token(mp, attacker, "AAD", material.entra_token(user=False, deviceid=str(uuid.uuid4())), sms_id)
    assert jwt.decode(token, options={"verify_signature": False})["DeviceId"] != sms_id


def test_the_console_shows_conflicting_records(mp: Lab, material: Material, lab_services: LabProcesses) -> None:
    from tests.support.sec_attacks import client, wait_for

    lab_services.ensure("console")
    _, sms_id, _ = victim(mp, material)
    # the name is the attacker's: markup in it reaches the admin's console as text, never as markup
    attacker = Box("EVIL&lt;script&gt;alert(1)&lt;/script&gt;")
    attack_self_signed(mp, material, attacker, sms_id)
    name = "EVIL<script>alert(1)</script>"

    def listed() -> bool:
        with client(mp) as c:
            rows = c.get(f"{mp.url('console')}/api/devices").json().get("conflicts", [])
        return any(r["sms_id"] == sms_id and r["netbios_name"] == name for r in rows)

    wait_for(listed, 30, "the conflicting record at the console")
    with client(mp) as c:
        page = c.get(f"{mp.url('console')}/", params={"static": "1"}).text
    assert "Conflicting records" in page and sms_id in page
    assert name not in page and "EVIL&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_copies_of_one_conflicting_request_at_once(mp: Lab, material: Material) -> None:
    """A client's retries racing each other: one conflicting record, one new record, every copy answered."""
    from concurrent.futures import ThreadPoolExecutor

    _, sms_id, _ = victim(mp, material)
    attacker = Box("RACER")
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: attack_self_signed(mp, material, attacker, sms_id), range(8)))
    assert {r["Status"] for r in replies} == {"0"}
    assert len({r["SMSID"] for r in replies}) == 1 and replies[0]["SMSID"] != sms_id
    mine = [c for c in site_rows(mp, "conflicts") if c["signing_thumbprint"] == attacker.thumbprint]
    assert len(mine) == 1 and mine[0]["new_sms_id"] == replies[0]["SMSID"]
    assert [c["sms_id"] for c in site_rows(mp, "clients")].count(replies[0]["SMSID"]) == 1
