"""The content-enabled CMG's cloud storage: the client package the site distributed into
`<lab>/content/<package_id>/` (ccmsetup.cab, client.msi, manifest.json).

`getcontentxmlsecure?pid=&cid=` (CCM token required) answers an XML list of the package's files,
each with size, SHA-256 and a signed download URL (`se` expiry, `sig` HMAC: the lab's stand-in for
a storage SAS), like the real CMG hands out storage URLs. A file URL is honoured with a valid
signature or with a CCM bearer token.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from starlette.responses import FileResponse

from cmglab.services.cmg.errors import CMGError
from cmglab.wire.cloud_config import CloudConfig

CONTENT_PREFIX = "/downloadrestservice.svc/content"
SMALL_FILE = 256 * 1024  # a file up to this size is answered from memory (read once per version)
KEPT_FILES = 64  # small files kept (the oldest go first)


@dataclass(frozen=True)
class ContentFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class SmallFile:
    """A package file's bytes and the headers Starlette's FileResponse sends for it (same names, order and values:
    its content type, accept-ranges, and from the file's stat: length, last-modified, the ETag of mtime-size)."""

    stamp: tuple[int, int, int, int]  # device, inode, mtime (ns), size: the version read
    body: bytes
    raw_headers: list[tuple[bytes, bytes]]


class ContentStore:
    def __init__(
        self, root: Path, base_url: str, secret: bytes, *, enabled: bool, default_package: str, lifetime: int
    ) -> None:
        self.root, self.base_url, self.secret = root, base_url.rstrip("/"), secret
        self.enabled, self.default_package, self.lifetime = enabled, default_package, lifetime
        self._hashes: dict[Path, tuple[int, str]] = {}
        self._small: OrderedDict[Path, SmallFile] = OrderedDict()

    def enabled_by(self, config: CloudConfig | None) -> bool:
        """The site setting "content-enabled CMG" as the connection point last published it (each heartbeat:
        a change applies live); lab.json's value until the first configuration arrives."""
        return config.content.enabled if config is not None else self.enabled

    def package(self, config: CloudConfig | None) -> tuple[str, int]:
        if config is None:
            return self.default_package, 1
        return config.content.package_id or self.default_package, config.content.version or 1

    def _folder(self, package_id: str, config: CloudConfig | None) -> Path:
        if not self.enabled_by(config):
            raise CMGError(404, "ContentNotEnabled", "this cloud management gateway does not store content")
        published, _ = self.package(config)
        if package_id.lower() != published.lower():
            raise CMGError(404, "ContentNotFound", f"package {package_id} is not on this gateway")
        folder = self.root / published
        if not folder.is_dir():
            raise CMGError(404, "ContentNotFound", f"package {published} has not been distributed to the gateway")
        return folder

    def _sha256(self, path: Path) -> str:
        stamp = path.stat().st_mtime_ns
        cached = self._hashes.get(path)
        if cached and cached[0] == stamp:
            return cached[1]
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        value = digest.hexdigest().upper()
        self._hashes[path] = (stamp, value)
        return value

    def files(self, package_id: str, config: CloudConfig | None) -> list[ContentFile]:
        folder = self._folder(package_id, config)
        return [
            ContentFile(p.name, p.stat().st_size, self._sha256(p))
            for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")
        ]

    def _signature(self, package_id: str, name: str, expires: int) -> str:
        message = f"{package_id.upper()}/{name}:{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def file_url(self, package_id: str, name: str) -> str:
        expires = int(time.time()) + self.lifetime
        sig = self._signature(package_id, name, expires)
        return f"{self.base_url}{CONTENT_PREFIX}/{quote(package_id)}/{quote(name)}?se={expires}&sig={sig}"

    def content_xml(self, package_id: str, content_id: str, config: CloudConfig | None) -> str:
        published, version = self.package(config)
        if content_id.split(".", 1)[0].lower() != published.lower():
            raise CMGError(404, "ContentNotFound", f"content {content_id} is not on this gateway")
        files = self.files(package_id, config)
        lines = [
            '<?xml version="1.0" encoding="utf-8"?>',
            f"<ContentInfo PackageID={quoteattr(published)} ContentID={quoteattr(content_id)} "
            f'Version="{version}" FileCount="{len(files)}">',
        ]
        for f in files:
            lines.append(
                f'  <File Name={quoteattr(f.name)} Size="{f.size}" HashAlgorithm="SHA256" '
                f'Hash="{f.sha256}" URL={quoteattr(self.file_url(published, f.name))}/>'
            )
        lines.append("</ContentInfo>")
        return "\n".join(lines) + "\n"

    def signed(self, package_id: str, name: str, expires: str | None, sig: str | None) -> bool:
        if not expires or not sig or not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(sig, self._signature(package_id, name, int(expires)))

    def small_file(self, path: Path, media_type: str) -> SmallFile | None:
        """`path` (a file `path` resolved) from memory when it is small: every device downloads the same client
        files, and FileResponse takes four thread-pool round trips (stat, open, read, close) and a task group per
        download of a few hundred bytes (issue 20). Each request stats the file: a file replaced (another inode,
        mtime or size) is read again. None: too large, or it changed while being read (FileResponse serves it)."""
        st = path.stat()
        if st.st_size > SMALL_FILE:
            return None
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._small.get(path)
        if cached is not None and cached.stamp == stamp:
            self._small.move_to_end(path)
            return cached
        body = path.read_bytes()
        if len(body) != st.st_size:
            return None
        small = self._small[path] = SmallFile(
            stamp,
            body,
            FileResponse(path, media_type=media_type, stat_result=st).raw_headers,  # its own headers
        )
        while len(self._small) > KEPT_FILES:
            self._small.popitem(last=False)
        return small

    def path(self, package_id: str, name: str, config: CloudConfig | None) -> Path:
        folder = self._folder(package_id, config)
        target = folder / name
        if "/" in name or "\\" in name or name.startswith(".") or not target.is_file():
            raise CMGError(404, "ContentNotFound", f"{package_id}/{name} is not on this gateway")
        return target
