"""The compose lab: `docker-compose config` accepts it, and it draws the lab contract's topology."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is needed (Debian package docker-compose; .ci/run installs it)"
    out = subprocess.run([exe, "config"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


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
        assert s[name]["healthcheck"]["test"] == ["CMD", "cmglab", "health", name]
    assert s["cmg-connection-point"]["depends_on"]["management-point"]["condition"] == "service_healthy"
    for name in ("pki", "entra", "management-point", "cmg", "cmg-connection-point"):
        assert s["console"]["depends_on"][name]["condition"] == "service_healthy"
    assert s["client"]["profiles"] == ["client"]
