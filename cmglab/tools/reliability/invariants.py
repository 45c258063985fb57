"""What must hold in the site and directory databases after any input, read through the cmglab.services'
read-only `/_lab/*` listings. Each check returns one line per violating row."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cmglab.tools.reliability.labview import LabView
from cmglab.wire.kinds import REGISTRATION_ISSUED, ConflictStatus, Proof

_SMSID = re.compile(r"^GUID:[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PROOFS = {*Proof, REGISTRATION_ISSUED}


def mp_clients(view: LabView) -> list[str]:
    clients = view.listing("management-point", "clients")
    blocked = {t["guid"] for t in view.listing("management-point", "bulk-tokens") if t["blocked"]}
    bad = []
    for c in clients:
        who = c.get("sms_id") or c.get("netbios_name")
        if not _SMSID.match(str(c.get("sms_id") or "")):
            bad.append(f"client {who}: SMSID {c.get('sms_id')!r} is not GUID:<upper GUID>")
        if not (c.get("signing_thumbprint") or c.get("pki_thumbprint")):
            bad.append(f"client {who}: no certificate (neither SMS signing nor PKI thumbprint)")
        # the campaign blocks its bulk tokens before it uses them: none may have registered a client
        if c.get("bulk_token_guid") in blocked:
            bad.append(f"client {who}: registered with blocked bulk token {c['bulk_token_guid']}")
        if c.get("approval") not in (0, 1, 3):
            bad.append(f"client {who}: approval {c.get('approval')!r}")
    return bad


def mp_conflicts(view: LabView) -> list[str]:
    """No SMSID takeover (issue 15): a conflicting record never became the record it proposed, unless the
    admin merged it; one resolved `new` has a record of its own with its key."""
    clients = {c["sms_id"]: c for c in view.listing("management-point", "clients")}
    bad = []
    for c in view.listing("management-point", "conflicts"):
        proposed = clients.get(c["sms_id"])
        if c["status"] not in tuple(ConflictStatus):
            bad.append(f"conflict {c['id']}: status {c['status']!r}")
        if (
            c["status"] != ConflictStatus.MERGE
            and proposed
            and proposed["signing_thumbprint"] == c["signing_thumbprint"]
        ):
            bad.append(f"conflict {c['id']}: {c['sms_id']} was taken over by certificate {c['signing_thumbprint']}")
        if c["status"] == ConflictStatus.NEW:
            own = clients.get(c.get("new_sms_id") or "")
            if own is None or own["signing_thumbprint"] != c["signing_thumbprint"] or own["sms_id"] == c["sms_id"]:
                bad.append(f"conflict {c['id']}: resolved new, but {c.get('new_sms_id')} is not its own record")
    return bad


def mp_tokens(view: LabView) -> list[str]:
    bad = []
    for t in view.listing("management-point", "tokens"):
        if t.get("proof") not in _PROOFS or t.get("kind") not in ("ccm", "client"):
            bad.append(f"token {t.get('unique_id')}: kind {t.get('kind')!r} proof {t.get('proof')!r}")
        if not t.get("expires_at") or not t.get("issued_at") or t["expires_at"] <= t["issued_at"]:
            bad.append(f"token {t.get('unique_id')}: lifetime {t.get('issued_at')} .. {t.get('expires_at')}")
    return bad


def entra_devices(view: LabView) -> list[str]:
    tenants = {t["tenant_id"] for t in view.listing("entra", "tenants")}
    bad = []
    for d in view.listing("entra", "devices"):
        who = d.get("device_id")
        if not _GUID.match(str(who or "")):
            bad.append(f"device {who!r}: device ID is not a GUID")
        if d.get("tenant_id") not in tenants:
            bad.append(f"device {who}: tenant {d.get('tenant_id')!r} does not exist")
        # a synced hybrid device (ServerAd) has no certificate until it joins; every other one has
        if not d.get("cert_thumbprint") and (d.get("trust_type") != "ServerAd" or d.get("registered_at")):
            bad.append(f"device {who}: registered without a certificate thumbprint")
    return bad


CHECKS: dict[str, list[Callable[[LabView], list[str]]]] = {
    "management-point": [mp_clients, mp_tokens, mp_conflicts],
    "entra": [entra_devices],
}


def check(view: LabView) -> dict[str, list[str]]:
    return {service: [line for fn in fns for line in fn(view)] for service, fns in CHECKS.items()}


def rows(view: LabView) -> dict[str, Any]:
    """How many rows the checks looked at (the report shows that the checks saw something)."""
    return {
        "mp_clients": len(view.listing("management-point", "clients")),
        "mp_tokens": len(view.listing("management-point", "tokens")),
        "entra_devices": len(view.listing("entra", "devices")),
    }
