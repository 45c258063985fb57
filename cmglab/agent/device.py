"""A device is a directory standing in for a Windows machine (`--home DIR` or `CMGLAB_DEVICE_HOME`).

device.json                              name, FQDN, domain membership (the "computer")
Windows/System32/drivers/etc/hosts       curl-style HOST:PORT:ADDR lines (the device's name mapping)
Keys/dpapi.key                           the DPAPI stand-in machine key (0600)
Certificates/{My,SMS,Root}/              certificate stores (certstore.py)
State/AAD/join.json                      Entra join state (dsregcmd)
State/AAD/transport.key                  the DRS transport key (0600)
State/AAD/wam-accounts.bin               the signed-in user's WAM account (protected)
State/AAD/prt.bin                        the primary refresh token and its session key (protected)
State/AAD/attempt.json                   the last failed (pending) join attempt
State/CCM/client.json                    the installed client (ccmsetup/ccmexec)
State/CCM/tokens.bin                     CCM token cache (protected, with expiry)
State/CCM/client-token.bin               the MP-issued unique client token (protected)
State/CCM/Policy/                        downloaded policy bodies
Windows/ccmsetup/                        ccmsetup's download folder; Logs/ccmsetup.log
Windows/CCM/                             the installed client; Logs/*.log (CMTrace)
CryptnetUrlCache/                        CRLs the device fetched
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmglab.agent.certstore import CertStores
from cmglab.agent.protect import DataProtector, write_private
from cmglab.core.logs import close_file_loggers, cmtrace_logger

HOME_ENV = "CMGLAB_DEVICE_HOME"
HOSTS_ENV = "CMGLAB_HOSTS_FILE"
SYSTEM_SID = "S-1-5-18"

# log file -> CMTrace component, as the real client writes them
CCM_LOGS = {
    "ClientIDManagerStartup.log": "ClientIDManagerStartup",
    "CcmMessaging.log": "CcmMessaging",
    "ADALOperationProvider.log": "ADALOperationProvider",
    "LocationServices.log": "LocationServices",
    "ClientLocation.log": "ClientLocation",
    "PolicyAgent.log": "PolicyAgent",
    "CcmExec.log": "CcmExec",
}


class DeviceError(Exception):
    pass


@dataclass
class DeviceInfo:
    name: str
    fqdn: str
    domain: str | None = None  # AD DNS domain when domain-joined
    machine_sid: str | None = None
    ad_directory: str | None = None  # where the lab's AD answers (core/ad.py): the domain controller


def computer_name_for(home: Path) -> str:
    """The default computer name: the device directory's name as a NetBIOS name (letters, digits and
    hyphens, 15 at most), so that devices made side by side on one machine get different names in
    the MP and the console (the machine's host name would make them all the same)."""
    name = re.sub(r"[^A-Z0-9-]+", "-", home.absolute().name.upper())[:15].strip("-")
    return name or "LAB01"


def default_home() -> Path:
    env = os.environ.get(HOME_ENV)
    return Path(env) if env else Path("device")


class Device:
    def __init__(self, home: Path) -> None:
        self.home = home.absolute()
        self.stores = CertStores(self.home / "Certificates")
        self.dpapi = DataProtector(self.home / "Keys" / "dpapi.key")

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        home: Path,
        *,
        name: str | None = None,
        domain: str | None = None,
        machine_sid: str | None = None,
        hosts: list[str] | None = None,
        ad_directory: str | None = None,
    ) -> Device:
        dev = cls(home)
        if dev.info_path.exists():
            raise DeviceError(f"a device already exists at {dev.home}")
        host = (name or computer_name_for(dev.home)).upper()[:15]
        fqdn = f"{host.lower()}.{domain}" if domain else f"{host.lower()}.lab.test"
        dev.home.mkdir(parents=True, exist_ok=True)
        for sub in ("State/AAD", "State/CCM", "Windows/ccmsetup/Logs", "Windows/CCM/Logs", "CryptnetUrlCache"):
            (dev.home / sub).mkdir(parents=True, exist_ok=True)
        dev.write_hosts(hosts or [])
        dev.dpapi.protect(b"", "init")  # the machine key is made once, here
        write_private(
            dev.info_path,
            json.dumps(
                {
                    "name": host,
                    "fqdn": fqdn,
                    "domain": domain,
                    "machine_sid": machine_sid,
                    "ad_directory": ad_directory,
                },
                indent=2,
            ).encode(),
        )
        return dev

    @classmethod
    def open(cls, home: Path | None = None) -> Device:
        dev = cls(home or default_home())
        if not dev.info_path.exists():
            raise DeviceError(f"no device at {dev.home}: create one with `cmglab device create --home {dev.home}`")
        return dev

    # -- facts ---------------------------------------------------------------------------------
    @property
    def info_path(self) -> Path:
        return self.home / "device.json"

    @property
    def info(self) -> DeviceInfo:
        data = json.loads(self.info_path.read_text())
        return DeviceInfo(
            data["name"], data["fqdn"], data.get("domain"), data.get("machine_sid"), data.get("ad_directory")
        )

    @property
    def hosts_path(self) -> Path:
        return self.home / "Windows" / "System32" / "drivers" / "etc" / "hosts"

    def write_hosts(self, entries: list[str]) -> None:
        self.hosts_path.parent.mkdir(parents=True, exist_ok=True)
        self.hosts_path.write_text("".join(f"{e}\n" for e in entries))

    def resolve(self, extra: list[str] | None = None) -> list[str]:
        """Name mapping: the device's hosts file, then $CMGLAB_HOSTS_FILE, then --resolve (later wins)."""
        entries: list[str] = []
        if self.hosts_path.exists():
            entries += self.hosts_path.read_text().splitlines()
        env = os.environ.get(HOSTS_ENV)
        if env and Path(env).exists():
            entries += Path(env).read_text().splitlines()
        return entries + list(extra or [])

    # -- state files ---------------------------------------------------------------------------
    @property
    def aad_dir(self) -> Path:
        return self.home / "State" / "AAD"

    @property
    def ccm_state_dir(self) -> Path:
        return self.home / "State" / "CCM"

    @property
    def join_path(self) -> Path:
        return self.aad_dir / "join.json"

    @property
    def transport_key_path(self) -> Path:
        return self.aad_dir / "transport.key"

    @property
    def attempt_path(self) -> Path:
        """The last failed join attempt (dsregcmd /status: Diagnostic Data)."""
        return self.aad_dir / "attempt.json"

    @property
    def wam_path(self) -> Path:
        return self.aad_dir / "wam-accounts.bin"

    @property
    def client_path(self) -> Path:
        return self.ccm_state_dir / "client.json"

    @property
    def token_cache_path(self) -> Path:
        return self.ccm_state_dir / "tokens.bin"

    @property
    def client_token_path(self) -> Path:
        return self.ccm_state_dir / "client-token.bin"

    @property
    def policy_dir(self) -> Path:
        return self.ccm_state_dir / "Policy"

    @property
    def crl_cache(self) -> Path:
        return self.home / "CryptnetUrlCache"

    @property
    def ccmsetup_dir(self) -> Path:
        return self.home / "Windows" / "ccmsetup"

    @property
    def ccm_dir(self) -> Path:
        return self.home / "Windows" / "CCM"

    def read_json(self, path: Path) -> dict[str, Any] | None:
        return json.loads(path.read_text()) if path.exists() else None

    def write_json(self, path: Path, value: dict[str, Any]) -> None:
        write_private(path, (json.dumps(value, indent=2) + "\n").encode())

    # -- logs ----------------------------------------------------------------------------------
    @property
    def ccmsetup_log_path(self) -> Path:
        return self.ccmsetup_dir / "Logs" / "ccmsetup.log"

    def ccm_log_path(self, name: str) -> Path:
        return self.ccm_dir / "Logs" / name

    def ccmsetup_log(self) -> logging.Logger:
        return cmtrace_logger(self.ccmsetup_log_path, "ccmsetup")

    def ccm_log(self, name: str) -> logging.Logger:
        """A CcmExec component log (`ClientIDManagerStartup.log`, `CcmMessaging.log`, ...)."""
        return cmtrace_logger(self.ccm_log_path(name), CCM_LOGS.get(name, name.removesuffix(".log")))

    def close_logs(self) -> None:
        close_file_loggers(self.home)


MACHINE_ACCOUNT_PURPOSE = "LSA machine account"


def machine_account(device: Device) -> dict[str, str] | None:
    """The computer's machine account secret (the LSA's), when it joined the domain."""
    value = device.dpapi.load(device.home / "State" / "LSA" / "machine.bin", MACHINE_ACCOUNT_PURPOSE)
    return value if isinstance(value, dict) else None
