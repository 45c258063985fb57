"""Request URLs to path segments, refused the way HTTP.sys and IIS request filtering refuse them.

Order as on Windows: HTTP.sys decodes the URL once, turns `\\` into `/`, resolves `.` and `..`
(a path climbing above the site root is `400 Bad Request - Invalid URL`) and rejects control
characters; request filtering then refuses what would decode again (`%25xx`, `+`: double escaping,
404.11). What is left is a list of names, matched against the content library by name only.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from cmglab.services.distribution_point.errors import IISError

_ESCAPE = re.compile(rb"%[0-9A-Fa-f]{2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def segments(raw_path: bytes) -> list[str]:
    """The decoded, normalised segments of a request path (empty segments dropped, as IIS does)."""
    raw = raw_path.split(b"?", 1)[0]
    if raw[:7].lower() == b"http://" or raw[:8].lower() == b"https://":  # absolute-form request target
        rest = raw.split(b"//", 1)[1]
        raw = b"/" + rest.split(b"/", 1)[1] if b"/" in rest else b"/"
    if b"%" in raw and not all(_ESCAPE.match(raw, i) for i in range(len(raw)) if raw[i : i + 1] == b"%"):
        raise IISError(400, "a malformed percent escape in the URL")
    try:
        path = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        raise IISError(400, "the URL is not UTF-8") from e
    if _CONTROL.search(path):
        raise IISError(400, "a control character in the URL")
    path = path.replace("\\", "/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                raise IISError(400, "the URL climbs above the site root")
            out.pop()
            continue
        out.append(part)
    decoded = "/".join(out)
    if "%" in decoded or "+" in decoded:
        raise IISError(404, "double escape sequence in the URL (request filtering)", substatus=11)
    if ":" in decoded:  # drive letters, alternate data streams
        raise IISError(400, "a ':' in the URL")
    return out
