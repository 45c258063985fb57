"""MP_DdrEndpoint: heartbeat discovery records (DDRs), accepted and stored."""

from __future__ import annotations

from cmglab.services.management_point.parts import Parts
from cmglab.services.management_point.policy import verify_signed_message
from cmglab.services.management_point.registration import normalise_sms_id
from cmglab.wire.ccm_messaging import CcmMessage, CcmMessageError, decode_utf16, parse_xml


def handle(mp: Parts, msg: CcmMessage) -> None:
    log = mp.logs.ddr
    root = parse_xml(msg.body)
    if root.tag != "Report":
        raise CcmMessageError(f"MP_DdrEndpoint cannot process <{root.tag}>")
    # an SMSID, or none: the site keeps no free text as a client's ID
    claimed = normalise_sms_id(root.findtext("ReportHeader/Identification/Machine/ClientID"))
    netbios = (root.findtext("ReportHeader/Identification/Machine/NetBIOSName") or "").strip()
    signed = verify_signed_message(mp, msg) if msg.header.clientauth else None
    sms_id = signed.sms_id if signed else claimed
    bodies = [msg.body]
    for attachment in msg.attachments:
        try:
            bodies.append(decode_utf16(attachment))
        except CcmMessageError:
            log.warning(f"DDR {msg.header.id}: an attachment is not UTF-16 text; ignored")
    row = mp.store.add_ddr(sms_id=sms_id, netbios_name=netbios, signed=signed is not None, body="\n".join(bodies))
    log.info(
        f"Received DDR {row} from {sms_id or 'an unknown client'} ({netbios}); "
        f"{'signed by the registered key' if signed else 'not signed by a registered client'}"
    )
