"""The device's certificate stores, as Windows has them for the local machine:

- `My` (Personal): PKI client-authentication certificates, the Entra device certificate
  (`CN=<deviceId>`, issued by MS-Organization-Access) and the hybrid-join userCertificate;
- `SMS`: the ConfigMgr client's self-signed "SMS Signing" and "SMS Encryption" certificates;
- `Root` (Trusted Root Certification Authorities): what the device trusts for TLS.

Each store is a folder of `<THUMBPRINT>.crt` (PEM) with an optional `<THUMBPRINT>.key` (0600) and a
`<THUMBPRINT>.json` (friendly name). No TLS code lives here: `network.py` asks for a trust bundle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cmglab.agent.protect import write_private
from cmglab.pki.builders import SMS_EKU, SMS_SIGNING_EKU, cert_pem, key_pem, sha1_thumbprint

MY, SMS, ROOT = "My", "SMS", "Root"
__all__ = ["MY", "ROOT", "SMS", "SMS_EKU", "SMS_SIGNING_EKU", "CertStores", "StoredCert"]
STORES = (MY, SMS, ROOT)
MS_ORG_ACCESS = "MS-Organization-Access"
SMS_SIGNING = "SMS Signing"
SMS_ENCRYPTION = "SMS Encryption"


NTE_BAD_KEYSET = 0x80090016  # "Keyset does not exist": the certificate's private key container is unusable


class KeysetError(Exception):
    """The certificate names a private key that cannot be used (CNG/CAPI NTE_BAD_KEYSET)."""

    hresult = NTE_BAD_KEYSET


@dataclass(frozen=True)
class StoredCert:
    store: str
    thumbprint: str
    cert_path: Path
    key_path: Path | None
    friendly_name: str

    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    def key(self) -> rsa.RSAPrivateKey:
        if self.key_path is None:
            raise KeyError(f"certificate {self.thumbprint} has no private key")
        # The store holds only keys the agent made or `import_pem` checked on the way in: the RSA consistency
        # check (~70 ms a load) would otherwise run again for every signed message and token request.
        try:
            key = serialization.load_pem_private_key(
                self.key_path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
            )
        except (OSError, ValueError, TypeError) as e:  # a damaged key container (`cmglab device break`)
            raise KeysetError(f"Keyset does not exist ({self.key_path.name}: {e})") from e
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeysetError(f"Keyset does not exist ({self.key_path.name}: not an RSA key)")
        return key

    @property
    def has_key(self) -> bool:
        return self.key_path is not None


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _ekus(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return []


def time_valid(cert: x509.Certificate, now: datetime | None = None) -> bool:
    now = now or datetime.now(UTC)
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


class CertStores:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, store: str) -> Path:
        if store not in STORES:
            raise ValueError(f"unknown certificate store {store!r}")
        return self.root / store

    # -- adding and removing -------------------------------------------------------------------
    def add(
        self, store: str, cert: x509.Certificate, key: rsa.RSAPrivateKey | None = None, friendly_name: str = ""
    ) -> StoredCert:
        folder = self.folder(store)
        folder.mkdir(parents=True, exist_ok=True)
        tp = sha1_thumbprint(cert)
        if key is not None:  # key first: a certificate never appears without the key it needs
            write_private(folder / f"{tp}.key", key_pem(key))
        (folder / f"{tp}.json").write_text(json.dumps({"FriendlyName": friendly_name}))
        tmp = folder / f"{tp}.crt.tmp"
        tmp.write_bytes(cert_pem(cert))
        tmp.replace(folder / f"{tp}.crt")
        return self.get(store, tp)  # type: ignore[return-value]

    def import_pem(
        self, store: str, cert_file: Path, key_file: Path | None = None, friendly_name: str = ""
    ) -> StoredCert:
        """Import the first certificate of a PEM file (a lab `pki issue-client` output) and its key."""
        cert = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
        key = None
        if key_file is not None:
            loaded = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            assert isinstance(loaded, rsa.RSAPrivateKey)
            key = loaded
        return self.add(store, cert, key, friendly_name)

    def remove(self, store: str, thumbprint: str) -> bool:
        folder = self.folder(store)
        found = False
        for suffix in (".crt", ".key", ".json"):
            path = folder / f"{thumbprint.upper()}{suffix}"
            if path.exists():
                path.unlink()
                found = True
        return found

    # -- reading -------------------------------------------------------------------------------
    def get(self, store: str, thumbprint: str) -> StoredCert | None:
        folder = self.folder(store)
        tp = thumbprint.upper()
        crt = folder / f"{tp}.crt"
        if not crt.exists():
            return None
        key = folder / f"{tp}.key"
        meta = folder / f"{tp}.json"
        friendly = json.loads(meta.read_text()).get("FriendlyName", "") if meta.exists() else ""
        return StoredCert(store, tp, crt, key if key.exists() else None, friendly)

    def certificates(self, store: str) -> list[StoredCert]:
        folder = self.folder(store)
        if not folder.exists():
            return []
        out = [self.get(store, p.stem) for p in sorted(folder.glob("*.crt"))]
        return [c for c in out if c is not None]

    def roots(self) -> list[x509.Certificate]:
        return [c.cert() for c in self.certificates(ROOT)]

    def trust_bundle(self) -> bytes:
        """The Root store as one PEM bundle (what the TLS layer trusts)."""
        return b"".join(c.cert_path.read_bytes() for c in self.certificates(ROOT))

    # -- the certificates the device's programs look for ---------------------------------------
    def chains_to_root(self, cert: x509.Certificate) -> bool:
        """cert -> ... -> a self-signed certificate, every link in the Root store (max depth 5)."""
        roots = self.roots()
        current = cert
        for _ in range(5):
            issuer = next((r for r in roots if r.subject == current.issuer and _issued_by(current, r)), None)
            if issuer is None:
                return False
            if not time_valid(issuer):
                return False
            if issuer.subject == issuer.issuer:
                return True
            current = issuer
        return False

    def pki_client_certs(self) -> list[StoredCert]:
        """Valid PKI client-authentication certificates in My: clientAuth EKU, private key, within
        validity, chaining to a trusted root; longest remaining validity first (CCMFIRSTCERT=1)."""
        found = []
        for sc in self.certificates(MY):
            if not sc.has_key:
                continue
            cert = sc.cert()
            if _cn(cert.issuer) == MS_ORG_ACCESS or cert.subject == cert.issuer:
                continue
            if ExtendedKeyUsageOID.CLIENT_AUTH not in _ekus(cert) or not time_valid(cert):
                continue
            if self.chains_to_root(cert):
                found.append((cert.not_valid_after_utc, sc))
        return [sc for _, sc in sorted(found, key=lambda t: t[0], reverse=True)]

    def device_cert(self) -> StoredCert | None:
        """The Entra device certificate (the "WPJ certificate"): issued by MS-Organization-Access."""
        for sc in self.certificates(MY):
            if sc.has_key and _cn(sc.cert().issuer) == MS_ORG_ACCESS:
                return sc
        return None

    def sms_cert(self, friendly_name: str) -> StoredCert | None:
        for sc in self.certificates(SMS):
            if sc.friendly_name == friendly_name and sc.has_key:
                return sc
        return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except Exception:  # InvalidSignature, ValueError, TypeError: not this issuer
        return False
