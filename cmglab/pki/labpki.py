"""The lab PKI on disk: one folder per identity, files named by role, keys 0600, an index of issued
certificates and CRLs for both CAs (PEM and DER) regenerated on every revoke.

Idempotent: `init()` creates only what is missing; `init(force=True)` regenerates everything.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from cmglab.core.labconfig import LabConfig, write_private
from cmglab.pki import builders as b

# Issuer DN of Entra device certificates (docs/protocol-notes.md, Entra §3.2): DC=net + DC=windows +
# CN=MS-Organization-Access + OU=82dbaca4-3e81-46ca-9c73-0950c1eaca97.
MS_ORG_ACCESS_NAME = x509.Name(
    [
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "net"),
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "windows"),
        x509.NameAttribute(NameOID.COMMON_NAME, "MS-Organization-Access"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "82dbaca4-3e81-46ca-9c73-0950c1eaca97"),
    ]
)
LAB_ORG = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cmglab")
# The Microsoft names (login.microsoftonline.com, enterpriseregistration.windows.net, ...) present a
# certificate from a public CA that every Windows device trusts (the trusted root programme), not the
# organisation's: a device without the organisation's root still reaches Entra (seed 001's "Root CA
# not present" breaks the CMG, not the join). The lab's stand-in for that public CA:
PUBLIC_ORG = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cmglab public trust (stands in for a public CA)")
PUBLIC_SERVICES = ("entra",)

SERVER_SERVICES = ("entra", "cmg", "management-point", "console", "distribution-point")
CA_NAMES = ("root-ca", "issuing-ca", "public-root-ca")
LAB_ADMIN = "cmglab-lab-admin"  # the lab admin's client certificate: its name, subject CN and SAN
CRL_BACKDATE = timedelta(minutes=10)


@dataclass(frozen=True)
class Identity:
    """A certificate (leaf first, then its chain) and its private key on disk."""

    cert_path: Path
    key_path: Path

    def exists(self) -> bool:
        return self.cert_path.exists() and self.key_path.exists()

    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_path.read_bytes())

    def key(self) -> b.RSAKey:
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        assert isinstance(key, b.rsa.RSAPrivateKey)
        return key


class PKIError(Exception):
    pass


class LabPKI:
    def __init__(self, root: Path, config: LabConfig) -> None:
        self.root = root
        self.config = config

    # -- paths ---------------------------------------------------------------------------------
    def identity(self, name: str, folder: str | None = None) -> Identity:
        base = self.root / folder / name if folder else self.root / name
        return Identity(base / f"{name}.crt", base / f"{name}.key")

    @property
    def root_ca(self) -> Identity:
        return self.identity("root-ca")

    @property
    def issuing_ca(self) -> Identity:
        return self.identity("issuing-ca")

    @property
    def public_root_ca(self) -> Identity:
        return self.identity("public-root-ca")

    def organisation_roots(self) -> list[x509.Certificate]:
        """The organisation's CA certificates: what Group Policy puts in a device's Root store."""
        return [self.root_ca.cert(), self.issuing_ca.cert()]

    def public_roots(self) -> list[x509.Certificate]:
        """The public CA every device trusts out of the box (Microsoft's names chain to it)."""
        return [self.public_root_ca.cert()]

    @property
    def device_ca(self) -> Identity:
        return self.identity("ms-organization-access")

    @property
    def entra_signing(self) -> Identity:
        return self.identity("entra-token-signing")

    @property
    def site_signing(self) -> Identity:
        return self.identity("site-signing")

    @property
    def connection_point(self) -> Identity:
        return self.identity("cmg-connection-point")

    @property
    def lab_admin(self) -> Identity:
        """The lab admin's client certificate: the one besides the connection points' that the CMG's connector
        listener admits at TLS (its /_lab calls), as a device's certificate is refused there."""
        return self.identity(LAB_ADMIN)

    def server(self, service: str) -> Identity:
        return self.identity(service)

    def client(self, name: str) -> Identity:
        return self.identity(name, "clients")

    @property
    def ca_bundle(self) -> Path:
        return self.root / "ca-bundle.pem"

    @property
    def client_ca_bundle(self) -> Path:
        """The CAs whose client certificates the site accepts: the organisation's only, never the public one
        (written on first use for a lab made before the public CA existed)."""
        path = self.root / "client-ca-bundle.pem"
        if not path.exists() and self.root_ca.exists() and self.issuing_ca.exists():
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            tmp.write_bytes(b.cert_pem(self.root_ca.cert()) + b.cert_pem(self.issuing_ca.cert()))
            tmp.replace(path)
        return path

    def crl_path(self, ca: str, pem: bool = False) -> Path:
        return self.root / "crl" / (f"{ca}.crl.pem" if pem else f"{ca}.crl")

    @property
    def crl_bundle(self) -> Path:
        return self.root / "crl" / "crl-bundle.pem"

    def aia_path(self, ca: str) -> Path:
        return self.root / "aia" / f"{ca}.crt"

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def cdp_url(self, ca: str) -> str:
        return f"{self.config.pki_url}/crl/{ca}.crl"

    def aia_url(self, ca: str) -> str:
        return f"{self.config.pki_url}/aia/{ca}.crt"

    def stale_cdp(self) -> str | None:
        """The CRL URL the lab's certificates name when lab.json now puts the CRL host elsewhere (its port edited
        by hand after the PKI was made): every revocation check would ask a host that is not there. None when they
        agree, or before there is a PKI."""
        if not self.issuing_ca.exists():
            return None
        cdp = self.issuing_ca.cert().extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        named = [str(n.value) for point in cdp for n in point.full_name or []]
        return None if not named or self.cdp_url("root-ca") in named else named[0]

    # -- index ---------------------------------------------------------------------------------
    def _index(self) -> dict:
        if self.index_path.exists():
            return json.loads(self.index_path.read_text())
        return {"crl_number": 0, "crl_last_update": None, "certificates": {}}

    def _save_index(self, index: dict) -> None:
        self.index_path.write_text(json.dumps(index, indent=2) + "\n")

    def _record(self, name: str, cert: x509.Certificate, issuer: str, path: Path) -> None:
        index = self._index()
        index["certificates"][format(cert.serial_number, "x")] = {
            "name": name,
            "subject": cert.subject.rfc4514_string(),
            "issuer": issuer,
            "path": str(path.relative_to(self.root)),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "thumbprint": b.sha1_thumbprint(cert),
            "revoked_at": None,
        }
        self._save_index(index)

    # -- creation ------------------------------------------------------------------------------
    def init(self, force: bool = False) -> list[str]:
        """Create every missing part of the PKI; returns what was created."""
        if force and self.root.exists():
            shutil.rmtree(self.root)
        created: list[str] = []
        self.root.mkdir(parents=True, exist_ok=True)

        if not self.root_ca.exists():
            key = b.new_key()
            cert = b.self_signed_ca(key, b.name("cmglab Root CA", LAB_ORG), days=3650)
            self._write(self.root_ca, cert, key)
            created.append("root-ca")
        if not self.issuing_ca.exists():
            root_cert, root_key = self.root_ca.cert(), self.root_ca.key()
            key = b.new_key()
            cert = b.sub_ca(
                key,
                b.name("cmglab Issuing CA", LAB_ORG),
                root_cert,
                root_key,
                cdp=self.cdp_url("root-ca"),
                aia=self.aia_url("root-ca"),
            )
            self._write(self.issuing_ca, cert, key)
            self._record("issuing-ca", cert, "root-ca", self.issuing_ca.cert_path)
            created.append("issuing-ca")
        if not self.public_root_ca.exists():
            key = b.new_key()
            cert = b.self_signed_ca(key, b.name("cmglab Public Root CA", PUBLIC_ORG), days=3650)
            self._write(self.public_root_ca, cert, key)
            created.append("public-root-ca")
        if not self.device_ca.exists():
            key = b.new_key()
            cert = b.self_signed_ca(key, MS_ORG_ACCESS_NAME, days=3650)
            self._write(self.device_ca, cert, key)
            created.append("ms-organization-access")
        if not self.entra_signing.exists():
            key = b.new_key()
            cert = b.self_signed(key, b.name("accounts.accesscontrol.windows.net"), ekus=[], days=1825)
            self._write(self.entra_signing, cert, key)
            created.append("entra-token-signing")
        if not self.site_signing.exists():
            key = b.new_key()
            cert = b.self_signed(key, b.name("Site Server"), ekus=[b.SMS_SIGNING_EKU], days=1825)
            self._write(self.site_signing, cert, key)
            created.append("site-signing")
        public = self.public_root_ca.cert()
        for service in SERVER_SERVICES:
            ca = "public-root-ca" if service in PUBLIC_SERVICES else "issuing-ca"
            identity = self.server(service)
            # a lab made before the public CA existed: Microsoft's names move to it
            stale = identity.exists() and ca == "public-root-ca" and identity.cert().issuer != public.subject
            if not identity.exists() or stale:
                self.issue(service, identity, self.server_names(service), [b.SERVER_AUTH], ca=ca)
                created.append(service)
        if not self.connection_point.exists():
            cp = self.config.hosts.cmg_connection_point
            self.issue(
                "cmg-connection-point",
                self.connection_point,
                [cp, self.config.hosts.compose["cmg-connection-point"]],
                [b.CLIENT_AUTH],
            )
            created.append("cmg-connection-point")
        if not self.lab_admin.exists():
            self.issue(LAB_ADMIN, self.lab_admin, [LAB_ADMIN], [b.CLIENT_AUTH])
            created.append(LAB_ADMIN)

        self._write_bundle_and_aia()
        if created or not self.crl_bundle.exists():
            self.write_crls()
        return created

    def server_names(self, service: str) -> list[str]:
        hosts = self.config.hosts
        names = {
            "entra": list(hosts.entra),
            "cmg": [hosts.cmg],
            "management-point": [hosts.management_point],
            "console": [hosts.console],
            "distribution-point": [hosts.distribution_point],
        }[service]
        return [*names, hosts.compose_name(service), "localhost", "127.0.0.1"]

    def issue(
        self,
        name: str,
        identity: Identity,
        san: list[str],
        ekus: list[x509.ObjectIdentifier],
        *,
        days: int = 825,
        not_before: datetime | None = None,
        ca: str = "issuing-ca",
    ) -> Identity:
        """Issue a leaf from the issuing CA (or the public root) with CDP/AIA, written as leaf + chain and
        a 0600 key."""
        issuer = self.public_root_ca if ca == "public-root-ca" else self.issuing_ca
        ca_cert, ca_key = issuer.cert(), issuer.key()
        key = b.new_key()
        org = PUBLIC_ORG if ca == "public-root-ca" else LAB_ORG
        cert = b.leaf(
            key.public_key(),
            b.name(san[0], org),
            ca_cert,
            ca_key,
            ekus=ekus,
            san=san,
            days=days,
            cdp=self.cdp_url(ca),
            aia=self.aia_url(ca),
            not_before=not_before,
        )
        self._write(identity, cert, key, chain=[] if ca == "public-root-ca" else [ca_cert])
        self._record(name, cert, ca, identity.cert_path)
        return identity

    def issue_client(
        self, name: str, *, san: list[str] | None = None, days: int = 365, not_before: datetime | None = None
    ) -> Identity:
        """A PKI client-authentication certificate (what `/usepkicert` and CCM_Proxy_MutualAuth use)."""
        identity = self.client(name)
        return self.issue(name, identity, san or [name], [b.CLIENT_AUTH], days=days, not_before=not_before)

    def _write(
        self, identity: Identity, cert: x509.Certificate, key: b.RSAKey, chain: list[x509.Certificate] | None = None
    ) -> None:
        identity.cert_path.parent.mkdir(parents=True, exist_ok=True)
        identity.cert_path.write_bytes(b"".join(b.cert_pem(c) for c in [cert, *(chain or [])]))
        write_private(identity.key_path, b.key_pem(key))

    def _write_bundle_and_aia(self) -> None:
        root, issuing, public = self.root_ca.cert(), self.issuing_ca.cert(), self.public_root_ca.cert()
        # everything the lab's own tools trust: the organisation's CAs and the public one
        self.ca_bundle.write_bytes(b.cert_pem(root) + b.cert_pem(issuing) + b.cert_pem(public))
        self.client_ca_bundle.write_bytes(b.cert_pem(root) + b.cert_pem(issuing))
        (self.root / "aia").mkdir(exist_ok=True)
        self.aia_path("root-ca").write_bytes(b.cert_der(root))
        self.aia_path("issuing-ca").write_bytes(b.cert_der(issuing))
        self.aia_path("public-root-ca").write_bytes(b.cert_der(public))

    # -- revocation ----------------------------------------------------------------------------
    def find(self, name_or_serial: str) -> list[str]:
        """Serials (hex) of the certificates issued under that name, or that serial."""
        certs = self._index()["certificates"]
        key = name_or_serial.lower()
        if key in certs:
            return [key]
        return [serial for serial, entry in certs.items() if entry["name"] == name_or_serial]

    def revoke(self, name_or_serial: str) -> list[str]:
        serials = self.find(name_or_serial)
        if not serials:
            raise PKIError(f"no certificate named or numbered {name_or_serial!r} in {self.index_path}")
        index = self._index()
        now = b.utcnow().isoformat()
        for serial in serials:
            index["certificates"][serial]["revoked_at"] = index["certificates"][serial]["revoked_at"] or now
        self._save_index(index)
        self.write_crls()
        return serials

    def write_crls(self) -> None:
        """Regenerate the three CAs' CRLs. lastUpdate always moves forward so that a process that already
        loaded the previous CRL prefers the new one (OpenSSL keeps the newest lastUpdate); it is
        backdated so that quick successive revokes never date a CRL in the future ("not yet valid")."""
        index = self._index()
        previous = index.get("crl_last_update")
        last_update = (b.utcnow() - CRL_BACKDATE).replace(microsecond=0)
        if previous and last_update <= datetime.fromisoformat(previous):
            last_update = datetime.fromisoformat(previous) + timedelta(seconds=1)
        number = int(index.get("crl_number", 0)) + 1
        (self.root / "crl").mkdir(exist_ok=True)
        pems = []
        for ca_name, ca in (
            ("root-ca", self.root_ca),
            ("issuing-ca", self.issuing_ca),
            ("public-root-ca", self.public_root_ca),
        ):
            revoked = [
                (int(serial, 16), datetime.fromisoformat(entry["revoked_at"]))
                for serial, entry in index["certificates"].items()
                if entry["issuer"] == ca_name and entry["revoked_at"]
            ]
            crl = b.build_crl(ca.cert(), ca.key(), revoked, number=number, last_update=last_update)
            pem = crl.public_bytes(serialization.Encoding.PEM)
            self.crl_path(ca_name).write_bytes(crl.public_bytes(serialization.Encoding.DER))
            self.crl_path(ca_name, pem=True).write_bytes(pem)
            pems.append(pem)
        tmp = self.crl_bundle.with_suffix(".tmp")
        tmp.write_bytes(b"".join(pems))
        tmp.replace(self.crl_bundle)
        index["crl_number"] = number
        index["crl_last_update"] = last_update.isoformat()
        self._save_index(index)

    def show(self) -> list[dict]:
        index = self._index()
        rows = [{"serial": serial, **entry} for serial, entry in index["certificates"].items()]
        for name, ident in (
            ("root-ca", self.root_ca),
            ("public-root-ca", self.public_root_ca),
            ("ms-organization-access", self.device_ca),
            ("entra-token-signing", self.entra_signing),
            ("site-signing", self.site_signing),
        ):
            if ident.cert_path.exists():
                cert = ident.cert()
                rows.insert(
                    0,
                    {
                        "serial": format(cert.serial_number, "x"),
                        "name": name,
                        "subject": cert.subject.rfc4514_string(),
                        "issuer": "self",
                        "path": str(ident.cert_path.relative_to(self.root)),
                        "not_after": cert.not_valid_after_utc.isoformat(),
                        "thumbprint": b.sha1_thumbprint(cert),
                        "revoked_at": None,
                    },
                )
        return rows
