"""`.sms_aut` answers: MPLIST, MPCERT, MPKEYINFORMATION(MEDIA), SITESIGNCERT
(docs/protocol-notes.md, ConfigMgr §2.2)."""

from __future__ import annotations

import uuid

from cryptography.hazmat.primitives.serialization import Encoding

from cmglab.services.management_point.caller import Caller
from cmglab.services.management_point.parts import Parts
from cmglab.wire.ccm_messaging import public_key_blob


def _unknown_machine(mp: Parts, arch: str) -> str:
    return "{" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"{mp.lab.config.site.hierarchy_id}:{arch}")).upper() + "}"


def answer(mp: Parts, query: str, caller: Caller) -> str | None:
    verb = query.split("&", 1)[0].strip().upper()
    site = mp.lab.config.site
    ssl_state = "63" if caller.scheme == "https" else "0"
    if verb in ("MPLIST", "MPLIST1", "MPLIST2"):
        return (
            f'<MPList><MP Name="{mp.fqdn.upper()}" FQDN="{mp.fqdn}" SiteCode="{site.code}">'
            f"<Version>{site.mp_build}</Version>"
            f'<Capabilities SchemaVersion="1.0"><Property Name="SSLState" Value="{ssl_state}"/></Capabilities>'
            f"</MP></MPList>"
        )
    if verb in ("MPCERT", "MPCERT2"):
        der = mp.server_cert.public_bytes(Encoding.DER).hex().upper()
        return f"<MPCERT><Certificate>{der}</Certificate></MPCERT>"
    if verb == "SITESIGNCERT":
        return f"<X509Certificate>{mp.site_cert().public_bytes(Encoding.DER).hex().upper()}</X509Certificate>"
    if verb in ("MPKEYINFORMATION", "MPKEYINFORMATIONEX", "MPKEYINFORMATIONMEDIA"):
        key = mp.server_cert.public_key()
        keydata = public_key_blob(key).hex().upper()  # type: ignore[arg-type]
        cert = mp.server_cert.public_bytes(Encoding.DER).hex().upper()
        site_cert = mp.site_cert().public_bytes(Encoding.DER).hex().upper()
        media = ""
        if verb == "MPKEYINFORMATIONMEDIA":
            media = (
                f'<UnknownMachines x86UnknownMachineGUID="{_unknown_machine(mp, "x86")}" '
                f'x64UnknownMachineGUID="{_unknown_machine(mp, "x64")}"/>'
            )
        return (
            f"<MPKEYINFORMATION><FQDN>{mp.fqdn}</FQDN><MACHINENAME>{mp.fqdn.split('.')[0].upper()}</MACHINENAME>"
            f"<SITECODE>{site.code}</SITECODE><KEYDATA>{keydata}</KEYDATA><MPCERTIFICATE>{cert}</MPCERTIFICATE>"
            f"<SITESIGNCERT>{site_cert}</SITESIGNCERT>{media}</MPKEYINFORMATION>"
        )
    return None
