"""`cmglab device ...`: make lab devices. What the lab does for a device that Windows setup or an
administrator would: the lab root CA in the Root store (Group Policy / image), the hosts mapping, a
PKI client certificate (auto-enrolment), domain membership (for hybrid join and Windows auth).
dsregcmd and ccmsetup never touch the Root store themselves."""

from __future__ import annotations

import fcntl
import secrets
import shutil
import uuid
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import hashes

from cmglab.agent.certstore import MY, ROOT
from cmglab.agent.device import MACHINE_ACCOUNT_PURPOSE, Device, DeviceError, computer_name_for
from cmglab.core.ad import LabDirectory, ad_path
from cmglab.core.labconfig import DomainAccount, load_config, save_config
from cmglab.core.settings import Settings
from cmglab.runtime.lab import Lab, LabNotInitialised

app = typer.Typer(help="Lab devices (client agent homes).", no_args_is_help=True)

LabOption = Annotated[Path, typer.Option("--lab", envvar="CMGLAB_LAB_DIR", help="The lab directory.")]
HomeOption = Annotated[Path, typer.Option("--home", envvar="CMGLAB_DEVICE_HOME", help="The device directory.")]


def _lab(path: Path) -> Lab:
    try:
        return Lab.load(path, Settings(lab_dir=path))
    except LabNotInitialised as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from e


def _device(home: Path) -> Device:
    """The device at HOME, or one line saying there is none there and how to make it (as dsregcmd says it)."""
    try:
        return Device.open(home)
    except DeviceError as e:
        typer.echo(f"cmglab device: {e}", err=True)
        raise typer.Exit(2) from e


@app.command()
def create(
    home: HomeOption,
    lab: LabOption = Path(".cmglab"),
    name: Annotated[
        str | None,
        typer.Option(
            help="Computer name (NetBIOS, 15 characters); default: the device directory's name "
            "(./device01 -> DEVICE01)."
        ),
    ] = None,
    root_ca: Annotated[
        bool,
        typer.Option(
            "--root-ca/--no-root-ca",
            help="Put the organisation's (lab) root CA in the Root "
            "store; the public CA that Microsoft's names chain to "
            "is always there.",
        ),
    ] = True,
    domain: Annotated[bool, typer.Option("--domain", help="Join the lab's AD domain.")] = False,
    pki_cert: Annotated[bool, typer.Option("--pki-cert", help="Enrol a PKI client certificate.")] = False,
) -> None:
    """Create a device: stores, hosts mapping, DPAPI key, and (by default) the lab root CA."""
    the_lab = _lab(lab)
    ad = the_lab.config.active_directory
    account = None
    directory = LabDirectory(ad_path(the_lab.dir), the_lab.config)
    if domain:  # a domain join: the computer account, in lab.json (Windows auth) and in the directory
        name = (name or computer_name_for(home)).upper()[:15]
        account = computer_account(the_lab, name)
        directory.add_computer(account.name, str(account.sid))
    sid = account.sid if account else None
    try:
        dev = Device.create(
            home,
            name=name,
            domain=ad.dns_name if domain else None,
            machine_sid=sid,
            hosts=the_lab.resolve(),
            ad_directory=str(directory.path) if domain else None,
        )
    except DeviceError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from e
    if account is not None:  # the machine account password, as the LSA secret $MACHINE.ACC keeps it
        dev.dpapi.save(
            dev.home / "State" / "LSA" / "machine.bin",
            {"username": f"{ad.netbios_name}\\{account.name}", "password": account.password},
            MACHINE_ACCOUNT_PURPOSE,
        )
    for cert in the_lab.pki.public_roots():  # Windows' trusted root programme: every device has it
        dev.stores.add(ROOT, cert, friendly_name=cert.subject.rfc4514_string())
    if root_ca:
        trust_lab_root(dev, the_lab)
    if pki_cert:
        enrol(dev, the_lab)
    typer.echo(f"device {dev.info.name} ({dev.info.fqdn}) at {dev.home}")


def trust_lab_root(dev: Device, lab: Lab) -> None:
    """The organisation's root CA in the device's Root store (what Group Policy or the image does)."""
    for cert in lab.pki.organisation_roots():
        dev.stores.add(ROOT, cert, friendly_name=cert.subject.rfc4514_string())


BREAKAGES = {
    "device-key": "the Entra device key (the WPJ certificate's private key) is unusable: NTE_BAD_KEYSET "
    "(seed 001's sample run: WAM fails, ccmsetup falls back to the user token)",
    "wpj-cert": "the WPJ certificate (MS-Organization-Access) is gone from the Personal store "
    "(seed 001: 'The WPJ certificate isn't found')",
    "root-ca": "the organisation's root CA is gone from the Root store (seed 001: 'Root CA not present')",
    "crl": "the CRL host's name maps to an address where nothing answers, and no CRL is cached "
    "(seed 001: 'CRL check is enabled' and the CRL is not published where the device can reach it)",
}
REPAIRS = ("root-ca", "crl")
UNREACHABLE = "127.0.0.9"  # a loopback address the lab's listeners (bound to 127.0.0.1) do not answer on


def crl_host_entries(dev: Device, lab: Lab, address: str | None) -> list[str]:
    """The device's hosts file with the CRL host's entries mapped to `address` (None: the lab's own mapping)."""
    pki = lab.config.hosts.pki
    own = [e for e in lab.resolve() if e.startswith(f"{pki}:")]
    kept = [e for e in (dev.hosts_path.read_text().splitlines() if dev.hosts_path.exists() else []) if e.strip()]
    kept = [e for e in kept if not e.startswith(f"{pki}:")]
    if address is None:
        return kept + own
    ports = {e.split(":")[1] for e in own} or {str(lab.port("pki"))}
    return kept + [f"{pki}:{port}:{address}" for port in sorted(ports)]


@app.command(
    "break",
    help="Break one part of a device the way the seeds' failures need: "
    + "; ".join(f"{k}: {v}" for k, v in BREAKAGES.items()),
)
def break_device(
    what: Annotated[str, typer.Argument(help=" | ".join(BREAKAGES))], home: HomeOption, lab: LabOption = Path(".cmglab")
) -> None:
    if what not in BREAKAGES:
        typer.echo(f"unknown breakage {what!r}: one of {', '.join(BREAKAGES)}", err=True)
        raise typer.Exit(2)
    dev = _device(home)
    if what in ("device-key", "wpj-cert"):
        cert = dev.stores.device_cert()
        if cert is None or cert.key_path is None:
            typer.echo("the device has no WPJ certificate (not Entra joined): nothing to break", err=True)
            raise typer.Exit(1)
        if what == "device-key":  # the key container stays referenced but holds nothing usable
            cert.key_path.write_bytes(b"")
        else:
            dev.stores.remove(MY, cert.thumbprint)
    elif what == "crl":
        dev.write_hosts(crl_host_entries(dev, _lab(lab), UNREACHABLE))
        shutil.rmtree(dev.crl_cache, ignore_errors=True)
    else:
        organisation = {c.fingerprint(hashes.SHA256()) for c in _lab(lab).pki.organisation_roots()}
        for sc in dev.stores.certificates(ROOT):
            if sc.cert().fingerprint(hashes.SHA256()) in organisation:
                dev.stores.remove(ROOT, sc.thumbprint)
    typer.echo(f"{dev.info.name}: {BREAKAGES[what]}")


@app.command("repair")
def repair_device(
    what: Annotated[str, typer.Argument(help=" | ".join(REPAIRS))], home: HomeOption, lab: LabOption = Path(".cmglab")
) -> None:
    """Undo a breakage an administrator undoes in place: root-ca puts the lab root CA back in the Root store; crl
    maps the CRL host's name as the lab does (the CRL is published again). (device-key and wpj-cert: join again,
    `dsregcmd /leave` then `dsregcmd /join`.)"""
    if what not in REPAIRS:
        typer.echo(
            f"only {' and '.join(REPAIRS)} are repaired in place; for device-key and wpj-cert join again "
            "(dsregcmd /leave, dsregcmd /join)",
            err=True,
        )
        raise typer.Exit(2)
    dev = _device(home)
    if what == "crl":
        dev.write_hosts(crl_host_entries(dev, _lab(lab), None))
        typer.echo(f"{dev.info.name}: the CRL host's name maps as the lab's does")
        return
    trust_lab_root(dev, _lab(lab))
    typer.echo(f"{dev.info.name}: the lab root CA is in the Root store")


def computer_account(lab: Lab, name: str) -> DomainAccount:
    """NAME$ in lab.json's AD accounts, made with a new SID and password when the name is new (the file is
    rewritten under a lock: devices may be created side by side). A running MP or DP accepts the new account
    at its next handshake (runtime.windowsauth.LabAccountsAuthenticator)."""
    sam = f"{name.upper()}$"
    path = lab.dir / "lab.json"
    with open(path.with_name("lab.json.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        config = load_config(path)
        ad = config.active_directory
        account = next((a for a in ad.accounts if a.name.upper() == sam), None)
        if account is None:
            taken = {a.sid for a in ad.accounts}
            sid = next(
                s for s in (f"{ad.domain_sid}-{1100 + secrets.randbelow(8000)}" for _ in range(100)) if s not in taken
            )
            account = DomainAccount(name=sam, sid=sid)
            ad.accounts.append(account)
            save_config(config, path)
        elif account.sid is None:
            account.sid = f"{ad.domain_sid}-{1100 + secrets.randbelow(8000)}"
            save_config(config, path)
    return account


def enrol(dev: Device, lab: Lab) -> str:
    """Issue a client-authentication certificate from the lab issuing CA into the device's My store."""
    label = f"{dev.info.name.lower()}-{uuid.uuid4().hex[:6]}"
    ident = lab.pki.issue_client(label, san=[dev.info.fqdn, label])
    dev.stores.import_pem(MY, ident.cert_path, ident.key_path, "PKI client authentication")
    return label


@app.command("enrol")
def enrol_cmd(home: HomeOption, lab: LabOption = Path(".cmglab")) -> None:
    """Enrol a PKI client-authentication certificate (prints its PKI name, for `cmglab pki revoke`)."""
    dev = _device(home)
    typer.echo(enrol(dev, _lab(lab)))


def next_device_home(devices: Path) -> Path:
    """The first free `deviceNN` directory under DEVICES (device01, device02, ...)."""
    n = 1
    while (devices / f"device{n:02d}").exists():
        n += 1
    return devices / f"device{n:02d}"


def joined_elsewhere(home: Path, lab: Lab) -> str | None:
    """The tenant a device at HOME is joined to when that tenant is not this lab's (a device of an earlier lab)."""
    from cmglab.agent.dsregcmd.join import join_state

    if not (home / "device.json").exists():
        return None
    state = join_state(Device.open(home))
    tenant = str(state.get("TenantId", "")) if state else ""
    return tenant if tenant and lab.config.tenant(tenant) is None else None


@app.command()
def onboard(
    home: Annotated[
        Path | None, typer.Option("--home", envvar="CMGLAB_DEVICE_HOME", help="The device directory (made if missing).")
    ] = None,
    new_in: Annotated[
        Path | None,
        typer.Option("--new-in", help="Make a new device in this directory (device01, device02, ...) each run."),
    ] = None,
    lab: LabOption = Path(".cmglab"),
) -> None:
    """Make the device if needed, join it to Entra and install the client through the CMG: the commands
    `cmglab up` prints, run in order (the compose lab's `client` service runs this with --new-in).
    A device already joined to this lab's tenant is not joined again; one joined to another tenant (an earlier
    lab's) is refused, never reused."""
    import subprocess

    from cmglab.agent.dsregcmd.join import join_state
    from cmglab.tools.orchestrate import device_commands

    if (home is None) == (new_in is None):
        typer.echo("give exactly one of --home DIR and --new-in DIR", err=True)
        raise typer.Exit(2)
    the_lab = _lab(lab)
    if new_in is not None:
        new_in.mkdir(parents=True, exist_ok=True)
        home = next_device_home(new_in)
    assert home is not None
    other = joined_elsewhere(home, the_lab)
    if other:
        typer.echo(
            f"the device at {home} is joined to tenant {other}, which this lab does not have (a device of an "
            "earlier lab): give another --home, or remove that device",
            err=True,
        )
        raise typer.Exit(2)
    create, join, install = device_commands(the_lab, str(home))
    steps = [create, join, install]
    if (home / "device.json").exists():
        steps.remove(create)
        if join_state(Device.open(home)):
            steps.remove(join)  # joined to this lab's tenant already: install (or check) the client only
    typer.echo(f"device {home}")
    for argv in steps:
        typer.echo(f"> {' '.join(argv[:2])} ...")
        code = subprocess.run(argv).returncode
        if code != 0:
            typer.echo(f"{argv[0]} exited with {code}", err=True)
            raise typer.Exit(code)
