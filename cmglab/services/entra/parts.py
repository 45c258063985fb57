"""The Entra emulator's parts (what its routes use), built once per process from the lab, and the
request-derived URLs."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from cmglab.core.ad import ad_path
from cmglab.runtime.lab import Lab
from cmglab.runtime.offload import Offload, awake_for_cpus
from cmglab.services.entra.connect_sync import ConnectSync
from cmglab.services.entra.device_code import DeviceCodes
from cmglab.services.entra.directory import Directory
from cmglab.services.entra.drs import DeviceCA
from cmglab.services.entra.federation import FederationService
from cmglab.services.entra.grants import Grants
from cmglab.services.entra.issuance import Issuer
from cmglab.services.entra.lockout import Lockouts
from cmglab.services.entra.nonces import NonceKey
from cmglab.services.entra.registration import Registration
from cmglab.services.entra.store import Store
from cmglab.services.entra.tokens import Signer

DRS_HOST = "enterpriseregistration.windows.net"
# the hot routes' work (token grants, DRS join, the onboarding's discovery reads) off the event loop on Entra's own
# threads: a cheaper hop than Starlette's run_in_threadpool (runtime/offload.py), as many running at once as the MP's
entra_work = Offload("entra-work", awake=awake_for_cpus)
off_loop = entra_work.run


@dataclass
class Parts:
    lab: Lab
    store: Store
    signer: Signer
    grants: Grants
    device_codes: DeviceCodes
    registration: Registration
    directory: Directory
    lab_hosts: list[str]  # every name this service answers to
    login_host: str  # the canonical login host name (login.microsoftonline.com by default)
    sync: ConnectSync  # Entra Connect: the lab AD's computers -> devices
    federation: FederationService  # the lab's AD FS (WS-Trust, SAML)

    @classmethod
    def from_lab(cls, lab: Lab) -> Parts:
        store = Store(lab.database_url("entra"), lab.config, NonceKey.of_lab(lab))
        store.seed()
        signing = lab.pki.entra_signing
        signer = Signer(signing.key(), signing.cert())
        ca = DeviceCA(lab.pki.device_ca.cert(), lab.pki.device_ca.key())
        issuer = Issuer(store, signer, Lockouts(store, lab.config.smart_lockout))
        device_codes = DeviceCodes(issuer)
        grants = Grants(issuer, ca, device_codes, lab.dir / "data" / "federation")
        return cls(
            lab=lab,
            store=store,
            signer=signer,
            grants=grants,
            device_codes=device_codes,
            registration=Registration(store, signer, ca),
            directory=Directory(store),
            lab_hosts=list(lab.config.hosts.entra),
            login_host=lab.host("entra"),
            sync=ConnectSync(store, ad_path(lab.dir)),
            federation=FederationService(store, grants.federation_key, issuer.lockouts),
        )

    def drs_and_login_urls(self, request: Request) -> tuple[str, str]:
        """DRS discovery names the DRS and login hosts by their canonical names, on the port the client
        used (so the URLs are right in the embedded lab and on 443)."""
        port = request.url.port
        suffix = f":{port}" if port and port != 443 else ""
        return f"https://{DRS_HOST}{suffix}", f"https://{self.login_host}{suffix}"


def base_url(request: Request) -> str:
    """https://<the Host header>: the name and port the client used."""
    return f"https://{request.headers.get('host') or request.url.netloc}"
