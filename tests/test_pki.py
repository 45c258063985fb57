"""The lab PKI: what `cmglab init` and `cmglab pki ...` write, checked the way OpenSSL and a verifier see it."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from cmglab.pki import builders as b
from cmglab.pki.builders import x5t
from cmglab.pki.labpki import MS_ORG_ACCESS_NAME
from cmglab.runtime.lab import Lab
from tests.support.lab import new_lab


@pytest.fixture(scope="module")
def pki_lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("pki") / "lab")


def cmglab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cmglab", *args], capture_output=True, text=True, timeout=120)


def openssl_verify(lab: Lab, cert: Path, purpose: str, *crl: str) -> subprocess.CompletedProcess[str]:
    pki = lab.pki
    return subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(pki.root_ca.cert_path),
            "-untrusted",
            str(pki.issuing_ca.cert_path),
            "-purpose",
            purpose,
            *crl,
            str(cert),
        ],
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("service", ["entra", "cmg", "management-point"])
def test_server_certificates_verify_with_their_names(pki_lab: Lab, service: str) -> None:
    ident = pki_lab.pki.server(service)
    if service == "entra":  # Microsoft's names: the public CA's, not the organisation's
        result = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(pki_lab.pki.public_root_ca.cert_path),
                "-purpose",
                "sslserver",
                str(ident.cert_path),
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert openssl_verify(pki_lab, ident.cert_path, "sslserver").returncode != 0
        return
    assert openssl_verify(pki_lab, ident.cert_path, "sslserver").returncode == 0

    chain = x509.load_pem_x509_certificates(ident.cert_path.read_bytes())
    store = Store([pki_lab.pki.root_ca.cert()])
    for name in pki_lab.pki.server_names(service):
        identity = IPAddress(ipaddress.ip_address(name)) if name[0].isdigit() else DNSName(name)
        verifier = PolicyBuilder().store(store).build_server_verifier(identity)
        verifier.verify(chain[0], chain[1:])  # raises if chain, EKU, SAN or validity is wrong
    assert ExtendedKeyUsageOID.SERVER_AUTH in chain[0].extensions.get_extension_for_class(x509.ExtendedKeyUsage).value


def test_entra_certificate_answers_to_the_microsoft_names(pki_lab: Lab) -> None:
    cert = pki_lab.pki.server("entra").cert()
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(DNSName)
    assert {
        "login.microsoftonline.com",
        "enterpriseregistration.windows.net",
        "login.lab.test",
        "entra",
        "localhost",
    } <= set(sans)


def test_client_certificate_has_client_auth_and_distribution_points(pki_lab: Lab) -> None:
    ident = pki_lab.pki.issue_client("device01.lab.test")
    assert openssl_verify(pki_lab, ident.cert_path, "sslclient").returncode == 0
    assert openssl_verify(pki_lab, ident.cert_path, "sslserver").returncode != 0  # clientAuth only
    cert = ident.cert()
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name[0].value == f"{pki_lab.config.pki_url}/crl/issuing-ca.crl"
    assert cdp[0].full_name[0].value.startswith("http://pki.lab.test")
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert aia[0].access_location.value.endswith("/aia/issuing-ca.crt")


def test_connection_point_certificate_is_client_auth(pki_lab: Lab) -> None:
    ident = pki_lab.pki.connection_point
    assert openssl_verify(pki_lab, ident.cert_path, "sslclient").returncode == 0
    assert ident.cert().subject.rfc4514_string().startswith("CN=cmgcp.corp.lab.test")


def test_revoked_certificate_is_in_a_crl_signed_by_its_ca(pki_lab: Lab) -> None:
    ident = pki_lab.pki.issue_client("to-revoke")
    serial = ident.cert().serial_number
    pki_lab.pki.revoke("to-revoke")

    crl = x509.load_der_x509_crl(pki_lab.pki.crl_path("issuing-ca").read_bytes())
    assert crl.is_signature_valid(pki_lab.pki.issuing_ca.key().public_key())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    pem = x509.load_pem_x509_crl(pki_lab.pki.crl_path("issuing-ca", pem=True).read_bytes())
    assert pem.get_revoked_certificate_by_serial_number(serial) is not None

    with_crl = openssl_verify(
        pki_lab, ident.cert_path, "sslclient", "-crl_check", "-CRLfile", str(pki_lab.pki.crl_bundle)
    )
    assert with_crl.returncode != 0 and "revoked" in with_crl.stdout + with_crl.stderr
    good = pki_lab.pki.issue_client("still-good")
    assert (
        openssl_verify(
            pki_lab, good.cert_path, "sslclient", "-crl_check", "-CRLfile", str(pki_lab.pki.crl_bundle)
        ).returncode
        == 0
    )


def test_crl_last_update_moves_forward_on_every_revoke(pki_lab: Lab) -> None:
    before = x509.load_der_x509_crl(pki_lab.pki.crl_path("issuing-ca").read_bytes())
    pki_lab.pki.issue_client("quick")
    pki_lab.pki.revoke("quick")
    after = x509.load_der_x509_crl(pki_lab.pki.crl_path("issuing-ca").read_bytes())
    assert after.last_update_utc > before.last_update_utc


def test_device_ca_has_the_ms_organization_access_name(pki_lab: Lab) -> None:
    cert = pki_lab.pki.device_ca.cert()
    assert cert.subject == MS_ORG_ACCESS_NAME
    assert cert.subject.rfc4514_string() == (
        "OU=82dbaca4-3e81-46ca-9c73-0950c1eaca97,CN=MS-Organization-Access,DC=windows,DC=net"
    )


def test_token_signing_certificates_and_x5t(pki_lab: Lab) -> None:
    for ident in (pki_lab.pki.entra_signing, pki_lab.pki.site_signing):
        cert = ident.cert()
        der = cert.public_bytes(Encoding.DER)
        assert x5t(cert) == base64.urlsafe_b64encode(hashlib.sha1(der).digest()).decode().rstrip("=")
    assert pki_lab.pki.entra_signing.cert().subject.rfc4514_string() == "CN=accounts.accesscontrol.windows.net"


def test_private_keys_are_owner_only(pki_lab: Lab) -> None:
    keys = list(pki_lab.pki.root.rglob("*.key"))
    assert len(keys) >= 9
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for secret in (pki_lab.dir / "lab.json", pki_lab.dir / "admin-token"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_init_is_idempotent_and_force_regenerates(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    first = cmglab("init", "--lab", str(lab_dir))
    assert first.returncode == 0, first.stderr
    files = {p: p.read_bytes() for p in lab_dir.rglob("*") if p.is_file()}

    again = cmglab("init", "--lab", str(lab_dir))
    assert again.returncode == 0 and "nothing changed" in again.stdout
    assert {p: p.read_bytes() for p in lab_dir.rglob("*") if p.is_file()} == files

    root = (lab_dir / "pki/root-ca/root-ca.crt").read_bytes()
    forced = cmglab("init", "--lab", str(lab_dir), "--force")
    assert forced.returncode == 0
    assert (lab_dir / "pki/root-ca/root-ca.crt").read_bytes() != root


def test_pki_cli_issue_revoke_show_crl(pki_lab: Lab) -> None:
    lab = str(pki_lab.dir)
    issued = cmglab("pki", "issue-client", "cli-device", "--lab", lab)
    assert issued.returncode == 0, issued.stderr
    assert (pki_lab.pki.client("cli-device").cert_path).exists()

    revoked = cmglab("pki", "revoke", "cli-device", "--lab", lab)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    rows = json.loads(cmglab("pki", "show", "--json", "--lab", lab).stdout)
    entry = next(r for r in rows if r["name"] == "cli-device")
    assert entry["revoked_at"] and len(entry["thumbprint"]) == 40

    unknown = cmglab("pki", "revoke", "no-such-name", "--lab", lab)
    assert unknown.returncode == 1 and "no certificate named" in unknown.stdout
    assert cmglab("pki", "crl", "--lab", lab).returncode == 0


def test_info_json_tells_scripts_everything(pki_lab: Lab) -> None:
    out = cmglab("info", "--json", "--lab", str(pki_lab.dir))
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["site"]["code"] == "MEM"
    assert facts["site"]["role_id"] == 72057594037927939
    assert facts["services"]["cmg"]["url"] == f"https://cmg.lab.test:{pki_lab.config.ports.cmg}"
    assert facts["services"]["entra"]["port"] == pki_lab.config.ports.entra
    tenant = facts["tenants"][0]
    assert tenant["onboarded"] and tenant["users"][0]["upn"] == "alice@lab.test" and tenant["users"][0]["password"]
    assert facts["ca_bundle"].endswith("pki/ca-bundle.pem")
    assert Path(facts["admin_token_file"]).read_text().strip()
    assert any(line.startswith("cmg.lab.test:") for line in facts["resolve"])

    human = cmglab("info", "--lab", str(pki_lab.dir))
    assert human.returncode == 0 and "alice@lab.test" in human.stdout


def test_commands_on_a_missing_lab_say_how_to_create_it(tmp_path: Path) -> None:
    out = cmglab("info", "--lab", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "cmglab init" in out.stdout


def test_a_leaf_issuer_makes_the_certificate_leaf_makes() -> None:
    """The DRS's LeafIssuer (prebuilt constant extensions) issues what `builders.leaf` issues for the same key,
    subject, EKUs, lifetime and extra extensions: the same extensions in the same order, names and lifetime."""
    ca_key = b.new_key()
    ca = b.self_signed(ca_key, b.name("MS-Organization-Access"), ekus=[])
    device_key = b.new_key().public_key()
    extra = [x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.840.113556.1.5.284.7"), b"1")]
    made = b.LeafIssuer(ca, ca_key, ekus=[b.CLIENT_AUTH], days=3650).issue(device_key, b.name("dev-1"), extra)
    reference = b.leaf(device_key, b.name("dev-1"), ca, ca_key, ekus=[b.CLIENT_AUTH], days=3650, extra=extra)
    assert list(made.extensions) == list(reference.extensions)
    assert (made.subject, made.issuer, made.version) == (reference.subject, reference.issuer, reference.version)
    lifetime = made.not_valid_after_utc - made.not_valid_before_utc
    assert lifetime == reference.not_valid_after_utc - reference.not_valid_before_utc
    made.verify_directly_issued_by(ca)
