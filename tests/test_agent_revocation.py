"""The agent checks revocation on the connection it uses (no probe connection of its own) and downloads each
CRL once per process and URL (kept in the device's CryptnetUrlCache); a cached CRL is verified against its
CA each time it is loaded, and a revoked server certificate is refused with a warm cache too.

A lab of its own: the test revokes the management point's certificate."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cmglab.agent import network as agent_network
from cmglab.agent.device import Device
from cmglab.agent.network import CRYPT_E_REVOCATION_OFFLINE, CRYPT_E_REVOKED, DeviceNetwork, NetworkError
from cmglab.pki import builders
from cmglab.runtime.lab import Lab
from cmglab.tools.devicecli import UNREACHABLE, crl_host_entries
from cmglab.tools.processes import LabProcesses
from tests.support.agent import new_device, run
from tests.support.lab import new_lab


@pytest.fixture(scope="module")
def mp_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = new_lab(tmp_path_factory.mktemp("agentcrl") / "lab")
    with LabProcesses(lab) as services:  # stopped on every way out
        services.ensure("pki", "management-point")
        yield lab


@pytest.fixture
def crl_downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every CRL download the agent starts (the real client still does it)."""
    started: list[str] = []
    real = agent_network.crl_client

    def counting(*args: Any) -> httpx.Client:
        started.append("crl")
        return real(*args)

    monkeypatch.setattr(agent_network, "crl_client", counting)
    return started


def mp_url(lab: Lab) -> str:
    return f"https://{lab.config.hosts.management_point}:{lab.config.ports.management_point}/SMS_MP/.sms_aut?MPLIST"


def get(device: Device, url: str, times: int = 1) -> None:
    with DeviceNetwork(device).client() as c:
        for _ in range(times):
            c.get(url)


def test_one_connection_and_one_download_per_crl(
    mp_lab: Lab, tmp_path: Path, crl_downloads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    device = new_device(mp_lab.dir, tmp_path / "dev", "--name", "CRLC01")
    port = mp_lab.config.ports.management_point
    connections: list[int] = []
    real_connect = socket.create_connection

    def connect(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        connections.append(address[1])
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", connect)
    get(device, mp_url(mp_lab), times=2)
    assert connections.count(port) == 1  # the revocation check read the certificate of the connection used
    downloads = len(crl_downloads)
    assert downloads >= 1 and any(device.crl_cache.glob("*.crl"))
    get(device, mp_url(mp_lab))  # a new connection of the same process: checked again, from the kept CRLs
    assert connections.count(port) == 2 and len(crl_downloads) == downloads


def test_revoked_with_a_warm_cache_and_a_forged_cached_crl(
    mp_lab: Lab, tmp_path: Path, crl_downloads: list[str]
) -> None:
    device = new_device(mp_lab.dir, tmp_path / "dev", "--name", "CRLC02")
    r = run("cmglab", "pki", "revoke", "management-point", "--lab", str(mp_lab.dir))
    assert r.returncode == 0, r.stdout + r.stderr
    for warm in (False, True):
        with pytest.raises(NetworkError) as refused:
            get(device, mp_url(mp_lab))
        assert refused.value.hresult == CRYPT_E_REVOKED and "The certificate is revoked" in refused.value.text
        if not warm:
            downloads = len(crl_downloads)
    assert len(crl_downloads) == downloads  # the second refusal came from the kept CRL

    # a forged CRL in the cache (right issuer name, wrong key, nothing revoked) while the CRL host is unreachable:
    # loaded, its signature fails against the CA, so the device still refuses (offline), never trusts it
    device.write_hosts(crl_host_entries(device, mp_lab, UNREACHABLE))
    key = ec.generate_private_key(ec.SECP256R1())
    for cached in device.crl_cache.glob("*.crl"):
        data = cached.read_bytes()
        pem = data.lstrip().startswith(b"-----")
        real = x509.load_pem_x509_crl(data) if pem else x509.load_der_x509_crl(data)
        now = builders.utcnow()
        forged = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(real.issuer)
            .last_update(now - timedelta(minutes=1))
            .next_update(now + timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        cached.write_bytes(forged.public_bytes(serialization.Encoding.PEM if pem else serialization.Encoding.DER))
    with pytest.raises(NetworkError) as offline:
        get(device, mp_url(mp_lab))
    assert offline.value.hresult == CRYPT_E_REVOCATION_OFFLINE and "not signed by its issuer" in offline.value.text
