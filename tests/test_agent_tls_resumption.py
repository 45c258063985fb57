"""The agent resumes TLS sessions as a Windows client's Schannel does (its client cache: per target name and client
credential, 10 hours): an onboarding's later connections to the CMG and to Entra are abbreviated handshakes, and
the services still see who is calling on them. What each service saw is its own request record (`tls_resumed`,
the client certificate's thumbprint, how the CMG authenticated the caller)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from cmglab.agent.certstore import MY, ROOT
from cmglab.agent.device import Device
from cmglab.agent.network import DeviceNetwork
from cmglab.runtime.lab import Lab
from cmglab.tools.fleet import runner
from cmglab.tools.fleet.device import onboard
from tests.support.cmg import proxy_url
from tests.support.lab import lab_client, lab_fixture

SERVICES = ("pki", "entra", "management-point", "cmg", "cmg-connection-point")
services = lab_fixture(*SERVICES, autouse=True)


def _admin(lab: Lab) -> dict[str, str]:
    return {"Authorization": f"Bearer {lab.admin_token()}"}


def last_seq(lab: Lab, service: str) -> int:
    with lab_client(lab) as c:
        reply = c.get(f"{lab.url(service)}/_lab/requests", params={"limit": 0}, headers=_admin(lab))
        return int(reply.raise_for_status().json()["last_seq"])


def records_since(lab: Lab, service: str, seq: int, device: str | None = None) -> list[dict[str, Any]]:
    """The service's records after SEQ, oldest first (a device's only: its name in the trace state)."""
    with lab_client(lab) as c:
        reply = c.get(f"{lab.url(service)}/_lab/requests", params={"after": seq, "limit": 1000}, headers=_admin(lab))
        found = reply.raise_for_status().json()["requests"]
    mine = [r for r in found if device is None or f"dev:{device}" in (r.get("tracestate") or "")]
    return sorted(mine, key=lambda r: r["seq"])


def test_an_onboardings_later_connections_to_the_cmg_and_entra_resume(lab: Lab, tmp_path: Path) -> None:
    """ccmsetup's client and then ccmexec's each open a connection to the CMG; the join's clients and the install's
    device token each open one to Entra: the first to each name is a full handshake, the later ones resume."""
    since = {s: last_seq(lab, s) for s in ("cmg", "entra")}
    result = onboard(runner.plan(lab, tmp_path / "fleet"), "RESUME01")
    assert result.ok, result.reason
    cmg = records_since(lab, "cmg", since["cmg"], "RESUME01")
    assert cmg and cmg[0]["tls_resumed"] is False, cmg[0]  # ccmsetup's first connection: a full handshake
    assert cmg[-1]["tls_resumed"] is True, cmg[-1]  # the policy cycle's connection (ccmexec's client): resumed
    entra = records_since(lab, "entra", since["entra"], "RESUME01")
    first_per_host: dict[str, bool] = {}
    for r in entra:
        first_per_host.setdefault(httpx.URL(r["url"]).host, r["tls_resumed"])
    assert first_per_host and not any(first_per_host.values()), first_per_host  # each name's first: full
    assert entra[-1]["tls_resumed"] is True, entra[-1]  # the install's device token: a later connection, resumed
    assert sum(r["tls_resumed"] for r in entra) >= 2


def pki_device(lab: Lab, home: Path, name: str) -> tuple[Device, Any]:
    """A device with the lab root and a PKI client certificate in its stores."""
    device = Device.create(home, name=name, hosts=lab.resolve())
    device.stores.add(ROOT, lab.pki.root_ca.cert(), friendly_name="lab root")
    ident = lab.pki.issue_client(name)
    return device, device.stores.add(MY, ident.cert(), ident.key(), "PKI client")


@pytest.mark.parametrize("service", ["cmg", "management-point"])
def test_a_resumed_connection_is_known_by_its_sessions_certificate(lab: Lab, tmp_path: Path, service: str) -> None:
    """A PKI client's second connection to the CMG's MutualAuth URLs (or to the MP's HTTPS listener) resumes; the
    service knows the caller by the session's certificate (the one verified at the first handshake, checked against
    the CRL again at this one). Another certificate on the same device is never offered that session: a full
    handshake, its own identity."""
    device, first = pki_device(lab, tmp_path / "dev", f"RESUMEPKI-{service[:3]}")
    second = device.stores.add(MY, *_issued(lab, f"RESUMEPKI-{service[:3]}-2"), "PKI client 2")
    network = DeviceNetwork(device, crl_check=False)
    if service == "cmg":
        url = proxy_url(lab, "ccm_system/request", "MutualAuth")
    else:
        url = f"{lab.url(service)}/ccm_system/request"
    since = last_seq(lab, service)
    for cert in (first, first, second):
        with network.client(client_cert=cert) as http:  # a client of its own: a new connection each
            http.request("CCM_POST", url, content=b"not a message")
    seen = [r for r in records_since(lab, service, since) if r["path"].endswith("/ccm_system/request")]
    assert [(r["tls_resumed"], r["client_cert_thumbprint"]) for r in seen] == [
        (False, first.thumbprint),
        (True, first.thumbprint),
        (False, second.thumbprint),
    ], seen
    if service == "cmg":  # MutualAuth: the CMG authenticated the caller by that certificate both times
        assert seen[1].get("auth_kind") and seen[0].get("auth_subject") == seen[1].get("auth_subject"), seen


def _issued(lab: Lab, name: str) -> tuple[Any, Any]:
    ident = lab.pki.issue_client(name)
    return ident.cert(), ident.key()
