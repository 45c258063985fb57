"""The rows a policy assignment request reads, its signer's and the site's policies, kept while nothing was committed
to the MP's SQLite file (issue 20). A running client asks for its assignments again and again with nothing changed in
between; `PRAGMA data_version` (settings_watch.py, on the settings watch's own connection) says in a few microseconds
whether any other connection, in this process or another, committed anything since the rows were read, where a
pooled connection, two SELECTs and a commit took ~30 us. Any commit (a registration, a token's row, an approval, a
client's policy request time, a changed policy) drops every row kept: the next request reads again, so a request is
answered from rows as current as a read of its own would be. A client not found is never kept (a registration
commits, and is seen by the next request anyway).

Bounded: at most MAX_CLIENTS signers and MAX_CHARS characters of their certificates and names (the oldest kept goes
first). PostgreSQL has no such counter: each request reads its signer and the policies in one unit, as before."""

from __future__ import annotations

import threading

from cmglab.services.management_point.store import Store
from cmglab.services.management_point.units import PolicyRow, Signer

MAX_CLIENTS = 4096
MAX_CHARS = 16 * 1024 * 1024


def _chars(signer: Signer) -> int:
    return len(signer.signing_cert) + len(signer.netbios_name) + len(signer.fqdn)


class Kept:
    """The rows of one data version of the file (None: not kept beyond the request, PostgreSQL)."""

    def __init__(self, store: Store, version: int | None) -> None:
        self.store, self.version = store, version
        self._signers: dict[str, Signer] = {}
        self._chars = 0
        self._policies: tuple[PolicyRow, ...] | None = None
        self._lock = threading.Lock()

    def signer(self, sms_id: str) -> Signer | None:
        """The registered client SMS_ID (upper case), or None; the policies are read in the same unit when they are
        not kept yet."""
        kept = self._signers.get(sms_id)
        if kept is not None:
            return kept
        with self.store.unit() as unit:
            signer = unit.signer(sms_id)
            policies = unit.policies() if self._policies is None else None
        with self._lock:
            if policies is not None:
                self._policies = policies
            if signer is not None and sms_id not in self._signers:
                self._keep(sms_id, signer)
        return signer

    def _keep(self, sms_id: str, signer: Signer) -> None:
        size = _chars(signer)
        if size > MAX_CHARS:
            return
        while self._signers and (len(self._signers) >= MAX_CLIENTS or self._chars + size > MAX_CHARS):
            oldest = next(iter(self._signers))
            self._chars -= _chars(self._signers.pop(oldest))
        self._signers[sms_id] = signer
        self._chars += size

    def policies(self) -> tuple[PolicyRow, ...]:
        """Every policy as stored, by category (units.SiteUnit.policies)."""
        policies = self._policies
        if policies is None:
            with self.store.unit() as unit:
                policies = unit.policies()
            self._policies = policies
        return policies

    def __len__(self) -> int:
        return len(self._signers)

    def __contains__(self, sms_id: object) -> bool:
        return sms_id in self._signers

    @property
    def chars(self) -> int:
        return self._chars


class AssignmentReads:
    """The rows kept for the file's current data version (`now`), replaced when any other connection commits."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._kept: Kept | None = None

    def now(self) -> Kept:
        """The rows as current as a read now: those kept when nothing was committed since they were read, else an
        empty set for this version (filled by the requests that read it)."""
        version = self.store.data_version()  # before any read: a commit after this makes the next call read again
        kept = self._kept
        if version is None:
            return Kept(self.store, None)
        if kept is None or kept.version != version:
            kept = self._kept = Kept(self.store, version)
        return kept
