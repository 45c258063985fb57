"""`Range: bytes=...` as IIS's static file handler takes it (BITS downloads content in ranges).

- no header, another unit, or a malformed value: the whole file (200), as IIS ignores what it cannot parse;
- one satisfiable range: 206 with Content-Range;
- a range starting past the end, or a number too large for 64 bits (the MS15-034 probe
  `bytes=0-18446744073709551615`): 416 with `Content-Range: bytes */size`;
- several ranges: the whole file (RFC 9110 lets a server ignore Range; the lab does not build
  multipart/byteranges).
"""

from __future__ import annotations

import re

from cmglab.services.distribution_point.errors import IISError

_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
MAX_INT64 = 2**63 - 1


def parse(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive, or None for the whole file; IISError(416) when unsatisfiable."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        return None
    parts = spec.split(",")
    if len(parts) != 1:
        return None
    m = _RANGE.match(parts[0])
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first_s, last_s = m.group(1), m.group(2)
    unsatisfiable = IISError(
        416, f"range {spec!r} of a {size}-byte file", headers=[("Content-Range", f"bytes */{size}")]
    )
    if len(first_s) > 19 or len(last_s) > 19 or int(first_s or 0) > MAX_INT64 or int(last_s or 0) > MAX_INT64:
        raise unsatisfiable
    if not first_s:  # the last N bytes
        n = int(last_s)
        if n == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - n), size - 1
    first = int(first_s)
    if last_s and int(last_s) < first:
        return None  # invalid: ignored
    if first >= size:
        raise unsatisfiable
    last = int(last_s) if last_s else size - 1
    return first, min(last, size - 1)
