"""What each URL under the DP's virtual directories is, read from the content library.

- `SMS_DP_SMSPKG$/` (and `NOCERT_SMS_DP_SMSPKG$/`): the content library's root (DataLib, FileLib, PkgLib)
  - `<package ID | content ID>[.<version>]/<folders...>/<file>`: a package's files and folder listings
  - `Datalib`: a `<content>.<version>` folder and a `<content>.<version>.INI` per content; the folder's
    own URL shows the same Datalib page (as on a real DP); `Datalib/<content>.<version>/<path>.INI` the
    file's or folder's INI with its hash
  - `FileLib/<hash[:4]>/<hash>`: a file by its SHA-256; `PkgLib/<package ID>.INI`
- `SMS_DP_SMSSIG$/<content>.<version>.tar`: the content's signature file
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cmglab.runtime.contentlib import ContentLibrary, Package
from cmglab.services.distribution_point import listing
from cmglab.services.distribution_point.errors import not_found
from cmglab.services.distribution_point.listing import Entry

PKG_VDIRS = ("sms_dp_smspkg$", "nocert_sms_dp_smspkg$")
SIG_VDIR = "sms_dp_smssig$"
VDIRS = (*PKG_VDIRS, SIG_VDIR)
LIB_FOLDERS = ("DataLib", "FileLib", "PkgLib")


@dataclass(frozen=True)
class Listing:
    path: list[str]  # URL segments of the listed folder (vdir first, as requested)
    entries: list[Entry]


@dataclass(frozen=True)
class Text:
    body: bytes
    media_type: str


@dataclass(frozen=True)
class File:
    path: Path
    package: Package


Result = Listing | Text | File


def _dir_mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class ContentView:
    def __init__(self, library: ContentLibrary) -> None:
        self.library = library

    def resolve(self, parts: list[str]) -> Result:
        """`parts`: the normalised URL segments, vdir first."""
        vdir, rest = parts[0], parts[1:]
        if vdir.lower() == SIG_VDIR:
            return self._signature(vdir, rest)
        if not rest:
            mtime = _dir_mtime(self.library.root)
            return Listing([vdir], [Entry(n, True, 0, mtime) for n in LIB_FOLDERS])
        head = rest[0].lower()
        if head == "datalib":
            return self._datalib(vdir, rest)
        if head == "filelib":
            return self._filelib(vdir, rest)
        if head == "pkglib":
            return self._pkglib(vdir, rest)
        package = self.library.find(rest[0])
        if package is None:
            raise not_found(f"package {rest[0]}")
        return self._package(vdir, package, rest[1:])

    # -- a package's own files ---------------------------------------------------------------------
    def _package(self, vdir: str, package: Package, rel: list[str]) -> Result:
        target = self.library.resolve(package, rel)
        if target is None:
            raise not_found(f"{package.content_version}/{'/'.join(rel)}")
        if target.is_file():
            return File(target, package)
        # links name the versioned content, as the DP's handler does
        return Listing([vdir, package.content_version, *rel], self._entries(target))

    def _entries(self, folder: Path) -> list[Entry]:
        out = []
        for e in self.library.children(folder):
            st = e.stat(follow_symlinks=False)
            out.append(Entry(e.name, e.is_dir(follow_symlinks=False), st.st_size, st.st_mtime))
        return out

    # -- the content library ---------------------------------------------------------------------
    def _datalib_page(self, vdir: str, folder: str) -> Listing:
        entries = []
        for p in self.library.packages():
            root = self.library.folder(p)
            if not root.is_dir():
                continue
            mtime = _dir_mtime(root)
            entries.append(Entry(p.content_version, True, 0, mtime))
            ini = listing.content_ini(p, self.library.files(p)).encode()
            entries.append(Entry(f"{p.content_version}.INI", False, len(ini), mtime))
        return Listing([vdir, folder], entries)

    def _datalib(self, vdir: str, rest: list[str]) -> Result:
        if len(rest) == 1:
            return self._datalib_page(vdir, rest[0])
        name = rest[1]
        if len(rest) == 2 and name.upper().endswith(".INI"):
            package = self._versioned(name[:-4])
            return Text(listing.content_ini(package, self.library.files(package)).encode(), "text/plain")
        package = self._versioned(name)
        rel = rest[2:]
        if rel and rel[-1].upper().endswith(".INI"):
            target = self.library.resolve(package, [*rel[:-1], rel[-1][:-4]])
            if target is None:
                raise not_found(f"DataLib {name}/{'/'.join(rel)}")
            if target.is_dir():
                return Text(listing.folder_ini(_dir_mtime(target)).encode(), "text/plain")
            wanted = "/".join([*rel[:-1], target.name]).lower()
            for f in self.library.files(package):
                if f.path.lower() == wanted:
                    return Text(listing.file_ini(f).encode(), "text/plain")
            raise not_found(f"DataLib {name}/{'/'.join(rel)}")
        target = self.library.resolve(package, rel)
        if target is None or not target.is_dir():
            raise not_found(f"DataLib {name}/{'/'.join(rel)}")
        return self._datalib_page(vdir, rest[0])  # a DataLib folder shows the Datalib page again

    def _versioned(self, name: str) -> Package:
        package = self.library.find(name)
        if package is None or name.lower() != package.content_version.lower():
            raise not_found(f"DataLib {name}")
        return package

    def _filelib(self, vdir: str, rest: list[str]) -> Result:
        hashes: dict[str, tuple[int, float]] = {}
        if len(rest) > 3:
            raise not_found("FileLib " + "/".join(rest[1:]))
        if len(rest) == 3:
            digest = rest[2].upper()
            if len(digest) != 64 or not digest.startswith(rest[1].upper()):
                raise not_found(f"FileLib {rest[2]}")
            path = self.library.by_hash(digest)
            if path is None:
                raise not_found(f"FileLib {rest[2]}")
            package = next(
                p
                for p in self.library.packages()
                if os.path.commonpath([self.library.folder(p), path]) == str(self.library.folder(p))
            )
            return File(path, package)
        for p in self.library.packages():
            for f in self.library.files(p):
                hashes[f.sha256] = (f.size, f.mtime)
        if len(rest) == 1:
            prefixes: dict[str, float] = {}
            for h, (_, mtime) in hashes.items():
                prefixes[h[:4]] = max(prefixes.get(h[:4], 0.0), mtime)
            return Listing([vdir, rest[0]], [Entry(k, True, 0, v) for k, v in sorted(prefixes.items())])
        prefix = rest[1].upper()
        entries = [Entry(h, False, size, mtime) for h, (size, mtime) in sorted(hashes.items()) if h[:4] == prefix]
        if not entries:
            raise not_found(f"FileLib {rest[1]}")
        return Listing([vdir, rest[0], rest[1]], entries)

    def _pkglib(self, vdir: str, rest: list[str]) -> Result:
        packages = [p for p in self.library.packages() if self.library.folder(p).is_dir()]
        if len(rest) == 1:
            return Listing(
                [vdir, rest[0]],
                [
                    Entry(f"{p.package_id}.INI", False, len(listing.pkglib_ini(p)), _dir_mtime(self.library.folder(p)))
                    for p in packages
                ],
            )
        if len(rest) == 2 and rest[1].upper().endswith(".INI"):
            for p in packages:
                if p.package_id.lower() == rest[1][:-4].lower():
                    return Text(listing.pkglib_ini(p).encode(), "text/plain")
        raise not_found("PkgLib " + "/".join(rest[1:]))

    def _signature(self, vdir: str, rest: list[str]) -> Result:
        if not rest:
            packages = [p for p in self.library.packages() if self.library.folder(p).is_dir()]
            return Listing(
                [vdir],
                [
                    Entry(
                        f"{p.content_version}.tar",
                        False,
                        len(listing.signature(p, self.library.files(p))),
                        _dir_mtime(self.library.folder(p)),
                    )
                    for p in packages
                ],
            )
        if len(rest) == 1 and rest[0].lower().endswith(".tar"):
            package = self._versioned(rest[0][:-4])
            if self.library.folder(package).is_dir():
                return Text(listing.signature(package, self.library.files(package)), "application/x-tar")
        raise not_found("SMSSIG " + "/".join(rest))
