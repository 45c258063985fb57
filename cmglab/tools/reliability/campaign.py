"""One campaign: a fresh isolated lab, schemathesis, the hand-made corpus, then the counts."""

from __future__ import annotations

import socket
import ssl
import tempfile
import time
from pathlib import Path

import httpx

from cmglab.core.labconfig import DRS_RESOURCE
from cmglab.runtime.lab import Lab
from cmglab.tools.processes import LabProcesses, isolated_lab
from cmglab.tools.reliability import corpus, invariants, transport
from cmglab.tools.reliability.labview import SERVICES, LabView, lab_http, process_tracebacks
from cmglab.tools.reliability.material import CertFiles, Material
from cmglab.tools.reliability.report import Report, ServiceTally

LAB_SERVICES = ("pki", "entra", "management-point", "cmg", "cmg-connection-point")
ENV = {
    "CMGLAB_REQUEST_LOG_SIZE": "1000000",  # keep every record of the run: the counts come from them
    "CMGLAB_MAX_BODY_BYTES": str(4 * 1024 * 1024),  # the size-cap probe stays cheap
    "CMGLAB_CHANNEL_HEARTBEAT": "2",
    **transport.ENV,  # small head caps and timeouts: the listener attacks stay cheap
}
AAD_POWERSHELL = "1b730954-1685-4b74-9bfd-dac224a7b894"  # the public client dsregcmd's ROPC uses
FUZZ_SHARE = 0.6  # of the budget left after start-up; the corpus (~135 requests, ~10 s) and the checks follow


def run(out: Path, budget: float, *, lab_dir: Path | None = None) -> Report:
    """Run a campaign in a new lab (under `lab_dir`, else a temporary directory) and write the report."""
    started = time.monotonic()
    report = Report(budget_s=budget)
    with tempfile.TemporaryDirectory(prefix="cmglab-reliability-") as tmp:
        lab = isolated_lab((lab_dir or Path(tmp)) / "lab")
        procs = LabProcesses(lab, env=ENV)
        try:
            procs.ensure(*LAB_SERVICES, "distribution-point", "console")  # every listener meets the attacks
            _campaign(lab, report, Path(tmp) / "material", deadline=started + budget)
            attack_listeners(lab, procs, report)
        finally:
            procs.stop_all()
        report.elapsed_s = time.monotonic() - started
        report.write(out)
    return report


def _campaign(lab: Lab, report: Report, workdir: Path, *, deadline: float) -> None:
    view = LabView(lab)
    try:
        seqs = {s: view.last_seq(s) for s in SERVICES}
        tracebacks = process_tracebacks(lab)
        kit = corpus.Kit(Material(lab, workdir), drs_token(lab))
        # schemathesis and hypothesis come with the `e2e` extra: only the campaign needs them, not the lab
        from cmglab.tools.reliability import fuzz

        fuzz.run(lab, view, report, deadline=time.monotonic() + (deadline - time.monotonic()) * FUZZ_SHARE)
        send_corpus(kit, report)
        _collect(lab, view, report, seqs, tracebacks)
    finally:
        view.close()


def attack_listeners(lab: Lab, procs: LabProcesses, report: Report) -> None:
    """The raw-socket attacks on every listener (cmglab/tools/reliability/transport.py), counted as corpus."""
    pids = {name: sp.proc.pid for name, sp in procs.procs.items()}
    ident = lab.pki.issue_client("reliability-listener-attacker")
    cert = (ident.cert_path, ident.key_path)
    outcomes = list(transport.campaign(lab, pids, cert))
    cap = int(ENV["CMGLAB_MAX_BODY_BYTES"])
    for t in transport.targets(lab):
        if t.listener in ("entra", "management-point-http"):
            method, path = (
                (b"POST", b"/common/oauth2/token") if t.listener == "entra" else (b"CCM_POST", b"/ccm_system/request")
            )
            got = transport.chunked_body(lab, t, cert, method, path, cap=cap)
            outcomes.append(
                transport.Outcome(
                    t.listener, t.service, "chunked body over the cap", got == 413, f"answered {got}, expected 413"
                )
            )
            got = transport.tiny_chunks(lab, t, cert, method, path)
            outcomes.append(
                transport.Outcome(
                    t.listener,
                    t.service,
                    "one-byte chunks past the chunk cap",
                    got == 413,
                    f"answered {got}, expected 413",
                )
            )
    for o in outcomes:
        tally = report.services.setdefault(o.service, ServiceTally())  # pki and console too
        tally.inputs += 1
        tally.corpus += 1
        if not o.ok:
            tally.unexpected += 1
            report.finding("listener attack not refused", o.service, f"{o.listener}: {o.attack}", o.detail)


def drs_token(lab: Lab) -> str:
    user = lab.config.primary_tenant.users[0]
    with lab_http(lab) as c:
        r = c.post(
            f"{lab.url('entra')}/common/oauth2/token",
            data={
                "client_id": AAD_POWERSHELL,
                "grant_type": "password",
                "resource": DRS_RESOURCE,
                "username": user.upn,
                "password": user.password,
            },
        )
        r.raise_for_status()
        return str(r.json()["access_token"])


def send_corpus(kit: corpus.Kit, report: Report) -> None:
    clients: dict[CertFiles | None, httpx.Client] = {}
    try:
        for probe in corpus.probes():
            tally = report.tally(probe.service)
            req = probe.build(kit)
            if req.cert not in clients:
                clients[req.cert] = lab_http(kit.lab, cert=req.cert, timeout=30)
            for _ in range(req.times):
                tally.inputs += 1
                tally.corpus += 1
                status = _send(clients[req.cert], req, kit.lab.pki.ca_bundle)
                if status is None:
                    tally.server_errors += 1
                    report.finding("connection failure", probe.service, probe.name)
                elif status not in probe.expect and status < 500:
                    tally.unexpected += 1
                    report.finding(
                        "unexpected answer",
                        probe.service,
                        probe.name,
                        f"{'TLS refusal' if status == corpus.TLS else status}, expected {sorted(probe.expect)[:6]}",
                    )
                elif status >= 500:
                    report.finding(str(status), probe.service, probe.name)
    finally:
        for c in clients.values():
            c.close()


def raw_status(to: tuple[str, int, str], data: bytes, ca_bundle: Path, timeout: float = 30) -> int | None:
    """Send `data` as is over TLS (to: address, port, the server's name) and read the status line's code."""
    address, port, name = to
    ctx = ssl.create_default_context(cafile=str(ca_bundle))
    try:
        with (
            socket.create_connection((address, port), timeout=timeout) as sock,
            ctx.wrap_socket(sock, server_hostname=name) as tls,
        ):
            tls.sendall(data)
            head = b""
            while b"\r\n" not in head and len(head) < 4096:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                head += chunk
    except (OSError, ssl.SSLError):
        return None
    parts = head.split(b"\r\n", 1)[0].split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def _send(client: httpx.Client, req: corpus.Req, ca_bundle: Path) -> int | None:
    """The answer's status; `corpus.TLS` when a client certificate was presented and the server closed
    the connection before answering (TLS 1.3 refuses a certificate after the handshake, so the refusal
    shows as a disconnect); None when the connection failed otherwise. A crash behind a disconnect is
    still counted: the service's records and tracebacks say so."""
    if req.raw_to is not None:
        return raw_status(req.raw_to, req.content, ca_bundle)
    try:
        return client.request(req.method, req.url, headers=req.headers, content=req.content).status_code
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        return corpus.TLS if req.cert is not None else None
    except httpx.HTTPError:
        return None


def _collect(lab: Lab, view: LabView, report: Report, seqs: dict[str, int], tracebacks: dict[str, int]) -> None:
    for service in SERVICES:
        tally = report.tally(service)
        for rec in view.records_after(service, seqs[service]):
            if rec.get("status", 0) >= 500:
                tally.server_errors += 1
            if rec.get("error"):
                tally.unhandled += 1
                report.finding("unhandled exception", service, f"{rec['method']} {rec['path']}", rec["error"])
    for service, n in process_tracebacks(lab).items():
        new = n - tracebacks.get(service, 0)
        if new and service in report.services:
            report.tally(service).unhandled += new
            report.finding("traceback in the process output", service, f"{new} new", "")
    for service, lines in invariants.check(view).items():
        report.tally(service).invariant_violations += len(lines)
        for line in lines:
            report.finding("invariant violation", service, line)
