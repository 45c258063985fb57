"""dsregcmd's command line: `/join`, `/leave`, `/status`, `/signin`, `/cleanupaccounts` (or `--join`, ...), with
`/debug` echoing the join stages. Lab options: `--home DIR`, `--resolve HOST:PORT:ADDR`,
`--username UPN --password PW` (the user who signs in to join), `/hybrid [--tenant DOMAIN]`, and
`/signin --username UPN --password PW` (a user signs in on the joined device: a primary refresh token).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cmglab.agent.device import Device, DeviceError
from cmglab.agent.dsregcmd.join import Joiner, JoinError, join_state, wam_account
from cmglab.agent.entra import EntraError
from cmglab.agent.network import DeviceNetwork, NetworkError, classify
from cmglab.agent.prt import forget as forget_prt
from cmglab.agent.prt import load as load_prt
from cmglab.agent.prt import valid as prt_valid
from cmglab.core.logs import cmtrace_logger

ACTIONS = ("join", "leave", "status", "cleanupaccounts", "signin")


def _normalise(argv: list[str]) -> list[str]:
    out = []
    for a in argv:
        low = a.lower()
        if low.startswith("/") and low[1:] in (*ACTIONS, "debug", "hybrid", "?"):
            out.append("--help" if low == "/?" else "--" + low[1:])
        else:
            out.append(a)
    return out


def parser() -> argparse.ArgumentParser:
    # the actions are shown the Windows way (/join); --join is accepted too
    p = argparse.ArgumentParser(
        prog="dsregcmd",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="dsregcmd /join | /leave | /status | /signin | /cleanupaccounts [/debug] [/hybrid] [options]",
        description="Device registration (Entra join) for a lab device.\n\n"
        "actions (one of):\n"
        "  /join              join the device to Entra (--username UPN --password PW)\n"
        "  /join /hybrid      hybrid join (JoinType 6) of a domain-joined device (--tenant)\n"
        "  /leave             leave Entra\n"
        "  /status            print the device state (AzureAdJoined, DeviceId, TenantId, ...)\n"
        "  /signin            sign a user in on the joined device: a PRT (--username UPN --password PW)\n"
        "  /cleanupaccounts   remove the signed-in user's WAM account\n"
        "  /debug             with /join: print each join stage",
        epilog="example: dsregcmd /join --home ./device01 --username alice@lab.test --password '<from cmglab info>'",
    )
    group = p.add_mutually_exclusive_group()  # one is required: main() says so in the Windows words
    for action in ACTIONS:
        group.add_argument(f"--{action}", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--home", type=Path, help="the device directory (default $CMGLAB_DEVICE_HOME)")
    p.add_argument("--resolve", action="append", default=[], metavar="HOST:PORT:ADDR")
    p.add_argument("--username", help="UPN of the user who joins the device (/join) or signs in (/signin)")
    p.add_argument("--password", help="that user's password")
    p.add_argument("--hybrid", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--tenant", help="hybrid join: a tenant (domain or ID) instead of the one the service connection point names"
    )
    return p


def _row(key: str, value: Any) -> str:
    return f"{key:>30} : {value}"


def _box(title: str) -> list[str]:
    bar = "+" + "-" * 70 + "+"
    return [bar, f"| {title:<68} |", bar, ""]


def _validity(cert: Any) -> str:
    def fmt(d: datetime) -> str:
        return f"{d:%Y-%m-%d %H:%M:%S}.000 UTC"

    return f"[ {fmt(cert.not_valid_before_utc)} -- {fmt(cert.not_valid_after_utc)} ]"


def _utc(stamp: int) -> str:
    return f"{datetime.fromtimestamp(stamp, UTC):%Y-%m-%d %H:%M:%S}.000 UTC"


def sso_state(device: Device | None) -> list[str]:
    """AzureAdPrt YES only with a PRT that has not expired; its times and authority as dsregcmd shows them."""
    record = load_prt(device) if device is not None else None
    if record is None or not prt_valid(record):
        return [_row("AzureAdPrt", "NO"), _row("EnterprisePrt", "NO")]
    return [
        _row("AzureAdPrt", "YES"),
        _row("AzureAdPrtUpdateTime", _utc(record.updated_at)),
        _row("AzureAdPrtExpiryTime", _utc(record.expires_at)),
        _row("AzureAdPrtAuthority", record.authority),
        _row("EnterprisePrt", "NO"),
        _row("EnterprisePrtAuthority", ""),
    ]


def status(device: Device) -> str:
    state = join_state(device) or {}
    info = device.info
    joined = bool(state)
    hybrid = state.get("JoinType") == "Hybrid"
    cert = device.stores.device_cert()
    lines = _box("Device State")
    lines += [
        _row("AzureAdJoined", "YES" if joined else "NO"),
        _row("EnterpriseJoined", "NO"),
        _row("DomainJoined", "YES" if info.domain else "NO"),
    ]
    if info.domain:
        lines.append(_row("DomainName", info.domain.split(".")[0].upper()))
    lines += [_row("Virtual Desktop", "NOT SET"), _row("Device Name", info.fqdn), ""]
    if joined:
        lines += _box("Device Details")
        lines += [_row("DeviceId", state["DeviceId"]), _row("Thumbprint", state["Thumbprint"])]
        if cert is not None:
            lines.append(_row("DeviceCertificateValidity", _validity(cert.cert())))
        lines += [
            _row("KeyContainerId", state["Thumbprint"].lower()),
            _row("KeyProvider", "Microsoft Software Key Storage Provider"),
            _row("TpmProtected", "NO"),
            _row(
                "DeviceAuthStatus",
                "SUCCESS" if cert is not None else "FAILED. Device certificate not found in the Personal store",
            ),
            "",
        ]
        lines += _box("Tenant Details")
        lines += [
            _row("TenantName", state.get("TenantName", "")),
            _row("TenantId", state.get("TenantId", "")),
            _row("AuthCodeUrl", state.get("AuthCodeUrl", "")),
            _row("AccessTokenUrl", state.get("AccessTokenUrl", "")),
            _row("MdmUrl", ""),
            _row("MdmTouUrl", ""),
            _row("MdmComplianceUrl", ""),
            _row("SettingsUrl", ""),
            _row("JoinSrvVersion", "2.0"),
            _row("JoinSrvUrl", state.get("JoinSrvUrl", "")),
            _row("JoinSrvId", "urn:ms-drs:enterpriseregistration.windows.net"),
            _row("KeySrvVersion", "1.0"),
            _row("KeySrvUrl", state.get("KeySrvUrl", "")),
            _row("KeySrvId", "urn:ms-drs:enterpriseregistration.windows.net"),
            "",
        ]
    account = wam_account(device) if joined else None
    lines += _box("User State")
    lines += [_row("NgcSet", "NO"), _row("WorkplaceJoined", "NO"), _row("WamDefaultSet", "YES" if account else "NO")]
    if account:
        lines += [
            _row("WamDefaultAuthority", "organizations"),
            _row("WamDefaultId", "https://login.microsoft.com"),
            _row("WamDefaultGUID", "{B16898C6-A148-4967-9171-64D755DA8520} (AzureAd)"),
        ]
    lines += ["", *_box("SSO State"), *sso_state(device if joined else None)]
    if hybrid:
        lines.append(_row("OnPremTgt", "NO"))
    lines.append("")
    attempt = device.read_json(device.attempt_path) if not joined else None
    if attempt:
        lines += _box("Diagnostic Data")
        lines += [
            _row("Diagnostics Reference", "www.microsoft.com/aadjerrors"),
            _row("User Context", "SYSTEM"),
            _row("Client Time", attempt["Time"]),
            _row("AD Connectivity Test", "PASS"),
            _row("AD Configuration Test", "PASS"),
            _row("DRS Discovery Test", "PASS"),
            _row("DRS Connectivity Test", "PASS"),
            _row("Token acquisition Test", "SKIPPED"),
            _row("Fallback to Sync-Join", "ENABLED"),
            "",
            _row("Previous Registration", attempt["Time"]),
            _row("Registration Type", attempt["RegistrationType"]),
            _row("Error Phase", attempt["ErrorPhase"]),
            _row("Client ErrorCode", attempt["ClientErrorCode"]),
            _row("Server ErrorCode", attempt["ServerErrorCode"]),
            _row("Server Message", attempt["ServerMessage"]),
            _row("Https Status", attempt["HttpsStatus"]),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(_normalise(sys.argv[1:] if argv is None else argv))
    if not any(getattr(args, action) for action in ACTIONS):
        p.error("one action is required: /join, /leave, /status, /signin or /cleanupaccounts")
    try:
        device = Device.open(args.home)
    except DeviceError as e:
        print(f"dsregcmd: {e}", file=sys.stderr)
        return 2
    if args.status:
        try:
            print(status(device), flush=True)
        except BrokenPipeError:  # `dsregcmd /status | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    log = cmtrace_logger(device.home / "Windows" / "Logs" / "dsreg.log", "dsreg")
    network = DeviceNetwork(device, resolve=args.resolve)
    joiner = Joiner(device, network, log)
    try:
        if args.cleanupaccounts:
            device.wam_path.unlink(missing_ok=True)
            forget_prt(device)
            print("WAM accounts were deleted.")
            return 0
        if args.signin:
            if not args.username or not args.password:
                print("dsregcmd: /signin needs --username UPN --password PASSWORD", file=sys.stderr)
                return 2
            record = joiner.sign_in(args.username, args.password)
            print(f"{args.username} signed in: primary refresh token from {record.authority}.")
            return 0
        if args.leave:
            state = joiner.leave()
            print(
                "This device is not joined to Azure AD."
                if state is None
                else f"Device {state['DeviceId']} left Azure AD tenant {state['TenantId']}."
            )
            return 0
        if args.hybrid:
            state = joiner.hybrid_join(args.tenant)
        else:
            if not args.username or not args.password:
                print("dsregcmd: /join needs --username UPN --password PASSWORD (the user who joins)", file=sys.stderr)
                return 2
            state = joiner.join(args.username, args.password)
    except (JoinError, EntraError) as e:
        log.error(f"Join failed: {e}")
        print(f"DSREG: join failed: {e}", file=sys.stderr)
        attempt = device.read_json(device.attempt_path) if args.hybrid else None
        if attempt and attempt.get("ClientErrorCode") == "0x801c03f2":
            print(
                "DSREG: the hybrid join is pending (0x801c03f2, DSREG_E_DIRECTORY_FAILURE): Entra Connect has not "
                "synchronised this computer yet. Run `cmglab entra sync` (or wait for the sync cycle), then "
                "`dsregcmd /join /hybrid` again.",
                file=sys.stderr,
            )
        return 1
    except (NetworkError, OSError) as e:
        err = classify(e)
        log.error(f"Join failed: {err.text} (0x{err.hresult:08X})")
        print(f"DSREG: join failed: {err}", file=sys.stderr)
        return 1
    finally:
        device.close_logs()
    if args.debug:
        print((device.home / "Windows" / "Logs" / "dsreg.log").read_text(errors="replace"))
    print(f"Device {state['DeviceId']} joined tenant {state['TenantId']} ({state['JoinType']}).")
    return 0
