"""The hand-made corpus: what OpenAPI cannot describe (CcmMessaging bytes, JWTs, certificates and CSRs,
DRS and CCM_STS JSON), as data. Each `Probe` names the service whose input it is, builds one request
from the `Kit` and says which answers are right; anything else is `unexpected` in the report, a 5xx
or a dropped connection a failure. `TLS` means the handshake itself must refuse the client certificate.

A probe that once found a bug stays here, so the fix stays tested (see the report's list of fixes).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from cmglab.pki import builders as b
from cmglab.tools.reliability.material import CertFiles, Material
from cmglab.wire import ccm_messaging as cm
from cmglab.wire import site_tokens
from cmglab.wire.kinds import Proof

TLS = -1  # the expected "answer" when the TLS handshake must refuse the client certificate
E400 = frozenset({400})
E401 = frozenset({401})
E4XX = frozenset(range(400, 500))
BELOW_500 = frozenset(range(100, 500))
TLS_OR_4XX = E4XX | {TLS}
# what a reply to a message the MP throws away looks like: 200 with nothing (signed, bad signature)
E200 = frozenset({200})


@dataclass(frozen=True)
class Req:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""
    cert: CertFiles | None = None
    times: int = 1  # a replay sends the same bytes again
    raw_to: tuple[str, int, str] | None = None  # (address, port, TLS name): `content` is sent as is over TLS


@dataclass(frozen=True)
class Probe:
    service: str  # entra | cmg | management-point: whose parser the input attacks
    family: str
    name: str
    build: Callable[[Kit], Req]
    expect: frozenset[int]


class Kit:
    """Material plus the lab's URLs and one real DRS access token (ROPC, as dsregcmd gets it)."""

    def __init__(self, material: Material, drs_token: str) -> None:
        self.m, self.lab, self.drs_token = material, material.lab, drs_token
        c = self.lab.config
        self.mp_http = f"http://{c.hosts.management_point}:{c.ports.management_point_http}"
        self.mp_https = self.lab.url("management-point")
        self.login = self.lab.url("entra")
        self.drs = self.lab.url("entra", host="enterpriseregistration.windows.net")
        self.tenant = c.primary_tenant.tenant_id
        self._victim: str | None = None

    def proxy(self, path: str, family: str = "ServerAuth") -> str:
        return f"{self.lab.url('cmg')}/CCM_Proxy_{family}/{self.lab.config.site.role_id}/{path}"

    # -- CcmMessaging material -----------------------------------------------------------------------
    def header(self, endpoint: str = "MP_ClientRegistration", **kw: Any) -> cm.MsgHeader:
        return cm.MsgHeader(
            target_endpoint=endpoint,
            target_host=self.lab.config.hosts.management_point,
            source_host="RELIAB01",
            reply_to="direct:RELIAB01:SccmMessaging",
            **kw,
        )

    def registration_data(self, cert_hex: str | None = None, extra_attr: str = "") -> str:
        cert = cert_hex if cert_hex is not None else cm.cert_hex(self.m.sms_cert)
        return (
            f'<Data HashAlgorithm="1.2.840.113549.1.1.11" SMSID="" RequestType="Registration" '
            f'TimeStamp="{cm.utc_timestamp()}"{extra_attr}><AgentInformation AgentIdentity="CCMSetup.exe" '
            f'AgentVersion="5.00.8968.1000" AgentType="0" /><Certificates><Encryption Encoding="HexBinary" '
            f'KeyType="1">{cert}</Encryption><Signing Encoding="HexBinary" KeyType="1">{cert}</Signing>'
            f'</Certificates><DiscoveryProperties><Property Name="Netbios Name" Value="RELIAB01" />'
            f'<Property Name="FQ Name" Value="RELIAB01.corp.lab.test" /></DiscoveryProperties></Data>'
        )

    def victim(self) -> str:
        """The SMSID the kit's own identity registered (registered once, anonymously, on first use)."""
        if self._victim is None:
            from cmglab.tools.reliability.labview import lab_http

            with lab_http(self.lab) as c:
                reply = c.request(
                    "CCM_POST",
                    f"{self.mp_http}/ccm_system/request",
                    content=self.registration(),
                    headers={"Content-Type": cm.CONTENT_TYPE, "User-Agent": cm.USER_AGENT},
                )
            _, body = cm.decode_reply(reply.content, reply.headers.get("content-type"))
            self._victim = cm.parse_xml(body).get("SMSID", "")
        return self._victim

    def registration(self, body: str | None = None) -> bytes:
        xml = body if body is not None else cm.registration_request(self.registration_data(), self.m.sms_key)
        return cm.encode_request(self.header(), xml)

    def with_body(self, body: bytes, header_xml: str | None = None) -> bytes:
        """A message whose body part is exactly `body` (the header says zlib only when it is)."""
        head = header_xml or self.header().to_xml()
        return cm.build_multipart([(cm.HEADER_PART_TYPE, b"\xff\xfe" + cm.utf16(head)), (cm.BODY_PART_TYPE, body)])

    def with_xml_body(self, xml: str) -> bytes:
        payload, _ = cm.body_payload(xml)
        return self.with_body(payload)


def ccm_post(
    url: Callable[[Kit], str],
    raw: Callable[[Kit], bytes],
    *,
    cert: Callable[[Kit], CertFiles] | None = None,
    content_type: str = cm.CONTENT_TYPE,
    times: int = 1,
) -> Callable[[Kit], Req]:
    return lambda k: Req(
        "CCM_POST",
        url(k),
        {"Content-Type": content_type, "User-Agent": cm.USER_AGENT},
        raw(k),
        cert(k) if cert else None,
        times,
    )


def mp_anonymous(k: Kit) -> str:
    return f"{k.mp_http}/ccm_system/request"


def cmg_mutual(k: Kit) -> str:
    return k.proxy("ccm_system/request", "MutualAuth")


def pki(k: Kit) -> CertFiles:
    return k.m.pki_client


# -- hostile CcmMessaging envelopes -----------------------------------------------------------------
BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;'
    '&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;'
    '&c;&c;">]><ClientRegistrationRequest>&d;&d;&d;&d;&d;</ClientRegistrationRequest>'
)
XXE = (
    '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    "<ClientRegistrationRequest>&x;</ClientRegistrationRequest>"
)


def _truncated_half(k: Kit) -> bytes:
    raw = k.registration()
    return raw[: len(raw) // 2]


def _unterminated(k: Kit) -> bytes:
    raw = k.registration()
    return raw[: raw.rindex(b"--" + cm.BOUNDARY.encode()) - 40]


def _nested(k: Kit) -> bytes:
    inner = cm.build_multipart([(cm.BODY_PART_TYPE, zlib.compress(b"x" * 100))], "inner0boundary")
    return k.with_body(b"content-type: multipart/mixed; boundary=inner0boundary\r\n\r\n" + inner)


def _boundary_in_part(k: Kit) -> bytes:
    """The delimiter occurs inside the header part's data (a sender that did not pick a unique one)."""
    head = b"\xff\xfe" + cm.utf16(k.header().to_xml()) + b"--" + cm.BOUNDARY.encode() + b"\r\nx: y\r\n\r\nz"
    payload, _ = cm.body_payload("<X/>")
    return cm.build_multipart([(cm.HEADER_PART_TYPE, head), (cm.BODY_PART_TYPE, payload)])


def _zlib_bomb(k: Kit) -> bytes:
    return k.with_body(zlib.compress(b"\x00" * (64 * 1024 * 1024), 9))


def _odd_utf16_header(k: Kit) -> bytes:
    head = b"\xff\xfe" + cm.utf16(k.header().to_xml()) + b"A"
    return cm.build_multipart([(cm.HEADER_PART_TYPE, head), (cm.BODY_PART_TYPE, cm.body_payload("<X/>")[0])])


def _odd_utf16_body(k: Kit) -> bytes:
    return k.with_body(zlib.compress(cm.utf16("<ClientRegistrationRequest/>") + b"<"))


def _lone_surrogate(k: Kit) -> bytes:
    return k.with_body(zlib.compress(cm.utf16("<A>") + b"\x00\xd8" + cm.utf16("</A>") + b"\x00\x00"))


def _huge_attribute(k: Kit) -> bytes:
    body = cm.registration_request(k.registration_data(extra_attr=f' Junk="{"A" * 2_000_000}"'), k.m.sms_key)
    return k.registration(body)


def _deep_nesting(k: Kit) -> bytes:
    return k.with_xml_body("<a>" * 50_000 + "</a>" * 50_000)


def _signature_over_other_bytes(k: Kit) -> bytes:
    data = k.registration_data()
    forged = cm.registration_request(data.replace("RELIAB01", "OTHER001"), k.m.sms_key)
    return k.registration(forged.replace(data.replace("RELIAB01", "OTHER001"), data))


def _payload_signature_over_other_bytes(k: Kit) -> bytes:
    header = k.header("MP_DdrEndpoint", source_id=f"GUID:{str(uuid.uuid4()).upper()}")
    raw = cm.encode_request(header, "<Report><Inventory/></Report>", signer=k.m.sms_key)
    other = cm.encode_request(k.header("MP_DdrEndpoint", source_id=header.source_id), "<Report/>", signer=k.m.sms_key)
    sig = cm.decode_message(other).header.clientauth or {}
    msg = cm.decode_message(raw)
    assert msg.header.clientauth is not None
    msg.header.clientauth["PayloadSignature"] = sig.get("PayloadSignature", "")
    return cm.encode_message(msg.header, msg.payload)


def _bad_public_key_blob(k: Kit) -> bytes:
    header = k.header("MP_DdrEndpoint", source_id=f"GUID:{str(uuid.uuid4()).upper()}")
    raw = cm.encode_request(header, "<Report/>", signer=k.m.sms_key)
    msg = cm.decode_message(raw)
    assert msg.header.clientauth is not None
    msg.header.clientauth["PublicKey"] = "0602000000A40000525341310008000001000100" + "00" * 7
    return cm.encode_message(msg.header, msg.payload)


def _bad_cert_hex(k: Kit) -> bytes:
    return k.registration(cm.registration_request(k.registration_data(cert_hex="3082ZZZZ"), k.m.sms_key))


def _foreign_signing_cert(k: Kit) -> bytes:
    """A registration whose <Signing> certificate is a CA-issued TLS server certificate (wrong EKU)."""
    cert = k.lab.pki.server("cmg").cert()
    return k.registration(cm.registration_request(k.registration_data(cert_hex=cm.cert_hex(cert)), k.m.sms_key))


def _header_body_length(k: Kit) -> bytes:
    return k.with_body(cm.body_payload("<X/>")[0], k.header().to_xml().replace('Length="0"', 'Length="x"'))


MESSAGING: list[tuple[str, Callable[[Kit], bytes], frozenset[int]]] = [
    ("not multipart", lambda k: b"this is not multipart at all", E400),
    ("truncated in the middle", _truncated_half, E400),
    ("unterminated, cut in the body", _unterminated, E400),
    ("nested multipart in the body part", _nested, E400),
    ("boundary inside a part", _boundary_in_part, E400),
    ("zlib bomb (64 MiB of NULs)", _zlib_bomb, E400),
    ("truncated zlib stream", lambda k: k.with_body(zlib.compress(b"x" * 5000)[:-9]), E400),
    ("not zlib behind a zlib header", lambda k: k.with_body(b"\x78\x9c\x01garbage"), E400),
    ("UTF-16 header of odd length", _odd_utf16_header, E400),
    ("UTF-16 body of odd length", _odd_utf16_body, E400),
    ("UTF-16 lone surrogate", _lone_surrogate, E400),
    ("header is not <Msg>", lambda k: k.with_body(cm.body_payload("<X/>")[0], "<NotMsg/>"), E400),
    ("Body Length not a number", _header_body_length, E400),
    ("XML bomb in the body", lambda k: k.with_xml_body(BILLION_LAUGHS), E400),
    ("XML bomb in the header", lambda k: k.with_body(cm.body_payload("<X/>")[0], BILLION_LAUGHS), E400),
    ("external entity in the body", lambda k: k.with_xml_body(XXE), E400),
    ("huge attribute (2 MB)", _huge_attribute, E200 | E400),
    ("50,000 nested elements", _deep_nesting, E200 | E400),
    ("registration signature over other bytes", _signature_over_other_bytes, E200),
    ("payload signature over other bytes", _payload_signature_over_other_bytes, E200),
    ("PUBLICKEYBLOB shorter than its bit length", _bad_public_key_blob, E200),
    ("Signing certificate not hex DER", _bad_cert_hex, E200 | E400),
    ("Signing certificate with a server EKU", _foreign_signing_cert, E200),
    ("unknown TargetEndpoint", lambda k: cm.encode_request(k.header("MP_Nothing"), "<X/>"), frozenset({404})),
    ("empty body", lambda k: b"", E200),
]


def messaging_probes() -> list[Probe]:
    probes = [
        Probe("management-point", "ccm_messaging", name, ccm_post(mp_anonymous, raw), expect)
        for name, raw, expect in MESSAGING
    ]
    probes += [
        Probe(
            "management-point",
            "ccm_messaging",
            "wrong boundary in Content-Type",
            ccm_post(mp_anonymous, lambda k: k.registration(), content_type='multipart/mixed; boundary="other"'),
            E400,
        ),
        Probe(
            "management-point",
            "ccm_messaging",
            "two boundary parameters",
            ccm_post(
                mp_anonymous,
                lambda k: k.registration(),
                content_type=f'multipart/mixed; boundary="other"; boundary="{cm.BOUNDARY}"',
            ),
            E400,
        ),
        Probe(
            "management-point",
            "ccm_messaging",
            "empty boundary parameter",
            ccm_post(mp_anonymous, lambda k: k.registration(), content_type='multipart/mixed; boundary=""'),
            E400,
        ),
        Probe(
            "management-point",
            "ccm_messaging",
            "text/plain Content-Type",
            ccm_post(mp_anonymous, lambda k: k.registration(), content_type="text/plain"),
            E400,
        ),
        Probe(
            "management-point",
            "ccm_messaging",
            "replayed message ID (3 times)",
            ccm_post(mp_anonymous, lambda k: k.registration(), times=3),
            E200,
        ),
        Probe(
            "management-point",
            "ccm_messaging",
            "body over the size cap",
            ccm_post(mp_anonymous, lambda k: k.with_body(b"\x00" * (k.lab.settings.max_body_bytes + 1))),
            frozenset({413}),
        ),
    ]
    # the same hostile bodies through the CMG and the connection point (MutualAuth: the PKI certificate)
    for name, raw in [
        ("truncated in the middle", _truncated_half),
        ("zlib bomb (64 MiB of NULs)", _zlib_bomb),
        ("XML bomb in the body", lambda k: k.with_xml_body(BILLION_LAUGHS)),
        ("replayed message ID (3 times)", lambda k: k.registration()),
    ]:
        times = 3 if name.startswith("replayed") else 1
        expect = E200 if times > 1 else E400
        probes.append(
            Probe(
                "cmg",
                "ccm_messaging",
                f"{name} via CMG MutualAuth",
                ccm_post(cmg_mutual, raw, cert=pki, times=times),
                expect,
            )
        )
    return probes


# -- JWTs -----------------------------------------------------------------------------------------
def _site_claims(k: Kit, **over: Any) -> dict[str, Any]:
    claims = jwt.decode(k.m.ccm_token(), options={"verify_signature": False})
    claims.update(over)
    return claims


def _site_signed(k: Kit, claims: dict[str, Any], **headers: Any) -> str:
    signer = k.lab.site_signer()
    return jwt.encode(
        claims, signer.key, algorithm="RS256", headers={"typ": "JWT", "x5t": b.x5t(signer.cert), **headers}
    )


def _alg_none(claims: dict[str, Any], **headers: Any) -> str:
    def part(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT', **headers})}.{part(claims)}."


def _hs256_with_public_key(claims: dict[str, Any], cert: x509.Certificate, **headers: Any) -> str:
    """The classic key confusion: HMAC keyed with the verifier's public key (PEM). PyJWT refuses to do it,
    so the MAC is computed here."""
    import hashlib
    import hmac

    def part(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    head = part({"alg": "HS256", "typ": "JWT", **headers}) + "." + part(claims)
    pem = cert.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    mac = hmac.new(pem, head.encode(), hashlib.sha256).digest()
    return head + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


SITE_TOKENS: list[tuple[str, Callable[[Kit], str]]] = [
    ("alg none", lambda k: _alg_none(_site_claims(k), x5t=b.x5t(k.lab.pki.site_signing.cert()))),
    (
        "HS256 keyed with the site public key",
        lambda k: _hs256_with_public_key(
            _site_claims(k), k.lab.pki.site_signing.cert(), x5t=b.x5t(k.lab.pki.site_signing.cert())
        ),
    ),
    (
        "x5t of another certificate",
        lambda k: _site_signed(k, _site_claims(k), x5t=b.x5t(k.lab.pki.entra_signing.cert())),
    ),
    ("expired", lambda k: k.m.ccm_token(expired=True)),
    (
        "not yet valid",
        lambda k: k.lab.site_signer().ccm_token(token_type="Device", now=datetime.now(UTC) + timedelta(hours=1))[0],
    ),
    ("wrong audience", lambda k: _site_signed(k, _site_claims(k, aud="urn:other:service"))),
    ("wrong issuer (another hierarchy)", lambda k: _site_signed(k, _site_claims(k, iss=site_tokens.issuer("X")))),
    ("bulk token as a CCM token", lambda k: k.lab.site_signer().bulk_token(minutes=60)[0]),
    ("not a JWT", lambda k: "definitely.not.a-jwt"),
    ("JWT with a JSON array header", lambda k: "W10." + k.m.ccm_token().split(".", 1)[1]),
]

ENTRA_TOKENS: list[tuple[str, Callable[[Kit], str], frozenset[int]]] = [
    (
        "alg none",
        lambda k: _alg_none(
            jwt.decode(k.m.entra_token(), options={"verify_signature": False}),
            kid=b.x5t(k.lab.pki.entra_signing.cert()),
        ),
        E401,
    ),
    (
        "HS256 keyed with the Entra public key",
        lambda k: _hs256_with_public_key(
            jwt.decode(k.m.entra_token(), options={"verify_signature": False}),
            k.lab.pki.entra_signing.cert(),
            kid=b.x5t(k.lab.pki.entra_signing.cert()),
        ),
        E401,
    ),
    (
        "kid pointing at another key",
        lambda k: k.m.entra_token(headers={"kid": "bm90LWEta2V5", "x5t": "bm90LWEta2V5"}),
        E401,
    ),
    (
        "kid of the site signing certificate",
        lambda k: k.m.entra_token(headers={"kid": b.x5t(k.lab.pki.site_signing.cert())}),
        E401,
    ),
    ("signed by another key", lambda k: k.m.entra_token(key=b.new_key()), E401),
    ("expired", lambda k: k.m.entra_token(exp=1_000_000_000, iat=999_990_000, nbf=999_990_000), E401),
    ("not yet valid", lambda k: k.m.entra_token(nbf=int(time.time()) + 3600), E401),
    ("wrong audience", lambda k: k.m.entra_token(audience="https://graph.windows.net"), E401),
    (
        "issuer of another tenant",
        lambda k: k.m.entra_token(iss=f"https://sts.windows.net/{k.m.other_tenant_id}/"),
        E401,
    ),
    ("tenant not onboarded", lambda k: k.m.entra_token(tenant_id=k.m.other_tenant_id), frozenset({403})),
    ("tid not a string", lambda k: k.m.entra_token(tid=["a", "b"]), E4XX),
]


def _bearer_post(
    url: Callable[[Kit], str], token: Callable[[Kit], str], body: Callable[[Kit, str], bytes], method: str = "POST"
) -> Callable[[Kit], Req]:
    def build(k: Kit) -> Req:
        t = token(k)
        return Req(method, url(k), {"Authorization": f"Bearer {t}", "Content-Type": "application/json"}, body(k, t))

    return build


def _sts_body(proof: Proof) -> Callable[[Kit, str], bytes]:
    return lambda k, t: json.dumps(k.m.proof(proof, t)).encode()


def jwt_probes() -> list[Probe]:
    probes: list[Probe] = []
    for name, token in SITE_TOKENS:
        probes.append(
            Probe(
                "cmg",
                "jwt",
                f"CCM token {name} at CMG tokenauth",
                _bearer_post(
                    lambda k: k.proxy("ccm_system_tokenauth/request"), token, lambda k, t: k.registration(), "CCM_POST"
                ),
                E401,
            )
        )
        probes.append(
            Probe(
                "management-point",
                "jwt",
                f"CCM token {name} at MP tokenauth",
                _bearer_post(
                    lambda k: f"{k.mp_https}/ccm_system_tokenauth/request",
                    token,
                    lambda k, t: k.registration(),
                    "CCM_POST",
                ),
                E401,
            )
        )
    for name, token, expect in ENTRA_TOKENS:
        # a registration carries a fresh Entra token (seed 001's order, issue 17): both doors check it as CCM_STS does
        probes.append(
            Probe(
                "cmg",
                "jwt",
                f"Entra token {name} at CMG tokenauth (registration)",
                _bearer_post(
                    lambda k: k.proxy("ccm_system_tokenauth/request"), token, lambda k, t: k.registration(), "CCM_POST"
                ),
                expect,
            )
        )
        probes.append(
            Probe(
                "management-point",
                "jwt",
                f"Entra token {name} at MP tokenauth (registration)",
                _bearer_post(
                    lambda k: f"{k.mp_https}/ccm_system_tokenauth/request",
                    token,
                    lambda k, t: k.registration(),
                    "CCM_POST",
                ),
                expect | E401,
            )
        )
        probes.append(
            Probe(
                "cmg",
                "jwt",
                f"Entra token {name} at CMG CCM_STS",
                _bearer_post(lambda k: k.proxy("CCM_STS"), token, _sts_body(Proof.AAD)),
                expect,
            )
        )
        probes.append(
            Probe(
                "management-point",
                "jwt",
                f"Entra token {name} as an AAD proof at the MP",
                _bearer_post(lambda k: f"{k.mp_https}/CCM_STS", token, _sts_body(Proof.AAD)),
                expect | E401,
            )
        )
        probes.append(
            Probe(
                "entra",
                "jwt",
                f"Entra token {name} at DRS join",
                _bearer_post(
                    lambda k: f"{k.drs}/EnrollmentServer/device/?api-version=2.0",
                    token,
                    lambda k, t: json.dumps(join_body(k)).encode(),
                ),
                E4XX,
            )
        )
    probes.append(
        Probe(
            "management-point",
            "jwt",
            "blocked bulk token as a BulkRegistration proof",
            _bearer_post(
                lambda k: f"{k.mp_https}/CCM_STS", lambda k: k.m.blocked_bulk_token, _sts_body(Proof.BULK_REGISTRATION)
            ),
            frozenset({403}),
        )
    )
    probes.append(
        Probe(
            "management-point",
            "jwt",
            "bulk token proof signed over other bytes",
            _bearer_post(
                lambda k: f"{k.mp_https}/CCM_STS",
                lambda k: k.m.bulk_token(),
                lambda k, t: json.dumps(k.m.proof(Proof.BULK_REGISTRATION, t + "x")).encode(),
            ),
            E401,
        )
    )
    return probes


# -- certificates and CSRs ------------------------------------------------------------------------
def _huge_client(k: Kit) -> CertFiles:
    """A lab-issued clientAuth certificate with 3,000 SAN entries (~100 KB)."""
    ca, ca_key = k.lab.pki.issuing_ca.cert(), k.lab.pki.issuing_ca.key()
    key = b.new_key()
    sans = [f"n{i}.reliability.corp.lab.test" for i in range(3000)]
    cert = b.leaf(key.public_key(), b.name(sans[0]), ca, ca_key, ekus=[b.CLIENT_AUTH], san=sans, days=30)
    return k.m._files("huge", [cert, ca], key)


TLS_CLIENTS: list[tuple[str, Callable[[Kit], CertFiles], frozenset[int], frozenset[int]]] = [
    # name, certificate, expected at the MP (HTTPS ccm_system), expected at the CMG (MutualAuth)
    ("revoked", lambda k: k.m.revoked_client, frozenset({TLS}), frozenset({TLS})),
    ("expired", lambda k: k.m.expired_client, frozenset({TLS}), frozenset({TLS})),
    ("foreign CA", lambda k: k.m.foreign_client, frozenset({TLS}), frozenset({TLS})),
    ("self-signed SMS certificate", lambda k: k.m.self_signed_sms_client, frozenset({TLS}), frozenset({TLS})),
    ("serverAuth EKU only", lambda k: k.m.wrong_eku_client, TLS_OR_4XX, TLS_OR_4XX),
    ("3,000 SAN entries", _huge_client, E200 | TLS_OR_4XX, E200 | TLS_OR_4XX),
]


def csr_b64(key: Any, cn: str = "7E980AD9-B86D-4306-9425-9AC066FB014A", extra: int = 0) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if extra:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"n{i}.example.test") for i in range(extra)]), critical=False
        )
    csr = builder.sign(key, hashes.SHA256())
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode()


def transport_key_b64(key: Any) -> str:
    """BCRYPT_RSAKEY_BLOB (public): RSA1, bits, len(e), len(n), 0, 0, e, n, big-endian numbers."""
    import struct

    n = key.public_key().public_numbers()
    e_b = n.e.to_bytes((n.e.bit_length() + 7) // 8, "big")
    n_b = n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")
    return base64.b64encode(
        b"RSA1" + struct.pack("<LLLLL", key.key_size, len(e_b), len(n_b), 0, 0) + e_b + n_b
    ).decode()


def join_body(k: Kit, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "CertificateRequest": {"Type": "pkcs10", "Data": csr_b64(k.m.sms_key)},
        "TransportKey": transport_key_b64(k.m.sms_key),
        "TargetDomain": "lab.test",
        "DeviceType": "Windows",
        "OSVersion": "10.0.19045.3803",
        "DeviceDisplayName": "RELIAB-PC",
        "JoinType": 0,
    }
    body.update(over)
    return {key: value for key, value in body.items() if value is not _MISSING}


_MISSING = object()


def _bad_csr_signature(k: Kit) -> str:
    der = bytearray(base64.b64decode(csr_b64(k.m.sms_key)))
    der[-5] ^= 0xFF
    return base64.b64encode(bytes(der)).decode()


DRS_BODIES: list[tuple[str, Callable[[Kit], Any], frozenset[int]]] = [
    ("not JSON", lambda k: b"{not json", E400),
    ("a JSON array", lambda k: [1, 2, 3], E400),
    ("CertificateRequest is a string", lambda k: join_body(k, CertificateRequest="MIIC"), E400),
    ("CertificateRequest.Data missing", lambda k: join_body(k, CertificateRequest={"Type": "pkcs10"}), E400),
    ("TransportKey missing", lambda k: join_body(k, TransportKey=_MISSING), E400),
    ("TransportKey not base64", lambda k: join_body(k, TransportKey="***"), E400),
    ("TransportKey too short", lambda k: join_body(k, TransportKey=base64.b64encode(b"RSA1\x00").decode()), E400),
    ("JoinType a string", lambda k: join_body(k, JoinType="zero"), E400),
    ("JoinType unknown", lambda k: join_body(k, JoinType=99), E400),
    ("DeviceDisplayName an object", lambda k: join_body(k, DeviceDisplayName={"a": 1}), E400),
    ("CSR not base64", lambda k: join_body(k, CertificateRequest={"Type": "pkcs10", "Data": "%%%"}), E400),
    ("CSR not DER", lambda k: join_body(k, CertificateRequest={"Type": "pkcs10", "Data": "AAAA"}), E400),
    (
        "CSR with a bad signature",
        lambda k: join_body(k, CertificateRequest={"Type": "pkcs10", "Data": _bad_csr_signature(k)}),
        E400,
    ),
    (
        "CSR with 5,000 SAN entries",
        lambda k: join_body(k, CertificateRequest={"Type": "pkcs10", "Data": csr_b64(k.m.sms_key, extra=5000)}),
        E400 | {201},
    ),
    ("oversized (4 MB display name)", lambda k: join_body(k, DeviceDisplayName="A" * 4_000_000), E4XX),
]


def _join(body: Callable[[Kit], Any]) -> Callable[[Kit], Req]:
    def build(k: Kit) -> Req:
        doc = body(k)
        raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return Req(
            "POST",
            f"{k.drs}/EnrollmentServer/device/?api-version=2.0",
            {"Authorization": f"Bearer {k.drs_token}", "Content-Type": "application/json"},
            raw,
        )

    return build


STS_BODIES: list[tuple[str, Callable[[Kit], bytes], frozenset[int]]] = [
    ("not JSON", lambda k: b"{", E400),
    ("a JSON array", lambda k: b"[]", E400),
    ("ProofType a number", lambda k: json.dumps({"ProofType": 5}).encode(), E400),
    ("ClientId a number", lambda k: json.dumps({**k.m.proof(Proof.CLIENT_TOKEN, "x"), "ClientId": 7}).encode(), E4XX),
    (
        "Certificate not hex",
        lambda k: json.dumps({**k.m.proof(Proof.CLIENT_TOKEN, "x"), "Certificate": "zz"}).encode(),
        E4XX,
    ),
    (
        "Certificate hex of garbage",
        lambda k: json.dumps({**k.m.proof(Proof.CLIENT_TOKEN, "x"), "Certificate": "3082000A"}).encode(),
        E4XX,
    ),
    (
        "Timestamp garbage",
        lambda k: json.dumps({**k.m.proof(Proof.CLIENT_TOKEN, "x"), "Timestamp": "yesterday"}).encode(),
        E4XX,
    ),
    ("Signature a list", lambda k: json.dumps({**k.m.proof(Proof.CLIENT_TOKEN, "x"), "Signature": [1]}).encode(), E4XX),
    ("over 1 MiB", lambda k: b'{"ProofType": "' + b"A" * (1024 * 1024 + 10) + b'"}', frozenset({413})),
]


def _sts(raw: Callable[[Kit], bytes]) -> Callable[[Kit], Req]:
    return lambda k: Req("POST", f"{k.mp_https}/CCM_STS", {"Content-Type": "application/json"}, raw(k))


def certificate_probes() -> list[Probe]:
    probes: list[Probe] = []
    for name, cert, at_mp, at_cmg in TLS_CLIENTS:
        probes.append(
            Probe(
                "management-point",
                "certificate",
                f"TLS client certificate {name} at the MP",
                ccm_post(lambda k: f"{k.mp_https}/ccm_system/request", lambda k: k.registration(), cert=cert),
                at_mp,
            )
        )
        probes.append(
            Probe(
                "cmg",
                "certificate",
                f"TLS client certificate {name} at CMG MutualAuth",
                ccm_post(cmg_mutual, lambda k: k.registration(), cert=cert),
                at_cmg,
            )
        )
    probes.append(
        Probe(
            "management-point",
            "certificate",
            "Client-Cert header from a device (not honoured)",
            lambda k: Req(
                "CCM_POST",
                f"{k.mp_https}/ccm_system/request",
                {"Content-Type": cm.CONTENT_TYPE, "Client-Cert": ":bm90IGEgY2VydA==:"},
                k.registration(),
            ),
            frozenset({403}),
        )
    )
    probes.append(
        Probe(
            "management-point",
            "certificate",
            "garbage Client-Cert from the connection point",
            lambda k: Req(
                "CCM_POST",
                f"{k.mp_https}/ccm_system/request",
                {"Content-Type": cm.CONTENT_TYPE, "Client-Cert": ":bm90IGEgY2VydA==:"},
                k.registration(),
                k.m.connection_point,
            ),
            E400,
        )
    )
    return probes


def json_probes() -> list[Probe]:
    probes = [Probe("entra", "drs_json", f"DRS join: {name}", _join(body), expect) for name, body, expect in DRS_BODIES]
    probes += [
        Probe("management-point", "sts_json", f"CCM_STS: {name}", _sts(raw), expect) for name, raw, expect in STS_BODIES
    ]
    probes.append(
        Probe(
            "entra",
            "drs_json",
            "DRS delete without the device certificate",
            lambda k: Req("DELETE", f"{k.drs}/EnrollmentServer/device/{uuid.uuid4()}"),
            E4XX,
        )
    )
    probes.append(
        Probe(
            "entra",
            "drs_json",
            "DRS delete of another device with a PKI certificate",
            lambda k: Req("DELETE", f"{k.drs}/EnrollmentServer/device/{uuid.uuid4()}", cert=k.m.pki_client),
            E4XX,
        )
    )
    return probes


def probes() -> list[Probe]:
    return [*messaging_probes(), *jwt_probes(), *certificate_probes(), *json_probes(), *attack_probes(), *dp_probes()]


# -- issue 15: the CMG as a way around itself, smuggling, takeover, nesting --------------------------------
def raw(service: str, data: Callable[[Kit], bytes]) -> Callable[[Kit], Req]:
    """Bytes an HTTP library would refuse to send, written as they are over TLS to `service`."""

    def build(k: Kit) -> Req:
        lab = k.lab
        return Req(
            "RAW",
            lab.url(service),
            content=data(k),
            raw_to=(lab.config.bind_address, lab.port(service), lab.host(service)),
        )

    return build


def _cmg_request(
    target: str, *, host: str | None = None, extra: str = "", body: bytes = b"", method: str = "CCM_POST"
) -> Callable[[Kit], bytes]:
    """A request to the CMG with a valid CCM token; `{role}` in the target or Host is the site's role ID."""

    def data(k: Kit) -> bytes:
        role = str(k.lab.config.site.role_id)
        name = host if host is not None else f"{k.lab.config.hosts.cmg}:{k.lab.port('cmg')}"
        framed = "Content-Length" in extra or "Transfer-Encoding" in extra
        framing = "" if framed else f"Content-Length: {len(body)}\r\n"
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {name}\r\nAuthorization: Bearer {k.m.ccm_token()}\r\n"
            f"{extra}{framing}Connection: close\r\n\r\n"
        )
        return head.replace("{role}", role).encode("latin-1") + body

    return data


TOKENAUTH = "/CCM_Proxy_ServerAuth/{role}/ccm_system_tokenauth/request"
SMUGGLED = b"0\r\n\r\nGET /_lab/clients HTTP/1.1\r\nHost: mp\r\n\r\n"
CMG_RAW: list[tuple[str, Callable[[Kit], bytes], frozenset[int]]] = [
    (
        "Host smuggling a path to the MP's /_lab/clients",
        _cmg_request(TOKENAUTH, host="x/CCM_Proxy_ServerAuth/{role}/_lab/clients?"),
        E400,
    ),
    (
        "Host smuggling CCM_Cloud/config",
        _cmg_request(TOKENAUTH, host="x/CCM_Proxy_ServerAuth/{role}/CCM_Cloud/config?"),
        E400,
    ),
    ("Host of another name", _cmg_request(TOKENAUTH, host="evil.example"), E400),
    ("two Host headers", _cmg_request(TOKENAUTH, extra="Host: evil.example\r\n"), E400),
    ("absolute-form target of another host", _cmg_request("https://evil" + TOKENAUTH), frozenset({400, 404})),
    ("dot-dot to /_lab", _cmg_request(TOKENAUTH + "/../../_lab/clients"), E400),
    ("encoded slash to /_lab", _cmg_request("/CCM_Proxy_ServerAuth/{role}/ccm_system_tokenauth%2f..%2f_lab"), E400),
    ("double-encoded dot-dot", _cmg_request("/CCM_Proxy_ServerAuth/{role}/CCM_STS/%252e%252e/x"), E400),
    ("backslash traversal", _cmg_request("/CCM_Proxy_ServerAuth/{role}/CCM_STS\\..\\ccm_system_windowsauth"), E400),
    (
        "unpublished ccm_system_windowsauth",
        _cmg_request("/CCM_Proxy_ServerAuth/{role}/ccm_system_windowsauth/request"),
        frozenset({404}),
    ),
    (
        "unpublished CCM_Cloud/config",
        _cmg_request("/CCM_Proxy_ServerAuth/{role}/CCM_Cloud/config", method="GET"),
        frozenset({404}),
    ),
    (
        "unpublished /_lab through the proxy",
        _cmg_request("/CCM_Proxy_ServerAuth/{role}/_lab/clients", method="GET"),
        frozenset({404}),
    ),
    ("role ID tampered", _cmg_request("/CCM_Proxy_ServerAuth/{role}0/ccm_system_tokenauth/request"), frozenset({404})),
    (
        "role ID in Arabic-Indic digits",
        _cmg_request("/CCM_Proxy_ServerAuth/%D9%A1/ccm_system_tokenauth/request"),
        frozenset({404}),
    ),
    (
        "Content-Length and Transfer-Encoding",
        _cmg_request(TOKENAUTH, extra="Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", body=SMUGGLED),
        E400,
    ),
    (
        "two Content-Lengths",
        _cmg_request(TOKENAUTH, extra="Content-Length: 4\r\nContent-Length: 40\r\n", body=b"abcd"),
        E400,
    ),
    ("a second Authorization header", _cmg_request(TOKENAUTH, extra="Authorization: Bearer other\r\n"), E400),
    (
        "Transfer-Encoding other than chunked",
        _cmg_request(TOKENAUTH, extra="Transfer-Encoding: gzip, chunked\r\n", body=SMUGGLED),
        frozenset({400, 501}),
    ),
]

DEEP_JSON = b"[" * 20_000 + b"]" * 20_000  # 20 times the parser's recursion limit


def _takeover(k: Kit) -> bytes:
    """Another key proposing the SMSID the kit's own identity registered: a conflicting record, never an update."""
    other = b.new_key()
    cert = b.self_signed(other, b.name("ConfigMgr Client"), ekus=[b.SMS_SIGNING_EKU, b.SMS_EKU], data_encipherment=True)
    data = k.registration_data(cm.cert_hex(cert)).replace('SMSID=""', f'SMSID="{k.victim()}"')
    return k.registration(cm.registration_request(data, other))


def attack_probes() -> list[Probe]:
    probes = [Probe("cmg", "cmg_url", f"CMG: {name}", raw("cmg", data), expect) for name, data, expect in CMG_RAW]
    probes.append(
        Probe(
            "cmg",
            "cmg_url",
            "CMG /_lab/requests without the admin token",
            lambda k: Req("GET", f"{k.lab.url('cmg')}/_lab/requests"),
            E401,
        )
    )
    probes.append(
        Probe(
            "management-point",
            "registration",
            "registration proposing another client's SMSID",
            ccm_post(mp_anonymous, _takeover),
            E200,
        )
    )
    probes.append(
        Probe("management-point", "sts_json", "CCM_STS: JSON nested 20,000 deep", _sts(lambda k: DEEP_JSON), E400)
    )
    probes.append(
        Probe(
            "cmg",
            "sts_json",
            "CCM_STS through the CMG: JSON nested 20,000 deep",
            lambda k: Req(
                "POST",
                k.proxy("CCM_STS"),
                {"Content-Type": "application/json", "Authorization": f"Bearer {k.m.bulk_token()}"},
                DEEP_JSON,
            ),
            E400,
        )
    )
    probes.append(Probe("entra", "drs_json", "DRS join: JSON nested 20,000 deep", _join(lambda k: DEEP_JSON), E400))
    probes.append(
        Probe(
            "entra",
            "drs_json",
            "hybrid-join PUT: JSON nested 20,000 deep",
            lambda k: Req(
                "PUT",
                f"{k.drs}/EnrollmentServer/device/{uuid.uuid4()}?api-version=2.0",
                {"Content-Type": "application/json"},
                DEEP_JSON,
            ),
            E400,
        )
    )
    return probes


# -- the distribution point's paths (red team): refused by HTTP.sys's rules before authentication ------------
def _dp_request(target: str) -> Callable[[Kit], bytes]:
    def data(k: Kit) -> bytes:
        name = f"{k.lab.host('distribution-point')}:{k.lab.port('distribution-point')}"
        return f"GET {target} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode("latin-1")

    return data


DP_RAW: list[tuple[str, str, frozenset[int]]] = [
    ("a decoded newline in the path (log forging)", "/SMS_DP_SMSPKG$/x%0d%0a2026-01-01%20forged", E400),
    ("a newline outside any vdir", "/%0aforged", E400),
    ("dot-dot above the site root", "/SMS_DP_SMSPKG$/../../../etc/passwd", E400),
    ("encoded dot-dot and backslash", "/SMS_DP_SMSPKG$/..%5c..%5c..%5cetc%5cpasswd", E400),
    ("double-encoded dot-dot", "/SMS_DP_SMSPKG$/%252e%252e/%252e%252e/lab.json", frozenset({404})),
    ("overlong UTF-8 dot", "/SMS_DP_SMSPKG$/%c0%ae%c0%ae/lab.json", E400),
    ("NUL in the path", "/SMS_DP_SMSPKG$/MEM00001%00.txt", E400),
    ("an alternate data stream", "/SMS_DP_SMSPKG$/MEM00001::$DATA", E400),
]


def dp_probes() -> list[Probe]:
    return [
        Probe("distribution-point", "dp_path", f"DP: {name}", raw("distribution-point", _dp_request(target)), expect)
        for name, target, expect in DP_RAW
    ]
