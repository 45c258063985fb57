"""The MP writes a CCM_STS request's CCM_STS.log lines, and a registration's MP_RegistrationManager.log lines, in one
write when the request ends (core/logs.py held_lines, issue 20): the seeds' lines in their order, in one piece, and
none lost when the request fails, whether refused or stopped by an unexpected error. The MP's work runs in this
process (no HTTP): the requests' own handlers, on their own lab."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from cmglab.runtime.lab import Lab
from cmglab.services.management_point import registration
from cmglab.services.management_point.caller import Caller
from cmglab.services.management_point.errors import STSError
from cmglab.services.management_point.parts import Parts
from cmglab.services.management_point.sts import STSRequest, TokenService
from cmglab.wire import ccm_messaging as cm
from cmglab.wire.kinds import Proof
from tests.support.lab import new_lab
from tests.support.mp import Device, new_key

URL = "https://mp.corp.lab.test/CCM_STS"
CERTIFICATE = STSRequest(Proof.CERTIFICATE, None, None, None, None, None)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return new_lab(tmp_path_factory.mktemp("held") / "lab")


@pytest.fixture(scope="module")
def mp(lab: Lab) -> Iterator[Parts]:
    parts = Parts.from_lab(lab)
    yield parts
    parts.store.dispose()


@pytest.fixture(scope="module")
def pki_caller(lab: Lab) -> Caller:
    cert = x509.load_pem_x509_certificate(lab.pki.issue_client("held-client").cert_path.read_bytes())
    return Caller(scheme="https", pki_cert=cert)


def _lines(lab: Lab, name: str) -> list[str]:
    """The messages of the MP's log NAME, in file order (each line's text before its SMS-trace stamp)."""
    path = Path(lab.log_dir("management-point")) / name
    text = path.read_bytes().decode() if path.exists() else ""
    return [line.rpartition("  $$<")[0] for line in text.split("\r\n")[:-1]]


def test_a_ccm_sts_requests_six_lines_are_written_together_when_it_ends(
    lab: Lab, mp: Parts, pki_caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing of the request is in CCM_STS.log while it signs its token; once it is answered its six lines are,
    in the seed's order, one after the other."""
    sts = TokenService(mp, mp.entra_keys)
    before = len(_lines(lab, "CCM_STS.log"))
    sign = type(mp.signer).ccm_token  # the signer is frozen: its class's method, wrapped
    seen: list[int] = []

    def signing(signer: Any, **kw: Any) -> Any:
        seen.append(len(_lines(lab, "CCM_STS.log")))
        return sign(signer, **kw)

    monkeypatch.setattr(type(mp.signer), "ccm_token", signing)
    assert sts._process_now(CERTIFICATE, pki_caller, URL)["TokenType"] == "Device"
    assert seen == [before]  # three lines logged by then, none written yet
    written = _lines(lab, "CCM_STS.log")[before:]
    assert [line.split(" ")[0] for line in written] == [
        "ProcessRequest",
        "Incoming",
        "Validated",
        "Created",
        "Issued",
        "Return",
    ]
    assert written[1] == f"Incoming request URL: {URL}"


def test_a_refused_ccm_sts_request_writes_its_lines_and_its_failure(lab: Lab, mp: Parts) -> None:
    sts = TokenService(mp, mp.entra_keys)
    before = len(_lines(lab, "CCM_STS.log"))
    with pytest.raises(STSError):
        sts._process_now(CERTIFICATE, Caller(scheme="https"), URL)
    assert _lines(lab, "CCM_STS.log")[before:] == [
        "ProcessRequest - Start",
        f"Incoming request URL: {URL}",
        "Failed to issue token (Certificate proof): CertificateRequired: a Certificate proof needs a PKI client "
        "certificate at TLS",
    ]


def test_a_ccm_sts_request_stopped_by_an_error_still_writes_the_lines_it_logged(
    lab: Lab, mp: Parts, pki_caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the signing key is gone")

    sts = TokenService(mp, mp.entra_keys)
    before = len(_lines(lab, "CCM_STS.log"))
    monkeypatch.setattr(type(mp.signer), "ccm_token", broken)
    with pytest.raises(RuntimeError):
        sts._process_now(CERTIFICATE, pki_caller, URL)
    written = _lines(lab, "CCM_STS.log")[before:]
    assert written[:2] == ["ProcessRequest - Start", f"Incoming request URL: {URL}"]
    assert len(written) == 3 and written[2].startswith("Validated client certificate ")


def _registration(device: Device) -> cm.CcmMessage:
    return cm.decode_message(device.registration_message())


def test_a_registrations_lines_are_written_together_when_it_ends(
    lab: Lab, mp: Parts, pki_caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PKI client's registration: its three MP_RegistrationManager.log lines in order, none written before its
    unit of work ran."""
    before = len(_lines(lab, "MP_RegistrationManager.log"))
    unit = mp.store.retrying_unit
    seen: list[int] = []

    def counting(*args: Any, **kw: Any) -> Any:
        seen.append(len(_lines(lab, "MP_RegistrationManager.log")))
        return unit(*args, **kw)

    monkeypatch.setattr(mp.store, "retrying_unit", counting)
    reply = registration.handle(mp, _registration(Device()), pki_caller)
    assert 'Status="0"' in reply and seen == [before]
    written = _lines(lab, "MP_RegistrationManager.log")[before:]
    assert [line.split(" ")[0] for line in written] == ["Registering", "Processing", "Client"]


def test_a_registration_stopped_by_an_error_still_writes_the_lines_it_logged(
    lab: Lab, mp: Parts, pki_caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the database is gone")

    before = len(_lines(lab, "MP_RegistrationManager.log"))
    monkeypatch.setattr(mp.store, "retrying_unit", broken)
    with pytest.raises(RuntimeError):
        registration.handle(mp, _registration(Device()), pki_caller)
    written = _lines(lab, "MP_RegistrationManager.log")[before:]
    assert len(written) == 1 and written[0].startswith("Registering device using PKI certificate ")


def test_a_refused_registration_writes_its_refusal(lab: Lab, mp: Parts, pki_caller: Caller) -> None:
    device = Device()
    body = cm.registration_request(device.registration_data(), new_key())  # signed by another key than its own
    raw = cm.encode_request(device.header("MP_ClientRegistration"), body)
    before = len(_lines(lab, "MP_RegistrationManager.log"))
    reply = registration.handle(mp, cm.decode_message(raw), pki_caller)
    assert 'Status="3"' in reply
    assert _lines(lab, "MP_RegistrationManager.log")[before:] == [
        "Registration request refused: the registration request's signature does not verify with its signing "
        "certificate"
    ]
