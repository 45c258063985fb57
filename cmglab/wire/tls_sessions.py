"""A client's TLS session cache, as Windows' Schannel keeps one (issue 20).

Schannel resumes a TLS session with a server it spoke to before: its client-side cache keeps a session per target
name and client credential for `ClientCacheTime` (10 hours by default), so a device's second connection to a host
costs both ends an abbreviated handshake (no certificate chain sent, signed or verified again) instead of a full
one. This is that cache for the lab's clients, in memory, used through the ssl module's public `session=` API:

- an entry is keyed on (the name the handshake verified, the port, the client certificate the client context holds
  or None): a session is offered only to the name it was verified for, with the credential it was made with, and
  only on the same `ssl.SSLContext` (the same trust: a context built on another Root store never gets it);
- a session is kept only by `keep`, which the caller calls once the connection's handshake verified the server
  (a context with CERT_REQUIRED and check_hostname; never one that verifies nothing) and whatever it checks on top
  (the agent's revocation check) passed, after a reply was read: TLS 1.3 tickets arrive after the handshake;
- an entry expires `lifetime` (10 h, Schannel's default) after the full handshake that authenticated the server:
  a resumed connection's session (TLS 1.3 issues it a new ticket) keeps that deadline, so resuming never extends
  how long one verification is trusted (RFC 8446 4.6.1); nor past the server certificate's notAfter, which a full
  handshake would refuse from then on. The server's own lifetime for a session is not visible
  here (`SSLSession.timeout` is the client's own OpenSSL default, 2 h, whatever the server said) and needs no
  copy: a server refuses a session past its own lifetime (a full handshake, whose session is kept afresh). The
  cache holds at most `max_entries` (least recently used goes first);
- an offered session the server refused, or a connection that failed with it, is forgotten (`forget`): the next
  connection makes a full handshake, as Schannel purges an entry a handshake failed with.

A resumed connection still verifies nothing of the server's certificate again (TLS resumes the first handshake's
authentication); whatever the caller checks per connection (revocation) it checks on the session's certificate.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

CLIENT_CACHE_TIME = 10 * 3600.0  # Schannel's ClientCacheTime default (36,000,000 ms)
MAX_ENTRIES = 64  # per cache: one client (a device) talks to a handful of hosts
SessionKey = tuple[str, int, str | None]  # the verified name (lower case), the port, the client credential


@dataclass(frozen=True, slots=True)
class _Entry:
    ctx: ssl.SSLContext
    session: ssl.SSLSession
    expires: float  # the full handshake's time + lifetime: no resumption extends it


def verifies_server(ctx: ssl.SSLContext) -> bool:
    """Whether a handshake on CTX authenticates the server by its name (only such a session is worth keeping)."""
    return ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def resumable(tls: ssl.SSLSocket | ssl.SSLObject) -> ssl.SSLSession | None:
    """The connection's session if another connection can resume it: TLS 1.3 only with a ticket (it comes after
    the handshake, read with the first reply), TLS 1.2 with a ticket or a session ID."""
    session = tls.session
    if session is None:
        return None
    if session.has_ticket:
        return session
    return session if tls.version() == "TLSv1.2" and session.id else None


class SessionCache:
    """Sessions per (verified name, port, client credential); thread-safe."""

    def __init__(
        self,
        *,
        lifetime: float = CLIENT_CACHE_TIME,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.lifetime, self.max_entries, self.clock, self.wall = lifetime, max_entries, clock, wall
        self._entries: OrderedDict[SessionKey, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(name: str, port: int, credential: str | None) -> SessionKey:
        return name.lower(), port, credential

    def offer(self, ctx: ssl.SSLContext, key: SessionKey) -> ssl.SSLSession | None:
        """The session to offer on a new connection to KEY's name and port with CTX, or None (a full handshake)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires <= self.clock() or entry.ctx is not ctx:
                del self._entries[key]  # expired, or made on another context (another trust or credential)
                return None
            self._entries.move_to_end(key)
            return entry.session

    def keep(self, ctx: ssl.SSLContext, key: SessionKey, tls: ssl.SSLSocket | ssl.SSLObject) -> bool:
        """Keep TLS's session for KEY: call only once its handshake verified the server as KEY names it and every
        check of the connection passed. Whether it was kept (never from a context that verifies nothing)."""
        if not verifies_server(ctx) or tls.context is not ctx:
            return False
        session = resumable(tls)
        if session is None:
            return False
        with self._lock:
            if tls.session_reused:  # authenticated by the full handshake its entry was kept from
                origin = self._entries.get(key)
                if origin is None or origin.ctx is not ctx:
                    return False  # forgotten or evicted meanwhile: when that handshake was is unknown
                expires = origin.expires
            else:
                expires = self.clock() + min(self.lifetime, self._validity_left(tls))
            self._entries[key] = _Entry(ctx, session, expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return True

    def _validity_left(self, tls: ssl.SSLSocket | ssl.SSLObject) -> float:
        """Seconds until the verified server certificate's notAfter (the clock is monotonic, notAfter is not)."""
        not_after = (tls.getpeercert() or {}).get("notAfter")
        return ssl.cert_time_to_seconds(str(not_after)) - self.wall() if not_after else 0.0

    def forget(self, key: SessionKey) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
