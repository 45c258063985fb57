"""The MP's parts (what its routes and logic modules use), built once per process from the lab: the
store, the logs, the site signer, Windows authentication and the site's copy of Entra's signing keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from cryptography import x509

from cmglab.runtime.lab import Lab
from cmglab.services.management_point.assignment_reads import AssignmentReads
from cmglab.services.management_point.entra_known import KnownEntraTokens
from cmglab.services.management_point.mplogs import MPLogs
from cmglab.services.management_point.policy_defaults import default_policies
from cmglab.services.management_point.signed_payloads import VerifiedPayloads
from cmglab.services.management_point.store import Store
from cmglab.services.management_point.windowsauth import WindowsAuth
from cmglab.wire.entra_tokens import EntraKeys
from cmglab.wire.site_tokens import SiteSigner, VerifiedTokens


@dataclass
class Parts:
    lab: Lab
    store: Store
    logs: MPLogs
    signer: SiteSigner = field(init=False)

    def __post_init__(self) -> None:
        self.signer = self.lab.site_signer()

    @classmethod
    def from_lab(cls, lab: Lab) -> Parts:
        return cls(lab, Store(lab, policy_factory=default_policies), MPLogs.open(lab))

    @property
    def site_code(self) -> str:
        return self.lab.config.site.code

    @property
    def fqdn(self) -> str:
        return self.lab.config.hosts.management_point

    @cached_property
    def ccm_tokens(self) -> VerifiedTokens:
        """CCM tokens verified once, then known by their text (what every tokenauth request carries)."""
        return VerifiedTokens(self.signer.cert, self.signer.hierarchy_id)

    @cached_property
    def assignment_reads(self) -> AssignmentReads:
        """A policy assignment request's rows, kept while nothing is committed to the site's SQLite file."""
        return AssignmentReads(self.store)

    @cached_property
    def verified_payloads(self) -> VerifiedPayloads:
        """PayloadSignatures verified before, by registered certificate (what a client signs the same each cycle)."""
        return VerifiedPayloads()

    @cached_property
    def entra_known(self) -> KnownEntraTokens:
        """Entra tokens accepted under the site's rule, known by their text while the rule is the same."""
        return KnownEntraTokens()

    @cached_property
    def server_cert(self) -> x509.Certificate:
        return self.lab.pki.server("management-point").cert()

    @cached_property
    def connection_point_cert(self) -> x509.Certificate:
        return self.lab.pki.connection_point.cert()

    @cached_property
    def windows(self) -> WindowsAuth:
        return WindowsAuth(self.lab)

    @cached_property
    def entra_keys(self) -> EntraKeys:
        """The site's synchronised copy of Entra's signing keys: the MP has no route to Entra (internal network)."""
        return EntraKeys.from_certificates([self.lab.pki.entra_signing.cert()])

    def site_cert(self) -> x509.Certificate:
        return self.signer.cert
