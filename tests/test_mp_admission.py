"""The registration admission rule (cmglab/services/management_point/admission.py), row by row against the
tables in its docstring: pure, no database, no network."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from cmglab.core.labconfig import AutoApprove, ConflictingRecords
from cmglab.services.management_point import admission
from cmglab.services.management_point.admission import (
    AAD_APPROVED,
    APPROVED,
    AUTOMATIC,
    KINDS,
    MANUAL,
    NOT_APPROVED,
    Action,
    Request,
    admit,
    earned,
    entra_refusal,
    same_owner,
)
from cmglab.services.management_point.routes_lab import Resolution
from cmglab.wire.kinds import RESOLUTIONS, ConflictStatus, EntraVerdict, RegistrationKind

# the decision table: (existing approval, same owner, conflicts, resolution, token blocked) -> action
DECISIONS = [
    (None, False, AUTOMATIC, None, True, Action.REFUSE),
    (APPROVED, True, MANUAL, None, True, Action.REFUSE),
    (None, False, AUTOMATIC, None, False, Action.CREATE),
    (None, False, MANUAL, None, False, Action.CREATE),
    (APPROVED, True, AUTOMATIC, None, False, Action.UPDATE),
    (APPROVED, True, MANUAL, ConflictStatus.BLOCK, False, Action.UPDATE),  # the owner itself is never a conflict
    (APPROVED, False, AUTOMATIC, ConflictStatus.BLOCK, False, Action.REFUSE),
    (APPROVED, False, MANUAL, ConflictStatus.BLOCK, False, Action.REFUSE),
    (APPROVED, False, MANUAL, ConflictStatus.MERGE, False, Action.UPDATE),
    (APPROVED, False, AUTOMATIC, ConflictStatus.MERGE, False, Action.UPDATE),
    (APPROVED, False, MANUAL, ConflictStatus.NEW, False, Action.NEW_RECORD),
    (APPROVED, False, AUTOMATIC, ConflictStatus.NEW, False, Action.NEW_RECORD),
    (APPROVED, False, AUTOMATIC, None, False, Action.NEW_RECORD),
    (NOT_APPROVED, False, AUTOMATIC, None, False, Action.NEW_RECORD),
    (APPROVED, False, MANUAL, None, False, Action.HOLD),
    (APPROVED, False, MANUAL, ConflictStatus.PENDING, False, Action.HOLD),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("existing,owner,conflicts,resolution,blocked,action", DECISIONS)
def test_decision_table(
    kind: RegistrationKind,
    existing: int | None,
    owner: bool,
    conflicts: ConflictingRecords,
    resolution: ConflictStatus | None,
    blocked: bool,
    action: Action,
) -> None:
    decision = admit(
        Request(
            kind=kind,
            auto_approve="all",
            existing_approval=existing,
            same_owner=owner,
            conflicts=conflicts,
            resolution=resolution,
            token_blocked=blocked,
        )
    )
    assert decision.action is action
    if action in (Action.REFUSE, Action.HOLD):
        assert decision.approval is None and not decision.client_token and decision.reason


# the approval table: kind, auto_approve -> approval earned, unique client token (when approved)
APPROVALS = [
    (RegistrationKind.AAD, "none", AAD_APPROVED, False),
    (RegistrationKind.BULK, "none", APPROVED, True),
    (RegistrationKind.TOKEN, "none", APPROVED, True),
    (RegistrationKind.PKI, "none", APPROVED, False),
    (RegistrationKind.DOMAIN, "domain", APPROVED, True),
    (RegistrationKind.DOMAIN, "all", APPROVED, True),
    (RegistrationKind.DOMAIN, "none", NOT_APPROVED, False),
    (RegistrationKind.SELF_SIGNED, "all", APPROVED, True),
    (RegistrationKind.SELF_SIGNED, "domain", NOT_APPROVED, False),
    (RegistrationKind.SELF_SIGNED, "none", NOT_APPROVED, False),
]


@pytest.mark.parametrize("kind,auto,approval,token", APPROVALS)
def test_approval_table(kind: RegistrationKind, auto: AutoApprove, approval: int, token: bool) -> None:
    assert earned(kind, auto) == approval
    created = admit(Request(kind=kind, auto_approve=auto, existing_approval=None))
    assert (created.action, created.approval, created.client_token) == (Action.CREATE, approval, token)
    # a conflicting record starts from what its own kind earns, never the registered record's approval
    new = admit(Request(kind=kind, auto_approve=auto, existing_approval=APPROVED, same_owner=False))
    assert (new.action, new.approval) == (Action.NEW_RECORD, approval)


def test_an_update_keeps_the_higher_approval() -> None:
    assert admit(Request(RegistrationKind.SELF_SIGNED, "none", APPROVED, same_owner=True)).approval == APPROVED
    assert admit(Request(RegistrationKind.DOMAIN, "all", NOT_APPROVED, same_owner=True)).approval == APPROVED
    assert admit(Request(RegistrationKind.AAD, "none", APPROVED, same_owner=True)).approval == AAD_APPROVED


@pytest.mark.parametrize(
    "kind,record,request_,owner",
    [
        (RegistrationKind.BULK, ("AA", None, None), ("aa", None, None), True),  # the registered key, any case
        (
            RegistrationKind.BULK,
            ("AA", "dev", "PKI"),
            ("BB", "dev", "PKI"),
            False,
        ),  # another key: device/PKI only count for their kind
        (RegistrationKind.AAD, ("AA", "dev-1", None), ("BB", "DEV-1", None), True),
        (RegistrationKind.AAD, ("AA", "dev-1", None), ("BB", "dev-2", None), False),
        (
            RegistrationKind.AAD,
            ("AA", None, None),
            ("BB", "dev-1", None),
            False,
        ),  # a record with no device is not this device's
        (RegistrationKind.PKI, ("AA", None, "P1"), ("BB", None, "p1"), True),
        (RegistrationKind.PKI, ("AA", None, "P1"), ("BB", None, "P2"), False),
        (RegistrationKind.PKI, ("AA", None, None), ("BB", None, "P2"), False),
        (RegistrationKind.SELF_SIGNED, ("AA", None, None), ("BB", None, None), False),
    ],
)
def test_same_owner(
    kind: RegistrationKind,
    record: tuple[str, str | None, str | None],
    request_: tuple[str, str | None, str | None],
    owner: bool,
) -> None:
    assert (
        same_owner(
            record_signing=record[0],
            record_aad_device=record[1],
            record_pki=record[2],
            kind=kind,
            signing=request_[0],
            aad_device=request_[1],
            pki=request_[2],
        )
        is owner
    )


# the Entra table (issue 17): the verdict on the Entra token a registration carries -> its decision, whatever the
# proposed SMSID's record (none, the device's own, another device's)
ENTRA_VERDICTS = [
    (EntraVerdict.VALID, None),
    (EntraVerdict.FORGED, Action.REFUSE),  # unknown key, bad signature, alg none
    (EntraVerdict.MALFORMED, Action.REFUSE),
    (EntraVerdict.EXPIRED, Action.REFUSE),
    (EntraVerdict.WRONG_AUDIENCE, Action.REFUSE),
    (EntraVerdict.WRONG_ISSUER, Action.REFUSE),
    (EntraVerdict.OTHER_TENANT, Action.REFUSE),
    (EntraVerdict.NO_DEVICE, Action.REFUSE),
    (EntraVerdict.UNAVAILABLE, Action.REFUSE),
]


@pytest.mark.parametrize("verdict,refused", ENTRA_VERDICTS)
@pytest.mark.parametrize(
    "existing,owner,action",
    [(None, False, Action.CREATE), (APPROVED, True, Action.UPDATE), (APPROVED, False, Action.NEW_RECORD)],
)
def test_entra_table(
    verdict: EntraVerdict, refused: Action | None, existing: int | None, owner: bool, action: Action
) -> None:
    decision = admit(
        Request(
            RegistrationKind.AAD,
            "none",
            existing_approval=existing,
            same_owner=owner,
            conflicts=AUTOMATIC,
            entra=verdict,
        )
    )
    if refused is not None:
        assert decision.action is refused and decision.approval is None and decision.reason
        assert not decision.client_token
    else:  # a valid Entra token: approval 3, no unique token, and another device's record is never taken over
        assert (decision.action, decision.approval, decision.client_token) == (action, AAD_APPROVED, False)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != RegistrationKind.AAD])
def test_an_entra_token_registers_only_as_aad(kind: RegistrationKind) -> None:
    assert admit(Request(kind, "all", None, entra=EntraVerdict.VALID)).action is Action.REFUSE


def test_an_entra_device_owns_only_its_own_record() -> None:
    """Device A's Entra token proposing device B's SMSID: not the owner (another key, another device)."""

    def owner(record_device: str, device: str) -> bool:
        return same_owner(
            record_signing="BB",
            record_aad_device=record_device,
            record_pki=None,
            kind=RegistrationKind.AAD,
            signing="AA",
            aad_device=device,
            pki=None,
        )

    assert not owner("dev-b", "dev-a")
    assert owner("dev-a", "DEV-A")


@pytest.mark.parametrize("verdict,refused", ENTRA_VERDICTS)
def test_the_transport_asks_the_same_entra_table(verdict: EntraVerdict, refused: Action | None) -> None:
    decision = entra_refusal(verdict)
    assert (decision.action if decision else None) is refused
    assert entra_refusal(None) is None


def docstring_tables() -> list[list[list[str]]]:
    """The markdown tables of admission.py's docstring, each a list of rows of cells (header rows left out)."""
    tables: list[list[list[str]]] = []
    rows: list[list[str]] = []
    for line in [*(admission.__doc__ or "").splitlines(), ""]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
        elif rows:
            tables.append(rows[2:])  # the header and its |---| line
            rows = []
    return tables


def named_verdicts(cell: str) -> list[str]:
    """The verdicts an Entra table cell names: its `quoted` words outside parentheses."""
    return re.findall(r"`([\w-]+)`", re.sub(r"\([^)]*\)", "", cell))


def test_the_tables_above_are_the_docstrings() -> None:
    """The tables this module checks are the docstring's: the same decisions, the same Entra verdicts, the same
    conflict resolutions."""
    decisions, entra, approvals = docstring_tables()
    named = {row[-1].split(" ", 1)[0] for row in decisions}
    assert named == {a.name for a in Action} == {action.name for *_, action in DECISIONS}
    resolutions = {r.strip("`") for row in decisions for r in row[3].split(" / ") if r.startswith("`")}
    assert resolutions == set(ConflictStatus) == {r for *_, r, _, _ in DECISIONS if r is not None}
    assert {v for row in entra for v in named_verdicts(row[0])} == {v for v, _ in ENTRA_VERDICTS} == set(EntraVerdict)
    refused = {v for row in entra if row[1] == "REFUSE" for v in named_verdicts(row[0])}
    assert refused == {v for v, r in ENTRA_VERDICTS if r is Action.REFUSE}
    assert {k for row in approvals for k in row[0].split(", ")} == {str(k) for k in RegistrationKind}


@pytest.mark.parametrize("action", [*RESOLUTIONS, ConflictStatus.PENDING, "takeover"])
def test_the_admin_resolves_a_conflict_to_new_merge_or_block_only(action: str) -> None:
    if action in RESOLUTIONS:
        assert Resolution(action=action).action is ConflictStatus(action)  # type: ignore[arg-type]
    else:
        with pytest.raises(ValidationError):
            Resolution(action=action)  # type: ignore[arg-type]
