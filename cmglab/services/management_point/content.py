"""The client package the site distributes: `ccmsetup.cab`, `client.msi` and `manifest.json`.

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
import struct
from pathlib import Path
from typing import Any

from cmglab.runtime.lab import Lab

PACKAGE_VERSION = 1
FILES = ("ccmsetup.cab", "client.msi")


def package_dir(lab: Lab) -> Path:
    return lab.content_dir / lab.config.site.client_package_id


def _cab(files: dict[str, bytes]) -> bytes:
    """An uncompressed single-folder cabinet (MS-CAB: CFHEADER, CFFOLDER, CFFILE..., CFDATA...)."""
    names = list(files)
    data = b"".join(files[n] for n in names)
    blocks = [data[i:i + 32768] for i in range(0, len(data), 32768)] or [b""]
    cffiles = b""
    offset = 0
    for n in names:
        # cbFile, uoffFolderStart, iFolder, date (2024-01-01), time, attribs, name
        cffiles += struct.pack("<IIHHHH", len(files[n]), offset, 0, (44 << 9) | (1 << 5) | 1, 0, 0x20)
        cffiles += n.encode("ascii") + b"\x00"
        offset += len(files[n])
    header_size, folder_size = 36, 8
    coff_files = header_size + folder_size
    first_data = coff_files + len(cffiles)
    cfdata = b"".join(struct.pack("<IHH", 0, len(b), len(b)) + b for b in blocks)
    total = first_data + len(cfdata)
    header = b"MSCF" + struct.pack("<IIIIIBBHHHHH", 0, total, 0, coff_files, 0, 3, 1, 1, len(names), 0,
                                   0x4C4D, 0)
    folder = struct.pack("<IHH", first_data, len(blocks), 0)  # typeCompress 0 = none
    return header + folder + cffiles + cfdata


def read_cab(blob: bytes) -> dict[str, bytes]:
    """Files of a cabinet written by `_cab` (uncompressed, one folder)."""
    if blob[:4] != b"MSCF":
        raise ValueError("not a cabinet")
    coff_files = struct.unpack_from("<I", blob, 16)[0]
    n_files = struct.unpack_from("<H", blob, 28)[0]
    first_data, n_blocks, _ = struct.unpack_from("<IHH", blob, 36)
    pos, entries = coff_files, []
    for _ in range(n_files):
        size, off = struct.unpack_from("<II", blob, pos)
        end = blob.index(b"\x00", pos + 16)
        entries.append((blob[pos + 16:end].decode("ascii"), size, off))
        pos = end + 1
    data, pos = b"", first_data
    for _ in range(n_blocks):
        _, cb, _ = struct.unpack_from("<IHH", blob, pos)
        data += blob[pos + 8:pos + 8 + cb]
        pos += 8 + cb
    return {name: data[off:off + size] for name, size, off in entries}


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
    msi = b"CMGLAB-MSI\r\n" + json.dumps({
        "ProductName": "Configuration Manager Client", "ProductCode": site.client_product_code,
        "ProductVersion": site.client_version, "Manufacturer": "cmglab",
        "Properties": {"SMSSITECODE": site.code},
    }, indent=2).encode()
    ccmsetup_xml = (
        '<?xml version="1.0" encoding="utf-8"?>\r\n'
        f'<Manifest Version="{site.client_version}" ProductCode="{site.client_product_code}" '
        f'PackageID="{site.client_package_id}" SiteCode="{site.code}">\r\n'
        f'  <Item FileName="client.msi" FileHash="{hashlib.sha256(msi).hexdigest().upper()}" '
        f'FileSize="{len(msi)}" ItemType="MSI" />\r\n</Manifest>\r\n'
    ).encode()
    cab = _cab({"ccmsetup.xml": ccmsetup_xml})
    blobs = {"ccmsetup.cab": cab, "client.msi": msi}
    # per-process temporary names: MP replicas starting together each write the same bytes, then rename
    for name, blob in blobs.items():
        tmp = folder / f"{name}.{os.getpid()}.tmp"
        tmp.write_bytes(blob)
        tmp.replace(folder / name)
    manifest = {
        "package_id": site.client_package_id, "version": PACKAGE_VERSION,
        "client_version": site.client_version, "product_code": site.client_product_code,
        "files": [_entry(n, b) for n, b in blobs.items()],
    }
    tmp = folder / f"manifest.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    return folder


def manifest(lab: Lab) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((package_dir(lab) / "manifest.json").read_text())
    return data
