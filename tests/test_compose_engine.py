"""The compose lab on a real Docker engine, as a user runs it from the README: `build`, `up -d` (every service
healthy), `run --rm client`, `exec cmg cmglab info`, `exec management-point cmglab logs`, `down -v`, `up -d`
again from nothing, a client again; then the `scale` profile (PostgreSQL, two MPs, two CMG instances).

The engine is the project's harness (tools/docker-engine/): dockerd in a network namespace of its own, offline
stand-ins for python:3.11-slim and postgres:15, an offline wheel directory. The project's Dockerfile and
docker-compose.yml run unchanged; docker-compose 1.29.2 (Debian) is the client. Every engine this test starts
is stopped and its namespace removed, also when a step fails.

Needs root, dockerd, docker-compose and debootstrap (.ci/run installs them); CMGLAB_REQUIRE_DOCKER=1 turns a
missing tool into a failure instead of a skip (CI sets it)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tools" / "docker-engine"
CACHE = Path(os.environ.get("DOCKERLAB_CACHE", "/var/tmp/cmglab-docker-cache"))
PROJECT = "cmglabe2e"
SERVICES = ("pki", "entra", "management-point", "distribution-point", "cmg", "cmg-connection-point", "console")
SCALE_SERVICES = (*SERVICES, "postgres", "management-point-2", "cmg-2")
SITE_DB = "postgresql://cmglab:cmglab@postgres/cmglab"

pytestmark = [pytest.mark.docker_engine, pytest.mark.timeout(1500)]


def _missing_tools() -> list[str]:
    missing = [t for t in ("dockerd", "docker", "docker-compose", "debootstrap", "ip") if not shutil.which(t)]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


@dataclass
class Engine:
    """One private engine: its state directory, namespace and socket, and what the run measured."""

    dir: Path
    netns: str
    timings: dict[str, float] = field(default_factory=dict)
    memory_at_rest: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("CMGLAB_", "DOCKER_", "COMPOSE_"))}
        return {
            **clean,
            "DOCKERLAB_DIR": str(self.dir),
            "DOCKERLAB_NETNS": self.netns,
            "DOCKERLAB_CACHE": str(CACHE),
            "DOCKER_HOST": f"unix://{self.dir}/docker.sock",
            "COMPOSE_PROJECT_NAME": PROJECT,
        }

    def run(
        self, *argv: str, timeout: float = 600, env: dict[str, str] | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            cwd=ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def compose(
        self, *args: str, timeout: float = 600, env: dict[str, str] | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run("docker-compose", *args, timeout=timeout, env=env, input=input)

    def ok(self, *args: str, timeout: float = 600, env: dict[str, str] | None = None, input: str | None = None) -> str:
        """A compose command that must succeed; its combined output."""
        out = self.compose(*args, timeout=timeout, env=env, input=input)
        assert out.returncode == 0, f"docker-compose {' '.join(args)}: exit {out.returncode}\n{out.stdout}{out.stderr}"
        return out.stdout + out.stderr

    def health(self) -> dict[str, str]:
        """Each running container of the project: its health (or state when it has no health check)."""
        ids = self.run("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.split()
        if not ids:
            return {}
        out = self.run("docker", "inspect", *ids)
        assert out.returncode == 0, out.stderr
        states: dict[str, str] = {}
        for c in json.loads(out.stdout):
            service = c["Config"]["Labels"].get("com.docker.compose.service", c["Name"])
            if c["Config"]["Labels"].get("com.docker.compose.oneoff") == "True":
                continue  # a `run` container
            s = c["State"]
            states[service] = s["Health"]["Status"] if s.get("Health") else s["Status"]
        return states

    def wait_healthy(self, services: tuple[str, ...], timeout: float = 240) -> float:
        started = time.monotonic()
        deadline = started + timeout
        while True:
            states = self.health()
            if all(states.get(s) == "healthy" for s in services):
                return round(time.monotonic() - started, 1)
            if time.monotonic() > deadline:
                logs = self.compose("logs", "--tail", "30").stdout
                raise AssertionError(f"not healthy after {timeout}s: {states}\n{logs}")
            time.sleep(1)

    def volumes(self) -> set[str]:
        out = self.run("docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}")
        return set(out.stdout.split())

    def memory(self) -> dict[str, str]:
        out = self.run("docker", "stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}")
        return dict(line.split("\t", 1) for line in out.stdout.splitlines() if "\t" in line)


def wheel_dir() -> Path:
    """The offline index for the image, keyed by what decides its contents (pyproject.toml): a new dependency
    makes a new directory, an unchanged one reuses the wheels of an earlier run."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    return CACHE / f"wheels-{key}"


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    missing = _missing_tools()
    if missing:
        if os.environ.get("CMGLAB_REQUIRE_DOCKER") == "1":
            pytest.fail(f"the compose end-to-end test needs {', '.join(missing)}")
        pytest.skip(f"needs {', '.join(missing)} (CI installs them; set CMGLAB_REQUIRE_DOCKER=1 to insist)")
    CACHE.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="cmglab-engine-", dir="/var/tmp"))
    eng = Engine(state, f"cmglabe2e{os.getpid()}")
    try:
        started = time.monotonic()
        out = eng.run(str(HARNESS / "engine.sh"), "start", timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        wheels = wheel_dir()
        if not (wheels / ".complete").exists():
            shutil.rmtree(wheels, ignore_errors=True)
            out = eng.run(str(HARNESS / "wheels.sh"), str(wheels), timeout=600)
            assert out.returncode == 0, out.stdout + out.stderr
            (wheels / ".complete").touch()
            for old in CACHE.glob("wheels-*"):  # an earlier pyproject's wheels: the cache stays one directory
                if old != wheels:
                    shutil.rmtree(old, ignore_errors=True)
        out = eng.run(str(HARNESS / "base-images.sh"), "python", "postgres", env={"WHEELS": str(wheels)}, timeout=900)
        assert out.returncode == 0, out.stdout + out.stderr
        eng.timings["engine and base images"] = round(time.monotonic() - started, 1)
        yield eng
    finally:
        eng.compose("--profile", "client", "--profile", "scale", "down", "-v", "--remove-orphans", timeout=180)
        eng.run(str(HARNESS / "engine.sh"), "stop", timeout=120)
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        shutil.rmtree(state, ignore_errors=True)
        print(
            f"\ncompose end-to-end timings (s): {json.dumps(eng.timings)}\nmemory at rest: "
            f"{json.dumps(eng.memory_at_rest)}"
        )
        assert eng.netns not in netns.split(), f"namespace {eng.netns} left behind"


INSTANCE_REQUESTS = """
import json, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile="/lab/pki/ca-bundle.pem")
token = open("/lab/admin-token").read().strip()
req = urllib.request.Request(f"https://127.0.0.1{sys.argv[1]}", headers={"Authorization": f"Bearer {token}"})
with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
    print(json.dumps(json.load(r)))
"""


def instance_requests(eng: Engine, service: str, pattern: str) -> int:
    """How many requests matching PATTERN this one container (not its replicas) served: its own /_lab/requests."""
    out = eng.compose(
        "exec",
        "-T",
        service,
        "python",
        "-c",
        INSTANCE_REQUESTS,
        f"/_lab/requests?limit=1000&path={pattern}",
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return len(json.loads(out.stdout)["requests"])


def lab_info(eng: Engine) -> dict[str, Any]:
    out = eng.compose("exec", "-T", "cmg", "cmglab", "info", "--json", timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    facts: dict[str, Any] = json.loads(out.stdout)
    return facts


REGISTERED_SQLITE = """
import json, sqlite3
db = sqlite3.connect("/lab/data/management-point.db")
print(json.dumps(db.execute("select sms_id, aad_tenant_id, approval from clients").fetchall()))
"""


def registered_clients(eng: Engine, *, postgres: bool = False) -> list[tuple[str, str, int]]:
    """The clients in the site database, as the MP recorded them: (SMS ID, Entra tenant, approval)."""
    if postgres:
        out = eng.ok(
            "exec",
            "-T",
            "postgres",
            "psql",
            "-U",
            "cmglab",
            "-d",
            "cmglab",
            "-tA",
            "-F",
            "\t",
            "-c",
            "select sms_id, aad_tenant_id, approval from management_point.clients",
        )
        rows = [line.split("\t") for line in out.splitlines() if line.count("\t") == 2]
        return [(r[0], r[1], int(r[2])) for r in rows]
    run = eng.compose("exec", "-T", "management-point", "python", "-c", REGISTERED_SQLITE, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    return [(r[0], r[1], int(r[2])) for r in json.loads(run.stdout)]


def client_cannot_reach(eng: Engine, host: str, port: int) -> str:
    """Try a TCP connection from the client's network position; the error the client container met."""
    probe = (
        f"import socket\ntry:\n    socket.create_connection(('{host}', {port}), timeout=5)\n"
        f"    print('connected')\nexcept OSError as e:\n    print(type(e).__name__, e)\n"
    )
    out = eng.ok("--profile", "client", "run", "--rm", "--no-deps", "--entrypoint", "python", "client", "-c", probe)
    assert "connected" not in out.split(), f"the client container reached {host}:{port}"
    return out


def test_the_readme_compose_commands_on_a_real_engine(engine: Engine) -> None:
    eng = engine
    started = time.monotonic()
    eng.ok("build", timeout=900)
    eng.timings["build"] = round(time.monotonic() - started, 1)
    images = eng.run("docker", "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert "cmglab:latest" in images

    started = time.monotonic()
    eng.ok("up", "-d", timeout=600)
    eng.wait_healthy(SERVICES)
    eng.timings["up -d to healthy"] = round(time.monotonic() - started, 1)
    assert eng.health()["init"] == "exited"
    # init makes no network of its own: the project has exactly the file's two networks
    nets = eng.run(
        "docker", "network", "ls", "--format", "{{.Name}}", "--filter", f"label=com.docker.compose.project={PROJECT}"
    ).stdout.split()
    assert sorted(nets) == [f"{PROJECT}_internal", f"{PROJECT}_internet"]

    started = time.monotonic()
    first = eng.ok("run", "--rm", "client")
    eng.timings["first client"] = round(time.monotonic() - started, 1)
    assert "/devices/device01" in first
    tenant = lab_info(eng)["tenants"][0]["tenant_id"]
    clients = registered_clients(eng)
    assert len(clients) == 1 and clients[0][1] == tenant and clients[0][2] == 3, clients  # AAD-approved

    # a second run is a second device, never "already joined"
    second = eng.ok("run", "--rm", "client")
    assert "/devices/device02" in second and "already joined" not in second
    assert len(registered_clients(eng)) == 2

    info = eng.ok("exec", "-T", "cmg", "cmglab", "info")
    facts = lab_info(eng)
    assert f"site code {facts['site']['code']}" in info and "CA bundle: /lab/pki/ca-bundle.pem" in info
    assert "names: resolved by DNS" in info and "hosts mapping (" not in info  # no empty mapping section
    logs = eng.ok("exec", "-T", "management-point", "cmglab", "logs", "--no-follow", "management-point")
    assert "MP_RegistrationManager.log: Registering device using AAD auth" in logs
    assert "Processing Registration request from Client 'GUID:" in logs

    # the lab contract's topology, from where a user's client sits: no MP, no connection point admin listener
    assert "gaierror" in client_cannot_reach(eng, "mp.corp.lab.test", 443)  # not even a name on the internet
    assert "Error" in client_cannot_reach(eng, "cmg-connection-point", 80)  # admin listener: internal only
    eng.ok("exec", "-T", "console", "cmglab", "health", "cmg-connection-point")  # the internal network: yes

    eng.memory_at_rest = eng.memory()

    # down -v, then everything again from nothing: a new lab (new tenant), a client that onboards into it.
    # On the way, two things a user meets: a lab volume of another cmglab version, and host port 443 taken.
    eng.ok("down", "-v")
    assert not eng.health()
    eng.ok("run", "--rm", "--no-deps", "--entrypoint", "sh", "init", "-c", "echo '{\"version\": 99}' > /lab/lab.json")
    refused = eng.compose("up", "-d")
    assert refused.returncode != 0 and "init" in refused.stdout + refused.stderr
    said = eng.ok("logs", "init")
    assert "belongs to another cmglab version" in said and "docker compose --profile client down -v" in said
    assert eng.health()["init"] == "exited" and not any(s in eng.health() for s in SERVICES)  # nothing looping
    eng.ok("--profile", "client", "down", "-v")  # the way out the message gives

    with port_taken(eng, 443):
        blocked = eng.compose("up", "-d")
        assert blocked.returncode != 0 and "address already in use" in blocked.stdout + blocked.stderr
    eng.ok("up", "-d")
    eng.wait_healthy(SERVICES)
    again = eng.ok("run", "--rm", "client")
    assert "already joined" not in again
    new_tenant = lab_info(eng)["tenants"][0]["tenant_id"]
    assert new_tenant != tenant
    clients = registered_clients(eng)
    assert len(clients) == 1 and clients[0][1] == new_tenant, clients

    eng.ok("--profile", "client", "down", "-v")
    assert not eng.volumes(), eng.volumes()  # the devices volume too


@contextmanager
def port_taken(eng: Engine, port: int) -> Iterator[None]:
    """Another server holding PORT on the engine's host side (inside its network namespace, never outside)."""
    hold = (
        "import socket, sys, time\ns = socket.socket()\ns.bind(('0.0.0.0', int(sys.argv[1])))\ns.listen()\n"
        "print('held', flush=True)\ntime.sleep(600)\n"
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", eng.netns, sys.executable, "-c", hold, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_the_scale_profile_serves_a_client_through_both_instances(engine: Engine) -> None:
    eng = engine
    scale = {"CMGLAB_DATABASE_URL": SITE_DB, "CMGLAB_CMG_INSTANCES": "2"}
    eng.compose("--profile", "client", "--profile", "scale", "down", "-v", timeout=180)  # from nothing
    # the variables without the profile: no PostgreSQL, the MP never becomes healthy, and its log says why
    failed = eng.compose("up", "-d", env=scale, timeout=600)
    assert failed.returncode != 0 and "management-point" in failed.stdout + failed.stderr
    assert eng.health()["management-point"] in ("unhealthy", "restarting", "starting")
    why = eng.ok("logs", "management-point")
    assert "postgres" in why.lower(), why[-2000:]
    eng.ok("down")  # the way out: the unhealthy containers go (compose judges a dependency by its last health)

    started = time.monotonic()
    eng.ok("--profile", "scale", "up", "-d", env=scale)
    eng.wait_healthy(SCALE_SERVICES)
    eng.timings["scale up -d to healthy"] = round(time.monotonic() - started, 1)
    tenant = lab_info(eng)["tenants"][0]["tenant_id"]

    # a client as DNS sends it: Docker's DNS answers with both instances, but glibc sorts the answers (RFC 6724,
    # longest matching prefix) so every client of the network picks the same one; a second client is sent to the
    # other instance with a name mapping, as the README's by-hand scale-out does (CMGLAB_HOSTS_FILE)
    out = eng.ok("run", "--rm", "client", env=scale)
    assert "already joined" not in out
    first = {s: instance_requests(eng, s, "CCM_Proxy") for s in ("cmg", "cmg-2")}
    assert sum(1 for n in first.values() if n) == 1, first
    other = "cmg-2" if first["cmg"] else "cmg"
    pin = (
        "import socket; open('/lab/hosts-pinned', 'w').write("
        "f'cmg.lab.test:443:{socket.gethostbyname(socket.gethostname())}\\n')"
    )
    eng.ok("exec", "-T", other, "python", "-c", pin, env=scale)
    out = eng.ok("run", "--rm", "-e", "CMGLAB_HOSTS_FILE=/lab/hosts-pinned", "client", env=scale)
    assert "already joined" not in out
    served = {s: instance_requests(eng, s, "CCM_Proxy") for s in ("cmg", "cmg-2")}
    assert all(served.values()), f"requests per CMG instance: {served}"
    # both instances forward over the connection point's two channels to the MP; both MPs run on PostgreSQL
    runs = 2
    clients = registered_clients(eng, postgres=True)
    assert len(clients) == runs and all(c[1] == tenant and c[2] == 3 for c in clients), clients
    eng.ok("--profile", "scale", "--profile", "client", "down", "-v", env=scale)
    assert not eng.volumes()
