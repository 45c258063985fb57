"""JSON with a bounded nesting depth: checked on the raw bytes before the parser sees them.

Python's json parser recurses per nesting level; a body of 100,000 `[` is a `RecursionError` (a 500) instead
of a bad request. `loads` refuses anything nested deeper than `MAX_DEPTH` with `TooDeep`, a ValueError, so
callers that already answer a JSON syntax error answer this one the same way (400 in their own shape).
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64  # the protocol bodies nest 4-5 levels; real services cap far below the parser's recursion
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class TooDeep(ValueError):
    pass


def check_depth(raw: bytes | str, limit: int = MAX_DEPTH) -> None:
    """TooDeep when a container opens more than `limit` levels deep (brackets inside strings do not count)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if data.count(b"[") + data.count(b"{") <= limit:  # the depth cannot pass the openers: no scan (C speed)
        return
    depth = 0
    for m in _TOKENS.finditer(data):
        token = m.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                raise TooDeep(f"JSON nested deeper than {limit} levels")
        elif token in (b"]", b"}"):
            depth -= 1


def loads(raw: bytes | str, limit: int = MAX_DEPTH) -> Any:
    check_depth(raw, limit)
    return json.loads(raw)
