"""The MP's shared state for the logic modules: lab, store, logs and the site signer."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from cryptography import x509

from cmglab.runtime.lab import Lab
from cmglab.services.management_point.mplogs import MPLogs
from cmglab.services.management_point.store import Store
from cmglab.wire.site_tokens import SiteSigner


@dataclass
class MP:
    lab: Lab
    store: Store
    logs: MPLogs
    signer: SiteSigner = field(init=False)

    def __post_init__(self) -> None:
        self.signer = self.lab.site_signer()

    @property
    def site_code(self) -> str:
        return self.lab.config.site.code

    @property
    def fqdn(self) -> str:
        return self.lab.config.hosts.management_point

    @cached_property
    def server_cert(self) -> x509.Certificate:
        return self.lab.pki.server("management-point").cert()

    @cached_property
    def connection_point_cert(self) -> x509.Certificate:
        return self.lab.pki.connection_point.cert()

    def site_cert(self) -> x509.Certificate:
        return self.signer.cert
