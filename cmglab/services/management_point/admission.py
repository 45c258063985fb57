"""Registration admission: what one registration request may do to the site database, decided with no I/O.

`admit(Request)` is the whole rule; `tests/test_mp_admission.py` checks it row by row against this table.

| proposed SMSID's record | same owner | conflicting records | earlier resolution | decision |
|---|---|---|---|---|
| any | any | any | any, and the Entra token the request carries is refused (see below) | REFUSE |
| any | any | any | any, and the proof token is blocked | REFUSE |
| none | – | – | – | CREATE (the proposed SMSID, or a new one) |
| exists | yes | – | – | UPDATE (approval: the higher of the record's and the earned one) |
| exists | no | any | `block` | REFUSE |
| exists | no | any | `merge` | UPDATE (the admin said: the same machine) |
| exists | no | any | `new` | NEW_RECORD (the record that resolution created, or a new one) |
| exists | no | automatic | none | NEW_RECORD (a new SMSID; the conflict is recorded as resolved `new`) |
| exists | no | manual | none / `pending` | HOLD (Status 1, no SMSID; the conflict waits for the admin) |

The Entra token a registration carries on `ccm_system_tokenauth` (`entra`, seed 001 "Client registration" 2-3:
a fresh Entra token registers the client, before any CCM token): the transport validated it against the site's
copy of Entra's keys and reports its verdict; only `valid` registers (kind aad, approval 3, owner = its device).
The MP's transport applies this table (`entra_refusal`) before it reads the message, answering a refused verdict
with 401 (ClientAuth.log) as it does a bad CCM token; `admit` applies it again:

| `entra` | decision |
|---|---|
| None (no Entra token: a CCM token, a certificate, Windows, anonymous) | as here |
| `valid` (an Entra key's RS256, its tenant's issuer, audience = AADRESOURCEURI, not expired) | kind aad, as here |
| `forged` (unknown key, bad signature, alg none or any alg but RS256), `malformed` | REFUSE |
| `expired` | REFUSE |
| `wrong-audience` (not the site's resource URI / server app), `wrong-issuer` | REFUSE |
| `other-tenant` (a tenant not onboarded to the site) | REFUSE |
| `no-device` (a valid token that names no Entra device: a user token without `deviceid`) | REFUSE |
| `unavailable` (Entra's keys could not be read) | REFUSE |

"Same owner" (`same_owner`): the request is signed with the record's registered key, or comes from the same
Entra device (AAD) or the same PKI client certificate. Anything else proposing a registered SMSID is a
conflicting record, never an update: the record's key, device ID, name and approval stay the owner's.

Approval earned by the kind of registration (`earned`):

| kind | approval | unique client token |
|---|---|---|
| aad | 3 (approved by Entra; an update keeps 3) | no |
| bulk, token, pki | 1 | bulk, token: yes; pki: no |
| domain | 1 if auto_approve is all or domain, else 0 | when approved |
| self-signed | 1 if auto_approve is all, else 0 | when approved |
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from cmglab.core.labconfig import AutoApprove, ConflictingRecords
from cmglab.wire.kinds import ConflictStatus, EntraVerdict, RegistrationKind

NOT_APPROVED, APPROVED, AAD_APPROVED = 0, 1, 3
KINDS = tuple(RegistrationKind)
# hierarchy setting "conflicting client records"
AUTOMATIC: Final[ConflictingRecords] = "automatic"
MANUAL: Final[ConflictingRecords] = "manual"
ENTRA_VALID, ENTRA_NO_DEVICE = EntraVerdict.VALID, EntraVerdict.NO_DEVICE
ENTRA_REFUSALS: dict[EntraVerdict, str] = {
    EntraVerdict.FORGED: "the Entra token is forged (not signed by an Entra key with RS256)",
    EntraVerdict.MALFORMED: "the Entra token is not a JWT",
    EntraVerdict.EXPIRED: "the Entra token has expired",
    EntraVerdict.WRONG_AUDIENCE: "the Entra token is not for this site's resource (AADRESOURCEURI)",
    EntraVerdict.WRONG_ISSUER: "the Entra token's issuer is not its tenant's",
    EntraVerdict.OTHER_TENANT: "the Entra token's tenant is not onboarded to this site",
    EntraVerdict.NO_DEVICE: "the Entra token names no Entra device (deviceid)",
    EntraVerdict.UNAVAILABLE: "Entra's signing keys are unavailable",
}


class Action(enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    NEW_RECORD = "new-record"
    HOLD = "hold"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Request:
    kind: RegistrationKind
    auto_approve: AutoApprove  # the site settings' all | domain | none
    existing_approval: int | None  # the proposed SMSID's record's approval; None: no such record
    same_owner: bool = False
    conflicts: ConflictingRecords = AUTOMATIC
    resolution: ConflictStatus | None = None  # this conflict's state, when it was seen before
    token_blocked: bool = False  # the bulk token the proof came from is blocked (re-read in the transaction)
    entra: EntraVerdict | None = None  # the verdict on the Entra token the request carries (None: it carries none)


@dataclass(frozen=True)
class Decision:
    action: Action
    approval: int | None = None
    client_token: bool = False  # issue a unique client token (PreAuthToken)
    reason: str = ""


def earned(kind: RegistrationKind, auto_approve: AutoApprove) -> int:
    if kind == RegistrationKind.AAD:
        return AAD_APPROVED
    if kind in (RegistrationKind.BULK, RegistrationKind.TOKEN, RegistrationKind.PKI):
        return APPROVED
    if kind == RegistrationKind.DOMAIN:
        return APPROVED if auto_approve in ("all", "domain") else NOT_APPROVED
    return APPROVED if auto_approve == "all" else NOT_APPROVED


def wants_token(kind: RegistrationKind) -> bool:
    return kind not in (RegistrationKind.AAD, RegistrationKind.PKI)


def same_owner(
    *,
    record_signing: str,
    record_aad_device: str | None,
    record_pki: str | None,
    kind: RegistrationKind,
    signing: str,
    aad_device: str | None,
    pki: str | None,
) -> bool:
    """The request comes from the record's owner: its registered key, or its Entra device / PKI identity."""
    if record_signing.upper() == signing.upper():
        return True
    if kind == RegistrationKind.AAD and aad_device and record_aad_device:
        return record_aad_device.lower() == aad_device.lower()
    if kind == RegistrationKind.PKI and pki and record_pki:
        return record_pki.upper() == pki.upper()
    return False


def _granted(action: Action, req: Request, approval: int, reason: str) -> Decision:
    return Decision(action, approval, wants_token(req.kind) and approval != NOT_APPROVED, reason)


def entra_refusal(verdict: EntraVerdict | None) -> Decision | None:
    """The Entra table alone: REFUSE for every verdict but `valid` (None: the request carries no Entra token).
    The MP's transport asks it first and answers 401 before it reads the message; `admit` asks it again."""
    if verdict is None or verdict == ENTRA_VALID:
        return None
    return Decision(Action.REFUSE, reason=ENTRA_REFUSALS.get(verdict, f"the Entra token is refused ({verdict})"))


def admit(req: Request) -> Decision:
    """The decision for one registration request (the module's table)."""
    if (refused := entra_refusal(req.entra)) is not None:
        return refused
    if req.entra == ENTRA_VALID and req.kind != RegistrationKind.AAD:
        return Decision(Action.REFUSE, reason="an Entra token registers an Entra (aad) registration only")
    if req.token_blocked:
        return Decision(Action.REFUSE, reason="the bulk registration token is blocked")
    earn = earned(req.kind, req.auto_approve)
    if req.existing_approval is None:
        return _granted(Action.CREATE, req, earn, "a new client")
    if req.same_owner:
        approval = AAD_APPROVED if req.kind == RegistrationKind.AAD else max(earn, req.existing_approval)
        return _granted(Action.UPDATE, req, approval, "the record's owner")
    if req.resolution is ConflictStatus.BLOCK:
        return Decision(Action.REFUSE, reason="the conflicting record was blocked by the administrator")
    if req.resolution is ConflictStatus.MERGE:
        approval = AAD_APPROVED if req.kind == RegistrationKind.AAD else max(earn, req.existing_approval)
        return _granted(Action.UPDATE, req, approval, "the administrator merged the conflicting record")
    if req.resolution is ConflictStatus.NEW or req.conflicts == AUTOMATIC:
        return _granted(Action.NEW_RECORD, req, earn, "conflicting record: a new record")
    return Decision(Action.HOLD, reason="conflicting record: held for manual resolution")
