"""`ccmsetup`: the ConfigMgr client installer, with ccmsetup.exe's command line and exit codes."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from cmglab.agent.ccmsetup.cmdline import USAGE, CommandLineError, ExitCode, parse
from cmglab.agent.device import Device, DeviceError


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    try:
        args = parse(raw)
    except CommandLineError as e:
        print(f"ccmsetup: invalid command line: {e}\n\n{USAGE}", file=sys.stderr)
        return int(ExitCode.ERROR)
    if args.help:
        print(USAGE)
        return 0
    try:
        device = Device.open(Path(args.home) if args.home else None)
    except DeviceError as e:
        print(f"ccmsetup: {e}", file=sys.stderr)
        return int(ExitCode.PREREQUISITE_FAILURE)
    from cmglab.agent.ccmsetup.installer import Installer, lock, uninstall

    log = device.ccmsetup_log()
    log.info(f"==========[ ccmsetup started in process {os.getpid()} ]==========")
    log.info(f"Running on '{platform.system()} {platform.release()}' as lab device '{device.info.name}'")
    log.info(f"Command line: ccmsetup {args.redacted()}")
    held = lock(device)
    if held is None:
        log.error("Another instance of ccmsetup is already running on this device.")
        code = ExitCode.ALREADY_RUNNING
    else:
        try:
            code = uninstall(device) if args.uninstall else Installer(device, args).run()
        finally:
            held.close()
    log.info(f"CcmSetup is exiting with return code {int(code)}")
    device.close_logs()
    print(f"ccmsetup: exit code {int(code)}; log {device.ccmsetup_log_path}", file=sys.stderr)
    return int(code)
