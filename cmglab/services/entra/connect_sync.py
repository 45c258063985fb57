"""A simulated Microsoft Entra Connect: the sync cycle that takes domain-joined computers with a
userCertificate from the lab's AD (core/ad.py) into Entra as hybrid device objects (seed 002, hybrid
join: "Entra Connect synchronises the computer object ... the device object is created in Entra").

A computer becomes a device with deviceId = its objectGUID, its SID (`onprem_sid`), trust type ServerAd and
its certificate; a new certificate replaces the synced one (a computer that made a new key). Computers
without a userCertificate are out of scope, as with the real default sync rule. The cycle runs every
`CMGLAB_ENTRA_SYNC_INTERVAL` seconds (default 30 minutes, Entra Connect's default; 0: only on demand,
`cmglab entra sync` / `POST /_lab/sync`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from cmglab.core.ad import ADError, LabDirectory
from cmglab.services.entra import store as st

log = logging.getLogger("cmglab.entra")


@dataclass
class SyncResult:
    added: list[str] = field(default_factory=list)  # device IDs
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)  # computers without a usable userCertificate

    def view(self) -> dict[str, Any]:
        return {"added": self.added, "updated": self.updated, "unchanged": self.unchanged, "skipped": self.skipped}


class ConnectSync:
    def __init__(self, store: st.Store, ad_file: Path) -> None:
        self.store, self.ad_file = store, ad_file

    def run(self) -> SyncResult:
        result = SyncResult()
        try:
            directory = LabDirectory(self.ad_file, self.store.config)
            tenant_id = directory.scp().get("azureADId") or self.store.config.primary_tenant.tenant_id
            computers = directory.computers()
        except (ADError, OSError, ValueError) as e:
            log.warning("Entra Connect sync: the directory cannot be read: %s", e)
            raise
        with self.store.session() as s:
            for c in computers:
                certs = c.get("userCertificate") or []
                try:
                    der = base64.b64decode(certs[-1], validate=True) if certs else b""
                    x509.load_der_x509_certificate(der)
                except ValueError:
                    result.skipped.append(c["sAMAccountName"])
                    continue
                device_id = str(c["objectGUID"]).lower()
                device = st.device_by_id(s, device_id)
                if device is None:
                    s.add(
                        st.Device(
                            object_id=st.new_guid(),
                            device_id=device_id,
                            tenant_id=tenant_id,
                            display_name=c["sAMAccountName"].rstrip("$"),
                            trust_type="ServerAd",
                            join_type=None,
                            onprem_sid=c["objectSid"],
                            user_certificate=der,
                        )
                    )
                    result.added.append(device_id)
                elif device.user_certificate != der or device.onprem_sid != c["objectSid"]:
                    device.user_certificate, device.onprem_sid = der, c["objectSid"]
                    result.updated.append(device_id)
                else:
                    result.unchanged += 1
        log.info(
            "Entra Connect sync: %d added, %d updated, %d unchanged, %d without userCertificate",
            len(result.added),
            len(result.updated),
            result.unchanged,
            len(result.skipped),
        )
        return result

    async def every(self, interval: float) -> None:
        """The scheduler's cycle while the service runs."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.run)
            except Exception as e:  # a failed cycle waits for the next one, as the real scheduler does
                log.warning("Entra Connect sync cycle failed: %s", e)
