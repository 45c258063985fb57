"""Directory listings as IIS directory browsing renders them, and the content library's INI files.

The frame is IIS's (title and H1 `host - /path/`, a `<pre>` of lines `date time size-or-&lt;dir&gt; <A>`),
with what the DP's content handler does differently from static browsing, which the tools depend on:
links are absolute `http://` URLs (SCCMSecrets follows them with requests and only swaps the scheme
for HTTPS), folders have no trailing slash (tools take the last path segment as the package or
folder name) and there is no "[To Parent Directory]" line.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote

from cmglab.runtime.contentlib import ContentFile, Package

# bytes after each file name in a signature file (sccm-http-looter finds names 512 bytes before them)
SIGNATURE_MARK = bytes([0x18, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x01, 0x00, 0x01])
_FILETIME_EPOCH = 11644473600  # seconds from 1601-01-01 to 1970-01-01


@dataclass(frozen=True)
class Entry:
    name: str
    is_dir: bool
    size: int
    mtime: float


def _stamp(mtime: float) -> str:
    t = datetime.fromtimestamp(mtime, UTC)
    date = f"{t.month}/{t.day}/{t.year}"
    hour = t.hour % 12 or 12
    clock = f"{hour}:{t.minute:02d} {'AM' if t.hour < 12 else 'PM'}"
    return f"{date:>10} {clock:>8}"


def render(host: str, base: str, path: list[str], entries: list[Entry]) -> str:
    """`host` as the client named it, `base` the `http://host` the links start with, `path` the
    listed folder's URL segments (vdir first)."""
    shown = "/" + "".join(f"{p}/" for p in path)
    lines = []
    for e in entries:
        href = base + "/" + "/".join(quote(p, safe="$") for p in [*path, e.name])
        size = "&lt;dir&gt;" if e.is_dir else str(e.size)
        width = 12 + (len(size) - 5 if e.is_dir else 0)  # "&lt;dir&gt;" is shown as 5 characters
        lines.append(f'{_stamp(e.mtime)} {size:>{width}} <A HREF="{escape(href)}">{escape(e.name)}</A><br>')
    title = escape(f"{host} - {shown}")
    return (
        f"<html><head><title>{title}</title></head><body><H1>{title}</H1><hr>\r\n\r\n<pre>"
        + "".join(lines)
        + "</pre><hr></body></html>"
    )


def filetime(mtime: float) -> int:
    return int((mtime + _FILETIME_EPOCH) * 10_000_000)


def file_ini(f: ContentFile) -> str:
    """DataLib\\<content>.<version>\\<file>.INI: where the file's bytes are in FileLib (by hash)."""
    return (
        f"[File]\r\nSize={f.size}\r\nTimeModified={filetime(f.mtime)}\r\nAttributes=32\r\n"
        f"HashAlgorithm=SHA256\r\nHash={f.sha256}\r\n"
    )


def folder_ini(mtime: float) -> str:
    return f"[Folder]\r\nTimeModified={filetime(mtime)}\r\nAttributes=16\r\n"


def content_hash(files: list[ContentFile]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.path.replace('/', chr(92))}:{f.sha256}\n".encode())
    return digest.hexdigest().upper()


def content_ini(package: Package, files: list[ContentFile]) -> str:
    """DataLib\\<content>.<version>.INI."""
    return (
        f"[Content]\r\nHash={content_hash(files)}\r\nHashAlgorithm=SHA256\r\nVersion={package.version}\r\n"
        f"Size={sum(f.size for f in files)}\r\nFileCount={len(files)}\r\n"
        f"[Package]\r\nPackageID={package.package_id}\r\n"
    )


def pkglib_ini(package: Package) -> str:
    """PkgLib\\<package ID>.INI: the package's content IDs (an application's with its version)."""
    key = package.content_id if package.kind == "package" else package.content_version
    return f"[Packages]\r\n{key}=\r\n\r\n[Info]\r\nFlags=0\r\n"


def signature(package: Package, files: list[ContentFile]) -> bytes:
    """SMS_DP_SMSSIG$\\<content>.<version>.tar: the lab's stand-in for the RDC signature file. Like
    the real one it is no real tar: per file a 512-byte NUL-padded name (Windows path) followed by the
    record mark, the size and the SHA-256."""
    out = bytearray(f"{package.content_version}\x00".encode().ljust(512, b"\x00"))
    for f in files:
        name = f.path.replace("/", "\\").encode("utf-8")[:511]
        out += name.ljust(512, b"\x00") + SIGNATURE_MARK + struct.pack("<Q", f.size) + bytes.fromhex(f.sha256)
    return bytes(out)
