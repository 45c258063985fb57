"""The lab's own packages and application, distributed to the DP on its first start: the kind of files
people find on real distribution points (scripts, an answer file, an application's config) and look
for when they practise, each with a lab credential in it. The passwords are made up per lab."""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

from cmglab.core.labconfig import LabConfig
from cmglab.runtime.contentlib import ContentLibrary


def _password() -> str:
    return "Lab-" + secrets.token_urlsafe(9)


def _drive_mappings(config: LabConfig) -> dict[str, str]:
    domain = config.active_directory.netbios_name
    dns = config.active_directory.dns_name
    return {
        "Scripts/Map-Drives.ps1": (
            "# Maps the department shares at logon (deployed to All Workstations)\r\n"
            f"$user = '{domain}\\svc-filemap'\r\n"
            f"$pass = ConvertTo-SecureString '{_password()}' -AsPlainText -Force\r\n"
            "$cred = New-Object System.Management.Automation.PSCredential($user, $pass)\r\n"
            f"New-PSDrive -Name S -PSProvider FileSystem -Root \\\\fs01.{dns}\\shared -Credential $cred -Persist\r\n"
            f"New-PSDrive -Name H -PSProvider FileSystem -Root \\\\fs01.{dns}\\home\\$env:USERNAME -Persist\r\n"
        ),
        "Scripts/Install-Printers.bat": (
            "@echo off\r\nrem Adds the floor printers\r\n"
            f"rundll32 printui.dll,PrintUIEntry /in /n\\\\print01.{dns}\\FLOOR1-MFP\r\n"
            f"rundll32 printui.dll,PrintUIEntry /in /n\\\\print01.{dns}\\FLOOR2-MFP\r\n"
        ),
        "readme.txt": "Drive mappings and printers for the corp.lab.test workstations. Owner: IT Ops.\r\n",
    }


def _os_deployment(config: LabConfig) -> dict[str, str]:
    domain = config.active_directory.netbios_name
    dns = config.active_directory.dns_name
    unattend = f"""<?xml version="1.0" encoding="utf-8"?>
<unattend xmlns="urn:schemas-microsoft-com:unattend">
  <settings pass="specialize">
    <component name="Microsoft-Windows-UnattendedJoin" processorArchitecture="amd64"
        publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">
      <Identification>
        <Credentials>
          <Domain>{domain}</Domain>
          <Username>svc-domainjoin</Username>
          <Password>{_password()}</Password>
        </Credentials>
        <JoinDomain>{dns}</JoinDomain>
        <MachineObjectOU>OU=Workstations,DC={dns.replace(".", ",DC=")}</MachineObjectOU>
      </Identification>
    </component>
  </settings>
  <settings pass="oobeSystem">
    <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64"
        publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">
      <UserAccounts>
        <AdministratorPassword>
          <Value>{_password()}</Value>
          <PlainText>true</PlainText>
        </AdministratorPassword>
      </UserAccounts>
      <TimeZone>UTC</TimeZone>
    </component>
  </settings>
</unattend>
"""
    return {
        "unattend.xml": unattend.replace("\n", "\r\n"),
        "Scripts/SetupComplete.cmd": "@echo off\r\nrem Runs once after Windows Setup\r\n"
        "powershell -ExecutionPolicy Bypass -File %~dp0Set-Baseline.ps1\r\n",
        "Scripts/Set-Baseline.ps1": "Set-ItemProperty -Path 'HKLM:\\SOFTWARE\\Policies\\Microsoft\\Windows\\"
        "WindowsUpdate\\AU' -Name NoAutoUpdate -Value 0\r\n",
    }


def _line_of_business(config: LabConfig) -> dict[str, str | bytes]:
    dns = config.active_directory.dns_name
    return {
        "appsettings.config": (
            '<?xml version="1.0" encoding="utf-8"?>\r\n<configuration>\r\n  <connectionStrings>\r\n'
            f'    <add name="Inventory" connectionString="Server=sql01.{dns};Database=Inventory;'
            f'User Id=svc-inventory;Password={_password()};" />\r\n'
            "  </connectionStrings>\r\n  <appSettings>\r\n"
            f'    <add key="ApiEndpoint" value="https://inventory.{dns}/api" />\r\n'
            "  </appSettings>\r\n</configuration>\r\n"
        ),
        "install.ps1": "Start-Process msiexec.exe -ArgumentList '/i', \"$PSScriptRoot\\InventoryClient.msi\", "
        "'/qn' -Wait\r\nCopy-Item \"$PSScriptRoot\\appsettings.config\" "
        "'C:\\Program Files\\Inventory Client\\' -Force\r\n",
        "InventoryClient.msi": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + secrets.token_bytes(4088),
    }


SAMPLES = (
    ("Drive Mappings and Printers", "package", _drive_mappings),
    ("Windows 11 23H2 Deployment Files", "package", _os_deployment),
    ("Inventory Client 4.2", "application", _line_of_business),
)


def ensure_samples(library: ContentLibrary) -> list[str]:
    """Add the sample packages the catalogue does not have yet; the names of those added."""
    have = {p.name for p in library.packages()}
    added = []
    for name, kind, build in SAMPLES:
        if name in have:
            continue
        with tempfile.TemporaryDirectory(dir=library.root if library.root.exists() else None) as tmp:
            for rel, data in build(library.config).items():
                path = Path(tmp) / "src" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data if isinstance(data, bytes) else data.encode())
            library.add(Path(tmp) / "src", name, kind=kind)
        added.append(name)
    return added
