"""CcmMessaging dispatch: a decoded message → the endpoint's logic → the reply bytes (no HTTP here)."""

from __future__ import annotations

from dataclasses import dataclass

from cmglab.services.management_point import ddr, location, policy, registration
from cmglab.services.management_point.caller import Caller
from cmglab.services.management_point.parts import Parts
from cmglab.wire.ccm_messaging import CcmMessageError, decode_message, encode_reply


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = None
    reason: str | None = None  # for the request record and the log


def dispatch(mp: Parts, raw: bytes, content_type: str | None, caller: Caller) -> Reply:
    log = mp.logs.isapi
    try:
        msg = decode_message(raw, content_type, max_decompressed=mp.lab.settings.max_body_bytes)
    except CcmMessageError as e:
        log.warning(f"CCM_POST /{caller.vdir}/request: invalid message: {e}")
        return Reply(400, reason=f"invalid message: {e}")
    endpoint = msg.header.target_endpoint.lower()
    log.info(
        f"CCM_POST /{caller.vdir}/request: message {msg.header.id} for {msg.header.target_endpoint} "
        f"from {msg.header.source_host or '?'} ({caller.auth_kind})"
    )
    if caller.entra_verdict is not None and endpoint != "mp_clientregistration":
        mp.logs.clientauth.warning(
            f"Message {msg.header.id} for {msg.header.target_endpoint} refused: an Entra token admits "
            "MP_ClientRegistration only (other messages need a CCM token)"
        )
        # authenticated, not authorised for this message: 403 (a 401 would ask for credentials it already has)
        return Reply(403, reason="an Entra token admits MP_ClientRegistration messages only")
    try:
        if endpoint == "mp_clientregistration":
            xml: str | None = registration.handle(mp, msg, caller)
        elif endpoint == "mp_locationmanager":
            xml = location.handle(mp, msg, caller)
        elif endpoint == "mp_policymanager":
            xml = policy.reply_assignments(mp, msg)
        elif endpoint == "mp_ddrendpoint":
            ddr.handle(mp, msg)
            xml = None
        else:
            log.warning(f"Message {msg.header.id}: no endpoint {msg.header.target_endpoint!r} on this MP")
            return Reply(404, reason=f"unknown endpoint {msg.header.target_endpoint}")
    except CcmMessageError as e:
        log.warning(f"Message {msg.header.id} for {msg.header.target_endpoint}: invalid body: {e}")
        return Reply(400, reason=f"invalid body: {e}")
    if xml is None:
        return Reply(200, reason="empty reply")
    source = mp.fqdn.split(".")[0].upper()
    body = encode_reply(msg.header, xml, source_host=source, boundary=msg.boundary)
    return Reply(200, body, f'multipart/mixed; boundary="{msg.boundary}"')
