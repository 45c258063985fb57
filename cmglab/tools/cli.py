"""`cmglab`: create a lab, show its facts, manage its PKI and run its services."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cmglab.pki.labpki import PKIError
from cmglab.runtime.lab import Lab, LabNotInitialised
from cmglab.tools import clients_cli, contentcli, devicecli, entracli
from cmglab.tools.bench.cli import bench as bench_command
from cmglab.tools.bulk_token_cli import bulk_token_app
from cmglab.tools.fleet import cli as fleet_cli
from cmglab.tools.labdir import DEFAULT_LAB, LabOption, console, load_lab
from cmglab.tools.output import print_rows, print_value
from cmglab.tools.processes import SERVICES
from cmglab.tools.sitecli import print_site, site_app, site_view, tenant_app

if TYPE_CHECKING:  # uvicorn is imported only by `cmglab serve`
    from cmglab.runtime.server import Service

app = typer.Typer(help="cmglab: an Entra ID + ConfigMgr CMG/MP lab.", no_args_is_help=True, add_completion=False)
pki_app = typer.Typer(help="The lab PKI: CAs, certificates, CRLs.", no_args_is_help=True)
app.add_typer(pki_app, name="pki")
app.add_typer(devicecli.app, name="device")
app.add_typer(entracli.app, name="entra")
app.add_typer(bulk_token_app, name="bulk-token")
app.add_typer(clients_cli.app, name="clients")
app.add_typer(contentcli.app, name="content")
app.add_typer(site_app, name="site")
app.add_typer(tenant_app, name="tenant")
app.command("bench")(bench_command)
app.add_typer(fleet_cli.app, name="fleet")

SERVICES_RUN = ("entra", "cmg", "cmg-connection-point", "management-point", "pki", "console", "distribution-point")


def service_builder(name: str) -> Callable[[Lab], Service]:
    """The `build` of the service `cmglab serve NAME` runs, imported only then (each pulls in its own stack)."""
    match name:
        case "entra":
            from cmglab.services.entra.service import build as entra

            return entra
        case "cmg":
            from cmglab.services.cmg.service import build as cmg

            return cmg
        case "cmg-connection-point":
            from cmglab.services.cmg_connection_point.service import build as connection_point

            return connection_point
        case "management-point":
            from cmglab.services.management_point.service import build as management_point

            return management_point
        case "pki":
            from cmglab.services.crl_host.service import build as crl_host

            return crl_host
        case "console":
            from cmglab.services.console.service import build as console_service

            return console_service
        case "distribution-point":
            from cmglab.services.distribution_point.service import build as distribution_point

            return distribution_point
    raise KeyError(name)


@app.command()
def init(
    lab: LabOption = DEFAULT_LAB,
    force: Annotated[bool, typer.Option(help="Regenerate everything, PKI included.")] = False,
    compose: Annotated[bool, typer.Option(help="Services reach each other by DNS on 443/80.")] = False,
    free_ports: Annotated[
        bool,
        typer.Option(
            "--free-ports",
            help="Pick ports no process listens on now and write them to lab.json (and the "
            "hosts mapping), so that this lab runs beside another one.",
        ),
    ] = False,
) -> None:
    """Create the lab directory: config, admin token, PKI, hosts mapping. Idempotent."""
    from cmglab.tools.labports import pick_free_ports, use_ports

    # a new lab gets its ports before its PKI: the certificates name the CRL host's port (CRL and AIA URLs)
    fresh = force or not Lab.config_path(lab.absolute()).exists()
    try:
        with console.status("creating the lab (keys take a moment)..."):
            the_lab, created = Lab.init(
                lab, force=force, compose=compose, ports=pick_free_ports() if free_ports and fresh else None
            )
    except LabNotInitialised as e:  # a lab this cmglab cannot use: say so and how to start again, once
        console.print(str(e), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from e
    if free_ports:
        if not fresh:  # an existing PKI names the CRL host's port: keep it, move the rest
            picked = pick_free_ports()
            picked.pki = the_lab.config.ports.pki
            use_ports(the_lab, picked)
            console.print(
                f"pki keeps port {picked.pki}: the lab's certificates name it in their CRL and AIA "
                "URLs (--force regenerates the lab, PKI included, on new ports)",
                soft_wrap=True,
            )
        created.append("ports")
        ports = the_lab.config.ports
        console.print("ports: " + ", ".join(f"{k} {v}" for k, v in ports.model_dump().items()))
    if created:
        console.print(f"[green]lab ready at {the_lab.dir}[/green]; created: {', '.join(created)}")
    else:
        console.print(f"lab at {the_lab.dir} is complete; nothing changed")
    warn_stale_pki(the_lab)


def warn_stale_pki(lab: Lab) -> None:
    """Say so when lab.json's CRL host port is not the one the lab's certificates name (edited by hand after
    the PKI was made): every device's revocation check would fail, far from the cause."""
    named = lab.pki.stale_cdp()
    if named:
        console.print(
            f"lab.json puts the CRL host at {lab.config.pki_url}, but the lab's certificates name {named} (made "
            "before the port changed), so devices' revocation checks fail (0x80092013). Put ports.pki back in "
            f"lab.json, or make the PKI again on the new port: cmglab pki init --force --lab {lab.dir} (then "
            "make devices again)",
            style="yellow",
            markup=False,
            soft_wrap=True,
        )


def cmg_address(lab: Lab) -> str:
    """The CMG as a client addresses it: host name, and the port unless it is 443."""
    return lab.url("cmg").removeprefix("https://")


def lab_facts(lab: Lab) -> dict[str, Any]:
    c = lab.config
    services = {
        name: {"url": lab.url(name), "port": lab.port(name), "host": lab.host(name)}
        for name in ("entra", "cmg", "management-point", "distribution-point", "pki", "console", "cmg-connection-point")
    }
    services["cmg"]["connector_port"] = c.ports.cmg_connector if not c.compose else 10140
    services["management-point"]["http_port"] = c.ports.management_point_http if not c.compose else 80
    services["distribution-point"]["http_port"] = c.ports.distribution_point_http if not c.compose else 80
    services["entra"]["names"] = c.hosts.entra
    return {
        "lab_dir": str(lab.dir),
        "services": services,
        "hosts_file": str(lab.dir / "hosts"),
        "resolve": lab.resolve(),
        "site": {
            "code": c.site.code,
            "role_id": c.site.role_id,
            "hierarchy_id": c.site.hierarchy_id,
            "allow_cmg": c.site.allow_cmg,
            "client_version": c.site.client_version,
        },
        # CCMHOSTNAME= takes the CMG's name with its port (unless 443)
        "cmg_hostname": f"{cmg_address(lab)}/CCM_Proxy_MutualAuth/{c.site.role_id}",
        "tenants": [
            {
                "tenant_id": t.tenant_id,
                "name": t.display_name,
                "onboarded": t.onboarded,
                "domains": [d.name for d in t.domains],
                "users": [{"upn": u.upn, "password": u.password, "object_id": u.object_id} for u in t.users],
            }
            for t in c.tenants
        ],
        "configmgr_app": {"client_app_id": c.apps[0].app_id, "resource_uri": c.apps[1].identifier_uri},
        "domain_accounts": [
            {"name": f"{c.active_directory.netbios_name}\\{a.name}", "password": a.password}
            for a in c.active_directory.accounts
        ],
        "ca_bundle": str(lab.pki.ca_bundle),
        "crl_bundle": str(lab.pki.crl_bundle),
        "admin_token_file": str(lab.dir / "admin-token"),
    }


@app.command()
def info(
    lab: LabOption = DEFAULT_LAB,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print the lab's facts: URLs, ports, names, tenant, users, site, CA bundle, admin token. Values are never cut: a listing too wide for the terminal is printed one record per block."""  # noqa: E501
    the_lab = load_lab(lab)
    facts = lab_facts(the_lab)
    site = site_view(the_lab)  # what the site database holds: what the MP and CMG enforce
    facts["site"]["allow_cmg"] = site["settings"]["allow-cmg"]["enforced"]
    facts["site"]["settings"] = {name: v["enforced"] for name, v in site["settings"].items()}
    for tenant in facts["tenants"]:
        tenant["onboarded"] = next(x["enforced"] for x in site["tenants"] if x["tenant_id"] == tenant["tenant_id"])
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    print_rows(
        console,
        "services",
        ("service", "url", "port"),
        [(name, s["url"], str(s["port"])) for name, s in facts["services"].items()],
    )
    print_value(console, f"site code {facts['site']['code']}, MP role ID {facts['site']['role_id']}")
    print_value(console, f"CMG host name (CCMHOSTNAME=): {facts['cmg_hostname']}")
    print_value(console, "  (with its port: without it ccmsetup cannot connect, 0x80072EFD)")
    print_rows(
        console,
        "Entra tenants",
        ("tenant", "tenant ID", "onboarded"),
        [(t["name"], t["tenant_id"], "yes" if t["onboarded"] else "no") for t in facts["tenants"]],
    )
    print_rows(
        console,
        "Entra users",
        ("user", "password", "tenant"),
        [(u["upn"], u["password"], t["name"]) for t in facts["tenants"] for u in t["users"]],
    )
    print_site(site)
    for a in facts["domain_accounts"]:
        print_value(console, f"domain account {a['name']} / {a['password']}")
    print_value(console, f"CA bundle: {facts['ca_bundle']}")
    print_value(console, f"admin token: {facts['admin_token_file']}")
    if facts["resolve"]:
        print_value(console, f"hosts mapping ({facts['hosts_file']}):")
        for line in facts["resolve"]:
            print_value(console, f"  {line}")
    else:  # compose: the networks' DNS answers the lab's names (service names and aliases)
        print_value(console, "names: resolved by DNS (no hosts mapping)")


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help=" | ".join(SERVICES_RUN))],
    lab: LabOption = DEFAULT_LAB,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes on the same listeners (entra, management-point, pki); default CMGLAB_WORKERS or 1."
        ),
    ] = None,
    pin_workers: Annotated[
        bool | None,
        typer.Option(
            "--pin-workers/--no-pin-workers",
            help="With several workers, each on a CPU of its own (its threads with it); default CMGLAB_PIN_WORKERS "
            "or on.",
        ),
    ] = None,
) -> None:
    """Run one lab service in the foreground (what `cmglab up` and the compose lab start)."""
    if service not in SERVICES_RUN:
        console.print(f"[red]unknown service {service!r}; one of {', '.join(SERVICES_RUN)}[/red]")
        raise typer.Exit(2)
    from cmglab.runtime.workers import MULTI_WORKER

    if workers is not None and workers > 1 and service not in MULTI_WORKER:
        console.print(
            f"[red]{service} keeps its state in one process: --workers is for {', '.join(sorted(MULTI_WORKER))}[/red]"
        )
        raise typer.Exit(2)
    if workers is not None:
        os.environ["CMGLAB_WORKERS"] = str(workers)
    if pin_workers is not None:
        os.environ["CMGLAB_PIN_WORKERS"] = str(int(pin_workers))
    the_lab = load_lab(lab)
    from cmglab.runtime.server import run_service

    run_service(
        service_builder(service)(the_lab),
        access_log=the_lab.settings.access_log,
        worker_argv=["-m", "cmglab", "serve", service, "--lab", str(the_lab.dir)],
    )


@pki_app.command("init")
def pki_init(
    lab: LabOption = DEFAULT_LAB, force: Annotated[bool, typer.Option(help="Regenerate the whole PKI.")] = False
) -> None:
    """Create the missing parts of the PKI (CAs, service certificates, CRLs)."""
    the_lab = load_lab(lab)
    created = the_lab.pki.init(force=force)
    console.print(f"created: {', '.join(created)}" if created else "PKI complete; nothing changed")


@pki_app.command("issue-client")
def pki_issue_client(
    name: Annotated[
        str,
        typer.Argument(
            help="A label of your choice: the certificate's file names under <lab>/pki, its "
            "subject CN and DNS name, and what `cmglab pki revoke NAME` and `pki show` use."
        ),
    ],
    lab: LabOption = DEFAULT_LAB,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 365,
) -> None:
    """Issue a PKI client-authentication certificate from the issuing CA (for a device:
    `cmglab device enrol --home DIR` issues one and puts it in the device's My store)."""
    the_lab = load_lab(lab)
    ident = the_lab.pki.issue_client(name, days=days)
    console.print(f"certificate {ident.cert_path}\nkey         {ident.key_path}")


@pki_app.command("revoke")
def pki_revoke(name: str, lab: LabOption = DEFAULT_LAB) -> None:
    """Revoke every certificate issued under NAME (or the one with that serial); CRLs regenerated."""
    the_lab = load_lab(lab)
    try:
        serials = the_lab.pki.revoke(name)
    except PKIError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from e
    console.print(f"revoked {', '.join(serials)}; CRLs regenerated")


@pki_app.command("crl")
def pki_crl(lab: LabOption = DEFAULT_LAB) -> None:
    """Regenerate the three CRLs: root CA, issuing CA, public root CA (new lastUpdate/nextUpdate)."""
    the_lab = load_lab(lab)
    the_lab.pki.write_crls()
    console.print(f"CRLs written to {the_lab.pki.crl_bundle.parent}")


@pki_app.command("show")
def pki_show(
    lab: LabOption = DEFAULT_LAB,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the lab's certificates with their thumbprints and revocation state (NAME is what
    `cmglab pki revoke` takes)."""
    rows = load_lab(lab).pki.show()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    print_rows(
        console,
        "lab certificates",
        ("name", "subject", "issuer", "thumbprint", "not after", "revoked"),
        [
            (
                r["name"],
                r["subject"],
                r["issuer"],
                r["thumbprint"],
                r["not_after"][:10],
                r["revoked_at"][:19] if r["revoked_at"] else "",
            )
            for r in rows
        ],
    )


def main() -> None:
    app()


@app.command(
    help=f"Initialise what is missing, start the lab's {len(SERVICES)} service processes on loopback "
    f"({', '.join(SERVICES)}), wait until they are healthy and print how to install a device. "
    "Ctrl-C stops everything (so does `cmglab down`, also after --detach)."
)
def up(
    lab: LabOption = DEFAULT_LAB,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Leave the lab running in the background.")] = False,
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes for Entra, the MP and the CRL host (the others keep state in one process).", min=1
        ),
    ] = 1,
    pin_workers: Annotated[
        bool,
        typer.Option(
            "--pin-workers/--no-pin-workers", help="With several workers, each on a CPU of its own (its threads too)."
        ),
    ] = True,
) -> None:
    from cmglab.tools import orchestrate
    from cmglab.tools.processes import ServiceFailed

    try:
        with console.status("preparing the lab..."):
            the_lab, created = Lab.init(lab)
    except LabNotInitialised as e:  # a lab this cmglab cannot use: say so and how to start again, as init does
        console.print(str(e), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from e
    if created:
        console.print(f"created {', '.join(created)} in {the_lab.dir}")
    warn_stale_pki(the_lab)
    try:
        with console.status(f"starting {', '.join(SERVICES)}..."):
            procs = orchestrate.start_all(the_lab, detach=detach, workers=workers, pin_workers=pin_workers)
    except ServiceFailed as e:  # start_all has stopped what it started
        console.print(str(e), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from e
    except KeyboardInterrupt as e:
        console.print("interrupted; stopped what had started")
        raise typer.Exit(130) from e
    print_rows(
        console,
        f"cmglab is up ({the_lab.dir})",
        ("service", "url"),
        [
            (name, the_lab.url(name))
            for name in ("entra", "cmg", "management-point", "distribution-point", "pki", "console")
        ],
    )
    print_value(
        console, f"hosts mapping: {the_lab.dir / 'hosts'} (clients take it from CMGLAB_HOSTS_FILE or --resolve)"
    )
    console.print("install a device:")
    for argv in orchestrate.device_commands(the_lab):
        print_value(console, f"  {shlex.join(argv)}")
    console.print("then check it:")
    for argv in orchestrate.check_commands(the_lab):
        print_value(console, f"  {shlex.join(argv)}")
    if detach:
        down = (
            ["cmglab", "down"]
            if the_lab.dir == DEFAULT_LAB.absolute()
            else ["cmglab", "down", "--lab", str(the_lab.dir)]
        )
        print_value(console, f"running in the background; stop it with {shlex.join(down)}")
        return
    run_foreground(the_lab, procs)


def run_foreground(the_lab: Lab, procs: Any) -> None:
    """Until Ctrl-C: report a service that dies at once and restart it (with a limit); then stop the lab
    within 2 s."""
    import signal
    import time

    from cmglab.tools import orchestrate

    stop = {"now": False}

    def _stop(_sig: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    here = orchestrate.foreground_pid_file(the_lab)
    here.write_text(f"{os.getpid()}\n")  # `cmglab down` stops this process, not only its services
    # only now: the handler is in place
    console.print("Ctrl-C stops the lab (so does cmglab down from another shell)", soft_wrap=True)
    try:
        supervisor = orchestrate.Supervisor(the_lab, procs)
        while not stop["now"]:
            for event in supervisor.check():
                # one line each, whatever the width: `cmglab up > up.log` is read (and grepped) line by line
                console.print(event, style="yellow", markup=False, highlight=False, soft_wrap=True)
            time.sleep(0.2)
        began = time.monotonic()
        mine = list(procs.procs)
        procs.stop_all(timeout=orchestrate.STOP_TIMEOUT)  # ours: waited for (reaped), killed after the timeout
        others = orchestrate.stop_pids(the_lab, timeout=orchestrate.STOP_TIMEOUT)  # a --detach lab's, if any
        stopped = [*mine, *(o for o in others if o not in mine)]
        print_value(console, f"stopped {', '.join(stopped) or 'nothing'} in {time.monotonic() - began:.1f} s")
    finally:
        here.unlink(missing_ok=True)


@app.command()
def down(lab: LabOption = DEFAULT_LAB) -> None:
    """Stop a lab: one started with `cmglab up --detach`, or a foreground `cmglab up` in another terminal."""
    from cmglab.tools import orchestrate

    the_lab = load_lab(lab)
    foreground = orchestrate.stop_foreground(the_lab)  # it stops its services itself, as on Ctrl-C
    stopped = orchestrate.stop_pids(the_lab)  # a --detach lab's, and whatever the foreground one left
    if foreground is not None:
        console.print(f"stopped the foreground cmglab up (pid {foreground})")
    console.print(f"stopped {', '.join(stopped)}" if stopped else "nothing else was running")


@app.command()
def status(
    lab: LabOption = DEFAULT_LAB,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help='Machine-readable: {"SERVICE": {"pid": PID or null, "health": STATE, "url": URL}}.'
        ),
    ] = False,
) -> None:
    # one line in the docstring's place: --help prints a docstring's line breaks where they fall
    """Each service's process and health. A service counts as healthy only when what answers at its address is this lab (it knows this lab's ID); exits 1 unless every service is healthy."""  # noqa: E501
    from cmglab.tools import orchestrate

    the_lab = load_lab(lab)
    pids = orchestrate.running_pids(the_lab)
    states = orchestrate.health(the_lab)
    if as_json:
        typer.echo(
            json.dumps(
                {s: {"pid": pids.get(s), "health": h, "url": the_lab.url(s)} for s, h in states.items()}, indent=2
            )
        )
    else:
        # the port, not the URL, so that the table fits 80 columns (`--json` and `cmglab info` have the URLs)
        print_rows(
            console,
            f"cmglab status ({the_lab.dir})",
            ("service", "pid", "port", "health"),
            [(s, str(pids.get(s, "-")), str(the_lab.port(s)), h) for s, h in states.items()],
        )
    if any(h != "healthy" for h in states.values()):
        raise typer.Exit(1)


@app.command()
def health(
    service: Annotated[str, typer.Argument(help=" | ".join(SERVICES_RUN))],
    lab: LabOption = DEFAULT_LAB,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ask the process at this address, not whichever the service's name resolves to "
            "(replicas share the name; compose: 127.0.0.1, the container itself)."
        ),
    ] = None,
) -> None:
    """Exit 0 when SERVICE answers /_lab/health (the compose health checks use this)."""
    from cmglab.tools import orchestrate

    if service not in SERVICES_RUN:
        console.print(f"[red]unknown service {service!r}[/red]")
        raise typer.Exit(2)
    state = orchestrate.health(load_lab(lab), (service,), address)[service]
    typer.echo(f"{service}: {state}")
    if state != "healthy":
        raise typer.Exit(1)


@app.command()
def logs(
    service: Annotated[str | None, typer.Argument(help="One service; all when omitted.")] = None,
    lab: LabOption = DEFAULT_LAB,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", "-f")] = True,
) -> None:
    """Print the site systems' product logs (SMS-trace format) and follow them."""
    from cmglab.tools import orchestrate

    the_lab = load_lab(lab)
    if service is not None and service not in orchestrate.LOG_FILES:
        console.print(f"[red]unknown service {service!r}[/red]")
        raise typer.Exit(2)
    paths = orchestrate.log_paths(the_lab, service)
    for p in paths:
        if p.exists():
            for line in p.read_text(errors="replace").splitlines():
                typer.echo(f"{p.name}: {line}")
    if follow:
        try:
            for line in orchestrate.follow(paths):
                typer.echo(line)
        except KeyboardInterrupt:
            pass
