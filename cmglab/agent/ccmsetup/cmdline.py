"""ccmsetup's command line (docs/protocol-notes.md, ConfigMgr §5): `/param[:value]` switches, then
`NAME=value` properties, case-insensitive; plus the lab-only `--home DIR` and `--resolve H:P:A`.

Anything unknown is refused with a message naming it (ccmsetup exits 6), rather than ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class ExitCode(IntEnum):
    """ccmsetup.exe return codes."""

    SUCCESS = 0
    ERROR = 6
    REBOOT_REQUIRED = 7
    ALREADY_RUNNING = 8
    PREREQUISITE_FAILURE = 9
    MANIFEST_HASH_FAILURE = 10


# switch -> takes a value
SWITCHES = {
    "mp": True,
    "regtoken": True,
    "nocrlcheck": False,
    "usepkicert": False,
    "retry": True,
    "downloadtimeout": True,
    "uninstall": False,
    "forceinstall": False,
}
PROPERTIES = (
    "CCMHOSTNAME",
    "SMSSITECODE",
    "SMSMP",
    "AADTENANTID",
    "AADCLIENTAPPID",
    "AADRESOURCEURI",
    "CCMFIRSTCERT",
    "CCMLOGLEVEL",
)


class CommandLineError(ValueError):
    pass


@dataclass
class CcmSetupArgs:
    mp: list[str] = field(default_factory=list)
    regtoken: str | None = None
    nocrlcheck: bool = False
    usepkicert: bool = False
    retry_minutes: float | None = None
    download_timeout_minutes: float = 1440
    uninstall: bool = False
    forceinstall: bool = False
    properties: dict[str, str] = field(default_factory=dict)
    home: str | None = None
    resolve: list[str] = field(default_factory=list)
    help: bool = False

    def prop(self, name: str) -> str | None:
        value = self.properties.get(name)
        return value if value else None

    @property
    def ccmhostname(self) -> str | None:
        return self.prop("CCMHOSTNAME")

    @property
    def site_code(self) -> str | None:
        return self.prop("SMSSITECODE")

    def redacted(self) -> str:
        """The command line as ccmsetup.log shows it: the bulk token never appears."""
        out = [f"/mp:{m}" for m in self.mp]
        if self.regtoken is not None:
            out.append(f"/regtoken:{redact_token(self.regtoken)}")
        out += [f"/{name}" for name in ("nocrlcheck", "usepkicert", "uninstall", "forceinstall") if getattr(self, name)]
        if self.retry_minutes is not None:
            out.append(f"/retry:{self.retry_minutes:g}")
        out += [f'{k}="{v}"' if " " in v else f"{k}={v}" for k, v in self.properties.items()]
        return " ".join(out)


def redact_token(token: str) -> str:
    return f"<redacted {len(token)} characters>" if token else ""


def _strip_quotes(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _number(name: str, value: str) -> float:
    try:
        n = float(value)
    except ValueError as e:
        raise CommandLineError(f"/{name}: expects a number of minutes, got {value!r}") from e
    if n < 0:
        raise CommandLineError(f"/{name}: must not be negative")
    return n


def parse(argv: list[str]) -> CcmSetupArgs:
    args = CcmSetupArgs()
    it = iter(argv)
    for raw in it:
        token = raw.strip()
        if not token:
            continue
        if token in ("-h", "--help", "/?", "/help"):
            args.help = True
        elif token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            if name not in ("home", "resolve"):
                raise CommandLineError(f"unknown option {token!r} (lab options: --home DIR, --resolve HOST:PORT:ADDR)")
            if not eq:
                value = next(it, "")
                if not value:
                    raise CommandLineError(f"--{name} needs a value")
            if name == "home":
                args.home = value
            else:
                args.resolve.append(value)
        elif token.startswith("/"):
            name, colon, value = token[1:].partition(":")
            key = name.lower()
            if key not in SWITCHES:
                raise CommandLineError(f"unknown parameter '/{name}'")
            if SWITCHES[key] and not colon:
                raise CommandLineError(f"parameter '/{name}' needs a value: /{name}:<value>")
            if not SWITCHES[key] and colon:
                raise CommandLineError(f"parameter '/{name}' takes no value")
            value = _strip_quotes(value)
            if key == "mp":
                args.mp += [m for m in value.split(";") if m]
            elif key == "regtoken":
                if not value:
                    raise CommandLineError("/regtoken: needs the bulk registration token")
                args.regtoken = value
            elif key == "retry":
                args.retry_minutes = _number(name, value)
            elif key == "downloadtimeout":
                args.download_timeout_minutes = _number(name, value)
            else:
                setattr(args, key, True)
        elif "=" in token:
            name, _, value = token.partition("=")
            key = name.strip().upper()
            if key not in PROPERTIES:
                raise CommandLineError(f"unknown property '{name}'")
            args.properties[key] = _strip_quotes(value.strip())
        else:
            raise CommandLineError(
                f"unexpected argument {token!r}: parameters are /name[:value], properties NAME=value"
            )
    for mp in args.mp:
        if not mp.lower().startswith(("https://", "http://")):
            raise CommandLineError(f"/mp:{mp}: the management point must be a URL (https://... for a CMG)")
    host = args.ccmhostname
    if host and host.lower().startswith(("https://", "http://")):
        raise CommandLineError("CCMHOSTNAME is a host name and path, without https://")
    if args.regtoken is not None and not (host or args.mp):
        raise CommandLineError("/regtoken needs CCMHOSTNAME (the CMG) or /mp")
    return args


USAGE = """Usage: ccmsetup [--home DIR] [--resolve HOST:PORT:ADDR ...] [/param[:value] ...] [PROPERTY=value ...]

Parameters:  /mp:<url>[;<url>]  /regtoken:<token>  /nocrlcheck  /usepkicert  /retry:<minutes>
             /downloadtimeout:<minutes>  /forceinstall  /uninstall
Properties:  CCMHOSTNAME=<cmg>/CCM_Proxy_MutualAuth/<roleId>  SMSSITECODE=<site>  SMSMP=<mp>
             AADTENANTID=  AADCLIENTAPPID=  AADRESOURCEURI=  CCMFIRSTCERT=1
             CCMLOGLEVEL=<n> (accepted; the lab's log level is fixed)
Exit codes:  0 success, 6 error, 7 reboot required, 8 already running, 9 prerequisite failure,
             10 manifest hash failure
"""
