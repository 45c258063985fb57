"""Entra smart lockout: wrong passwords are counted per account; at the threshold the account answers
AADSTS50053 until the lockout period ends, whatever password is presented (lab.json `smart_lockout`).

As Entra does, the same wrong password again is not counted again (the last three wrong passwords are
remembered, as short salted digests): a client retrying a stale password does not lock its user out.

A failure is recorded in a transaction of its own: the sign-in's own transaction rolls back with the
AADSTS50126 it raises. State lives in Entra's database, so every worker process sees the same count.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.orm import Session

from cmglab.core.labconfig import SmartLockout
from cmglab.services.entra import store as st
from cmglab.services.entra.errors import AADSTSError

# the account's row made if missing, by the same statement on SQLite and PostgreSQL: a write before the count is read,
# so that it is read under SQLite's write lock (PostgreSQL: the row lock of `failed`'s FOR UPDATE)
_ENSURE_ROW = text(
    "INSERT INTO lockouts (upn, failures, locked_until, recent) VALUES (:upn, 0, 0, '') ON CONFLICT (upn) DO NOTHING"
)
LOCKED = "The account is locked, you've tried to sign in too many times with an incorrect user ID or password."


class Lockouts:
    def __init__(self, store: st.Store, policy: SmartLockout) -> None:
        self.store, self.policy = store, policy

    def check(self, upn: str) -> None:
        """AADSTS50053 while the account is locked."""
        with self.store.session() as s:
            self.state(s, upn)

    @staticmethod
    def state(s: Session, upn: str) -> st.Lockout | None:
        """The account's lockout row, read in the caller's unit of work (a sign-in's own session: no extra
        session per request); AADSTS50053 while the account is locked."""
        row = s.get(st.Lockout, upn.lower())
        if row is not None and row.locked_until > st.now():
            raise AADSTSError(50053, "invalid_grant", LOCKED)
        return row

    @staticmethod
    def reset(row: st.Lockout | None) -> None:
        """A right password: the count starts again (committed with the caller's unit of work)."""
        if row is not None and (row.failures or row.recent):
            row.failures, row.recent = 0, ""

    def failed(self, upn: str, password: str) -> bool:
        """Count a wrong password; True when this one locked the account."""
        digest = hashlib.sha256(f"{upn.lower()}\0{password}".encode()).hexdigest()[:16]
        # the count is read, then written back plus one: wrong passwords sent at once (parallel connections, several
        # workers) must each read what the one before wrote, or they overwrite each other and the lockout never
        # comes; and a user's first failures at once must not collide on the row's insert (a 500)
        with self.store.session() as s:
            s.execute(_ENSURE_ROW, {"upn": upn.lower()})
            row = s.get(st.Lockout, upn.lower(), with_for_update=True)
            assert row is not None
            recent = row.recent.split()
            if digest in recent:
                return False
            row.recent = " ".join([*recent, digest][-3:])
            row.failures += 1
            if row.failures >= self.policy.threshold:
                row.failures, row.locked_until = 0, st.now() + self.policy.duration_seconds
                return True
            return False

    def succeeded(self, upn: str) -> None:
        with self.store.session() as s:
            self.reset(s.get(st.Lockout, upn.lower()))

    def unlock(self, upn: str) -> bool:
        """End a lockout and forget the count (`cmglab entra unlock`); False: nothing was recorded."""
        with self.store.session() as s:
            row = s.get(st.Lockout, upn.lower())
            if row is None:
                return False
            row.failures, row.locked_until, row.recent = 0, 0, ""
            return True
