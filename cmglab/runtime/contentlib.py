"""The site's content: the packages and applications distributed to the distribution point.

Each package's source files sit in `<lab>/content/<folder>/` (the client package, `<site>00001`, is the
folder the management point builds); `<lab>/content/catalog.json` names the others: package ID, name,
kind (package or application), content ID (`MEM00002` for a package, `Content_<guid>` for an
application, as the product names them) and version. The DP renders its content library (PkgLib,
DataLib, FileLib) from this; the MP names the DP in content locations from it.

Names inside a package are matched case-insensitively, as NTFS does; nothing but regular files and
folders under the package's own folder is ever resolved (no symbolic links, no dot-files).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from cmglab.core.labconfig import LabConfig

CATALOG = "catalog.json"
# characters Windows refuses in a file name, plus the separators: a name with one is never a package file
_BAD_NAME = re.compile(r'[\x00-\x1f<>:"/\\|?*]')


@dataclass(frozen=True)
class Package:
    package_id: str
    name: str
    content_id: str
    version: int = 1
    kind: str = "package"  # package | application
    folder: str = ""

    @property
    def content_version(self) -> str:
        """`<content ID>.<version>`: the name of its DataLib folder and of its signature file."""
        return f"{self.content_id}.{self.version}"


@dataclass(frozen=True)
class ContentFile:
    path: str  # relative, with '/' between folders
    size: int
    sha256: str  # upper-case hex, as the content library writes it
    mtime: float


def valid_name(name: str) -> bool:
    return (
        bool(name)
        and name not in (".", "..")
        and not name.startswith(".")
        and not _BAD_NAME.search(name)
        and not name.endswith((" ", "."))
    )


class ContentLibrary:
    def __init__(self, root: Path, config: LabConfig) -> None:
        self.root, self.config = root, config
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()

    # -- the catalogue -------------------------------------------------------------------------
    def client_package(self) -> Package:
        pid = self.config.site.client_package_id
        return Package(pid, "Configuration Manager Client Package", pid, 1, "package", pid)

    def packages(self) -> list[Package]:
        out = [self.client_package()]
        path = self.root / CATALOG
        if path.exists():
            out += [Package(**p) for p in json.loads(path.read_text()).get("packages", [])]
        return out

    def find(self, key: str) -> Package | None:
        """A package by package ID, content ID, or either with its `.version` (case-insensitive)."""
        key = key.lower()
        for p in self.packages():
            if key in (
                p.package_id.lower(),
                p.content_id.lower(),
                p.content_version.lower(),
                f"{p.package_id}.{p.version}".lower(),
            ):
                return p
        return None

    def _save(self, packages: list[Package]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{CATALOG}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"packages": [asdict(p) for p in packages]}, indent=2) + "\n")
        tmp.replace(self.root / CATALOG)

    def next_package_id(self) -> str:
        used = {p.package_id.upper() for p in self.packages()}
        code = self.config.site.code.upper()
        n = 2
        while f"{code}{n:05X}" in used:
            n += 1
        return f"{code}{n:05X}"

    def add(self, source: Path, name: str, *, kind: str = "package") -> Package:
        """Copy `source` (a folder, or one file) into the library as a new package or application."""
        if not source.exists():
            raise FileNotFoundError(source)
        package_id = self.next_package_id()
        content_id = package_id if kind == "package" else f"Content_{uuid.uuid4()}"
        folder = self.root / content_id
        if folder.exists():
            raise FileExistsError(folder)
        tmp = self.root / f".{content_id}.{os.getpid()}.tmp"
        try:  # copied aside, then renamed: a failed copy leaves nothing half-distributed
            if source.is_dir():
                shutil.copytree(source, tmp, symlinks=False)
            else:
                tmp.mkdir(parents=True)
                shutil.copy2(source, tmp / source.name)
            tmp.replace(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        entry = Package(package_id, name, content_id, 1, kind, content_id)
        others = [p for p in self.packages()[1:]]
        self._save([*others, entry])
        return entry

    # -- files ---------------------------------------------------------------------------------
    def folder(self, package: Package) -> Path:
        return self.root / package.folder

    def sha256(self, path: Path) -> str:
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._hashes.get(key)
        if cached:
            return cached
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        value = digest.hexdigest().upper()
        with self._lock:
            self._hashes[key] = value
        return value

    def resolve(self, package: Package, parts: list[str]) -> Path | None:
        """The file or folder at `parts` inside the package, matched case-insensitively; None when
        there is none, when a name is not a valid Windows file name, or when anything on the way is a
        symbolic link or not a regular file/folder."""
        root = self.folder(package)
        try:
            if not stat.S_ISDIR(os.lstat(root).st_mode):
                return None
        except OSError:
            return None
        current = root
        for part in parts:
            if not valid_name(part):
                return None
            match = None
            try:
                with os.scandir(current) as it:
                    for entry in it:
                        if entry.name.lower() == part.lower() and valid_name(entry.name):
                            match = entry
                            break
            except (NotADirectoryError, FileNotFoundError, PermissionError):
                return None
            if (
                match is None
                or match.is_symlink()
                or not (match.is_dir(follow_symlinks=False) or match.is_file(follow_symlinks=False))
            ):
                return None
            current = Path(match.path)
        real_root, real = os.path.realpath(root), os.path.realpath(current)
        if real != real_root and not real.startswith(real_root + os.sep):
            return None
        return current

    def children(self, folder: Path) -> list[os.DirEntry[str]]:
        """A folder's files and folders as the DP shows them (folders first, then by name)."""
        with os.scandir(folder) as it:
            entries = [
                e
                for e in it
                if valid_name(e.name)
                and not e.is_symlink()
                and (e.is_dir(follow_symlinks=False) or e.is_file(follow_symlinks=False))
            ]
        return sorted(entries, key=lambda e: (not e.is_dir(follow_symlinks=False), e.name.lower()))

    def files(self, package: Package) -> list[ContentFile]:
        """Every file of the package, recursively (what DataLib indexes and the signature names)."""
        out: list[ContentFile] = []
        root = self.folder(package)
        if not root.is_dir():
            return out

        def walk(folder: Path, prefix: str) -> None:
            for e in self.children(folder):
                rel = f"{prefix}{e.name}"
                if e.is_dir(follow_symlinks=False):
                    walk(Path(e.path), rel + "/")
                else:
                    st = e.stat(follow_symlinks=False)
                    out.append(ContentFile(rel, st.st_size, self.sha256(Path(e.path)), st.st_mtime))

        walk(root, "")
        return out

    def by_hash(self, sha256: str) -> Path | None:
        """FileLib: the file with this hash in any package."""
        want = sha256.upper()
        for p in self.packages():
            for f in self.files(p):
                if f.sha256 == want:
                    return self.resolve(p, f.path.split("/"))
        return None
