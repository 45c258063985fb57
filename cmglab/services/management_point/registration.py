"""MP_ClientRegistration: Registration and Confirmation requests → ClientRegistrationResponse.

How the request was authenticated decides the kind of registration and its approval:

| carrier | kind | ApprovalStatus | unique token (PreAuthToken) |
|---|---|---|---|
| `ccm_system_tokenauth` + an Entra token (seed 001's order: registration, then CCM_STS) | aad | 3 | no |
| `ccm_system_tokenauth` + CCM token from an `AAD` proof | aad | 3 | no |
| `ccm_system_tokenauth` + CCM token from a `BulkRegistration` proof (same cert) | bulk | 1 | yes |
| `ccm_system_tokenauth` + CCM token from a `ClientToken` proof | token | 1 | yes (fresh) |
| PKI client certificate (TLS, or `Client-Cert` from the connection point) | pki | 1 | no |
| `ccm_system_windowsauth` (NTLM/Negotiate, lab domain account) | domain | 1 if auto_approve all/domain | if approved |
| anonymous (`ccm_system` over HTTP, `ccm_system_altauth`) | self-signed | 1 if auto_approve is all | when approved |

Everything a registration writes (client row, token record) is one transaction.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Any
from xml.etree.ElementTree import Element
from xml.sax.saxutils import quoteattr

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from cmglab.core.labconfig import SiteSettings
from cmglab.core.logs import held_lines
from cmglab.services.management_point import admission
from cmglab.services.management_point.admission import NOT_APPROVED
from cmglab.services.management_point.caller import Caller, cert_from_hex, cert_subject, cert_thumbprint
from cmglab.services.management_point.parts import Parts
from cmglab.services.management_point.store import BulkToken, Client, ConflictRecord, IssuedToken, new_sms_id, utcnow
from cmglab.services.management_point.units import ClientKeys, RecordGone, SiteUnit, TokenRecord
from cmglab.wire import key_limits, site_tokens
from cmglab.wire.ccm_messaging import CcmMessage, CcmMessageError, parse_xml, utc_timestamp, utf16, verify
from cmglab.wire.kinds import REGISTRATION_ISSUED, ConflictStatus, EntraVerdict, Proof, RegistrationKind

# Status values of ClientRegistrationResponse (SDK cc144675; sccmhunter)
REGISTERED, PENDING, RESET, REJECTED = 0, 1, 2, 3
_SMSID_RE = re.compile(r"^GUID:\{?([0-9A-Fa-f-]{36})\}?$")


class RegistrationRefused(Exception):
    def __init__(self, reason: str, status: int = REJECTED) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


@dataclass
class Outcome:
    response_type: str
    status: int
    sms_id: str | None = None
    approval: int | None = None
    pre_auth_token: str | None = None

    def to_xml(self) -> str:
        attrs = [f'ResponseType="{self.response_type}"', f'TimeStamp="{utc_timestamp()}"', f'Status="{self.status}"']
        if self.sms_id is not None and self.status in (REGISTERED, PENDING):
            attrs.append(f'SMSID="{self.sms_id}"')
        if self.approval is not None and self.status in (REGISTERED, PENDING):
            attrs.append(f'ApprovalStatus="{self.approval}"')
        if self.pre_auth_token:
            attrs.append(f"PreAuthToken={quoteattr(self.pre_auth_token)}")
        return f"<ClientRegistrationResponse {' '.join(attrs)}/>"


def normalise_sms_id(value: str | None) -> str | None:
    m = _SMSID_RE.match((value or "").strip())
    return f"GUID:{m.group(1).upper()}" if m else None


def _load_cert(hex_der: str | None, what: str) -> x509.Certificate:
    if not hex_der:
        raise RegistrationRefused(f"no {what} certificate in the request")
    try:
        return cert_from_hex(hex_der, f"the {what} certificate")
    except key_limits.TooLarge as e:
        raise RegistrationRefused(str(e)) from e
    except ValueError as e:
        raise RegistrationRefused(f"the {what} certificate is not a DER certificate: {e}") from e


@functools.lru_cache(maxsize=256)  # per certificate, as caller.cert_from_hex that made it (each registration's two)
def _hex(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.DER).hex().upper()


def signed_data(body: str) -> str | None:
    """The <Data> element's text exactly as sent (what the registration signature covers): from the first `<Data`
    followed by no word character (the regex `<Data\\b`) to the first `</Data>` after it. Two finds where the lazy
    regex `<Data\\b.*?</Data>` tried the close at every character of a 4 KB body (~30 us)."""
    start = body.find("<Data")
    while start != -1:
        after = body[start + 5 : start + 6]
        if not after or not (after.isalnum() or after == "_"):
            end = body.find("</Data>", start + 5)
            return body[start : end + 7] if end != -1 else None
        start = body.find("<Data", start + 5)
    return None


def _parse(msg: CcmMessage) -> tuple[Element, Element, str, str]:
    root = parse_xml(msg.body)
    if root.tag != "ClientRegistrationRequest":
        raise CcmMessageError(f"MP_ClientRegistration cannot process <{root.tag}>")
    data = root.find("Data")
    raw = signed_data(msg.body)
    sig = root.find("Signature/SignatureValue")
    if data is None or raw is None:
        raise CcmMessageError("ClientRegistrationRequest without <Data>")
    if sig is None or not (sig.text or "").strip():
        raise RegistrationRefused("the registration request is not signed")
    return root, data, raw, (sig.text or "").strip()


def handle(mp: Parts, msg: CcmMessage, caller: Caller) -> str:
    log = mp.logs.registration
    # the request's MP_RegistrationManager.log lines in one write when it ends, answered or failed (held_lines)
    with held_lines(log):
        try:
            root, data, raw_data, signature = _parse(msg)
            request_type = data.get("RequestType", "Registration")
            if request_type.lower() == "confirmation":
                return confirm(mp, data, raw_data, signature, root).to_xml()
            if request_type.lower() != "registration":
                raise RegistrationRefused(f"unknown RequestType {request_type!r}")
            return register(mp, data, raw_data, signature, caller, msg.header.id).to_xml()
        except RegistrationRefused as e:
            log.warning(f"Registration request refused: {e.reason}")
            kind = "Confirmation" if "Confirmation" in msg.body[:400] else "Registration"
            return Outcome(kind, e.status).to_xml()


def _properties(data: Element) -> dict[str, str]:
    props = {}
    for p in data.findall("DiscoveryProperties/Property"):
        props[p.get("Name", "")] = p.get("Value", "")
    return props


@dataclass(frozen=True)
class Registrant:
    """Who a verified registration request says it is, and what its authentication proved."""

    kind: RegistrationKind
    proposed: str | None  # the SMSID it proposes (normalised)
    signing: x509.Certificate
    encryption: x509.Certificate
    signing_tp: str
    netbios: str
    fqdn: str
    agent_identity: str
    agent_version: str
    domain_account: str | None
    internet: bool
    aad_device: str | None = None
    aad_tenant: str | None = None
    bulk_guid: str | None = None
    pki_tp: str | None = None
    entra: EntraVerdict | None = None  # the verdict on the Entra token it carries (admission.Request.entra)


def register(mp: Parts, data: Element, raw_data: str, signature: str, caller: Caller, message_id: str) -> Outcome:
    """Verify the request, tell who it is, then admit it (admission.py) in one transaction the store retries."""
    who = _registrant(mp, data, raw_data, signature, caller, message_id)
    log = mp.logs.registration

    def raced() -> None:
        log.info(f"Registration of {who.proposed} raced another for the same client; processing it again")

    # a new client or its record's owner in plain SQL; a conflicting record (rare, with its bookkeeping) by the ORM
    def gone() -> None:
        log.info(f"The record of {who.proposed} was deleted while its registration was processed; processing it again")

    try:
        # the site's settings read in the unit that decides on them (one connection, one transaction)
        outcome = mp.store.retrying_unit(lambda u: _admit_plain(mp, u, who, u.site_settings()), on_race=raced)
    except RecordGone:  # rolled back: decided again on what the site holds now, as a request after the delete
        gone()
        outcome = None
    if outcome is None:
        settings = mp.store.site_settings()
        try:
            outcome = mp.store.retrying(lambda s: _admit(mp, s, who, settings), on_race=raced)
        except StaleDataError:  # the ORM's RecordGone (a merged record's UPDATE hit no row): rolled back, again
            gone()
            outcome = mp.store.retrying(lambda s: _admit(mp, s, who, settings), on_race=raced)
    if outcome.status == REGISTERED:
        log.info(
            f"Client {outcome.sms_id} registered ({who.kind}, message {message_id}); approval status "
            f"{outcome.approval}" + ("; issued a unique client token" if outcome.pre_auth_token else "")
        )
    return outcome


def _registrant(mp: Parts, data: Element, raw_data: str, signature: str, caller: Caller, message_id: str) -> Registrant:
    log = mp.logs.registration
    signing = _load_cert(data.findtext("Certificates/Signing"), "signing")
    encryption_hex = data.findtext("Certificates/Encryption")
    encryption = _load_cert(encryption_hex, "encryption") if encryption_hex else signing
    if not verify(signing.public_key(), utf16(raw_data), signature):
        mp.logs.clientauth.warning(
            f"Registration signature verification failed for the signing certificate {cert_thumbprint(signing)}"
        )
        raise RegistrationRefused("the registration request's signature does not verify with its signing certificate")
    mp.logs.clientauth.info(
        f"Registration request {message_id}: signature verified with the signing certificate {cert_thumbprint(signing)}"
    )
    props = _properties(data)
    agent = data.find("AgentInformation")
    who = Registrant(
        kind=RegistrationKind.SELF_SIGNED,
        proposed=normalise_sms_id(data.get("SMSID")),
        signing=signing,
        encryption=encryption,
        signing_tp=cert_thumbprint(signing),
        netbios=props.get("Netbios Name", "") or "",
        fqdn=props.get("FQ Name", "") or props.get("Netbios Name", "") or "",
        agent_identity=agent.get("AgentIdentity", "") if agent is not None else "",
        agent_version=agent.get("AgentVersion", "") if agent is not None else "",
        domain_account=caller.domain_account,
        internet=caller.internet,
    )
    if caller.entra_verdict is not None:
        return _entra_registrant(mp, caller, who)
    if caller.ccm_claims is not None:
        return _token_registrant(mp, caller.ccm_claims, who)
    if caller.pki_cert is not None:
        pki_tp = cert_thumbprint(caller.pki_cert)
        log.info(f"Registering device using PKI certificate {pki_tp} ({cert_subject(caller.pki_cert)})")
        return replace(who, kind=RegistrationKind.PKI, pki_tp=pki_tp)
    if caller.domain_account:
        log.info(f"Registering device authenticated as domain account {caller.domain_account}")
        return replace(who, kind=RegistrationKind.DOMAIN)
    return who


def _entra_registrant(mp: Parts, caller: Caller, who: Registrant) -> Registrant:
    """A registration carrying an Entra token (the transport's verdict on it decides in admission.py): the
    Entra device it names is the owner, as when it came through a CCM token from an AAD proof."""
    claims = caller.entra_claims
    assert claims is not None  # the transport sets the verdict only together with valid claims (require_token)
    device, tenant = str(claims.get("deviceid", "")).lower(), str(claims.get("tid", "")).lower()
    mp.logs.registration.info(f"Registering device using AAD auth: DeviceId='{device} ', TenantId='{tenant}'")
    return replace(who, kind=RegistrationKind.AAD, aad_device=device, aad_tenant=tenant, entra=caller.entra_verdict)


def _token_registrant(mp: Parts, claims: dict[str, Any], who: Registrant) -> Registrant:
    """A registration over ccm_system_tokenauth: the CCM token's proof decides the kind."""
    log = mp.logs.registration
    issued = mp.store.issued(str(claims.get("UniqueId", "")))
    if issued is None:
        raise RegistrationRefused("the CCM token was not issued by this site's token service")
    if issued.proof == Proof.AAD:
        log.info(
            f"Registering device using AAD auth: DeviceId='{issued.aad_device_id} ', TenantId='{issued.aad_tenant_id}'"
        )
        return replace(
            who,
            kind=RegistrationKind.AAD,
            aad_device=(issued.aad_device_id or "").lower() or None,
            aad_tenant=(issued.aad_tenant_id or "").lower() or None,
        )
    if (
        issued.proof in (Proof.BULK_REGISTRATION, Proof.CLIENT_TOKEN)
        and (issued.cert_thumbprint or "") != who.signing_tp
    ):
        raise RegistrationRefused(f"the {issued.proof} CCM token is bound to another certificate")
    if issued.proof == Proof.BULK_REGISTRATION:
        log.info(f"Registering device using bulk registration token {issued.bulk_token_guid}")
        return replace(who, kind=RegistrationKind.BULK, bulk_guid=issued.bulk_token_guid or "")
    if issued.proof == Proof.CLIENT_TOKEN:
        return replace(who, kind=RegistrationKind.TOKEN, proposed=who.proposed or issued.sms_id)
    if issued.proof == Proof.CERTIFICATE:
        return replace(who, kind=RegistrationKind.PKI, pki_tp=issued.cert_thumbprint)
    raise RegistrationRefused(f"a CCM token from a {issued.proof} proof cannot register a client")


def _owned_by(existing: Client | ClientKeys | None, who: Registrant) -> bool:
    """The proposed record exists and the request comes from its owner (both ways of admitting ask this)."""
    return existing is not None and admission.same_owner(
        record_signing=existing.signing_thumbprint,
        record_aad_device=existing.aad_device_id,
        record_pki=existing.pki_thumbprint,
        kind=who.kind,
        signing=who.signing_tp,
        aad_device=who.aad_device,
        pki=who.pki_tp,
    )


def _decide(
    who: Registrant,
    settings: SiteSettings,
    existing: Client | ClientKeys | None,
    owner: bool,
    resolution: ConflictStatus | None,
    bulk_blocked: bool | None,
) -> admission.Decision:
    """The site's decision on this request; BULK_BLOCKED None: the bulk token is unknown (refused as blocked)."""
    return admission.admit(
        admission.Request(
            kind=who.kind,
            auto_approve=settings.auto_approve,
            existing_approval=existing.approval if existing is not None else None,
            same_owner=owner,
            conflicts=settings.conflicting_records,
            resolution=resolution,
            token_blocked=who.bulk_guid is not None and (bulk_blocked is None or bulk_blocked),
            entra=who.entra,
        )
    )


def _admit_plain(mp: Parts, u: SiteUnit, who: Registrant, settings: SiteSettings) -> Outcome | None:
    """`_admit` for a request with no conflicting record (a new client, or the record's owner), in one plain-SQL
    unit of work; None, with nothing written, when the proposed record belongs to someone else."""
    existing = u.client(who.proposed) if who.proposed else None
    owner = _owned_by(existing, who)
    if existing is not None and not owner:
        return None
    blocked = u.bulk_blocked(who.bulk_guid) if who.bulk_guid is not None else None
    decision = _decide(who, settings, existing, owner, None, blocked)
    if decision.action is admission.Action.REFUSE:
        raise RegistrationRefused(decision.reason)
    if decision.action not in (admission.Action.CREATE, admission.Action.UPDATE):  # only with a conflict
        return None
    sms_id = existing.sms_id if existing is not None else who.proposed or new_sms_id()
    mp.logs.registration.info(f"Processing Registration request from Client '{sms_id}'")
    approval = decision.approval or NOT_APPROVED
    u.write_client(sms_id, _values(who, approval, existing), new=existing is None)
    token = _client_token(mp, u, sms_id, who) if decision.client_token else None
    return Outcome("Registration", REGISTERED, sms_id, approval, token)


def _values(who: Registrant, approval: int, existing: ClientKeys | None) -> dict[str, Any]:
    """The client row as this request describes it (`_write`'s values): an existing record keeps what it lacks."""
    return {
        "netbios_name": who.netbios,
        "fqdn": who.fqdn,
        "signing_cert": _hex(who.signing),
        "encryption_cert": _hex(who.encryption),
        "signing_thumbprint": who.signing_tp,
        "pki_thumbprint": who.pki_tp or (existing.pki_thumbprint if existing else None),
        "auth_kind": str(who.kind),
        "domain_account": who.domain_account,
        "aad_device_id": who.aad_device or (existing.aad_device_id if existing else None),
        "aad_tenant_id": who.aad_tenant or (existing.aad_tenant_id if existing else None),
        "bulk_token_guid": who.bulk_guid or (existing.bulk_token_guid if existing else None),
        "approval": approval,
        "internet": who.internet,
        "agent_identity": who.agent_identity,
        "agent_version": who.agent_version,
        "updated_at": utcnow(),
    }


def _admit(mp: Parts, s: Session, who: Registrant, settings: SiteSettings) -> Outcome:
    """One attempt, inside the store's transaction: read the proposed record, decide, write."""
    existing = s.get(Client, who.proposed) if who.proposed else None
    owner = _owned_by(existing, who)
    conflict = _conflict(s, existing.sms_id, who.signing_tp) if existing is not None and not owner else None
    bulk = s.get(BulkToken, who.bulk_guid.lower()) if who.bulk_guid is not None else None  # as SiteUnit.bulk_blocked
    resolution = ConflictStatus(conflict.status) if conflict is not None else None
    decision = _decide(who, settings, existing, owner, resolution, bulk.blocked if bulk is not None else None)
    log = mp.logs.registration
    if decision.action is admission.Action.REFUSE:
        raise RegistrationRefused(decision.reason)
    if existing is not None and not owner:
        conflict = _note_conflict(mp, s, conflict, existing, who, decision)
    if decision.action is admission.Action.HOLD:
        return Outcome("Registration", PENDING)
    if decision.action is admission.Action.NEW_RECORD:
        client = _new_record(s, conflict, who)
    else:
        client = existing or Client(sms_id=who.proposed or new_sms_id(), registered_at=utcnow())
    log.info(f"Processing Registration request from Client '{client.sms_id}'")
    _write(client, who, decision.approval or NOT_APPROVED, keep=client in s)
    s.add(client)
    token = _client_token(mp, s, client.sms_id, who) if decision.client_token else None
    return Outcome("Registration", REGISTERED, client.sms_id, client.approval, token)


def _conflict(s: Session, sms_id: str, signing_tp: str) -> ConflictRecord | None:
    return s.scalars(
        select(ConflictRecord)
        .where(ConflictRecord.sms_id == sms_id, ConflictRecord.signing_thumbprint == signing_tp)
        .order_by(ConflictRecord.id.desc())
    ).first()


def _note_conflict(
    mp: Parts,
    s: Session,
    conflict: ConflictRecord | None,
    existing: Client,
    who: Registrant,
    decision: admission.Decision,
) -> ConflictRecord:
    """Record (or count again) a conflicting record, and say so in MP_RegistrationManager.log."""
    log = mp.logs.registration
    if conflict is None:
        conflict = ConflictRecord(
            sms_id=existing.sms_id,
            signing_thumbprint=who.signing_tp,
            kind=who.kind,
            netbios_name=who.netbios,
            aad_device_id=who.aad_device,
            pki_thumbprint=who.pki_tp,
            status=ConflictStatus.PENDING,
            attempts=0,
        )
        s.add(conflict)
        log.warning(
            f"Conflicting record detected for client '{existing.sms_id}': it is registered with signing "
            f"certificate {existing.signing_thumbprint}, this {who.kind} registration request is signed "
            f"with {who.signing_tp} (Netbios Name '{who.netbios}')"
        )
    conflict.attempts += 1
    conflict.last_seen = utcnow()
    if decision.action is admission.Action.HOLD:
        s.flush()
        log.warning(
            f"Conflicting client records are resolved manually: the registration request is pending "
            f"(conflicting record {conflict.id}, `cmglab clients resolve {conflict.id}`)"
        )
    elif decision.action is admission.Action.NEW_RECORD and conflict.status == ConflictStatus.PENDING:
        conflict.status, conflict.resolved_at = ConflictStatus.NEW, utcnow()
    return conflict


def _new_record(s: Session, conflict: ConflictRecord | None, who: Registrant) -> Client:
    """The record a conflicting request gets: the one its resolution made before (its retries), or a new one."""
    if conflict is not None and conflict.new_sms_id:
        earlier = s.get(Client, conflict.new_sms_id)
        if earlier is not None and earlier.signing_thumbprint == who.signing_tp:
            return earlier
    client = Client(sms_id=new_sms_id(), registered_at=utcnow())
    if conflict is not None:
        conflict.new_sms_id = client.sms_id
    return client


def _write(client: Client, who: Registrant, approval: int, *, keep: bool) -> None:
    """The record as this request describes it; `keep`: an existing record keeps what this request lacks."""
    client.netbios_name, client.fqdn = who.netbios, who.fqdn
    client.signing_cert, client.encryption_cert = _hex(who.signing), _hex(who.encryption)
    client.signing_thumbprint = who.signing_tp
    client.pki_thumbprint = who.pki_tp or (client.pki_thumbprint if keep else None)
    client.auth_kind = who.kind
    client.domain_account = who.domain_account
    client.aad_device_id = who.aad_device or (client.aad_device_id if keep else None)
    client.aad_tenant_id = who.aad_tenant or (client.aad_tenant_id if keep else None)
    client.bulk_token_guid = who.bulk_guid or (client.bulk_token_guid if keep else None)
    client.approval = approval
    client.internet = who.internet
    client.agent_identity, client.agent_version = who.agent_identity, who.agent_version
    client.updated_at = utcnow()


def _client_token(mp: Parts, u: Session | SiteUnit, sms_id: str, who: Registrant) -> str:
    token, expires = mp.signer.client_token(sms_id=sms_id, cert_thumbprint=who.signing_tp)
    record = TokenRecord(
        unique_id=site_tokens_unique_id(token),
        kind="client",
        token_type=site_tokens.CLIENT,
        proof=REGISTRATION_ISSUED,
        sms_id=sms_id,
        cert_thumbprint=who.signing_tp,
        bulk_token_guid=who.bulk_guid,
        expires_at=expires.astimezone(UTC).replace(tzinfo=None),
    )
    if isinstance(u, SiteUnit):
        u.record(record)
    else:
        u.add(IssuedToken(**vars(record), issued_at=utcnow()))
    return token


def site_tokens_unique_id(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["UniqueId"])


def confirm(mp: Parts, data: Element, raw_data: str, signature: str, root: Element) -> Outcome:
    log = mp.logs.registration
    sms_id = normalise_sms_id(
        data.get("SMSID")
        or (
            root.find("Signature").get("SMSID")  # type: ignore[union-attr]
            if root.find("Signature") is not None
            else None
        )
    )
    if sms_id is None:
        raise RegistrationRefused("Confirmation request without an SMSID", RESET)
    client = mp.store.get_client(sms_id)
    if client is None:
        log.warning(f"Confirmation request from unknown Client '{sms_id}': asking it to register again")
        raise RegistrationRefused(f"unknown client {sms_id}", RESET)
    cert = x509.load_der_x509_certificate(bytes.fromhex(client.signing_cert))
    if not verify(cert.public_key(), utf16(raw_data), signature):
        mp.logs.clientauth.warning(f"Confirmation signature from {sms_id} does not verify with its registered key")
        raise RegistrationRefused(f"signature of {sms_id} does not verify")
    log.info(f"Processing Confirmation request from Client '{sms_id}': registered, approval {client.approval}")
    return Outcome("Confirmation", REGISTERED, sms_id, client.approval)
