"""The console's static view (`/?static=1`, `/trace/<id>?static=1`): the same facts as the live page,
rendered once on the server as plain HTML with no script and no event stream, so that `curl`, `chromium
--headless --screenshot` or `--dump-dom` get a finished page (the live page never idles: its event
stream stays open, and its tables fill in after the load event)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from cmglab.services.console.traces import failed
from cmglab.wire.kinds import ConflictStatus


def _row(cells: Iterable[Any], cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<tr{attr}>" + "".join(f"<td>{escape(str(c if c is not None else ''))}</td>" for c in cells) + "</tr>"


def _table(table_id: str, head: Iterable[str], rows: list[str], empty: str) -> str:
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(rows) or f'<tr><td colspan="20" class="note">{escape(empty)}</td></tr>'
    return f'<table id="{table_id}"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'


def _bytes(n: Any) -> str:
    n = int(n or 0)
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KB"


def render(
    *,
    site_code: str,
    services: list[dict[str, Any]],
    devices: list[dict[str, Any]],
    summaries: list[dict[str, Any]],
    traces: list[dict[str, Any]],
    title: str,
    live_url: str,
    conflicts: list[dict[str, Any]] | None = None,
) -> str:
    service_rows = [
        _row((s["name"], s["health"], s["url"]), "" if s["health"] == "healthy" else "fail") for s in services
    ]
    device_rows = [
        _row(
            (
                d["name"],
                "yes" if d.get("joined") else "no",
                "yes" if d.get("installed") else "no",
                "yes" if d.get("registered") else "no",
                (d.get("ccm_token_expires") or "").replace("T", " ")[:19],
            )
        )
        for d in devices
    ]
    conflict_rows = [
        _row(
            (c["sms_id"], c.get("netbios_name") or "", c["kind"], c["status"], c.get("new_sms_id") or ""),
            "fail" if c["status"] == ConflictStatus.PENDING else "",
        )
        for c in conflicts or []
    ]
    trace_rows = [
        f'<tr class="{"fail" if t["failed"] else ""}"><td>{escape(t["start"].replace("T", " ")[:19])}</td>'
        f"<td>{escape(t.get('step') or '-')}</td><td>{escape(t.get('device') or '(untagged)')}</td>"
        f'<td><a href="/trace/{escape(t["trace_id"])}?static=1">{escape(t["title"])}</a></td>'
        f"<td>{escape(str(t.get('status') or '...'))}</td></tr>"
        for t in summaries
    ]
    hop_rows = []
    for t in traces:
        for h in t["hop_list"]:
            auth = ": ".join(x for x in (h.get("auth_kind"), h.get("auth_subject")) if x)
            hop_rows.append(
                _row(
                    (
                        h["index"] + 1,
                        t.get("step") or "",
                        f"{h['caller']} -> {h['service']}",
                        h["method"],
                        h["url"],
                        h.get("rewritten_url") or "",
                        h.get("status") or "no reply",
                        f"{_bytes(h.get('request_bytes'))} / {_bytes(h.get('response_bytes'))}",
                        f"{float(h.get('elapsed_ms') or 0):.1f} ms",
                        auth,
                        h.get("client_cert_subject") or "",
                        h.get("reason") or "",
                    ),
                    "fail" if failed(h) else "",
                )
            )
    rendered = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cmglab console (static): {escape(title)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/console.css">
</head>
<body data-static="1">
<header>
  <h1>cmglab console</h1>
  <span id="site">site {escape(site_code)}</span>
  <span id="live" class="badge">static view, rendered {rendered}: reload for news</span>
  <span class="spacer"></span>
  <a href="{escape(live_url)}">live view</a>
</header>
<main>
  <aside>
    <section><h2>Services</h2>{_table("services", ("service", "health", "url"), service_rows, "no services")}</section>
    <section><h2>Devices</h2>{
        _table(
            "devices",
            ("device", "joined", "installed", "registered", "CCM token expires"),
            device_rows,
            "no devices yet",
        )
    }</section>
    <section><h2>Conflicting records</h2>{
        _table("conflicts", ("SMSID proposed", "device", "kind", "status", "new SMSID"), conflict_rows, "none")
    }</section>
    <section><h2>Traces</h2>{
        _table("traces", ("start", "flow", "device", "first request", "status"), trace_rows, "no traces yet")
    }</section>
  </aside>
  <article>
    <h2 id="view-title">{escape(title)}</h2>
    {
        _table(
            "hops",
            (
                "#",
                "flow",
                "hop",
                "method",
                "external URL",
                "rewritten URL",
                "status",
                "in / out",
                "elapsed",
                "auth",
                "TLS client certificate",
                "reason",
            ),
            hop_rows,
            "no hops",
        )
    }
  </article>
</main>
</body>
</html>
"""


def live_url(path: str, device: str, step: str) -> str:
    query = urlencode({k: v for k, v in (("device", device), ("step", step)) if v})
    return path + (f"?{query}" if query else "")
