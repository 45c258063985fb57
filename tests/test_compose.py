"""The compose lab: `docker-compose config` accepts it, and it draws the lab's topology."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cmglab.runtime.db import MAX_OVERFLOW, POOL_SIZE

ROOT = Path(__file__).resolve().parents[1]


SITE_DB = "postgresql://cmglab:cmglab@postgres/cmglab"


def config(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is needed (Debian package docker-compose; .ci/run installs it)"
    clean = {k: v for k, v in os.environ.items() if k not in ("CMGLAB_DATABASE_URL", "CMGLAB_CMG_INSTANCES")}
    out = subprocess.run(
        [exe, *args, "config"], cwd=ROOT, capture_output=True, text=True, timeout=60, env={**clean, **(env or {})}
    )
    assert out.returncode == 0, out.stderr
    loaded: dict[str, Any] = yaml.safe_load(out.stdout)
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return config()


@pytest.fixture(scope="module")
def scaled() -> dict[str, Any]:
    """The scale profile as its README section starts it."""
    return config("--profile", "scale", env={"CMGLAB_DATABASE_URL": SITE_DB, "CMGLAB_CMG_INSTANCES": "2"})


def networks(svc: dict[str, Any]) -> set[str]:
    return set(svc.get("networks", {}))


def test_internal_network_has_no_route_out(compose: dict[str, Any]) -> None:
    assert compose["networks"]["internal"]["internal"] is True
    assert not compose["networks"]["internet"].get("internal")


def test_the_mp_is_reachable_only_through_the_connection_point(compose: dict[str, Any]) -> None:
    s = compose["services"]
    assert networks(s["management-point"]) == {"internal"}
    assert networks(s["cmg-connection-point"]) == {"internet", "internal"}
    assert networks(s["cmg"]) == {"internet"} and networks(s["entra"]) == {"internet"}
    assert networks(s["client"]) == {"internet"}
    assert networks(s["pki"]) == {"internet", "internal"}
    assert networks(s["console"]) == {"internet", "internal"}  # it reads the MP's records too


def test_entra_answers_to_the_real_microsoft_names(compose: dict[str, Any]) -> None:
    aliases = compose["services"]["entra"]["networks"]["internet"]["aliases"]
    assert {"login.microsoftonline.com", "enterpriseregistration.windows.net"} <= set(aliases)


def test_services_wait_for_init_and_health(compose: dict[str, Any]) -> None:
    s = compose["services"]
    assert s["init"]["command"] == ["init", "--lab", "/lab", "--compose"]
    for name in ("pki", "entra", "management-point", "cmg", "cmg-connection-point", "console"):
        assert s[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
        # replicated services ask their own process: their names answer for every replica
        own = ["--address", "127.0.0.1"] if name in ("management-point", "cmg") else []
        assert s[name]["healthcheck"]["test"] == ["CMD", "cmglab", "health", name, *own]
    assert s["cmg-connection-point"]["depends_on"]["management-point"]["condition"] == "service_healthy"
    for name in ("pki", "entra", "management-point", "cmg", "cmg-connection-point"):
        assert s["console"]["depends_on"][name]["condition"] == "service_healthy"
    assert s["client"]["profiles"] == ["client"]


def test_default_lab_keeps_sqlite_and_one_cmg_instance(compose: dict[str, Any]) -> None:
    s = compose["services"]
    assert s["management-point"]["environment"]["CMGLAB_DATABASE_URL"] == ""  # SQLite in the lab volume
    assert s["cmg-connection-point"]["environment"]["CMGLAB_CP_CMG_INSTANCES"] == "1"
    for name in ("postgres", "management-point-2", "cmg-2"):
        assert s[name]["profiles"] == ["scale"]


def test_scale_profile_runs_replicas_on_one_postgres_site_database(scaled: dict[str, Any]) -> None:
    s = scaled["services"]
    assert networks(s["postgres"]) == {"internal"}  # the site database: no route from the internet
    assert s["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    # two MP replicas of up to 160 pooled connections each (runtime/db.py) fit under the server's limit
    max_connections = int(s["postgres"]["command"][-1].removeprefix("max_connections="))
    assert max_connections >= 2 * (POOL_SIZE + MAX_OVERFLOW)
    for mp in ("management-point", "management-point-2"):
        assert s[mp]["command"] == ["serve", "management-point"]
        assert s[mp]["environment"]["CMGLAB_DATABASE_URL"] == SITE_DB
        assert networks(s[mp]) == {"internal"}
        assert s[mp]["networks"]["internal"]["aliases"] == ["mp.corp.lab.test"]
    assert s["management-point-2"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # the second CMG VM instance: same name and client port, its own connector port, no second host port
    assert s["cmg-2"]["command"] == ["serve", "cmg"]
    assert s["cmg-2"]["environment"]["CMGLAB_CMG_INSTANCE"] == "1"
    assert s["cmg-2"]["networks"]["internet"]["aliases"] == s["cmg"]["networks"]["internet"]["aliases"]
    assert not s["cmg-2"].get("ports") and s["cmg"]["ports"]
    assert s["cmg-connection-point"]["environment"]["CMGLAB_CP_CMG_INSTANCES"] == "2"


def test_one_image_built_once(compose: dict[str, Any]) -> None:
    """`init` builds cmglab:latest; every other service of the project runs that image, none builds it again."""
    s = compose["services"]
    assert s["init"]["image"] == "cmglab:latest" and "build" in s["init"]
    builders = [name for name, svc in s.items() if "build" in svc]
    assert builders == ["init"]
    assert all(svc["image"] == "cmglab:latest" for name, svc in s.items() if name != "postgres")


def test_init_has_no_network_and_only_the_cmg_and_console_publish_ports(compose: dict[str, Any]) -> None:
    s = compose["services"]
    assert s["init"]["network_mode"] == "none" and "networks" not in s["init"]
    published = {name: svc["ports"] for name, svc in s.items() if svc.get("ports")}
    assert set(published) == {"cmg", "console"}
    # the console is the lab's admin view: this machine only
    console = published["console"][0]
    assert (
        console if isinstance(console, str) else f"{console['host_ip']}:{console['published']}:{console['target']}"
    ).removesuffix("/tcp") == "127.0.0.1:8447:443"


def test_each_client_run_is_a_new_device(compose: dict[str, Any]) -> None:
    assert compose["services"]["client"]["entrypoint"] == ["cmglab", "device", "onboard", "--new-in", "/devices"]


def test_the_dp_is_on_the_internal_network_after_the_mp(compose: dict[str, Any]) -> None:
    dp = compose["services"]["distribution-point"]
    assert dp["command"] == ["serve", "distribution-point"]
    assert networks(dp) == {"internal"} and dp["networks"]["internal"]["aliases"] == ["dp.corp.lab.test"]
    assert dp["depends_on"]["management-point"]["condition"] == "service_healthy"  # it builds the client package
    assert dp["healthcheck"]["test"] == ["CMD", "cmglab", "health", "distribution-point", "--address", "127.0.0.1"]
    assert not dp.get("ports")  # intranet only: internet clients get content from the CMG
