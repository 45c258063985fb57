"""PayloadSignatures verified before, remembered by the registered certificate, payload and signature
(management_point/signed_payloads.py, issue 20): only the exact triple verified before skips the RSA verification;
another certificate, one changed byte of the payload or of the signature is verified in full, a failure is never
remembered, and the entries stay bounded."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import rsa

from cmglab.services.management_point.signed_payloads import VerifiedPayloads
from cmglab.wire import ccm_messaging as cm
from tests.support.mp import new_key, self_signed_sms_cert


class Verifier:
    """cm.verify with KEY, counting its calls."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self.key, self.calls = key, 0

    def __call__(self, payload: bytes, signature: str) -> bool:
        self.calls += 1
        return cm.verify(self.key.public_key(), payload, signature)


def test_only_the_exact_triple_verified_before_is_remembered() -> None:
    key = new_key()
    cert = cm.cert_hex(self_signed_sms_cert(key))
    payload = b"x\x9c signed body"
    signature = cm.sign_hex(key, payload)
    verifier, known = Verifier(key), VerifiedPayloads()

    def check(cert_hex: str, data: bytes, sig: str) -> bool:
        return known.check(cert_hex, data, sig, lambda: verifier(data, sig))

    assert check(cert, payload, signature) and verifier.calls == 1
    assert check(cert, payload, signature) and verifier.calls == 1  # remembered
    assert not check(cert, payload + b"!", signature) and verifier.calls == 2  # a changed payload: in full
    tampered = ("0" if signature[0] != "0" else "1") + signature[1:]
    assert not check(cert, payload, tampered) and verifier.calls == 3  # a changed signature: in full
    assert not check(cert, payload, tampered) and verifier.calls == 4  # a failure is never remembered
    other_key = new_key()  # the client registered another certificate: the old triple is not its
    other = cm.cert_hex(self_signed_sms_cert(other_key))
    other_verifier = Verifier(other_key)
    assert not known.check(other, payload, signature, lambda: other_verifier(payload, signature))
    assert other_verifier.calls == 1


def test_the_remembered_triples_stay_bounded() -> None:
    known = VerifiedPayloads(size=2)
    calls: list[bytes] = []

    def check(payload: bytes) -> bool:
        def verified() -> bool:
            calls.append(payload)
            return True

        return known.check("CERT", payload, "SIG", verified)

    for payload in (b"a", b"b", b"c"):
        assert check(payload)
    assert len(known) == 2
    assert check(b"c") and calls == [b"a", b"b", b"c"]
    assert check(b"a") and calls[-1] == b"a"  # the oldest went first
