"""The client package the site distributes: `ccmsetup.cab`, `client.msi` and `manifest.json`, built by
the MP and the DP (whichever starts first).

Lab-built artifacts (not Microsoft's binaries):
- `ccmsetup.cab`: a real, uncompressed Microsoft Cabinet (MSCF) holding `ccmsetup.xml`, the
  manifest ccmsetup reads (client version, product code, the files and their SHA-256 hashes);
- `client.msi`: a small lab installer description (JSON after a `CMGLAB-MSI` magic line) naming the
  product code and version the agent "installs";
- `manifest.json`: package ID and version, client version, product code, every file's size and
  SHA-256 (the content a content-enabled CMG serves from the same folder).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cmglab.runtime.lab import Lab
from cmglab.wire.cabinet import write_cab

PACKAGE_VERSION = 1
FILES = ("ccmsetup.cab", "client.msi")


def package_dir(lab: Lab) -> Path:
    return lab.content_dir / lab.config.site.client_package_id


def _entry(name: str, blob: bytes) -> dict[str, Any]:
    return {"name": name, "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest().upper()}


def build_package(lab: Lab, *, force: bool = False) -> Path:
    """Write the package into <lab>/content/<package_id>/ unless it is there already."""
    site = lab.config.site
    folder = package_dir(lab)
    manifest_path = folder / "manifest.json"
    if manifest_path.exists() and not force and all((folder / f).exists() for f in FILES):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    msi = (
        b"CMGLAB-MSI\r\n"
        + json.dumps(
            {
                "ProductName": "Configuration Manager Client",
                "ProductCode": site.client_product_code,
                "ProductVersion": site.client_version,
                "Manufacturer": "cmglab",
                "Properties": {"SMSSITECODE": site.code},
            },
            indent=2,
        ).encode()
    )
    ccmsetup_xml = (
        '<?xml version="1.0" encoding="utf-8"?>\r\n'
        f'<Manifest Version="{site.client_version}" ProductCode="{site.client_product_code}" '
        f'PackageID="{site.client_package_id}" SiteCode="{site.code}">\r\n'
        f'  <Item FileName="client.msi" FileHash="{hashlib.sha256(msi).hexdigest().upper()}" '
        f'FileSize="{len(msi)}" ItemType="MSI" />\r\n</Manifest>\r\n'
    ).encode()
    cab = write_cab({"ccmsetup.xml": ccmsetup_xml})
    blobs = {"ccmsetup.cab": cab, "client.msi": msi}
    # per-process temporary names: MP replicas starting together each write the same bytes, then rename
    for name, blob in blobs.items():
        tmp = folder / f"{name}.{os.getpid()}.tmp"
        tmp.write_bytes(blob)
        tmp.replace(folder / name)
    manifest = {
        "package_id": site.client_package_id,
        "version": PACKAGE_VERSION,
        "client_version": site.client_version,
        "product_code": site.client_product_code,
        "files": [_entry(n, b) for n, b in blobs.items()],
    }
    tmp = folder / f"manifest.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    return folder


def manifest(lab: Lab) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((package_dir(lab) / "manifest.json").read_text())
    return data
