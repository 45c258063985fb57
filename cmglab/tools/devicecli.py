"""`cmglab device ...`: make lab devices. What the lab does for a device that Windows setup or an
administrator would: the lab root CA in the Root store (Group Policy / image), the hosts mapping, a
PKI client certificate (auto-enrolment), domain membership (for hybrid join and Windows auth).
dsregcmd and ccmsetup never touch the Root store themselves."""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509

from cmglab.agent.ccm.client import MACHINE_ACCOUNT_PURPOSE
from cmglab.agent.certstore import MY, ROOT
from cmglab.agent.device import Device, DeviceError
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


@app.command()
def create(home: HomeOption, lab: LabOption = Path(".cmglab"),
           name: Annotated[str | None, typer.Option(
               help="Computer name (NetBIOS, 15 characters); default: the device directory's name "
                    "(./device01 -> DEVICE01).")] = None,
           root_ca: Annotated[bool, typer.Option("--root-ca/--no-root-ca",
                                                 help="Put the lab CA bundle in the Root store.")] = True,
           domain: Annotated[bool, typer.Option("--domain", help="Join the lab's AD domain.")] = False,
           pki_cert: Annotated[bool, typer.Option("--pki-cert", help="Enrol a PKI client certificate.")] = False,
           ) -> None:
    """Create a device: stores, hosts mapping, DPAPI key, and (by default) the lab root CA."""
    the_lab = _lab(lab)
    ad = the_lab.config.active_directory
    account = None
    if domain:
        name = name or "LAB01"
        account = next((a for a in ad.accounts if a.name.upper() == f"{name.upper()}$"), None)
        if account is None:
            typer.echo(f"the lab's AD has no computer account {name.upper()}$", err=True)
            raise typer.Exit(1)
    sid = (account.sid or f"{ad.domain_sid}-{1100 + secrets.randbelow(8000)}") if account else None
    try:
        dev = Device.create(home, name=name, domain=ad.dns_name if domain else None, machine_sid=sid,
                            hosts=the_lab.resolve())
    except DeviceError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from e
    if account is not None:  # the machine account password, as the LSA secret $MACHINE.ACC keeps it
        dev.dpapi.save(dev.home / "State" / "LSA" / "machine.bin",
                       {"username": f"{ad.netbios_name}\\{account.name}", "password": account.password},
                       MACHINE_ACCOUNT_PURPOSE)
    if root_ca:
        for cert in x509.load_pem_x509_certificates(the_lab.pki.ca_bundle.read_bytes()):
            dev.stores.add(ROOT, cert, friendly_name=cert.subject.rfc4514_string())
    if pki_cert:
        enrol(dev, the_lab)
    typer.echo(f"device {dev.info.name} ({dev.info.fqdn}) at {dev.home}")


def enrol(dev: Device, lab: Lab) -> str:
    """Issue a client-authentication certificate from the lab issuing CA into the device's My store."""
    label = f"{dev.info.name.lower()}-{uuid.uuid4().hex[:6]}"
    ident = lab.pki.issue_client(label, san=[dev.info.fqdn, label])
    dev.stores.import_pem(MY, ident.cert_path, ident.key_path, "PKI client authentication")
    return label


@app.command("enrol")
def enrol_cmd(home: HomeOption, lab: LabOption = Path(".cmglab")) -> None:
    """Enrol a PKI client-authentication certificate (prints its PKI name, for `cmglab pki revoke`)."""
    dev = Device.open(home)
    typer.echo(enrol(dev, _lab(lab)))


@app.command()
def onboard(home: HomeOption, lab: LabOption = Path(".cmglab")) -> None:
    """Make the device if needed, join it to Entra and install the client through the CMG: the commands
    `cmglab up` prints, run in order (the compose lab's `client` service runs this)."""
    import subprocess

    from cmglab.tools.orchestrate import device_commands

    the_lab = _lab(lab)
    steps = device_commands(the_lab, str(home))
    if (home / "device.json").exists():
        steps = steps[1:]
    for argv in steps:
        typer.echo(f"> {' '.join(argv[:2])} ...")
        code = subprocess.run(argv).returncode
        if code != 0:
            typer.echo(f"{argv[0]} exited with {code}", err=True)
            raise typer.Exit(code)
