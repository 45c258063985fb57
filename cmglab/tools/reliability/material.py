"""Credentials and keys the campaign and the authorization matrix present, minted with the lab's own
keys (the Entra signing key, the site signing key, the issuing CA): exactly what the services validate.
Certificates are written under `workdir` (keys 0600) because TLS client certificates travel as files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from cmglab.core.labconfig import write_private
from cmglab.pki import builders as b
from cmglab.runtime.lab import Lab
from cmglab.wire import ccm_messaging as cm
from cmglab.wire.kinds import Proof

CertFiles = tuple[Path, Path]
CONFIGMGR_RESOURCE = "https://ConfigMgrService"


def bulk_token_cli(lab: Lab, *args: str) -> str:
    """`cmglab bulk-token ...` as the administrator runs it (the site DB records the GUID)."""
    return subprocess.run(
        [sys.executable, "-m", "cmglab", "bulk-token", *args, "--lab", str(lab.dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


class Material:
    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab, self.workdir = lab, workdir
        workdir.mkdir(parents=True, exist_ok=True)

    # -- the device's self-signed SMS identity (CcmMessaging signatures, STS proofs) ----------------
    @cached_property
    def sms_key(self) -> rsa.RSAPrivateKey:
        return b.new_key()

    @cached_property
    def sms_cert(self) -> x509.Certificate:
        return b.self_signed(
            self.sms_key, b.name("ConfigMgr Client"), ekus=[b.SMS_SIGNING_EKU, b.SMS_EKU], data_encipherment=True
        )

    def proof(self, proof_type: Proof, token: str, *, sms_id: str | None = None) -> dict[str, Any]:
        """A CCM_STS request body with its proof of possession by the SMS key."""
        stamp = cm.utc_timestamp()
        return {
            "ProofType": proof_type,
            "ClientId": sms_id,
            "Certificate": cm.cert_hex(self.sms_cert),
            "Timestamp": stamp,
            "Signature": cm.sign_hex(self.sms_key, cm.utf16(f"{token};{stamp}")),
        }

    # -- TLS client certificates ---------------------------------------------------------------------
    def _pki(self, name: str, **kw: Any) -> CertFiles:
        ident = self.lab.pki.client(name)
        if not ident.exists():
            self.lab.pki.issue_client(name, **kw)
        return ident.cert_path, ident.key_path

    @cached_property
    def pki_client(self) -> CertFiles:
        return self._pki("reliability-pki.corp.lab.test")

    @cached_property
    def revoked_client(self) -> CertFiles:
        files = self._pki("reliability-revoked.corp.lab.test")
        self.lab.pki.revoke("reliability-revoked.corp.lab.test")
        return files

    @cached_property
    def expired_client(self) -> CertFiles:
        return self._pki(
            "reliability-expired.corp.lab.test", days=30, not_before=datetime.now(UTC) - timedelta(days=400)
        )

    @cached_property
    def wrong_eku_client(self) -> CertFiles:
        """Issued by the lab CA, but for serverAuth only."""
        name = "reliability-server-eku.corp.lab.test"
        ident = self.lab.pki.client(name)
        if not ident.exists():
            self.lab.pki.issue(name, ident, [name], [b.SERVER_AUTH])
        return ident.cert_path, ident.key_path

    @cached_property
    def foreign_client(self) -> CertFiles:
        ca_key = b.new_key()
        ca = b.self_signed_ca(ca_key, b.name("Rogue Root CA"))
        key = b.new_key()
        cert = b.leaf(
            key.public_key(),
            b.name("rogue.lab.test"),
            ca,
            ca_key,
            ekus=[b.CLIENT_AUTH],
            san=["rogue.lab.test"],
            days=30,
        )
        return self._files("foreign", [cert, ca], key)

    @cached_property
    def self_signed_sms_client(self) -> CertFiles:
        """The SMS certificate presented at TLS: not from the lab CA."""
        return self._files("sms-self-signed", [self.sms_cert], self.sms_key)

    @property
    def connection_point(self) -> CertFiles:
        ident = self.lab.pki.connection_point
        return ident.cert_path, ident.key_path

    def _files(self, stem: str, chain: list[x509.Certificate], key: rsa.RSAPrivateKey) -> CertFiles:
        crt, pem = self.workdir / f"{stem}.crt", self.workdir / f"{stem}.key"
        crt.write_bytes(b"".join(b.cert_pem(c) for c in chain))
        write_private(pem, b.key_pem(key))
        return crt, pem

    # -- site tokens -----------------------------------------------------------------------------------
    def ccm_token(self, *, expired: bool = False, sms_id: str | None = None) -> str:
        now = datetime.now(UTC) - timedelta(hours=9) if expired else None
        token, _ = self.lab.site_signer().ccm_token(token_type="Device", sms_id=sms_id, now=now)
        return token

    def client_unique_token(self) -> str:
        token, _ = self.lab.site_signer().client_token(
            sms_id=f"GUID:{str(uuid.uuid4()).upper()}", cert_thumbprint=b.sha1_thumbprint(self.sms_cert)
        )
        return token

    def bulk_token(self) -> str:
        """A bulk token the site issued (its GUID is in the site DB), not blocked."""
        return str(json.loads(bulk_token_cli(self.lab, "new", "--json"))["token"])

    @cached_property
    def blocked_bulk_token(self) -> str:
        doc = json.loads(bulk_token_cli(self.lab, "new", "--json"))
        bulk_token_cli(self.lab, "block", doc["guid"])
        return str(doc["token"])

    # -- Entra tokens ------------------------------------------------------------------------------------
    def entra_token(
        self,
        *,
        user: bool = True,
        tenant_id: str | None = None,
        audience: str = CONFIGMGR_RESOURCE,
        key: Any = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """An Entra v1 access token signed with the lab's Entra key (kid = x5t), as Entra issues them;
        `claims` override or add claims, `headers` the JOSE header."""
        tenant = self.lab.config.primary_tenant
        tid = tenant_id or tenant.tenant_id
        now = int(time.time())
        body: dict[str, Any] = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{tid}/",
            "tid": tid,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "deviceid": str(uuid.uuid4()),
            "appid": self.lab.config.apps[0].app_id,
            "ver": "1.0",
            "idtyp": "user" if user else "device",
        }
        user_row = tenant.users[0]
        body.update(
            {"oid": user_row.object_id, "upn": user_row.upn, "unique_name": user_row.upn}
            if user
            else {"oid": str(uuid.uuid4())}
        )
        body.update(claims)
        kid = b.x5t(self.lab.pki.entra_signing.cert())
        return jwt.encode(
            body,
            key or self.lab.pki.entra_signing.key(),
            algorithm="RS256",
            headers={"kid": kid, "x5t": kid, **(headers or {})},
        )

    @property
    def other_tenant_id(self) -> str:
        return next(t.tenant_id for t in self.lab.config.tenants if not t.onboarded)
