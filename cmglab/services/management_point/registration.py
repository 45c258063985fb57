"""MP_ClientRegistration: Registration and Confirmation requests → ClientRegistrationResponse.

How the request was authenticated decides the kind of registration and its approval:

| carrier | kind | ApprovalStatus | unique token (PreAuthToken) |
|---|---|---|---|
| `ccm_system_tokenauth` + CCM token from an `AAD` proof | aad | 3 | no |
| `ccm_system_tokenauth` + CCM token from a `BulkRegistration` proof (same cert) | bulk | 1 | yes |
| `ccm_system_tokenauth` + CCM token from a `ClientToken` proof | token | 1 | yes (fresh) |
| PKI client certificate (TLS, or `Client-Cert` from the connection point) | pki | 1 | no |
| `ccm_system_windowsauth` (NTLM/Negotiate, lab domain account) | domain | 1 if auto_approve all/domain | if approved |
| anonymous (`ccm_system` over HTTP, `ccm_system_altauth`) | self-signed | 1 if auto_approve is all | when approved |

Everything a registration writes (client row, token record) is one transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC
from xml.etree.ElementTree import Element
from xml.sax.saxutils import quoteattr

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy.exc import IntegrityError

from cmglab.runtime.certinfo import thumbprint
from cmglab.services.management_point.caller import Caller
from cmglab.services.management_point.parts import Parts
from cmglab.services.management_point.store import (
    AAD_APPROVED,
    APPROVED,
    NOT_APPROVED,
    BulkToken,
    Client,
    IssuedToken,
    new_sms_id,
    utcnow,
)
from cmglab.wire import site_tokens
from cmglab.wire.ccm_messaging import CcmMessage, CcmMessageError, parse_xml, utc_timestamp, utf16, verify

# Status values of ClientRegistrationResponse (SDK cc144675; sccmhunter)
REGISTERED, PENDING, RESET, REJECTED = 0, 1, 2, 3
_DATA_RE = re.compile(r"<Data\b.*?</Data>", re.DOTALL)
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
        return x509.load_der_x509_certificate(bytes.fromhex(hex_der.strip()))
    except ValueError as e:
        raise RegistrationRefused(f"the {what} certificate is not a DER certificate: {e}") from e


def _hex(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.DER).hex().upper()


def _parse(msg: CcmMessage) -> tuple[Element, Element, str, str]:
    root = parse_xml(msg.body)
    if root.tag != "ClientRegistrationRequest":
        raise CcmMessageError(f"MP_ClientRegistration cannot process <{root.tag}>")
    data = root.find("Data")
    raw = _DATA_RE.search(msg.body)
    sig = root.find("Signature/SignatureValue")
    if data is None or raw is None:
        raise CcmMessageError("ClientRegistrationRequest without <Data>")
    if sig is None or not (sig.text or "").strip():
        raise RegistrationRefused("the registration request is not signed")
    return root, data, raw.group(0), (sig.text or "").strip()


def handle(mp: Parts, msg: CcmMessage, caller: Caller) -> str:
    log = mp.logs.registration
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


def register(mp: Parts, data: Element, raw_data: str, signature: str, caller: Caller, message_id: str) -> Outcome:
    log = mp.logs.registration
    signing = _load_cert(data.findtext("Certificates/Signing"), "signing")
    encryption_hex = data.findtext("Certificates/Encryption")
    encryption = _load_cert(encryption_hex, "encryption") if encryption_hex else signing
    if not verify(signing.public_key(), utf16(raw_data), signature):
        mp.logs.clientauth.warning(
            f"Registration signature verification failed for the signing certificate {thumbprint(signing)}")
        raise RegistrationRefused("the registration request's signature does not verify with its signing certificate")
    mp.logs.clientauth.info(f"Registration request {message_id}: signature verified with the signing certificate "
                            f"{thumbprint(signing)}")
    props = _properties(data)
    netbios = props.get("Netbios Name", "") or ""
    fqdn = props.get("FQ Name", "") or netbios
    agent = data.find("AgentInformation")
    proposed = normalise_sms_id(data.get("SMSID"))
    signing_tp = thumbprint(signing)
    settings = mp.store.settings()
    auto = str(settings.get("auto_approve", "domain")).lower()

    kind, approval, wants_token = "self-signed", NOT_APPROVED, True
    aad_device = aad_tenant = bulk_guid = None
    pki_tp = None
    claims = caller.ccm_claims
    if claims is not None:
        issued = mp.store.issued(str(claims.get("UniqueId", "")))
        if issued is None:
            raise RegistrationRefused("the CCM token was not issued by this site's token service")
        if issued.proof == "AAD":
            kind, approval, wants_token = "aad", AAD_APPROVED, False
            aad_device, aad_tenant = issued.aad_device_id, issued.aad_tenant_id
            log.info(f"Registering device using AAD auth: DeviceId='{aad_device} ', TenantId='{aad_tenant}'")
        elif issued.proof == "BulkRegistration":
            if (issued.cert_thumbprint or "") != signing_tp:
                raise RegistrationRefused("the bulk-token CCM token is bound to another certificate")
            bulk = mp.store.bulk_token(issued.bulk_token_guid or "")
            if bulk is None or bulk.blocked:
                raise RegistrationRefused(f"bulk registration token {issued.bulk_token_guid} is blocked or unknown")
            kind, approval, bulk_guid = "bulk", APPROVED, bulk.guid
            log.info(f"Registering device using bulk registration token {bulk.guid}")
        elif issued.proof == "ClientToken":
            if (issued.cert_thumbprint or "") != signing_tp:
                raise RegistrationRefused("the client-token CCM token is bound to another certificate")
            kind, approval = "token", APPROVED
            proposed = proposed or issued.sms_id
        elif issued.proof == "Certificate":
            kind, approval, wants_token = "pki", APPROVED, False
            pki_tp = issued.cert_thumbprint
        else:
            raise RegistrationRefused(f"a CCM token from a {issued.proof} proof cannot register a client")
    elif caller.pki_cert is not None:
        kind, approval, wants_token = "pki", APPROVED, False
        pki_tp = thumbprint(caller.pki_cert)
        log.info(f"Registering device using PKI certificate {pki_tp} ({caller.pki_cert.subject.rfc4514_string()})")
    elif caller.domain_account:
        kind = "domain"
        approval = APPROVED if auto in ("all", "domain") else NOT_APPROVED
        log.info(f"Registering device authenticated as domain account {caller.domain_account}")
    else:
        approval = APPROVED if auto == "all" else NOT_APPROVED

    # Two copies of one registration at once (a client's retry racing its first attempt): both find no row
    # and one insert loses on the primary key; that one runs again and updates the row the other made.
    for attempt in (1, 2):
        try:
            with mp.store.session() as s:
                existing = s.get(Client, proposed) if proposed else None
                if existing is not None and existing.signing_thumbprint != signing_tp and kind == "self-signed":
                    # an unauthenticated request cannot take over a registered identity: give it a new one
                    log.warning(f"SMSID {proposed} is registered with another certificate; assigning a new ClientID")
                    existing, proposed = None, None
                sms_id = proposed or new_sms_id()
                log.info(f"Processing Registration request from Client '{sms_id}'")
                if bulk_guid is not None:
                    bulk_row = s.get(BulkToken, bulk_guid)
                    if bulk_row is None or bulk_row.blocked:  # re-read inside the transaction
                        raise RegistrationRefused(f"bulk registration token {bulk_guid} is blocked")
                client = existing or Client(sms_id=sms_id, registered_at=utcnow())
                client.netbios_name, client.fqdn = netbios, fqdn
                client.signing_cert, client.encryption_cert = _hex(signing), _hex(encryption)
                client.signing_thumbprint = signing_tp
                client.pki_thumbprint = pki_tp or (client.pki_thumbprint if existing else None)
                client.auth_kind = kind
                client.domain_account = caller.domain_account
                client.aad_device_id = aad_device.lower() if aad_device else client.aad_device_id
                client.aad_tenant_id = aad_tenant.lower() if aad_tenant else client.aad_tenant_id
                client.bulk_token_guid = bulk_guid or client.bulk_token_guid
                client.approval = max(approval, client.approval if existing else NOT_APPROVED) \
                    if kind != "aad" else AAD_APPROVED
                client.internet = caller.internet
                client.agent_identity = agent.get("AgentIdentity", "") if agent is not None else ""
                client.agent_version = agent.get("AgentVersion", "") if agent is not None else ""
                client.updated_at = utcnow()
                if existing is None:
                    s.add(client)
                token = None
                if wants_token and client.approval != NOT_APPROVED:
                    token, expires = mp.signer.client_token(sms_id=sms_id, cert_thumbprint=signing_tp)
                    unique = site_tokens_unique_id(token)
                    s.add(IssuedToken(unique_id=unique, kind="client", token_type=site_tokens.CLIENT,
                                      proof="Registration", sms_id=sms_id, cert_thumbprint=signing_tp,
                                      bulk_token_guid=bulk_guid, issued_at=utcnow(),
                                      expires_at=expires.astimezone(UTC).replace(tzinfo=None)))
                final_approval = client.approval
            break
        except IntegrityError:
            if attempt == 2:
                raise
            log.info(f"Registration of {proposed} raced another for the same client; processing it again")
    log.info(f"Client {sms_id} registered ({kind}, message {message_id}); approval status {final_approval}"
             + ("; issued a unique client token" if token else ""))
    return Outcome("Registration", REGISTERED, sms_id, final_approval, token)


def site_tokens_unique_id(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["UniqueId"])


def confirm(mp: Parts, data: Element, raw_data: str, signature: str, root: Element) -> Outcome:
    log = mp.logs.registration
    sms_id = normalise_sms_id(data.get("SMSID") or (root.find("Signature").get("SMSID")  # type: ignore[union-attr]
                                                    if root.find("Signature") is not None else None))
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

