"""`ccmsetup`: the ConfigMgr client installer, with ccmsetup.exe's command line and exit codes."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from cmglab.agent.ccmsetup.cmdline import USAGE, CommandLineError, ExitCode, parse
from cmglab.agent.device import Device, DeviceError
from cmglab.core.logs import last_cmtrace_error


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
    started = f"==========[ ccmsetup started in process {os.getpid()} ]=========="
    log.info(started)
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
    print(exit_summary(int(code), device.ccmsetup_log_path, started), file=sys.stderr)
    return int(code)


def exit_summary(code: int, log_path: Path, started: str) -> str:
    """The line ccmsetup prints as it exits. ccmsetup.exe prints nothing; the lab adds the reason (this
    run's last error in the log) so that a failure says why without opening the log."""
    line = f"ccmsetup: exit code {code}"
    reason = last_cmtrace_error(log_path, since=started) if code != 0 else None
    if reason:
        line += f": {' '.join(reason.split())}"
    return f"{line}; log {log_path}"
