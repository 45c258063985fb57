"""MP_PolicyManager (RequestAssignments → ReplyAssignments) and policy bodies (`.sms_pol`).

- RequestAssignments must be signed by a registered client (Hook2 clientauth: PayloadSignature over
  the body bytes as sent, with the key registered for SourceID). Otherwise the MP answers an empty
  reply (Content-Length 0), as the real one does.
- Secret policies (PolicyFlags & 4) are listed only for approved clients, and their bodies are served
  only to a request signed by the registered key (ClientToken/ClientTokenSignature, or the
  CCMClientID* headers), as CMS EnvelopedData to the client's registered encryption certificate.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from xml.sax.saxutils import escape

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from cmglab.services.management_point import policy_crypto
from cmglab.services.management_point.parts import Parts
from cmglab.services.management_point.registration import normalise_sms_id
from cmglab.services.management_point.sealing import Sealer
from cmglab.services.management_point.store import NOT_APPROVED
from cmglab.services.management_point.units import PolicyRow, Recipient, Signer, utcnow
from cmglab.wire.ccm_messaging import (
    CcmMessage,
    CcmMessageError,
    client_token_candidates,
    parse_client_token,
    parse_timestamp,
    parse_xml,
    utf16,
    verify,
    verify_any,
)

CLIENT_TOKEN_SKEW = timedelta(hours=15)  # local time sent as "Z" by some tools (any time zone)
# a client's last policy request is written when the one stored is this old (or none): a client asking again
# within it costs no write (README "Policy assignments")
REQUEST_TIME_RESOLUTION = timedelta(minutes=1)
SECRET = 4  # PolicyFlags: a secret policy (its body only to an approved client's registered key)


def policy_url_version(version: str) -> str:
    return version.replace(".", "_")


# -- assignments ----------------------------------------------------------------------------------


@dataclass
class SignedClient:
    sms_id: str
    client: Signer


def verify_signed_message(
    mp: Parts, msg: CcmMessage, lookup: Callable[[str], Signer | None] | None = None
) -> SignedClient | None:
    """The registered client that signed `msg`, or None (logged in ClientAuth.log). `lookup`: the client's
    record in the caller's unit of work, when the request has one (else a read of its own)."""
    log = mp.logs.clientauth
    h = msg.header
    auth = h.clientauth
    if not h.source_id or auth is None or not auth.get("PayloadSignature"):
        log.warning(f"Message {h.id} to {h.target_endpoint} is not signed (no clientauth hook / SourceID)")
        return None
    sms_id = normalise_sms_id(h.source_id)
    client = None
    if sms_id:
        client = (lookup or mp.store.signer)(sms_id)
    if client is None or sms_id is None:
        log.warning(f"Message {h.id} from unknown client '{h.source_id}': not registered")
        return None
    signature = auth["PayloadSignature"]
    # verified before with this registered certificate: the same answer (signed_payloads.py)
    if not mp.verified_payloads.check(
        client.signing_cert,
        msg.payload,
        signature,
        lambda: verify(_signing_key(client.signing_cert), msg.payload, signature),
    ):
        log.warning(f"Message {h.id}: PayloadSignature of {sms_id} does not verify with its registered key")
        return None
    log.info(f"Message {h.id} to {h.target_endpoint}: signed by {sms_id}, PayloadSignature verified")
    return SignedClient(sms_id, client)


def _attr(value: object) -> str:
    """An attribute value between double quotes."""
    return escape(str(value), _QUOTE)


_QUOTE = {'"': "&quot;"}


@dataclass(frozen=True)
class Assignments:
    """The <PolicyAssignment> elements of one state of the site's policies, built once per state: every policy's
    (for an approved client) and the non-secret ones' (for a client not approved)."""

    every: str
    public: str
    count: int
    public_count: int
    secret: int


@functools.lru_cache(maxsize=8)
def assignments_of(sealer: Sealer, rows: tuple[PolicyRow, ...]) -> Assignments:
    """ROWS (the policies as stored, by category) as reply elements: a new state of the policies (a new version,
    body or flag) is a new key, so a reply never names a policy the site no longer holds."""
    every, public = [], []
    for policy_id, version, policy_type, category, flags, assignment_id, body in rows:
        url = f"http://<mp>/SMS_MP/.sms_pol?{policy_id}.{policy_url_version(version)}"
        element = (
            f'<PolicyAssignment PolicyAssignmentID="{_attr(assignment_id)}">'
            f'<Policy PolicyID="{_attr(policy_id)}" PolicyVersion="{_attr(version)}" PolicyType="{_attr(policy_type)}" '
            f'PolicyCategory="{_attr(category)}" PolicyFlags="{_attr(flags)}">'
            f'<PolicyLocation PolicyHash="SHA256:{_stored_hash(sealer, body)}">'
            f"<![CDATA[{url}]]></PolicyLocation>"
            f"</Policy></PolicyAssignment>"
        )
        every.append(element)
        if not int(flags) & SECRET:
            public.append(element)
    return Assignments("".join(every), "".join(public), len(every), len(public), len(every) - len(public))


def _request_fields(body: str) -> tuple[str, str]:
    """(the ClientID it names, its ResourceType) of a RequestAssignments body; CcmMessageError for another."""
    root = parse_xml(body)
    if root.tag != "RequestAssignments":
        raise CcmMessageError(f"MP_PolicyManager cannot process <{root.tag}>")
    resource = root.find("Resource")
    resource_type = resource.get("ResourceType", "Machine") if resource is not None else "Machine"
    return (root.findtext("Identification/Machine/ClientID") or "").strip(), resource_type


# a client sends the same body every cycle (it names only the client): parsed once per text among the latest 1,024
# of at most 4 KB each (a refusal raises, and is never kept)
_remembered_fields = functools.lru_cache(maxsize=1024)(_request_fields)
REMEMBERED_BODY = 4096


def _request_of(body: str) -> tuple[str, str]:
    return (_remembered_fields if len(body) <= REMEMBERED_BODY else _request_fields)(body)


def reply_assignments(mp: Parts, msg: CcmMessage) -> str | None:
    """ReplyAssignments XML, or None for the empty reply (unsigned, unknown client, bad signature)."""
    log = mp.logs.policy
    claimed, resource_type = _request_of(msg.body)
    # the signer's record and the policies as stored, as current as a read now (assignment_reads.py)
    kept = mp.assignment_reads.now()
    signed = verify_signed_message(mp, msg, kept.signer)
    if signed is None:
        log.warning(f"Policy assignment request {msg.header.id} refused: not signed by a registered client")
        return None
    client = signed.client
    if claimed and claimed.upper() != signed.sms_id:
        log.warning(f"Policy assignment request names ClientID {claimed} but is signed by {signed.sms_id}")
        return None
    now = utcnow()
    if client.last_policy_request is None or abs(now - client.last_policy_request) >= REQUEST_TIME_RESOLUTION:
        with mp.store.unit() as unit:  # committed before the reply
            unit.touch(signed.sms_id, now)
    rows = kept.policies()
    approved = client.approval != NOT_APPROVED
    built = assignments_of(mp.store.sealer, rows)
    reply = (
        f'<ReplyAssignments SchemaVersion="1.00" ReplyType="Full"><Identification><Machine>'
        f"<ClientID>{signed.sms_id}</ClientID><NetBIOSName>{escape(client.netbios_name)}</NetBIOSName>"
        f"<FQDN>{escape(client.fqdn)}</FQDN><SID/></Machine></Identification>"
        f'<PolicySource>SMS:{escape(mp.site_code)}</PolicySource><Resource ResourceType="{_attr(resource_type)}"/>'
        f"<ServerCookie>{datetime.now(UTC):%Y-%m-%d %H:%M:%S}</ServerCookie>"
        f"{built.every if approved else built.public}</ReplyAssignments>"
    )
    log.info(
        f"Replied {built.count if approved else built.public_count} policy assignment(s) "
        f"({built.secret if approved else 0} secret) to {signed.sms_id}"
        + ("" if approved else " (client not approved: no secret policies)")
    )
    return reply


def _hash(body: str) -> str:
    import hashlib

    return hashlib.sha256(utf16(body)).hexdigest().upper()


@functools.lru_cache(maxsize=4096)
def _signing_key(cert_hex: str) -> CertificatePublicKeyTypes:
    """A registered client's signing key, from its certificate as the store keeps it (parsed once per text)."""
    return x509.load_der_x509_certificate(bytes.fromhex(cert_hex)).public_key()


@functools.lru_cache(maxsize=256)
def _stored_hash(sealer: Sealer, stored: str) -> str:
    """The PolicyHash of a body as the store keeps it (sealed): opened and hashed once per stored text, not per
    request (a changed body is sealed anew, a new text)."""
    return _hash(sealer.open(stored))


# -- policy bodies --------------------------------------------------------------------------------


class PolicyDenied(Exception):
    pass


@dataclass
class PolicyBody:
    content: bytes
    media_type: str


def parse_policy_query(query: str) -> tuple[str, str | None]:
    """`{ID}.2_00` (or `%7BID%7D.2_00`, or `{ID}.SHA256:...`) → (`{ID}` upper, version or None)."""
    from urllib.parse import unquote

    q = unquote(query).strip()
    ident, _, version = q.partition(".")
    ident = ident.strip("{}")
    try:
        uuid.UUID(ident)
    except ValueError as e:
        raise PolicyDenied(f"bad policy ID {q!r}") from e
    return "{" + ident.upper() + "}", version or None


def authenticate_policy_request(
    mp: Parts, headers: dict[str, str], lookup: Callable[[str], Recipient | None]
) -> Recipient:
    """The registered client that signed a policy GET (ClientToken or CCMClientID headers); LOOKUP: its record
    in the request's unit of work."""
    log = mp.logs.clientauth
    token = headers.get("clienttoken")
    if token:
        sig = headers.get("clienttokensignature", "")
        sms_id, stamp = parse_client_token(token)
        candidates = client_token_candidates(token)
    elif headers.get("ccmclientid"):
        sms_id, _ = parse_client_token(headers["ccmclientid"] + ";x")
        stamp = headers.get("ccmclienttimestamp", "")
        sig = headers.get("ccmclientidsignature", "")
        ident = headers["ccmclientid"]
        candidates = [utf16(ident) + b"\x00\x00", utf16(ident)]
        ts_sig = headers.get("ccmclienttimestampsignature", "")
        if not ts_sig:
            raise PolicyDenied("CCMClientTimestampSignature missing")
    else:
        raise PolicyDenied("no ClientToken / CCMClientID headers")
    client = lookup(sms_id)
    if client is None:
        log.warning(f"Policy request from unknown client {sms_id}")
        raise PolicyDenied(f"unknown client {sms_id}")
    when = parse_timestamp(stamp)
    if abs(datetime.now(UTC) - when) > CLIENT_TOKEN_SKEW:
        log.warning(f"Policy request from {sms_id}: token time {stamp} is too far from now")
        raise PolicyDenied("stale ClientToken")
    key = _signing_key(client.signing_cert)
    if not verify_any(key, candidates, sig):
        log.warning(f"Policy request from {sms_id}: ClientTokenSignature does not verify with its registered key")
        raise PolicyDenied("bad signature")
    if headers.get("ccmclientid") and not verify_any(
        key, [utf16(stamp) + b"\x00\x00", utf16(stamp)], headers["ccmclienttimestampsignature"]
    ):
        raise PolicyDenied("bad timestamp signature")
    log.info(f"Policy request from {sms_id}: {'ClientToken' if token else 'CCMClientID'} signature verified")
    return client


def policy_body(mp: Parts, query: str, headers: dict[str, str]) -> PolicyBody:
    log = mp.logs.policy
    policy_id, _version = parse_policy_query(query)
    # one unit of work in plain SQL: the policy as stored and, for a secret one, the client asking
    with mp.store.unit() as unit:
        row = unit.policy(policy_id)
        if row is None:
            raise LookupError(policy_id)
        category, flags, stored = row[3], int(row[4]), row[6]
        if not flags & SECRET:
            log.info(f"Served policy {policy_id} ({category})")
            return PolicyBody(_public_body(mp.store.sealer, stored), "text/xml; charset=UTF-16")
        try:
            client = authenticate_policy_request(mp, headers, unit.recipient)
        except CcmMessageError as e:
            raise PolicyDenied(str(e)) from e
    if client.approval == NOT_APPROVED:
        log.warning(f"Secret policy {policy_id} refused to {client.sms_id}: client not approved")
        raise PolicyDenied("client not approved")
    cert = x509.load_der_x509_certificate(bytes.fromhex(client.encryption_cert))
    body = mp.store.sealer.open(stored)  # a secret body is opened per request, never kept in the clear
    envelope = policy_crypto.envelope(utf16(body) + b"\x00\x00", cert)
    log.info(
        f"Served secret policy {policy_id} ({category}) to {client.sms_id}, encrypted to its "
        "encryption certificate (CMS, 3DES)"
    )
    return PolicyBody(envelope, "application/octet-stream")


@functools.lru_cache(maxsize=256)
def _public_body(sealer: Sealer, stored: str) -> bytes:
    """A non-secret policy's reply body (UTF-16LE with its BOM and NUL), opened and encoded once per stored text
    (a changed body is sealed anew, a new text)."""
    return b"\xff\xfe" + utf16(sealer.open(stored)) + b"\x00\x00"
