"""The lab's shared vocabularies, as enums instead of string literals: how a request was authenticated
(the request record's `auth_kind`), what a client proves to CCM_STS, how a client registered. They are
`StrEnum`s: each member is its wire string, so JSON, the site database and the logs see the same text.
"""

from __future__ import annotations

from enum import StrEnum


class Proof(StrEnum):
    """CCM_STS `ProofType`: what a client exchanges for a CCM token."""

    AAD = "AAD"  # an Entra access token for the site's resource URI
    BULK_REGISTRATION = "BulkRegistration"  # a bulk registration token + proof of possession
    CLIENT_TOKEN = "ClientToken"  # the MP-issued unique client token + proof of possession
    CERTIFICATE = "Certificate"  # the PKI client certificate from TLS


# An issued token's `proof` when registration issued it (the unique client token): not a ProofType a client sends
REGISTRATION_ISSUED = "Registration"


class RegistrationKind(StrEnum):
    """How a client registered with the site (the client's auth mode; the site database's `auth_kind`)."""

    SELF_SIGNED = "self-signed"
    DOMAIN = "domain"
    PKI = "pki"
    AAD = "aad"
    BULK = "bulk"
    TOKEN = "token"


class EntraVerdict(StrEnum):
    """The verdict on an Entra token a client presents (`cmglab.wire.entra_tokens` finds the refusals; the MP's
    registration admission decides on the verdict)."""

    VALID = "valid"
    NO_DEVICE = "no-device"  # valid, but it names no Entra device (no `deviceid`)
    MALFORMED = "malformed"  # not a JWT
    FORGED = "forged"  # not signed by an Entra key with RS256
    EXPIRED = "expired"
    WRONG_AUDIENCE = "wrong-audience"
    WRONG_ISSUER = "wrong-issuer"
    OTHER_TENANT = "other-tenant"  # a tenant not onboarded to the site
    UNAVAILABLE = "unavailable"  # Entra's keys could not be read


class ConflictStatus(StrEnum):
    """A conflicting client record's state (the site database's `status`, `/_lab/conflicts`): held for the
    admin, or resolved by the admin (`new`, `merge`, `block`) or by automatic handling (`new`)."""

    PENDING = "pending"  # held: manual handling, the admin has not said yet
    NEW = "new"  # a new record (a new SMSID) for the conflicting client
    MERGE = "merge"  # the admin said: the same machine, it updates the record
    BLOCK = "block"  # refused


# what the admin may resolve a conflicting record to (`cmglab clients resolve`, POST /_lab/conflicts/{id}/resolve)
RESOLUTIONS = (ConflictStatus.NEW, ConflictStatus.MERGE, ConflictStatus.BLOCK)


class AuthKind(StrEnum):
    """How a service authenticated a request: the request record's `auth_kind`."""

    # the management point
    ANONYMOUS = "anonymous"
    PKI_CERTIFICATE = "pki-certificate"
    WINDOWS = "windows"
    CCM_TOKEN = "ccm-token"
    STS_AAD = "sts:AAD"  # CCM_STS, by the proof exchanged (`of_proof`)
    STS_BULK_REGISTRATION = "sts:BulkRegistration"
    STS_CLIENT_TOKEN = "sts:ClientToken"
    STS_CERTIFICATE = "sts:Certificate"
    # the CMG (also sent to the connection point in the channel's request head)
    MUTUAL = "MutualAuth"
    CMG_CCM_TOKEN = "CCMToken"
    ENTRA_TOKEN = "EntraToken"
    BULK_TOKEN = "BulkRegistrationToken"
    CLIENT_TOKEN = "ClientToken"
    SIGNED_URL = "SignedURL"
    # Entra: the token endpoint's grants, the device code page, the DRS
    SRV_CHALLENGE = "srv_challenge"
    PASSWORD = "password"
    CLIENT_CREDENTIALS = "client_credentials"
    REFRESH_TOKEN = "refresh_token"
    DEVICE_CODE = "device_code"
    DEVICE_TOKEN = "device_token"
    DEVICE_PASSWORD = "device_password"
    DEVICE_REFRESH_TOKEN = "device_refresh_token"
    AUTHORIZATION_CODE = "authorization_code"
    SAML = "saml1_1"  # a federated user's SAML 1.1 assertion
    DEVICE_SAML = "device_urn:ietf:params:oauth:grant-type:saml1_1-bearer"  # the same, device-signed
    PRT_SAML = "prt_urn:ietf:params:oauth:grant-type:saml1_1-bearer"
    PRT_PASSWORD = "prt_password"  # a device-signed grant that returned a primary refresh token
    PRT_REFRESH_TOKEN = "prt_refresh_token"
    PRT_RENEW = "prt_renew"  # a PRT-signed request: renewal, or a token
    PRT_TOKEN = "prt_token"
    PRT_COOKIE = "prt_cookie"  # the authorize endpoint, signed in by a PRT cookie
    DEVICE_LOGIN = "devicelogin"
    WSTRUST = "wstrust"  # the lab AD FS: a user's username/password WS-Trust request
    WSTRUST_WINDOWS = "wstrust_windows"  # the same, Windows-integrated (the computer's account)
    DRS_JOIN = "drs_join"
    DRS_HYBRID_JOIN = "drs_hybrid_join"
    DEVICE_CERTIFICATE = "device_certificate"

    @classmethod
    def of_proof(cls, proof: Proof) -> AuthKind:
        return cls(f"sts:{proof}")
