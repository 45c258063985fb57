"""The scale-out path: two MP replicas and two CMG VM instances on one PostgreSQL site database.

A real PostgreSQL server (Debian's `postgresql` package) in a temporary directory, a Unix socket only.
Replica 2 of the MP, the CMG (VM instance 1) and a second connection point run on 127.0.0.2 with the same
ports, like a second machine; a name mapping picks the replica a client reaches, as a load balancer would.
Both connection points keep a channel to both CMG instances (instance n on the connector port + n).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from cmglab.agent import entra as agent_entra
from cmglab.core.labconfig import CONFIGMGR_CLIENT_APP_ID, CONFIGMGR_RESOURCE_URI, SiteSettings
from cmglab.core.settings import Settings
from cmglab.runtime.db import make_engine
from cmglab.runtime.lab import Lab
from cmglab.services.entra import drs as drs_crypto
from cmglab.services.entra import store as st
from cmglab.services.entra.errors import AADSTSError
from cmglab.services.entra.grants import JWT_BEARER, TokenRequest, TokenResult
from cmglab.services.entra.nonces import NonceKey
from cmglab.services.entra.parts import Parts as EntraParts
from cmglab.services.entra.store import Store as EntraStore
from cmglab.services.management_point.policy_defaults import default_policies
from cmglab.services.management_point.store import Store as MPStore
from cmglab.tools.fleet import runner
from cmglab.tools.processes import LabProcesses, isolated_lab
from cmglab.wire.prt_crypto import open_session_key
from tests.support.agent import log_of, new_device, run
from tests.support.client import ccmsetup
from tests.support.entra_device import signed_request
from tests.support.entra_races import joins_at_once, locked_once, new_user, wrong_passwords_at_once
from tests.support.entra_units import join_device
from tests.support.lab import lab_client
from tests.support.mp import Device, lab_rows, register

REPLICA_ADDR = "127.0.0.2"
ENV = {"CMGLAB_CHANNEL_HEARTBEAT": "1", "CMGLAB_CHANNEL_BACKOFF_MAX": "1", "CMGLAB_CP_CMG_INSTANCES": "2"}


def postgres_bin() -> Path | None:
    """The server binaries' directory: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None
    )
    return Path(found).parent if found else None


@dataclass
class Postgres:
    socket_dir: Path

    def url(self, database: str) -> str:
        return f"postgresql://cmglab@/{database}?host={self.socket_dir}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(host=str(self.socket_dir), user="cmglab", dbname="postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    # not under pytest's tmp_path: the server's user must reach its data and socket directory
    root = Path(tempfile.mkdtemp(prefix="cmglab-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "cmglab", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    subprocess.run(
        [*pg_ctl, "-w", "-l", str(root / "server.log"), "-o", f"-k {root} -c listen_addresses='' -F", "start"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        yield Postgres(root)
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_stores_created_at_once_on_one_database(postgres: Postgres, tmp_path: Path) -> None:
    """Replicas starting together: four MP stores and an Entra store created at the same moment on a fresh
    database. Schema creation and seeding run under the advisory lock: no error, one set of seed rows, and
    each service's tables in its own schema (both have `tenants`)."""
    lab = isolated_lab(tmp_path / "lab")
    url = postgres.create_database("race")
    gate = threading.Barrier(5)
    errors: list[BaseException] = []

    def open_store(make: Any) -> None:
        try:
            gate.wait()
            make().db.dispose()
        except BaseException as e:
            errors.append(e)

    makers = [lambda: MPStore(lab, url, policy_factory=default_policies)] * 4 + [lambda: _entra(url, lab)]
    threads = [threading.Thread(target=open_store, args=(m,)) for m in makers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    engine = make_engine(url)
    with engine.connect() as c:
        count = lambda table: c.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: E731
        # every site setting once: no row seeded twice by the racing stores
        assert count("management_point.site_settings") == len(SiteSettings.model_fields)
        assert count("management_point.policies") == len(default_policies(lab))
        assert count("management_point.tenants") == len(lab.config.tenants) == count("entra.tenants")
    engine.dispose()


def _entra(url: str, lab: Lab) -> EntraStore:
    store = EntraStore(url, lab.config, NonceKey.of_lab(lab))
    store.seed()
    return store


def test_one_nonce_spent_at_once_on_two_entra_replicas_is_taken_once(postgres: Postgres, tmp_path: Path) -> None:
    """Attack: send one nonce to two Entra replicas on one PostgreSQL database, on several connections at once, to
    have it taken more than once. Either replica checks the other's nonce (one lab key), and the first insert of its
    row is the only use (ON CONFLICT DO NOTHING: the others wait for it and find the row); another lab's is refused."""
    lab, url = isolated_lab(tmp_path / "lab"), postgres.create_database("nonces")
    replicas = [_entra(url, lab), _entra(url, lab)]
    try:
        nonce, racers = replicas[0].issue_nonce(300), 8
        start, taken = threading.Barrier(racers), []

        def spend(store: EntraStore) -> None:
            start.wait()
            taken.append(store.consume_nonce(nonce))

        threads = [threading.Thread(target=spend, args=(replicas[i % 2],)) for i in range(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(taken) == [False] * (racers - 1) + [True]
        assert replicas[1].consume_nonce(replicas[1].issue_nonce(300)) is True
        other_lab = NonceKey(b"another lab" * 3).issue(st.now() + 300)
        assert replicas[0].consume_nonce(other_lab) is False
    finally:
        for store in replicas:
            store.db.dispose()


def test_entra_plain_sql_units_run_on_postgresql(
    postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entra's hot requests in plain-SQL units (`Store.plain`, the driver's own cursor: psycopg's `%s` placeholders, a
    bytea, a boolean) on PostgreSQL, where SQLite's loose typing hides nothing: ROPC's sign-in (a wrong password
    counted, a right one resetting the count by its UPDATE), the DRS join's quota count and device INSERT (read back
    by the ORM as the ORM wrote it), a device token (the device row's facts, a disabled device refused), CloudAP's
    PRT sign-in (its row, the session key a bytea), and smart lockout and the device quota holding under requests
    sent at once."""
    lab = isolated_lab(tmp_path / "lab")
    url = postgres.create_database("plain_units")
    on_postgres = Lab.load(lab.dir, Settings(lab_dir=lab.dir, database_url=url))
    on_postgres.config.primary_tenant.max_devices_per_user = 2
    entra = EntraParts.from_lab(on_postgres)
    tenant = lab.config.primary_tenant
    user = tenant.users[0]

    def token(**form: str) -> TokenResult:
        return entra.grants.token(TokenRequest(segment=tenant.tenant_id, v2=False, form=form, ipaddr="192.0.2.1"))

    def ropc(password: str) -> TokenResult:
        return token(
            grant_type="password",
            username=user.upn,
            password=password,
            client_id=agent_entra.BROKER_CLIENT_ID,
            resource=agent_entra.DRS_RESOURCE,
        )

    def lockout() -> tuple[int, str] | None:
        with entra.store.session() as s:
            row = s.get(st.Lockout, user.upn.lower())
            return None if row is None else (row.failures, row.recent)

    try:
        with pytest.raises(AADSTSError) as refused:
            ropc("not-the-password")
        assert refused.value.code == 50126
        counted = lockout()
        assert counted is not None and counted[0] == 1 and counted[1]  # the wrong password's digest remembered
        signed_in = ropc(user.password).body
        drs = signed_in["access_token"]
        assert lockout() == (0, "")  # the plain unit's UPDATE, committed

        def redeem(refresh_token: str) -> str:  # a grant in an ORM session: the same plain SQL on its connection
            renewed = token(
                grant_type="refresh_token",
                refresh_token=refresh_token,
                client_id=agent_entra.BROKER_CLIENT_ID,
                resource=agent_entra.DRS_RESOURCE,
            )
            return str(renewed.body["refresh_token"])

        assert redeem(redeem(signed_in["refresh_token"]))  # each new row written as ROPC's, and redeemable

        joined = join_device(entra, drs, user.upn)
        cert, device_id, device_key, transport_key = (
            joined.cert,
            joined.device_id,
            joined.device_key,
            joined.transport_key,
        )
        with entra.store.session() as s:
            row = st.device_by_id(s, device_id)
            assert row is not None
            assert row.enabled is True and row.onprem_sid is None and row.user_certificate is None
            assert row.transport_key == drs_crypto.spki(transport_key.public_key())
            assert isinstance(row.created_at, int) and isinstance(row.registered_at, int)
            assert (row.tenant_id, row.trust_type, row.join_type, row.auth_methods) == (
                tenant.tenant_id,
                "AzureAd",
                0,
                "pwd",
            )

        def device_token() -> TokenResult:
            nonce = token(grant_type="srv_challenge").body["Nonce"]
            payload = {
                "request_nonce": nonce,
                "resource": CONFIGMGR_RESOURCE_URI,
                "client_id": CONFIGMGR_CLIENT_APP_ID,
                "grant_type": "device_token",
            }
            return token(grant_type=JWT_BEARER, request=signed_request(cert, device_key, payload))

        issued = device_token()
        assert issued.auth_subject == device_id and issued.body["access_token"].count(".") == 2

        # CloudAP's sign-in (the device-signed password grant, its plain unit): the PRT's row and its session key
        nonce = token(grant_type="srv_challenge").body["Nonce"]
        inner = {"request_nonce": nonce, "client_id": agent_entra.BROKER_CLIENT_ID, "grant_type": "password"}
        inner.update(username=user.upn, password=user.password, scope="openid aza ugs")
        prt = token(grant_type=JWT_BEARER, request=signed_request(cert, device_key, inner)).body
        with entra.store.session() as s:
            prt_row = s.get(st.PrimaryRefreshToken, st.token_hash(prt["refresh_token"]))
            assert prt_row is not None and (prt_row.device_id, prt_row.amr) == (device_id, "pwd rsa")
            assert prt_row.session_key == open_session_key(prt["session_key_jwe"], transport_key)
        with entra.store.session() as s:
            found = st.device_by_id(s, device_id)
            assert found is not None
            found.enabled = False
        with pytest.raises(AADSTSError) as refused:
            device_token()
        assert refused.value.code == 700003

        # smart lockout's count under wrong passwords sent at once: each counted (the row locked FOR UPDATE here)
        raced, threshold = f"raced@{user.upn.split('@', 1)[1]}", lab.config.smart_lockout.threshold
        new_user(entra, tenant.tenant_id, raced, "Raced-Pass-1")
        answers = wrong_passwords_at_once(entra, tenant.tenant_id, raced, agent_entra.BROKER_CLIENT_ID, threshold)
        assert locked_once(answers, threshold), answers

        # the device quota under one user's joins sent at once: no more than the quota joined (the user's row locked)
        joiner = f"joiner@{user.upn.split('@', 1)[1]}"
        new_user(entra, tenant.tenant_id, joiner, "Joiner-Pass-1")
        drs = token(
            grant_type="password",
            username=joiner,
            password="Joiner-Pass-1",
            client_id=agent_entra.BROKER_CLIENT_ID,
            resource=agent_entra.DRS_RESOURCE,
        ).body["access_token"]
        answers = joins_at_once(entra, drs, joiner.split("@", 1)[1], 6, monkeypatch)
        assert sorted(answers, key=str) == [240001] * 4 + ["joined"] * 2, answers
    finally:
        entra.store.db.dispose()


@dataclass
class Site:
    lab: Lab  # names mapped to the first replicas (127.0.0.1)
    lab2: Lab  # the same lab seen through a mapping to the second replicas (127.0.0.2)
    first: LabProcesses
    second: LabProcesses
    database_url: str

    def requests(self, which: Lab, service: str, **params: Any) -> list[dict[str, Any]]:
        with lab_client(which) as c:
            reply = c.get(
                f"{which.url(service)}/_lab/requests",
                params={"limit": 2000, **params},
                headers={"Authorization": f"Bearer {which.admin_token()}"},
            )
        return list(reply.json()["requests"])

    def rows(self, sql: str) -> list[Any]:
        engine = make_engine(self.database_url)
        try:
            with engine.connect() as c:
                return list(c.execute(text(sql)))
        finally:
            engine.dispose()


def on_replica(entries: Iterable[str], moved: Callable[[str, int], bool]) -> list[str]:
    """HOST:PORT:ADDR entries with the `moved` ones sent to the second replicas' address."""
    out = []
    for entry in entries:
        host, port, _ = entry.split(":", 2)
        out.append(f"{host}:{port}:{REPLICA_ADDR}" if moved(host, int(port)) else entry)
    return out


def replica_hosts(lab: Lab, path: Path) -> Path:
    """The lab's mapping with the replicated listeners (MP, CMG clients, connection point admin) on the second
    address. Both mappings send CMG instance 1's connector port (connector + 1) there."""
    c = lab.config
    moved = {
        (c.hosts.management_point, c.ports.management_point),
        (c.hosts.management_point, c.ports.management_point_http),
        (c.hosts.cmg, c.ports.cmg),
        (c.hosts.cmg_connection_point, c.ports.cmg_connection_point),
    }
    with (lab.dir / "hosts").open("a") as f:
        f.write(f"{c.hosts.cmg}:{c.ports.cmg_connector + 1}:{REPLICA_ADDR}\n")
    path.write_text("".join(f"{e}\n" for e in on_replica(lab.resolve(), lambda h, p: (h, p) in moved)))
    return path


def wait_for_points(site: Site, count: int, timeout: float = 60) -> None:
    """Until each CMG instance has `count` connection point channels and the site's configuration."""
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for which in (site.lab, site.lab2):
            with lab_client(which) as c:
                states.append(c.get(f"{which.url('cmg')}/_lab/health").json())
        if all(len(s["connection_points"]) == count and s["site_config"] for s in states):
            assert [s["instance"] for s in states] == [0, 1]
            return
        assert time.monotonic() < deadline, f"CMG instances never got {count} channels each: {states}"
        time.sleep(0.2)


# not lab_fixture: a lab of its own on PostgreSQL, each service twice (replicas on a second address)
@pytest.fixture(scope="module")
def site(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    lab = isolated_lab(tmp_path_factory.mktemp("scaleout") / "lab")
    url = postgres.create_database("site")
    hosts2 = replica_hosts(lab, lab.dir / "hosts-replica2")
    lab2 = Lab.load(lab.dir, Settings(lab_dir=lab.dir, hosts_file=hosts2, bind=REPLICA_ADDR))
    common = {**ENV, "CMGLAB_DATABASE_URL": url}
    first = LabProcesses(lab, env=common)
    second = LabProcesses(
        lab2,
        env={**common, "CMGLAB_BIND": REPLICA_ADDR, "CMGLAB_HOSTS_FILE": str(hosts2), "CMGLAB_CMG_INSTANCE": "1"},
        replica="2",
    )
    site = Site(lab, lab2, first, second, url)
    try:
        first.ensure("pki", "entra")
        # each pair starts at the same moment: the replicas race for the schema and the seed rows
        for name in ("management-point", "cmg", "cmg-connection-point"):
            first.start(name, wait=False)
            second.start(name, wait=False)
            first.wait_healthy([name], timeout=60)
            second.wait_healthy([name], timeout=60)
        wait_for_points(site, 2)
        yield site
    finally:
        second.stop_all()
        first.stop_all()


def test_health_asks_one_replica(site: Site) -> None:
    """Replicas share their names: `cmglab health --address` asks the process at one address."""
    lab = ["--lab", str(site.lab.dir)]
    assert run("cmglab", "health", "cmg", "--address", REPLICA_ADDR, *lab).returncode == 0
    down = run("cmglab", "health", "management-point", "--address", "127.0.0.3", *lab)
    assert down.returncode == 1 and "down" in down.stdout


def test_registered_at_one_mp_served_by_the_other(site: Site, tmp_path: Path) -> None:
    """An intranet client registers at MP replica 1 (Windows authentication), then asks MP replica 2 for
    policy: replica 2 knows its key and approval from the site database alone."""
    lab = site.lab
    c = lab.config
    device = new_device(lab.dir, tmp_path / "dev", "--domain", "--name", "LAB01")
    mp_http = f"http://{c.hosts.management_point}:{c.ports.management_point_http}"
    r = ccmsetup(device, f"/mp:{mp_http}", f"SMSMP={mp_http}", "SMSSITECODE=MEM")
    assert r.returncode == 0, log_of(device, "ccmsetup.log")[-3000:]
    device.write_hosts(on_replica(device.hosts_path.read_text().split(), lambda h, _: h == c.hosts.management_point))
    r = run("cmglab.agent.ccmexec", "--home", str(device.home))
    assert r.returncode == 0, r.stderr + log_of(device, "PolicyAgent.log")[-2000:]

    def steps(which: Lab) -> set[str]:
        return {
            str(rec["tracestate"]).rpartition("step:")[2]
            for rec in site.requests(which, "management-point")
            if "dev:LAB01;" in str(rec.get("tracestate"))
        }

    assert "registration" in steps(site.lab) and "registration" not in steps(site.lab2)
    assert "policy" in steps(site.lab2)
    [(approval, asked)] = site.rows(
        "SELECT approval, last_policy_request FROM management_point.clients WHERE netbios_name = 'LAB01'"
    )
    assert approval == 1 and asked is not None


def test_fleet_onboards_through_both_cmg_instances(site: Site, tmp_path: Path) -> None:
    """Two devices through CMG instance 0, two through instance 1. Each instance spreads its requests over
    both connection points, so both MP replicas serve the fleet: tokens issued by one are honoured by the
    other, and every device ends up in the one site database."""
    runs = [
        runner.run(which, 2, concurrency=2, root=tmp_path / f"fleet{n}")
        for n, which in enumerate((site.lab, site.lab2))
    ]
    for fleet in runs:
        failed = [(r.name, r.reason) for r in fleet.results if not r.ok]
        assert not failed, failed
    devices = {r.name for fleet in runs for r in fleet.results}
    rows = site.rows("SELECT netbios_name, approval, auth_kind FROM management_point.clients")
    assert {(d, 3, "aad") for d in devices} <= {tuple(r) for r in rows}
    # one URL serves every service: Entra's directory is in the same database, in its own schema
    joined = site.rows("SELECT display_name FROM entra.devices")
    assert devices <= {r[0] for r in joined}

    def fleet_hops(which: Lab, service: str) -> int:
        return sum(
            1
            for rec in site.requests(which, service)
            if any(f"dev:{d};" in str(rec.get("tracestate")) for d in devices)
        )

    for which in (site.lab, site.lab2):
        assert fleet_hops(which, "cmg") > 0 and fleet_hops(which, "management-point") > 0


def test_what_a_client_says_of_itself_is_kept_whole(site: Site) -> None:
    """SQLite never enforced a VARCHAR length and PostgreSQL does: a 300-character NetBIOS name (the MP does
    not judge it) registers at replica 2 as it would on SQLite, and replica 1 lists it."""
    device = Device("N" * 300)
    attrs = register(site.lab2, device)
    assert attrs["Status"] == "0", attrs
    rows = {r["sms_id"]: r for r in lab_rows(site.lab, "clients")}
    assert rows[attrs["SMSID"]]["netbios_name"] == device.name


def test_reset_through_one_replica(site: Site) -> None:
    """`POST /_lab/reset` at replica 2 empties the shared site database in one transaction: replica 1 then
    lists no clients but still has the seeded site settings."""
    with lab_client(site.lab2) as c:
        reply = c.post(
            f"{site.lab2.url('management-point')}/_lab/reset",
            headers={"Authorization": f"Bearer {site.lab.admin_token()}"},
        )
        assert reply.status_code == 200, reply.text
    with lab_client(site.lab) as c:
        base = site.lab.url("management-point")
        assert c.get(f"{base}/_lab/clients").json()["clients"] == []
        assert c.get(f"{base}/_lab/site").json()["settings"]["allow_cmg"] is True
