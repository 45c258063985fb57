"""Recorded requests from every service, merged by trace ID into traces of hops.

A hop is one service's record of one request (its server span). Its caller is the hop whose span is
its parent (CMG -> connection point -> MP), else the client. The sequence of a trace is the call tree
walked depth first: each hop's request, then its callees, then its reply, which is exactly what a
sequence diagram of client -> CMG -> connection point -> MP draws.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from cmglab.wire.requests import Recorded
from cmglab.wire.tracing import cmglab_fields

CLIENT = "client"
# hop fields the console shows as they were recorded
_KEPT = (
    "service",
    "method",
    "url",
    "path",
    "status",
    "request_bytes",
    "response_bytes",
    "elapsed_ms",
    "rewritten_url",
    "auth_kind",
    "auth_subject",
    "client_cert_subject",
    "trace_id",
    "span_id",
    "parent_span_id",
    "tracestate",
    "connection_point",
    "time",
)
# where each service puts why it refused or failed a request
_REASONS = ("reason", "result", "error", "refused")
# the site's own periodic traffic (the connection point reads the published configuration every
# heartbeat): listed only on request, or it would bury the devices' traces
BACKGROUND_PATHS = frozenset({"/ccm_cloud/config"})


def _start(record: Recorded) -> str:
    end = datetime.fromisoformat(record["time"])
    return (end - timedelta(milliseconds=float(record.get("elapsed_ms") or 0))).isoformat(timespec="milliseconds")


def hop_of(record: Recorded) -> dict[str, Any]:
    fields = cast(dict[str, Any], record)  # read by name from the lists below
    hop = {k: fields.get(k) for k in _KEPT}
    hop["start"] = _start(record)
    hop["reason"] = next((str(fields[k]) for k in _REASONS if fields.get(k)), None)
    hop.update(cmglab_fields(record.get("tracestate")))
    return hop


def failed(hop: dict[str, Any]) -> bool:
    return int(hop.get("status") or 0) >= 400 or int(hop.get("status") or 0) == 0


@dataclass
class Trace:
    trace_id: str
    hops: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (service, span) -> hop

    def add(self, hop: dict[str, Any]) -> None:
        self.hops[(hop["service"], hop["span_id"])] = hop

    def _tag(self, name: str) -> str:
        return next((h[name] for h in self.ordered_hops() if h.get(name)), "")

    def ordered_hops(self) -> list[dict[str, Any]]:
        return sorted(self.hops.values(), key=lambda h: h["start"])

    def summary(self) -> dict[str, Any]:
        hops = self.ordered_hops()
        first = hops[0]
        failing = [h for h in hops if failed(h)]
        return {
            "trace_id": self.trace_id,
            "device": self._tag("device"),
            "step": self._tag("step"),
            "start": first["start"],
            "end": max(h["time"] for h in hops),
            "hops": len(hops),
            "services": sorted({h["service"] for h in hops}),
            "title": f"{first['method']} {first['path']}",
            "status": first.get("status"),
            "failed": bool(failing),
            "reason": next((h["reason"] for h in reversed(self.sequence_hops()) if failed(h) and h["reason"]), None),
            "background": len(hops) == 1 and not first.get("device") and first["path"].lower() in BACKGROUND_PATHS,
        }

    def sequence_hops(self) -> list[dict[str, Any]]:
        """Hops in call order: a hop, then the calls made on its behalf."""
        by_span = {h["span_id"]: h for h in self.hops.values()}
        children: dict[str | None, list[dict[str, Any]]] = {}
        for h in self.ordered_hops():
            parent = h.get("parent_span_id")
            children.setdefault(parent if parent in by_span else None, []).append(h)
        out: list[dict[str, Any]] = []

        def walk(parent: str | None) -> None:
            for h in children.get(parent, []):
                out.append(h)
                walk(h["span_id"])

        walk(None)
        return out

    def detail(self) -> dict[str, Any]:
        """The trace for the diagram: hops in call order with their caller and depth, and the events
        (request arrows and reply arrows) in the order a sequence diagram draws them."""
        hops = self.sequence_hops()
        by_span = {h["span_id"]: i for i, h in enumerate(hops)}
        rows: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for i, h in enumerate(hops):
            parent = by_span.get(h.get("parent_span_id") or "")
            depth = rows[parent]["depth"] + 1 if parent is not None else 0
            rows.append(
                {**h, "index": i, "caller": hops[parent]["service"] if parent is not None else CLIENT, "depth": depth}
            )
        stack: list[int] = []
        for row in rows:  # replies of finished calls come before the next call at the same or lower depth
            while stack and rows[stack[-1]]["depth"] >= row["depth"]:
                events.append({"kind": "reply", "hop": stack.pop()})
            events.append({"kind": "request", "hop": row["index"]})
            stack.append(row["index"])
        events += [{"kind": "reply", "hop": i} for i in reversed(stack)]
        origin = next((r["index"] for r in reversed(rows) if failed(r)), None)
        return {**self.summary(), "hop_list": rows, "events": events, "failure_origin": origin}


class TraceStore:
    """The newest `capacity` traces, most recently changed last."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.traces: OrderedDict[str, Trace] = OrderedDict()

    def add(self, record: Recorded) -> Trace | None:
        if not record.get("trace_id") or not record.get("span_id") or not record.get("time"):
            return None  # a record from a service that predates tracing
        hop = hop_of(record)
        trace = self.traces.pop(hop["trace_id"], None) or Trace(hop["trace_id"])
        trace.add(hop)
        self.traces[trace.trace_id] = trace
        while len(self.traces) > self.capacity:
            self.traces.popitem(last=False)
        return trace

    def get(self, trace_id: str) -> Trace | None:
        return self.traces.get(trace_id.lower())

    def summaries(
        self, *, device: str = "", step: str = "", limit: int = 200, background: bool = False
    ) -> list[dict[str, Any]]:
        """Newest first, filtered by device and flow step (exact, case-insensitive)."""
        out = []
        for trace in sorted(self.traces.values(), key=lambda t: t.ordered_hops()[0]["start"], reverse=True):
            s = trace.summary()
            if matches(s, device, step) and (background or not s["background"]):
                out.append(s)
                if len(out) >= limit:
                    break
        return out

    def devices(self) -> dict[str, dict[str, Any]]:
        """Per traced device name: the steps seen and whether each last succeeded."""
        seen: dict[str, dict[str, Any]] = {}
        for trace in self.traces.values():
            s = trace.summary()
            if not s["device"]:
                continue
            d = seen.setdefault(s["device"], {"steps": {}, "last_seen": s["end"]})
            d["steps"][s["step"]] = not s["failed"]
            d["last_seen"] = max(d["last_seen"], s["end"])
        return seen

    def clear(self) -> None:
        self.traces.clear()


def matches(summary: dict[str, Any], device: str, step: str) -> bool:
    return (not device or summary["device"].lower() == device.lower()) and (
        not step or summary["step"].lower() == step.lower()
    )
