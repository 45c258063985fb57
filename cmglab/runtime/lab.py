"""A loaded lab directory: the config, the PKI, this process' settings and the host mapping."""

from __future__ import annotations

import hashlib
import secrets
import shutil
from pathlib import Path

import httpx

from cmglab.core.labconfig import (
    PLAIN_HTTP_SERVICES,
    LabConfig,
    LabConfigError,
    Ports,
    default_config,
    load_config,
    save_config,
    write_private,
)
from cmglab.core.settings import Settings
from cmglab.pki.labpki import LabPKI
from cmglab.wire import httpclient
from cmglab.wire.site_tokens import SiteSigner

# service name -> the lab config's host attribute
SERVICE_HOSTS = {
    "cmg": "cmg",
    "management-point": "management_point",
    "cmg-connection-point": "cmg_connection_point",
    "pki": "pki",
    "console": "console",
    "distribution-point": "distribution_point",
}


class LabNotInitialised(Exception):
    pass


class LabUnusable(LabNotInitialised):
    """A lab directory this cmglab cannot use as it is; the message says how to start again."""


def _host_port(entry: str) -> tuple[str, str]:
    """A HOST:PORT:ADDR mapping's name (lower-cased) and port."""
    host, _, rest = entry.strip().partition(":")
    return host.lower(), rest.partition(":")[0]


def way_out(lab_dir: Path) -> str:
    return (
        f"start again from nothing: `cmglab init --force --lab {lab_dir}` (the compose lab: "
        "`docker compose --profile client down -v`, then `docker compose up -d`)"
    )


# what the services make from a lab's config on their first start: stale once `init --force` remakes it
LAB_STATE = ("data", "content", "site-key")


def discard_state(lab_dir: Path) -> None:
    for name in LAB_STATE:
        target = lab_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def _load_config(path: Path) -> LabConfig:
    try:
        return load_config(path)
    except LabConfigError as e:
        raise LabUnusable(f"{e}: {way_out(path.parent)}") from e


class Lab:
    def __init__(self, lab_dir: Path, config: LabConfig, settings: Settings) -> None:
        self.dir = lab_dir
        self.config = config
        self.settings = settings
        self.pki = LabPKI(lab_dir / "pki", config)

    # -- creation and loading ------------------------------------------------------------------
    @staticmethod
    def config_path(lab_dir: Path) -> Path:
        return lab_dir / "lab.json"

    @classmethod
    def load(cls, lab_dir: Path | None = None, settings: Settings | None = None) -> Lab:
        settings = settings or Settings()
        lab_dir = (lab_dir or settings.lab_dir).absolute()
        path = cls.config_path(lab_dir)
        if not path.exists():
            raise LabNotInitialised(f"no lab at {lab_dir}: run `cmglab init --lab {lab_dir}` first")
        return cls(lab_dir, _load_config(path), settings)

    @classmethod
    def init(
        cls,
        lab_dir: Path,
        *,
        force: bool = False,
        compose: bool = False,
        ports: Ports | None = None,
        settings: Settings | None = None,
    ) -> tuple[Lab, list[str]]:
        """Create what is missing (config, admin token, PKI, hosts file); `force` regenerates all."""
        lab_dir = lab_dir.absolute()
        created: list[str] = []
        path = cls.config_path(lab_dir)
        if force or not path.exists():
            if force:  # the old lab's databases, content and site key hold its tenants, users and keys
                discard_state(lab_dir)
            lab_dir.mkdir(parents=True, exist_ok=True)
            config = default_config(compose=compose)
            if ports is not None:
                config.ports = ports
            save_config(config, path)
            created.append("lab.json")
        lab = cls(lab_dir, _load_config(path), settings or Settings(lab_dir=lab_dir))
        if compose and not lab.config.compose:
            raise LabUnusable(
                f"{lab_dir} holds a lab made for one machine (`cmglab up`), not for compose: {way_out(lab_dir)}"
            )
        token = lab.dir / "admin-token"
        if force or not token.exists():
            write_private(token, secrets.token_urlsafe(32) + "\n")
            created.append("admin-token")
        created += [f"pki/{c}" for c in lab.pki.init(force=force)]
        hosts = lab.dir / "hosts"
        # compose: DNS and the network aliases answer, no mapping
        entries = [] if lab.config.compose else lab.loopback_resolve()
        if force or not hosts.exists():
            hosts.write_text("".join(f"{e}\n" for e in entries))
            created.append("hosts")
        else:  # keep the file as it is (a replica's extra mapping too: README "Scale-out"), and map a lab name
            # lab.json gives a port the file lacks: a service added since (the console), or ports edited by hand.
            # That name's mappings at ports lab.json no longer gives go: the agent takes the lowest mapped port
            # of a name, so it would dial the old one
            lines = httpclient.read_hosts_file(hosts)
            mapped = {_host_port(e) for e in lines}
            missing = [e for e in entries if _host_port(e) not in mapped]
            if missing:
                wanted = {_host_port(e) for e in entries}
                moved = {_host_port(e)[0] for e in missing}
                kept = [e for e in lines if _host_port(e)[0] not in moved or _host_port(e) in wanted]
                hosts.write_text("".join(f"{e}\n" for e in [*kept, *missing]))
                created.append("hosts (" + ", ".join(dict.fromkeys(e.split(":")[0] for e in missing)) + ")")
        for sub in ("data", "logs"):
            (lab.dir / sub).mkdir(exist_ok=True)
        return lab, created

    # -- facts ---------------------------------------------------------------------------------
    def host(self, service: str) -> str:
        if service == "entra":
            return self.config.hosts.entra[0]
        return str(getattr(self.config.hosts, SERVICE_HOSTS[service]))

    def port(self, service: str) -> int:
        return self.config.service_port(service)

    def url(self, service: str, host: str | None = None) -> str:
        port = self.port(service)
        scheme = "http" if service in PLAIN_HTTP_SERVICES else "https"
        default = 80 if scheme == "http" else 443
        name = host or self.host(service)
        return f"{scheme}://{name}" + ("" if port == default else f":{port}")

    def loopback_resolve(self) -> list[str]:
        """Every name the lab answers to, mapped to loopback on its embedded port."""
        addr = self.config.bind_address
        c = self.config
        entries = [f"{h}:{c.ports.entra}:{addr}" for h in c.hosts.entra]
        entries += [
            f"{c.hosts.cmg}:{c.ports.cmg}:{addr}",
            f"{c.hosts.cmg}:{c.ports.cmg_connector}:{addr}",
            f"{c.hosts.management_point}:{c.ports.management_point}:{addr}",
            f"{c.hosts.management_point}:{c.ports.management_point_http}:{addr}",
            f"{c.hosts.pki}:{c.ports.pki}:{addr}",
            f"{c.hosts.cmg_connection_point}:{c.ports.cmg_connection_point}:{addr}",
            f"{c.hosts.console}:{c.ports.console}:{addr}",
            f"{c.hosts.distribution_point}:{c.ports.distribution_point}:{addr}",
            f"{c.hosts.distribution_point}:{c.ports.distribution_point_http}:{addr}",
        ]
        return entries

    def resolve(self) -> list[str]:
        """The mapping outbound clients of this process use (none in compose: DNS answers)."""
        path = self.settings.hosts_file or (self.dir / "hosts")
        return httpclient.read_hosts_file(path)

    def bind(self) -> str:
        return self.settings.bind or self.config.bind_address

    def database_url(self, service: str) -> str:
        if self.settings.database_url:
            return self.settings.database_url
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.dir / 'data' / service}.db"

    def log_dir(self, service: str) -> Path:
        path = self.dir / "logs" / service
        path.mkdir(parents=True, exist_ok=True)
        return path

    def admin_token(self) -> str:
        return (self.dir / "admin-token").read_text().strip()

    def lab_id(self) -> str:
        """Names this lab without revealing its admin token: every service reports it in /_lab/health, so
        that `cmglab status` can tell its own lab from another one answering on the same port."""
        return hashlib.sha256(b"cmglab lab id\0" + self.admin_token().encode()).hexdigest()[:16]

    def site_signer(self) -> SiteSigner:
        ident = self.pki.site_signing
        return SiteSigner(self.config.site.hierarchy_id, ident.key(), ident.cert())

    def entra_jwks_url(self) -> str:
        return f"{self.url('entra')}/common/discovery/keys"

    @property
    def content_dir(self) -> Path:
        """Client package content the site distributes (the MP serves it, a content-enabled CMG too)."""
        return self.dir / "content"

    def http_client(
        self,
        *,
        client_cert: tuple[Path, Path] | None = None,
        crl_check: bool = False,
        timeout: float | None = None,
        limits: httpx.Limits | None = None,
    ) -> httpx.AsyncClient:
        ctx = httpclient.ssl_context(
            ca_bundle=self.pki.ca_bundle, client_cert=client_cert, crl_files=[self.pki.crl_bundle], crl_check=crl_check
        )
        return httpclient.async_client(
            ctx=ctx, resolve=self.resolve(), timeout=timeout or self.settings.upstream_timeout, limits=limits
        )
