"""The CMG's connector listener (default port 10140, TLS client certificate required): connection
points open their channel here (cmglab/wire/cmg_channel.py). Only registered connection points
get in: a certificate from the lab issuing CA, with the clientAuth EKU, whose subject CN is the
lab's connection point name (or listed in CMGLAB_CMG_CONNECTION_POINTS by CN or thumbprint).
Besides them only the lab admin's certificate (its /_lab calls) keeps a connection: any other
certificate the TLS accepts (a device's PKI one) is dropped as its handshake completes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fastapi import FastAPI, WebSocket

from cmglab.runtime.admin import install_lab_admin
from cmglab.runtime.certinfo import client_cert, parsed, subject, thumbprint
from cmglab.runtime.lab import Lab
from cmglab.services.cmg.channel import Hub, PointChannel
from cmglab.wire.cmg_channel import PATH, VERSION, FrameError, Hello, Kind, decode, encode

HELLO_TIMEOUT = 10.0
# the connector's own connection budget (runtime.server Listener.reserved): a site's few connection points and
# the admin's /_lab calls, never crowded out by clients holding the client listener's connections; a connection
# still in its TLS handshake is dropped for a newcomer, so only completed mutual-TLS handshakes hold these slots
RESERVED_CONNECTIONS = 64
# a connector connection must send its request (the channel's WebSocket upgrade: a connection point sends it at once)
# within this, and may idle no longer between requests: only connection points and the lab admin keep a connection
# past the handshake (ConnectorAdmission), and even theirs, silent, must not hold the slots for long
CONNECTOR_HEAD_DEADLINE = 10.0
# a certificate refused at the handshake is logged once in this many seconds, with how many more were meanwhile:
# an attacker reconnecting in a loop does not write a line per attempt
REFUSAL_LOG_EVERY = 10.0
_REFUSALS_KEPT = 1024  # certificates whose last refusal line is remembered (more: forgotten, logged again)
_VERDICTS_KEPT = 256  # certificates whose admission verdict is remembered (a signature check each otherwise)


class Registry:
    """The connection points registered with this CMG."""

    def __init__(self, lab: Lab, extra: set[str]) -> None:
        self.names = {lab.config.hosts.cmg_connection_point.lower(), *extra}
        self.issuing_ca = lab.pki.issuing_ca.cert()

    def refuse(self, cert: x509.Certificate | None) -> str | None:
        """Why this certificate may not open a channel (None: it may)."""
        if cert is None:
            return "no client certificate"
        try:
            cert.verify_directly_issued_by(self.issuing_ca)
        except Exception:
            return f"certificate {subject(cert)} is not issued by the lab issuing CA"
        try:
            ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return f"certificate {subject(cert)} has no EKU extension"
        if ExtendedKeyUsageOID.CLIENT_AUTH not in ekus:
            return f"certificate {subject(cert)} has no client authentication EKU"
        cns = [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if not any(cn in self.names for cn in cns) and thumbprint(cert).lower() not in self.names:
            return (
                f"certificate {subject(cert)} ({thumbprint(cert)}) is not a registered connection point "
                f"(registered: {', '.join(sorted(self.names))})"
            )
        return None


class AdminCertificate:
    """The lab admin's certificate as its file (pki/cmglab-lab-admin) holds it now: re-issued while the CMG runs,
    the new one is admitted and the one before is not, with no restart. One stat per look; the file is read again
    only when it changed (inode, size or modification time) or changed just now."""

    RACY_NS = 2_000_000_000

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._thumbprint: str | None = None

    def thumbprint(self) -> str | None:
        """The current certificate's thumbprint (lower-case); None while there is none (or it is being written)."""
        try:
            st = self.path.stat()
        except OSError:
            self._seen, self._thumbprint = None, None
            return None
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        # a file changed within RACY_NS of our look may change again within the file system's timestamp
        # granularity (same size, same mtime): read it again until its change is older than that (as git does)
        if seen != self._seen or time.time_ns() - st.st_mtime_ns < self.RACY_NS:
            try:
                tp: str | None = thumbprint(x509.load_pem_x509_certificate(self.path.read_bytes())).lower()
            except (OSError, ValueError):  # caught mid-write: no admin until the file is whole (its size changes)
                tp = None
            self._seen, self._thumbprint = seen, tp
        return self._thumbprint


class ConnectorAdmission:
    """Who keeps a connector connection, decided as its TLS handshake completes (runtime/tls.py AdmitAtHandshake):
    a registered connection point, or the lab admin (the /_lab calls; the certificate its file holds now, by
    thumbprint). The TLS takes any lab-CA client certificate (a device's PKI one too): such a peer once held a
    connector slot for up to the head deadline per connection and could reconnect in a loop. Refused here, it is
    dropped at once, never counted among the connector's connections, and logged in CMGService.log.

    This runs on the event loop: the registry's verdict on a certificate (a signature verification) is kept for the
    latest _VERDICTS_KEPT certificates, by their exact DER (it depends on nothing else: the issuing CA and the
    registered names are fixed while the CMG runs), so a peer reconnecting in a loop costs one verification."""

    def __init__(self, registry: Registry, admin: AdminCertificate | None, log: logging.Logger) -> None:
        self.registry, self.admin, self.log = registry, admin, log
        self._logged: dict[str, tuple[float, int]] = {}  # thumbprint: when last logged, refusals since
        self._verdicts: OrderedDict[bytes, str | None] = OrderedDict()  # DER: the registry's refusal (None: admitted)

    @classmethod
    def of(cls, lab: Lab, registry: Registry, log: logging.Logger) -> ConnectorAdmission:
        return cls(registry, AdminCertificate(lab.pki.lab_admin.cert_path), log)

    def __call__(self, der: bytes | None, peer: str) -> bool:
        cert = parsed(der) if der else None
        if cert is not None and self.admin is not None and thumbprint(cert).lower() == self.admin.thumbprint():
            return True
        problem = self._verdict(der, cert)
        if problem is None:
            return True
        self._refused(thumbprint(cert) if cert is not None else "", peer, problem)
        return False

    def _verdict(self, der: bytes | None, cert: x509.Certificate | None) -> str | None:
        if der is None:
            return self.registry.refuse(cert)
        if der in self._verdicts:
            self._verdicts.move_to_end(der)
            return self._verdicts[der]
        problem = self._verdicts[der] = self.registry.refuse(cert)
        if len(self._verdicts) > _VERDICTS_KEPT:
            self._verdicts.popitem(last=False)
        return problem

    def _refused(self, key: str, peer: str, problem: str) -> None:
        now = time.monotonic()
        last, since = self._logged.get(key, (-REFUSAL_LOG_EVERY, 0))
        if now - last < REFUSAL_LOG_EVERY:
            self._logged[key] = (last, since + 1)
            return
        if len(self._logged) >= _REFUSALS_KEPT:
            self._logged.clear()
        self._logged[key] = (now, 0)
        more = f" ({since} more refused since the last such line)" if since else ""
        self.log.warning(
            f"Rejected connection from {peer} at the connector's TLS handshake: {problem}; only registered "
            f"connection points and the lab admin may connect{more}"
        )


def create_connector_app(lab: Lab, hub: Hub, registry: Registry, log: logging.Logger) -> FastAPI:
    app = FastAPI(title="cmglab CMG connector", docs_url=None, redoc_url=None, openapi_url=None)
    # the lab admin's certificate reaches /_lab (ConnectorAdmission), which wants the admin token as well
    install_lab_admin(app, service="cmg-connector", lab=lab, health=hub.snapshot, private=True)

    @app.websocket(PATH)
    async def channel(ws: WebSocket) -> None:
        cert = client_cert(ws)
        peer = f"{ws.client.host}:{ws.client.port}" if ws.client else "?"
        problem = registry.refuse(cert)
        if problem is not None or cert is None:
            log.warning(f"Rejected connection point channel from {peer}: {problem}")
            await ws.close(code=1008, reason="not a registered connection point")
            return
        await ws.accept()
        try:
            frame = decode(await asyncio.wait_for(ws.receive_bytes(), HELLO_TIMEOUT))
            if frame.kind != Kind.HELLO:
                raise FrameError(f"expected HELLO, got {frame.kind.name}")
            info = frame.json()
            hello = Hello(str(info["connection_point"]), str(info.get("instance", "")), int(info.get("version", 1)))
        except Exception as e:
            log.warning(f"Connection point channel from {peer} ({subject(cert)}) closed: bad opening: {e}")
            await ws.close(code=1002, reason="HELLO expected")
            return
        point = PointChannel(
            ws,
            hello.connection_point,
            subject(cert),
            thumbprint(cert),
            instance=hello.instance,
            version=min(hello.version, VERSION),
        )
        await ws.send_bytes(encode(Kind.WELCOME, payload={"channel": point.id, "version": VERSION}))
        await hub.serve(point)

    return app
