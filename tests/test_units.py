"""In-process unit tests of the services' pure logic, beside the network tests: Entra's grants and the MP's
CCM_STS proofs, called directly on parts built from a fresh lab (no process, no socket). The CMG's URL
rewrite has its own in tests/test_sec_cmg_urls.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cmglab.agent import entra as agent_entra
from cmglab.pki.builders import sha1_thumbprint
from cmglab.runtime.lab import Lab
from cmglab.services.entra import drs as drs_crypto
from cmglab.services.entra import store as st
from cmglab.services.entra.errors import AADSTSError, DRSError
from cmglab.services.entra.grants import JWT_BEARER, TokenRequest
from cmglab.services.entra.nonces import NonceKey
from cmglab.services.entra.parts import Parts as EntraParts
from cmglab.services.entra.prt import PRT_LIFETIME
from cmglab.services.management_point.caller import Caller
from cmglab.services.management_point.errors import STSError
from cmglab.services.management_point.parts import Parts as MPParts
from cmglab.services.management_point.sts import STSRequest, TokenService
from cmglab.wire.kinds import AuthKind, Proof
from cmglab.wire.prt_crypto import open_session_key
from tests.support.entra_device import signed_request
from tests.support.entra_races import joins_at_once, locked_once, new_user, wrong_passwords_at_once
from tests.support.entra_units import JoinedDevice, drs_token, join_device
from tests.support.lab import new_lab


@pytest.fixture(scope="module")
def unit_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("units") / "lab")


@pytest.fixture(scope="module")
def entra(unit_lab: Lab) -> EntraParts:
    return EntraParts.from_lab(unit_lab)


@pytest.fixture(scope="module")
def sts(unit_lab: Lab) -> TokenService:
    mp = MPParts.from_lab(unit_lab)
    return TokenService(mp, mp.entra_keys)


def token_request(lab: Lab, **form: str) -> TokenRequest:
    form.setdefault("resource", "https://graph.microsoft.com")
    return TokenRequest(segment=lab.config.primary_tenant.tenant_id, v2=False, form=form, ipaddr="192.0.2.1")


# -- Entra's grants ------------------------------------------------------------------------------------


def test_password_grant_signs_the_user_in(unit_lab: Lab, entra: EntraParts) -> None:
    user = unit_lab.config.primary_tenant.users[0]
    app = unit_lab.config.apps[0]
    result = entra.grants.token(
        token_request(unit_lab, grant_type="password", username=user.upn, password=user.password, client_id=app.app_id)
    )
    assert result.auth_kind is AuthKind.PASSWORD and result.auth_subject == user.upn.lower()
    assert result.body["token_type"] == "Bearer" and result.body["access_token"].count(".") == 2


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"grant_type": "magic"}, 70003),  # an unsupported grant type
        ({"grant_type": "password", "username": "nobody@nowhere.test", "password": "x"}, 50034),
        ({"grant_type": "password", "password": "x"}, 900144),  # a missing parameter
    ],
)
def test_a_bad_grant_is_refused_with_its_aadsts_code(
    unit_lab: Lab, entra: EntraParts, form: dict[str, str], code: int
) -> None:
    app = unit_lab.config.apps[0]
    with pytest.raises(AADSTSError) as refused:
        entra.grants.token(token_request(unit_lab, client_id=app.app_id, **form))
    assert refused.value.code == code


def test_wrong_password_is_50126(unit_lab: Lab, entra: EntraParts) -> None:
    user, app = unit_lab.config.primary_tenant.users[0], unit_lab.config.apps[0]
    with pytest.raises(AADSTSError) as refused:
        entra.grants.token(
            token_request(
                unit_lab,
                grant_type="password",
                username=user.upn,
                password=user.password + "-wrong",
                client_id=app.app_id,
            )
        )
    assert refused.value.code == 50126


def test_srv_challenge_hands_out_a_nonce(unit_lab: Lab, entra: EntraParts) -> None:
    result = entra.grants.token(token_request(unit_lab, grant_type="srv_challenge"))
    assert result.auth_kind is AuthKind.SRV_CHALLENGE and result.body["Nonce"]


def test_a_nonce_is_good_once_before_it_expires_and_only_as_this_lab_issued_it(entra: EntraParts) -> None:
    """Attack: a nonce past its lifetime, one made with another key, one whose text was changed and the same nonce
    spelt with other unused bits in its last character are not good for a signed request; a fresh one is, once."""
    store = entra.store
    fresh = store.issue_nonce(300)
    expired = store.nonce_key.issue(st.now() - 1)
    forged = NonceKey(b"\0" * 32).issue(st.now() + 300)
    changed = fresh[:-2] + ("A" if fresh[-2] != "A" else "B") + fresh[-1]
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelt = fresh[:-1] + b64[b64.index(fresh[-1]) + 1]  # 54 characters for 40 bytes: the last one's 4 low bits unused
    assert store.nonce_key.expiry(expired) is not None  # well made, but past its expiry
    for refused in (expired, forged, changed, respelt, "expired-nonce", ""):
        assert store.consume_nonce(refused) is False
    assert store.consume_nonce(fresh) is True
    assert store.consume_nonce(fresh) is False  # single use


def test_a_spent_nonce_is_not_pruned_while_a_clock_behind_still_takes_it(
    entra: EntraParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: spend a nonce, then replay it on a replica whose clock is behind, after one whose clock is ahead
    pruned the rows it saw as expired. The row is what refuses the replay, so it outlives the nonce's expiry by
    NONCE_CLOCK_SKEW, and the replay is refused."""
    store, behind = entra.store, st.now()
    spent = store.nonce_key.issue(behind + 5)
    assert store.consume_nonce(spent) is True
    monkeypatch.setattr(st, "_prune_due", lambda: True)
    monkeypatch.setattr(st, "now", lambda: behind + 30)  # a clock 30 s ahead spends a nonce of its own and prunes
    assert store.consume_nonce(store.issue_nonce(300)) is True
    monkeypatch.setattr(st, "now", lambda: behind)
    assert store.consume_nonce(spent) is False


def test_a_device_signed_request_reads_the_device_row_as_it_is_now(entra: EntraParts) -> None:
    """The device check's row (`device_facts`, one plain-SQL select, not the ORM entity) says what the row says at the
    time of the request: a disabled device reads as disabled, a new certificate thumbprint as new, a deleted one as
    gone; the device ID matches case-insensitively (the certificate's CN may be upper case)."""
    tenant = entra.store.config.tenants[0].tenant_id
    device_id = "0f3c2b1a-9d8e-4c7b-a6f5-e4d3c2b1a090"
    with entra.store.session() as s:
        s.add(
            st.Device(
                object_id=st.new_guid(),
                device_id=device_id,
                tenant_id=tenant,
                trust_type="AzureAd",
                join_type=0,
                cert_thumbprint="AA" * 20,
                transport_key=b"spki",
            )
        )
    with entra.store.session() as s:
        facts = st.device_facts(s, device_id.upper())
        assert facts is not None and facts.enabled is True and facts.cert_thumbprint == "AA" * 20
        assert facts.tenant_id == tenant and facts.transport_key == b"spki" and facts.onprem_sid is None
        assert st.device_facts(s, "00000000-0000-4000-8000-000000000000") is None
    with entra.store.session() as s:
        row = st.device_by_id(s, device_id)
        assert row is not None
        row.enabled, row.cert_thumbprint = False, "BB" * 20
    with entra.store.session() as s:
        facts = st.device_facts(s, device_id)
        assert facts is not None and facts.enabled is False and facts.cert_thumbprint == "BB" * 20
        s.delete(st.device_by_id(s, device_id))
    with entra.store.session() as s:
        assert st.device_facts(s, device_id) is None


def test_a_drs_join_reads_its_user_as_the_row_is_now(unit_lab: Lab, entra: EntraParts) -> None:
    """Attack: a DRS token of a user who was disabled or deleted after it was issued joins no device. The join reads
    the user by one plain-SQL select (`user_facts`, not the ORM entity): what the row says at the time of the join. The
    device certificate it issues is the MS-Organization-Access CA's, with the user's ID in it."""
    tenant = unit_lab.config.primary_tenant
    upn, password = f"joiner@{tenant.users[0].upn.split('@', 1)[1]}", "Joiner-Pass-1"
    object_id = st.new_guid()
    with entra.store.session() as s:
        s.add(st.User(object_id=object_id, tenant_id=tenant.tenant_id, upn=upn, password_hash=st.hash_secret(password)))
    drs = drs_token(entra, tenant.tenant_id, upn, password)

    def join() -> JoinedDevice:
        return join_device(entra, drs, upn)

    joined = join()
    assert joined.reply["User"]["Upn"] == upn
    cert = joined.cert
    assert entra.registration.ca.issued(cert, datetime.now(UTC))
    assert uuid.UUID(object_id).bytes_le in [e.value.value for e in cert.extensions if e.oid == drs_crypto.OID_USER_ID]
    with entra.store.session() as s:
        user = s.get(st.User, object_id)
        assert user is not None
        user.enabled = False
    with pytest.raises(DRSError) as refused:
        join()
    assert refused.value.code == 50034
    with entra.store.session() as s:
        s.delete(s.get(st.User, object_id))
    with pytest.raises(DRSError) as refused:
        join()
    assert refused.value.code == 50034


def test_a_join_in_plain_sql_writes_the_row_the_orm_wrote_and_reads_as_a_session_does(
    unit_lab: Lab, entra: EntraParts
) -> None:
    """The DRS join runs as one plain-SQL unit (`Store.plain`): the device row it writes is what the ORM insert wrote
    (every column, the defaults included, read back by the ORM), and a plain unit's reads (directory cache, user and
    device facts) answer as a session's do."""
    tenant = unit_lab.config.primary_tenant
    user = tenant.users[0]
    drs = drs_token(entra, tenant.tenant_id, user.upn, user.password)
    before = st.now()
    joined = join_device(entra, drs, user.upn)
    reply, cert, device_id, transport_key = joined.reply, joined.cert, joined.device_id, joined.transport_key
    with entra.store.session() as s:
        row = st.device_by_id(s, device_id)
        assert row is not None
        owner = st.sign_in_facts(s, user.upn)
        assert owner is not None
        assert uuid.UUID(row.object_id) and row.object_id != device_id
        assert (row.tenant_id, row.owner_id) == (tenant.tenant_id, owner.user.object_id)
        assert (row.device_type, row.trust_type, row.join_type, row.auth_methods) == ("Windows", "AzureAd", 0, "pwd")
        assert row.display_name and row.os_version
        assert row.cert_thumbprint == sha1_thumbprint(cert) == reply["Certificate"]["Thumbprint"]
        assert row.transport_key == drs_crypto.spki(transport_key.public_key())
        assert row.onprem_sid is None and row.user_certificate is None
        assert row.enabled is True
        assert before <= row.created_at <= st.now() and before <= (row.registered_at or 0) <= st.now()
        in_session = (st.device_facts(s, device_id), st.user_facts(s, owner.user.object_id))
        tenant_in_session = st.tenant_by_id(s, tenant.tenant_id)
    with entra.store.plain() as u:
        assert (st.device_facts(u, device_id.upper()), st.user_facts(u, owner.user.object_id)) == in_session
        assert st.device_facts(u, st.new_guid()) is None and st.user_facts(u, st.new_guid()) is None
        assert st.tenant_by_id(u, tenant.tenant_id) == tenant_in_session
        assert st.tenant_by_id(u, st.new_guid()) is None and st.tenant_by_id(u, tenant.tenant_id.upper()) is None
    facts = in_session[0]
    assert facts is not None and facts.enabled is True and isinstance(facts.transport_key, bytes)


def test_ropc_writes_its_refresh_token_row_in_its_plain_unit_as_a_session_writes_it(
    unit_lab: Lab, entra: EntraParts
) -> None:
    """ROPC runs in one plain-SQL unit: its refresh token's row (hashed; tenant, user, client, no device, amr, 90
    days) is the row the session's Core insert wrote, read back by the ORM; it redeems; a failed sign-in writes none."""
    user = unit_lab.config.primary_tenant.users[0]
    form = {"client_id": agent_entra.BROKER_CLIENT_ID, "resource": agent_entra.DRS_RESOURCE, "username": user.upn}

    def rows() -> dict[str, tuple[Any, ...]]:
        with entra.store.session() as s:
            return {
                r.token_hash: (r.tenant_id, r.user_id, r.client_id, r.device_id, r.amr, r.expires_at - r.created_at)
                for r in s.scalars(select(st.RefreshToken))
            }

    before = rows()
    body = entra.grants.token(token_request(unit_lab, grant_type="password", password=user.password, **form)).body
    made = {k: v for k, v in rows().items() if k not in before}
    assert list(made) == [st.token_hash(body["refresh_token"])] and body["refresh_token"] not in made
    with entra.store.session() as s:
        owner = st.sign_in_facts(s, user.upn)
        row = s.get(st.RefreshToken, st.token_hash(body["refresh_token"]))
    assert owner is not None and row is not None and abs(row.created_at - st.now()) <= 5
    as_a_session_writes = (unit_lab.config.primary_tenant.tenant_id, owner.user.object_id)
    assert made[row.token_hash] == (*as_a_session_writes, agent_entra.BROKER_CLIENT_ID, None, "pwd", 90 * 24 * 3600)
    again = entra.grants.token(
        token_request(unit_lab, grant_type="refresh_token", refresh_token=body["refresh_token"], **form)
    )
    assert again.body["access_token"]
    with pytest.raises(AADSTSError):
        entra.grants.token(token_request(unit_lab, grant_type="password", password="not-it", **form))
    assert len(rows()) == len(before) + 1 + ("refresh_token" in again.body)


def test_wrong_passwords_sent_at_once_are_each_counted(unit_lab: Lab, entra: EntraParts) -> None:
    """Attack: smart lockout's count raced. THRESHOLD distinct wrong passwords sent at the same moment (parallel
    connections) each answer 50126 but the last counted, which locks the account (50053): each failure is counted.
    The count was read, then written back plus one, so parallel failures overwrote each other (9 sent, 2 counted),
    and a user's first failures at once collided on the row's insert (a 500, not the protocol's error)."""
    tenant = unit_lab.config.primary_tenant
    upn = f"raced@{tenant.users[0].upn.split('@', 1)[1]}"
    new_user(entra, tenant.tenant_id, upn, "Raced-Pass-1")
    threshold = unit_lab.config.smart_lockout.threshold
    answers = wrong_passwords_at_once(entra, tenant.tenant_id, upn, unit_lab.config.apps[0].app_id, threshold)
    assert locked_once(answers, threshold), answers
    with entra.store.session() as s:
        row = s.get(st.Lockout, upn)
        assert row is not None and row.locked_until > st.now()


def test_a_users_joins_sent_at_once_stay_within_the_device_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: the device quota raced. A user's DRS joins sent at the same moment (parallel connections) each counted
    the user's devices, then inserted: with a quota of 2, 8 joins that all counted before any inserted joined 8
    devices (6 at once, unforced: 3 to 6). Now no more than the quota are joined, the rest refused with 240001 (the
    protocol's error)."""
    lab = new_lab(tmp_path / "lab")
    lab.config.primary_tenant.max_devices_per_user = 2
    entra = EntraParts.from_lab(lab)
    try:
        user = lab.config.primary_tenant.users[0]
        drs = entra.grants.token(
            token_request(
                lab,
                grant_type="password",
                username=user.upn,
                password=user.password,
                client_id=agent_entra.BROKER_CLIENT_ID,
                resource=agent_entra.DRS_RESOURCE,
            )
        ).body["access_token"]
        answers = joins_at_once(entra, drs, user.upn.split("@", 1)[1], 8, monkeypatch)
        assert sorted(answers, key=str) == [240001] * 6 + ["joined"] * 2, answers
    finally:
        entra.store.db.dispose()


def test_a_device_signed_password_grant_writes_its_prt_or_refresh_row_in_its_plain_unit(
    unit_lab: Lab, entra: EntraParts
) -> None:
    """CloudAP's sign-in (the device-signed password grant) runs in one plain-SQL unit: the PRT's row (hashed, bound
    to the user and the device, with the session key the reply seals to the transport key) or, without the PRT
    scope, the user's refresh token bound to the device; a wrong password writes neither."""
    tenant = unit_lab.config.primary_tenant
    user = tenant.users[0]
    joined = join_device(entra, drs_token(entra, tenant.tenant_id, user.upn, user.password), user.upn)
    cert, device_id, device_key, transport_key = joined.cert, joined.device_id, joined.device_key, joined.transport_key

    def signed(password: str, **inner: str) -> dict[str, Any]:
        nonce = entra.grants.token(token_request(unit_lab, grant_type="srv_challenge")).body["Nonce"]
        payload = {"request_nonce": nonce, "client_id": agent_entra.BROKER_CLIENT_ID, "grant_type": "password"}
        request = signed_request(cert, device_key, {**payload, "username": user.upn, "password": password, **inner})
        form = {"windows_api_version": "2.2", "grant_type": JWT_BEARER, "request": request}
        return entra.grants.token(TokenRequest(tenant.tenant_id, False, form, "192.0.2.1")).body

    def counts() -> tuple[int, int]:
        with entra.store.session() as s:
            return len(s.scalars(select(st.PrimaryRefreshToken)).all()), len(s.scalars(select(st.RefreshToken)).all())

    prt = signed(user.password, scope="openid aza ugs")
    with entra.store.session() as s:
        row = s.get(st.PrimaryRefreshToken, st.token_hash(prt["refresh_token"]))
        owner = st.sign_in_facts(s, user.upn)
    assert row is not None and owner is not None
    assert (row.tenant_id, row.user_id, row.device_id, row.amr) == (
        tenant.tenant_id,
        owner.user.object_id,
        device_id,
        "pwd rsa",
    )
    assert row.expires_at - row.issued_at == PRT_LIFETIME and abs(row.issued_at - st.now()) <= 5
    assert row.session_key == open_session_key(prt["session_key_jwe"], transport_key)
    tokens = signed(user.password, resource=agent_entra.DRS_RESOURCE)
    with entra.store.session() as s:
        refresh = s.get(st.RefreshToken, st.token_hash(tokens["refresh_token"]))
    assert refresh is not None and (refresh.device_id, refresh.amr) == (device_id, "pwd rsa")
    before = counts()
    with pytest.raises(AADSTSError):
        signed("not-the-password", scope="openid aza ugs")
    assert counts() == before
    signed(user.password, resource=agent_entra.DRS_RESOURCE)  # the count of wrong passwords starts again


def test_a_password_sign_in_reads_the_user_and_the_lockout_row_as_they_are_now(
    unit_lab: Lab, entra: EntraParts
) -> None:
    """The sign-in's one select of the user with their lockout row (`sign_in_facts`; ROPC's in a plain-SQL unit, as
    a session reads it): wrong passwords are counted, a right one starts the count again (the row's failures and
    remembered digests cleared in the sign-in's unit of work), a locked account answers 50053 even to the right
    password, a disabled user 50057, an unknown one 50034."""
    tenant = unit_lab.config.primary_tenant
    upn, password = f"Counted@{tenant.users[0].upn.split('@', 1)[1]}", "Counted-Pass-1"
    object_id = st.new_guid()
    with entra.store.session() as s:
        s.add(
            st.User(
                object_id=object_id, tenant_id=tenant.tenant_id, upn=upn.lower(), password_hash=st.hash_secret(password)
            )
        )

    def sign_in(given: str, who: str = upn) -> str:
        return entra.grants.token(
            token_request(
                unit_lab, grant_type="password", username=who, password=given, client_id=unit_lab.config.apps[0].app_id
            )
        ).body["access_token"]

    def refused(given: str, who: str = upn) -> int:
        with pytest.raises(AADSTSError) as e:
            sign_in(given, who)
        return e.value.code

    def lockout() -> tuple[int, int, str] | None:
        with entra.store.session() as s:
            row = s.get(st.Lockout, upn.lower())
            return None if row is None else (row.failures, row.locked_until, row.recent)

    assert refused("wrong-1") == 50126 and refused("wrong-2") == 50126
    counted = lockout()
    assert counted is not None and counted[0] == 2 and len(counted[2].split()) == 2
    with entra.store.session() as s, entra.store.plain() as u:  # ROPC's plain-SQL unit reads as a session does
        facts = st.sign_in_facts(u, upn.upper())
        assert facts == st.sign_in_facts(s, upn) and facts is not None and facts.lock_failures == 2
        assert facts.user.enabled is True and st.sign_in_facts(u, "nobody@" + upn.split("@", 1)[1]) is None
    assert sign_in(password)  # the UPN's case does not matter
    assert lockout() == (0, 0, "")
    with entra.store.session() as s:
        row = s.get(st.Lockout, upn.lower())
        assert row is not None
        row.locked_until = st.now() + 600
    assert refused(password) == 50053
    with entra.store.session() as s:
        row = s.get(st.Lockout, upn.lower())
        assert row is not None
        row.locked_until = 0
        user = s.get(st.User, object_id)
        assert user is not None
        user.enabled = False
    assert refused(password) == 50057
    assert refused(password, "nobody@" + upn.split("@", 1)[1]) == 50034


# -- CCM_STS proofs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (["AAD"], "must be a JSON object"),
        ({}, "ProofType must be one of"),
        ({"ProofType": "Password"}, "ProofType must be one of"),
        ({"ProofType": "ClientToken", "ClientId": 7}, "ClientId must be a string"),
    ],
)
def test_a_malformed_sts_request_is_400(doc: Any, reason: str) -> None:
    with pytest.raises(STSError) as refused:
        STSRequest.from_json(doc, None)
    assert refused.value.status == 400 and reason in refused.value.reason


def test_an_sts_request_names_its_proof() -> None:
    req = STSRequest.from_json({"ProofType": "BulkRegistration", "Certificate": "00", "RenewClientToken": True}, "t")
    assert req.proof_type is Proof.BULK_REGISTRATION and req.bearer == "t" and req.renew_client_token


@pytest.mark.parametrize("proof", [Proof.BULK_REGISTRATION, Proof.CLIENT_TOKEN])
def test_a_token_proof_without_its_token_is_401(sts: TokenService, proof: Proof) -> None:
    with pytest.raises(STSError) as refused:
        (sts.bulk if proof is Proof.BULK_REGISTRATION else sts.client_token)(
            STSRequest(proof, None, None, None, None, None)
        )
    assert refused.value.status == 401


def test_a_certificate_proof_needs_the_tls_certificate(sts: TokenService) -> None:
    with pytest.raises(STSError) as refused:
        sts.certificate(STSRequest(Proof.CERTIFICATE, None, None, None, None, None), Caller(scheme="https"))
    assert (refused.value.status, refused.value.code) == (403, "CertificateRequired")


def test_no_unit_test_here_needs_a_port(unit_lab: Lab) -> None:
    assert not list(Path(unit_lab.dir / "logs").glob("processes/*.out"))  # nothing was started
