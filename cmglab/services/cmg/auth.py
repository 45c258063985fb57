"""Who may pass the CMG: the decisions, with no HTTP in them.

- MutualAuth: a client certificate the TLS layer verified (lab CA chain, CRL when checking is on),
  issued by the lab issuing CA, with the clientAuth EKU.
- ServerAuth: `Authorization: Bearer <token>`, checked here before anything is forwarded:
  a CCM token (site signature, audience, issuer, expiry; types UDA/Device) for every route; on
  `CCM_STS` instead the proof token: an Entra token (Entra's JWKS; `entra_tokens.EntraPolicy`: tenant
  onboarded to the site, audience THAT tenant's resource URI or server app ID, as the site published them)
  or a site-signed bulk registration / client unique token; on
  `CCM_POST ccm_system_tokenauth/request` a CCM token or an Entra token (checked as for CCM_STS): the
  client registers with a fresh Entra token before it has a CCM token (seed 001, "Client registration"
  2-3). The CMG does not open the message: the MP admits an Entra token for MP_ClientRegistration only.
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, overload

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from cmglab.pki.builders import x5t
from cmglab.runtime.certinfo import subject, thumbprint
from cmglab.runtime.lab import Lab
from cmglab.services.cmg.errors import CMGError
from cmglab.wire import entra_tokens, jwt_peek, site_tokens
from cmglab.wire.cloud_config import CloudConfig
from cmglab.wire.entra_tokens import EntraKeys, EntraPolicy, EntraTokenError, TenantAudience
from cmglab.wire.kinds import AuthKind

STS_ENDPOINT = "ccm_sts"
KNOWN_CERTIFICATES = 4096  # MutualAuth identities remembered (the oldest go first)
MESSAGING_PATH = "ccm_system_tokenauth/request"  # CcmMessaging with a token (the registration's carrier)

# auth_kind values (recorded at the CMG and sent to the point)
MUTUAL = AuthKind.MUTUAL
CCM_TOKEN = AuthKind.CMG_CCM_TOKEN
ENTRA_TOKEN = AuthKind.ENTRA_TOKEN
BULK_TOKEN = AuthKind.BULK_TOKEN
CLIENT_TOKEN = AuthKind.CLIENT_TOKEN


@dataclass
class Identity:
    kind: AuthKind
    subject: str
    client_cert: str | None = None  # base64 DER, MutualAuth only
    claims: dict[str, Any] | None = None


class AuthError(CMGError):
    """A refusal of the caller's credentials (rendered like every other CMG refusal)."""


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    def __init__(self, lab: Lab, entra: EntraKeys) -> None:
        self.lab = lab
        self.entra = entra
        self.site_cert = lab.pki.site_signing.cert()
        self.site_x5t = x5t(self.site_cert)
        # every request of a ServerAuth client carries the same CCM token: verified once, then known by its text
        self.site_tokens = site_tokens.VerifiedTokens(self.site_cert, lab.config.site.hierarchy_id)
        self.issuing_ca = lab.pki.issuing_ca.cert()
        # a client sends the same certificate on every request: its identity is worked out once (the TLS layer
        # checked chain and CRL at the handshake; what is checked here depends on the certificate alone)
        self._mutual: OrderedDict[x509.Certificate, Identity] = OrderedDict()

    # -- MutualAuth ------------------------------------------------------------------------------
    def mutual(self, cert: x509.Certificate | None) -> Identity:
        if cert is None:
            return self._check_mutual(cert)  # refused
        known = self._mutual.get(cert)  # by the certificate's DER (cryptography's __eq__/__hash__)
        if known is not None:
            return known
        identity = self._check_mutual(cert)
        self._mutual[cert] = identity
        while len(self._mutual) > KNOWN_CERTIFICATES:
            self._mutual.popitem(last=False)
        return identity

    def _check_mutual(self, cert: x509.Certificate | None) -> Identity:
        if cert is None:
            raise AuthError(
                403,
                "CertificateRequired",
                "CCM_Proxy_MutualAuth needs a client authentication certificate (none presented)",
            )
        try:
            cert.verify_directly_issued_by(self.issuing_ca)
        except Exception as e:  # ValueError, TypeError, InvalidSignature
            raise AuthError(
                403,
                "CertificateNotTrusted",
                f"client certificate {subject(cert)} is not issued by the lab issuing CA: {e}",
            ) from e
        try:
            ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            ekus = None
        if ekus is None or ExtendedKeyUsageOID.CLIENT_AUTH not in ekus:
            raise AuthError(
                403, "CertificateNotClientAuth", f"client certificate {subject(cert)} has no client authentication EKU"
            )
        der = cert.public_bytes(Encoding.DER)
        return Identity(MUTUAL, f"{subject(cert)} ({thumbprint(cert)})", base64.b64encode(der).decode())

    # -- ServerAuth ------------------------------------------------------------------------------
    async def server(
        self,
        authorization: str | None,
        endpoint: str | None,
        config: CloudConfig | None,
        *,
        messaging: bool = False,
    ) -> Identity:
        """`endpoint` is the first path segment after the role ID (None: a CMG-local route); `messaging`:
        the request is `CCM_POST <role>/ccm_system_tokenauth/request`, where an Entra token may register."""
        token = _bearer(authorization)
        if token is None:
            raise AuthError(401, "TokenRequired", "CCM_Proxy_ServerAuth needs Authorization: Bearer <token>")
        sts = (endpoint or "").lower() == STS_ENDPOINT
        # a site token verified before (its exact text): the header need not be read again to know it is the site's
        known = self._site(token, (site_tokens.BULK, site_tokens.CLIENT) if sts else site_tokens.CCM_TYPES, known=True)
        if known is not None:
            return known
        try:
            header = jwt_peek.header(token)
        except jwt.PyJWTError as e:
            raise AuthError(401, "InvalidToken", f"bearer token is not a JWT: {e}") from e
        if header.get("x5t") == self.site_x5t:
            types = (site_tokens.BULK, site_tokens.CLIENT) if sts else site_tokens.CCM_TYPES
            return self._site(token, types)
        if sts or messaging:
            return await self._entra(token, config)
        return self._site(token, site_tokens.CCM_TYPES)  # refused with the site module's reason

    @overload
    def _site(self, token: str, types: tuple[str, ...], *, known: Literal[False] = False) -> Identity: ...
    @overload
    def _site(self, token: str, types: tuple[str, ...], *, known: Literal[True]) -> Identity | None: ...
    def _site(self, token: str, types: tuple[str, ...], *, known: bool = False) -> Identity | None:
        """`known`: only a token verified before (None when it is not)."""
        try:
            claims = self.site_tokens.known(token, types) if known else self.site_tokens.verify(token, types)
        except site_tokens.SiteTokenError as e:
            code = "TokenExpired" if "expired" in e.reason else "InvalidToken"
            raise AuthError(401, code, f"site token refused: {e.reason}") from e
        if claims is None:
            return None
        kind = {site_tokens.BULK: BULK_TOKEN, site_tokens.CLIENT: CLIENT_TOKEN}.get(claims.get("Type", ""), CCM_TOKEN)
        who = claims.get("DeviceId") or claims.get("AADDeviceId") or claims.get("UniqueId") or "?"
        return Identity(kind, f"{claims.get('Type')} {who}", claims=claims)

    async def _entra(self, token: str, config: CloudConfig | None) -> Identity:
        # the site's one Entra rule over the tenants the site published (CloudConfig, refreshed on every
        # heartbeat): each token's audience bound to its own tenant; the MP requires the device claim
        policy = EntraPolicy(
            {
                t.tenant_id.lower(): TenantAudience(t.resource_uri, t.server_app_id)
                for t in (config.tenants if config is not None else [])
                if t.tenant_id
            },
            require_device=False,
        )
        try:
            claims = await policy.claims(self.entra, token)
        except EntraTokenError as e:
            if e.kind == entra_tokens.OTHER_TENANT:
                raise AuthError(403, "TenantNotOnboarded", e.reason) from e
            if e.kind == entra_tokens.UNAVAILABLE:
                raise AuthError(503, "EntraUnavailable", e.reason) from e
            code = "TokenExpired" if e.kind == entra_tokens.EXPIRED else "InvalidToken"
            raise AuthError(401, code, e.reason) from e
        who = claims.get("upn") or claims.get("unique_name") or claims.get("deviceid") or claims.get("oid") or "?"
        return Identity(ENTRA_TOKEN, f"{who} (tenant {claims.get('tid')})", claims=claims)
