"""`ccmexec`: the installed client's service (CcmExec): one cycle, or `--loop`.

A cycle: pick the management point (the intranet MP when it answers, else rotate to the internet MP,
the CMG), finish registration if needed (ClientIDManagerStartup), renew the MP-issued unique token
when it is a month old, then request machine policy and download the bodies (PolicyAgent); CCM
tokens are renewed by CcmMessaging when expired or close to it (`--renew-token`: now).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from cmglab.agent.ccm.client import CcmClient, MessagingError, TokenUnavailable
from cmglab.agent.ccm.location import rotate_internet_mp, site_info
from cmglab.agent.ccm.policy import PolicyAgent
from cmglab.agent.ccm.registration import ClientIDManager, RegistrationFailed
from cmglab.agent.ccm.state import TOKEN, ClientState, ManagementPoint
from cmglab.agent.device import Device, DeviceError
from cmglab.agent.network import DeviceNetwork
from cmglab.wire.ccm_messaging import parse_xml
from cmglab.wire.site_security import site_checks_crl


def choose_mp(client: CcmClient) -> ManagementPoint | None:
    st, dev = client.state, client.device
    loc_log, cl_log = dev.ccm_log("LocationServices.log"), dev.ccm_log("ClientLocation.log")
    if st.intranet_mp:
        mp = ManagementPoint(**st.intranet_mp)
        try:  # a probe: one unanswered request means the client is not on the intranet
            reply = site_info(client, mp, st.site_code, loc_log, retry=False)
            site = parse_xml(reply).find("Site")
            if site is not None and st.follow_site_crl_setting(site_checks_crl(site), loc_log):
                client.network.crl_check = st.crl_check  # from the next connection on
                st.save(dev)
            cl_log.info(f"Client is on the intranet: assigned management point '{mp.name}'")
            return mp
        except MessagingError as e:
            loc_log.info(
                f"The intranet management point '{mp.name}' is not reachable ({e}): the client is on the internet"
            )
    cl_log.info("Client is on internet")
    return rotate_internet_mp(client, [loc_log, cl_log])


def cycle_summary(state: ClientState, mp: ManagementPoint, policies: int) -> str:
    """The one line a successful cycle prints (CcmExec itself is a silent service; the lab says what it did)."""
    where = f"internet, through the CMG {mp.name}" if mp.internet else f"intranet, MP {mp.name}"
    return (
        f"ccmexec: cycle complete: client {state.sms_id or 'not registered'} (approval {state.approval}, "
        f"auth {state.auth_mode or 'none'}), {where}, {policies} policies applied"
    )


def download(client: CcmClient, mp: ManagementPoint, package_id: str) -> int:
    """A deployment's content: ContentTransferManager asks where it is, DataTransferService fetches it."""
    from cmglab.agent.ccm.content import ContentTransfer, DownloadError

    try:
        dest = ContentTransfer(client).download(mp, package_id)
    except DownloadError as e:
        print(f"ccmexec: content {package_id} could not be downloaded: {e} (0x{e.hresult:08X})", file=sys.stderr)
        return 1
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    print(f"ccmexec: content {package_id} downloaded to {dest}: {', '.join(files)}")
    return 0


def cycle(device: Device, resolve: list[str], download_package: str | None = None, renew_token: bool = False) -> int:
    state = ClientState.load(device)
    if state is None or not state.installed:
        print("ccmexec: the ConfigMgr client is not installed on this device (run ccmsetup)", file=sys.stderr)
        return 2
    network = DeviceNetwork(device, crl_check=state.crl_check, resolve=resolve)
    client = CcmClient(device, network, state)
    log = device.ccm_log("CcmExec.log")
    try:
        mp = choose_mp(client)
        if mp is None:
            return 1
        ClientIDManager(client).startup(mp)
        if state.auth_mode == TOKEN and client.client_tokens.due_for_renewal():
            reg_log = device.ccm_log("ClientIDManagerStartup.log")
            reg_log.info("The client's unique token is due for its monthly renewal")
            if mp.token_auth:
                client.renew_token(mp, reg_log)
        if download_package:
            return download(client, mp, download_package)
        if renew_token:
            if not mp.token_auth:
                print(
                    f"ccmexec: the client does not use a CCM token with {mp.name} (no token authentication): "
                    "nothing to renew",
                    file=sys.stderr,
                )
            client.force_token_renewal = True  # CcmMessaging renews it for the policy request, as in seed 001
        before = client.cache.get()
        policies = PolicyAgent(client).evaluate(mp)
        log.info("CcmExec cycle complete")
        print(cycle_summary(state, mp, policies))
        after = client.cache.get()
        if renew_token and after is not None and after != before:  # say so: the summary alone looks the same
            print(f"ccmexec: CCM token renewed (CcmMessaging.log), valid until {after['ExpiresOn']}")
        return 0
    except (MessagingError, TokenUnavailable, RegistrationFailed) as e:
        log.error(f"CcmExec cycle failed: {e}")
        print(f"ccmexec: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
        device.close_logs()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ccmexec", description="Run the installed ConfigMgr client.")
    p.add_argument("--home", type=Path, help="the device directory (default $CMGLAB_DEVICE_HOME)")
    p.add_argument("--resolve", action="append", default=[], metavar="HOST:PORT:ADDR")
    p.add_argument("--loop", action="store_true", help="keep running (one cycle every --interval seconds)")
    p.add_argument("--interval", type=float, default=3600.0, help="seconds between cycles with --loop")
    p.add_argument(
        "--download",
        metavar="PACKAGE_ID",
        help="download a package's content from the distribution point into the client cache",
    )
    p.add_argument(
        "--renew-token",
        action="store_true",
        help="renew the CCM token now (CcmMessaging's renewal, as when it is close to expiry)",
    )
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        device = Device.open(args.home)
    except DeviceError as e:
        print(f"ccmexec: {e}", file=sys.stderr)
        return 2
    if not args.loop:
        return cycle(device, args.resolve, args.download, args.renew_token)
    stop = {"now": False}

    def _stop(_sig: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    code = 0
    while not stop["now"]:
        code = cycle(device, args.resolve)
        deadline = time.monotonic() + args.interval
        while not stop["now"] and time.monotonic() < deadline:
            time.sleep(0.2)
    return code
