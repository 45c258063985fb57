"""The DP's IIS log (W3C extended format, IIS's default fields), the server-side view of content
requests: `<lab>/logs/distribution-point/u_ex.log` (one file; IIS rolls `u_exYYMMDD.log` daily)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

FIELDS = (
    "date time s-ip cs-method cs-uri-stem cs-uri-query s-port cs-username c-ip cs(User-Agent) "
    "cs(Referer) sc-status sc-substatus sc-win32-status time-taken"
)


def _field(value: str | None) -> str:
    """W3C fields cannot hold spaces: IIS writes '+' for them and '-' for nothing."""
    if not value:
        return "-"
    return value.replace(" ", "+").replace("\r", "").replace("\n", "")


class IISLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.stat().st_size == 0:
            now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
            path.write_text(
                f"#Software: Microsoft Internet Information Services 10.0\n#Version: 1.0\n"
                f"#Date: {now}\n#Fields: {FIELDS}\n"
            )

    def write(
        self,
        *,
        server_ip: str,
        method: str,
        stem: str,
        query: str,
        port: int,
        user: str | None,
        client_ip: str,
        user_agent: str | None,
        referer: str | None,
        status: int,
        substatus: int,
        win32: int,
        millis: int,
    ) -> str:
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        line = " ".join(
            [
                now,
                server_ip,
                method,
                _field(stem),
                _field(query),
                str(port),
                _field(user),
                client_ip,
                _field(user_agent),
                _field(referer),
                str(status),
                str(substatus),
                str(win32),
                str(millis),
            ]
        )
        with self.lock, self.path.open("a") as f:
            f.write(line + "\n")
        return line
