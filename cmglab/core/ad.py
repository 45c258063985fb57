"""The lab's Active Directory, as far as device identity needs it: the device registration service
connection point (SCP) and the computer objects (seed 002, hybrid join).

- The SCP, `CN=62a0ff2e-97b9-4513-943f-0d221bd30080,CN=Device Registration Configuration,CN=Services,
  CN=Configuration,<forest>`, carries the keywords `azureADName:<verified domain>` and `azureADId:<tenant ID>`:
  what a domain-joined computer reads to find its Entra tenant.
- A computer object (`CN=<name>,CN=Computers,<domain>`): objectGUID (the hybrid device ID), objectSid,
  dNSHostName, and userCertificate, where the computer writes its self-signed certificate for Entra
  Connect to synchronise.

One JSON document at `<lab>/data/ad.json`, made from lab.json on first use (the seeded computer accounts),
read and written under an exclusive file lock and replaced atomically, so the devices, `cmglab device
create --domain` and the Entra Connect sync can share it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cmglab.core.labconfig import LabConfig

SCP_GUID = "62a0ff2e-97b9-4513-943f-0d221bd30080"


class ADError(Exception):
    pass


def domain_dn(dns_name: str) -> str:
    return ",".join(f"DC={part}" for part in dns_name.split("."))


def ad_path(lab_dir: Path) -> Path:
    return lab_dir / "data" / "ad.json"


def _scp_domain(config: LabConfig) -> str:
    """azureADName: the primary tenant's first managed custom domain (else its initial domain)."""
    t = config.primary_tenant
    custom = [d.name for d in t.domains if not d.federated and not d.name.endswith(".onmicrosoft.com")]
    return custom[0] if custom else t.initial_domain


def initial(config: LabConfig) -> dict[str, Any]:
    ad = config.active_directory
    base = domain_dn(ad.dns_name)
    doc: dict[str, Any] = {
        "domain": ad.dns_name,
        "netbios": ad.netbios_name,
        "domain_sid": ad.domain_sid,
        "scp": {
            "distinguishedName": f"CN={SCP_GUID},CN=Device Registration Configuration,CN=Services,"
            f"CN=Configuration,{base}",
            "keywords": [f"azureADName:{_scp_domain(config)}", f"azureADId:{config.primary_tenant.tenant_id}"],
        },
        "computers": {},
    }
    for account in ad.accounts:
        if account.name.endswith("$"):
            doc["computers"][account.name.upper()] = computer_object(ad.dns_name, account.name, str(account.sid))
    return doc


def computer_object(dns_name: str, sam: str, sid: str) -> dict[str, Any]:
    name = sam.rstrip("$").upper()
    return {
        "distinguishedName": f"CN={name},CN=Computers,{domain_dn(dns_name)}",
        "sAMAccountName": sam.upper(),
        "objectGUID": str(uuid.uuid4()),
        "objectSid": sid,
        "dNSHostName": f"{name.lower()}.{dns_name}",
        "userCertificate": [],
    }


class LabDirectory:
    def __init__(self, path: Path, config: LabConfig | None = None) -> None:
        self.path, self.config = path, config

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The document under an exclusive lock; what the block changes is written back atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.exists():
                doc: dict[str, Any] = json.loads(self.path.read_text())
            elif self.config is not None:
                doc = initial(self.config)
            else:
                raise ADError(f"no directory at {self.path} (the domain controller cannot be reached)")
            before = json.dumps(doc, sort_keys=True)
            yield doc
            if json.dumps(doc, sort_keys=True) != before or not self.path.exists():
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text(json.dumps(doc, indent=2))
                os.replace(tmp, self.path)

    def read(self) -> dict[str, Any]:
        with self._locked() as doc:
            return doc

    def scp(self) -> dict[str, str]:
        """The SCP's keywords as a mapping: {"azureADName": ..., "azureADId": ...}."""
        keywords = self.read()["scp"]["keywords"]
        return dict(k.split(":", 1) for k in keywords if ":" in k)

    def computer(self, sam: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.read()["computers"].get(sam.upper())
        return found

    def computers(self) -> list[dict[str, Any]]:
        return list(self.read()["computers"].values())

    def add_computer(self, sam: str, sid: str) -> dict[str, Any]:
        """What a domain join does in AD: the computer account (an existing one is reused, as a rejoin does)."""
        with self._locked() as doc:
            existing: dict[str, Any] | None = doc["computers"].get(sam.upper())
            if existing is not None:
                return existing
            obj = computer_object(doc["domain"], sam, sid)
            doc["computers"][sam.upper()] = obj
            return obj

    def set_user_certificate(self, sam: str, der: bytes) -> None:
        """The computer writes its self-signed certificate to its own object (it keeps only its latest)."""
        with self._locked() as doc:
            obj = doc["computers"].get(sam.upper())
            if obj is None:
                raise ADError(f"no computer object {sam.upper()} in {doc['domain']}")
            obj["userCertificate"] = [base64.b64encode(der).decode()]
