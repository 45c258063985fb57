"""The content-enabled CMG answers a small package file from memory (issue 20) with what Starlette's FileResponse
sends for it: the same bytes and the same headers, in the same order; a file replaced is read again, and a large
one is left to FileResponse."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.responses import FileResponse

from cmglab.services.cmg.content import SMALL_FILE, ContentStore

MEDIA = "application/octet-stream"


def store(root: Path) -> ContentStore:
    return ContentStore(root, "https://cmg.lab.test", b"secret", enabled=True, default_package="MEM00001", lifetime=60)


def test_a_small_file_has_file_responses_headers_and_bytes(tmp_path: Path) -> None:
    f = tmp_path / "ccmsetup.cab"
    f.write_bytes(b"MSCF" + bytes(range(256)))
    small = store(tmp_path).small_file(f, MEDIA)
    assert small is not None and small.body == f.read_bytes()
    assert small.raw_headers == FileResponse(f, media_type=MEDIA, stat_result=os.stat(f)).raw_headers


def test_a_replaced_file_is_read_again(tmp_path: Path) -> None:
    s, f = store(tmp_path), tmp_path / "client.msi"
    f.write_bytes(b"first")
    first = s.small_file(f, MEDIA)
    assert first is not None and s.small_file(f, MEDIA) is first  # kept
    replacement = tmp_path / "client.msi.new"
    replacement.write_bytes(b"second!")
    replacement.replace(f)  # another inode, size and mtime
    second = s.small_file(f, MEDIA)
    assert second is not None and second.body == b"second!"
    assert second.raw_headers == FileResponse(f, media_type=MEDIA, stat_result=os.stat(f)).raw_headers


def test_a_large_file_is_left_to_file_response(tmp_path: Path) -> None:
    f = tmp_path / "big.bin"
    f.write_bytes(b"\0" * (SMALL_FILE + 1))
    assert store(tmp_path).small_file(f, MEDIA) is None
