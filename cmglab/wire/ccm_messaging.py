"""The CcmMessaging wire codec (docs/protocol-notes.md, ConfigMgr §2), shared by the MP and the client agent.

Request (`CCM_POST /ccm_system*/request`, `Content-Type: multipart/mixed; boundary="..."`):

    --B\\r\\n content-type: text/plain; charset=UTF-16\\r\\n\\r\\n FF FE <Msg ...> (UTF-16LE)\\r\\n
    --B\\r\\n content-type: application/octet-stream\\r\\n\\r\\n zlib(UTF-16LE(body) + 00 00 + \\r\\n)\\r\\n
    --B--

Reply: the same boundary; the header part with a BOM; the body zlib(UTF-16LE(body) + 00 00) unless the
request said `ReplyCompression="none"`.

Signatures are RSA PKCS#1 v1.5 over SHA-256 with the bytes reversed (CryptoAPI order) and upper hex;
verification accepts both the DigestInfo form and CRYPT_NOHASHOID (a bare hash in the padding).

Parsing raises nothing but `CcmMessageError`; no XML parse takes a DTD (parse_xml), decompression
is capped (zlib bombs).
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape, quoteattr

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as DefusedET

BOUNDARY = "aAbBcCdDv1234567890VxXyYzZ"
CONTENT_TYPE = f'multipart/mixed; boundary="{BOUNDARY}"'
HEADER_PART_TYPE = "text/plain; charset=UTF-16"
BODY_PART_TYPE = "application/octet-stream"
USER_AGENT = "ConfigMgr Messaging HTTP Sender"
SHA256_RSA_OID = "1.2.840.113549.1.1.11"
MAX_DECOMPRESSED = 16 * 1024 * 1024
ZERO_GUID = "{00000000-0000-0000-0000-000000000000}"
# DigestInfo prefix of SHA-256 (RFC 8017 §9.2 note 1)
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


class CcmMessageError(Exception):
    """A message that cannot be parsed or whose signature does not verify."""


# -- XML ------------------------------------------------------------------------------------------


def parse_xml(text: str | bytes) -> Element:
    """A parse with no DTD, no entities and no external references; CcmMessageError otherwise.

    Entities can only be declared in a DTD, and a DTD only by `<!DOCTYPE`: text without one is parsed by the
    C ElementTree parser (only XML's five predefined entities and character references expand, an undefined
    entity is an error, nothing is fetched), which costs a third of defusedxml's, whose handlers need the
    pure-Python parser. Anything else (bytes, whose encoding the parser decides; text naming a DOCTYPE or
    ENTITY anywhere) goes to defusedxml, which refuses a DTD."""
    try:
        if isinstance(text, str) and "<!DOCTYPE" not in text and "<!ENTITY" not in text:
            return ElementTree.fromstring(text)
        return DefusedET.fromstring(text, forbid_dtd=True)
    except (DefusedXmlException, SyntaxError, ValueError) as e:  # ParseError is a SyntaxError
        raise CcmMessageError(f"malformed XML: {e}") from e


def guid() -> str:
    return "{" + str(uuid.uuid4()).upper() + "}"


def utc_timestamp(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- text framing -------------------------------------------------------------------------------


def utf16(text: str) -> bytes:
    """UTF-16LE without BOM."""
    return text.encode("utf-16-le")


def decode_utf16(data: bytes) -> str:
    """UTF-16 with or without BOM; trailing NULs and CR/LF removed."""
    if len(data) % 2:
        data = data[:-1] if data.endswith((b"\r", b"\n", b"\x00")) else data
    try:
        text = data[2:].decode("utf-16-le") if data[:2] == b"\xff\xfe" else data.decode("utf-16-le")
    except UnicodeDecodeError as e:
        raise CcmMessageError(f"not UTF-16: {e}") from e
    return text.rstrip("\r\n").rstrip("\x00").rstrip("\r\n")


def inflate(data: bytes, limit: int = MAX_DECOMPRESSED) -> bytes:
    """zlib-decompress at most `limit` bytes (a zlib bomb is refused, not expanded)."""
    d = zlib.decompressobj()
    try:
        # one byte over the limit tells "too big" apart from "exactly the limit" (and max_length=0
        # would mean no limit at all)
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise CcmMessageError(f"bad zlib data: {e}") from e
    if len(out) > limit:
        raise CcmMessageError(f"decompressed body exceeds {limit} bytes")
    if not d.eof:
        raise CcmMessageError("bad zlib data: truncated stream")
    return out


# -- multipart ----------------------------------------------------------------------------------


@dataclass
class Part:
    headers: dict[str, str]
    data: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


_BOUNDARY_RE = re.compile(r'boundary=(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)


def boundary_of(content_type: str | None) -> str | None:
    m = _BOUNDARY_RE.search(content_type or "")
    return (m.group(1) or m.group(2)) if m else None


def split_multipart(body: bytes, content_type: str | None = None) -> tuple[str, list[Part]]:
    """(boundary, parts). The boundary from Content-Type, or the body's first line when there is none."""
    boundary = boundary_of(content_type)
    if content_type and not content_type.lower().startswith("multipart/"):
        raise CcmMessageError(f"not a multipart message: {content_type!r}")
    if boundary is None:
        first = body.lstrip(b"\r\n").split(b"\r\n", 1)[0]
        if not first.startswith(b"--") or len(first) < 3:
            raise CcmMessageError("no multipart boundary")
        boundary = first[2:].decode("latin-1").strip()
    delim = b"--" + boundary.encode("latin-1")
    if delim not in body:
        raise CcmMessageError(f"boundary {boundary!r} not found in the body")
    chunks = body.split(delim)
    parts: list[Part] = []
    closed = False
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            closed = True
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk.lstrip(b"\n")
        if chunk.endswith(b"\r\n"):
            chunk = chunk[:-2]
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            if chunk.startswith(b"\r\n"):  # a part with no headers at all
                head, data = b"", chunk[2:]
            else:
                raise CcmMessageError("multipart part without a header/body separator")
        headers: dict[str, str] = {}
        for line in head.split(b"\r\n"):
            if not line.strip():
                continue
            name, colon, value = line.partition(b":")
            if not colon:
                raise CcmMessageError(f"bad part header line {line[:60]!r}")
            headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
        parts.append(Part(headers, data))
    if not closed and not parts:
        raise CcmMessageError("multipart body has no parts")
    return boundary, parts


def build_multipart(parts: Iterable[tuple[str, bytes]], boundary: str = BOUNDARY) -> bytes:
    """The byte layout the real sender uses (no CRLF after the closing delimiter)."""
    out = bytearray()
    for ctype, data in parts:
        out += f"--{boundary}\r\ncontent-type: {ctype}\r\n\r\n".encode("latin-1")
        out += data + b"\r\n"
    out += f"--{boundary}--".encode("latin-1")
    return bytes(out)


# -- the <Msg> header ---------------------------------------------------------------------------


@dataclass
class MsgHeader:
    target_endpoint: str = ""
    id: str = field(default_factory=guid)
    correlation_id: str = ZERO_GUID
    target_address: str | None = None
    target_host: str = ""
    source_host: str = ""
    source_id: str | None = None
    reply_to: str | None = None
    sent_time: str = field(default_factory=utc_timestamp)
    reply_mode: str = "Sync"
    protocol: str = "http"
    priority: str = "0"
    timeout: str = "60000"
    schema_version: str = "1.1"
    reply_compression: str | None = "zlib"  # None: attribute absent
    body_length: int = 0
    body_offset: int = 0
    zlib: bool = True  # <Hook3 Name="zlib-compress"/>
    clientauth: dict[str, str] | None = None  # <Hook2 Name="clientauth"> properties, in order
    extra_hooks: list[str] = field(default_factory=list)  # other hook XML, verbatim
    attachments: list[dict[str, str]] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)  # other simple children (ReqVersion, ...)

    def to_xml(self) -> str:
        """In the element order of the real sender (sccmwtf / SCCMSecrets / metasploit)."""
        attrs = f" ReplyCompression={quoteattr(self.reply_compression)}" if self.reply_compression else ""
        x = [f"<Msg{attrs} SchemaVersion={quoteattr(self.schema_version)}>"]
        x.append(f'<Body Type="ByteRange" Length="{self.body_length}" Offset="{self.body_offset}" />')
        x.append(f"<CorrelationID>{escape(self.correlation_id)}</CorrelationID>")
        hooks = []
        if self.clientauth is not None:
            props = "".join(f"<Property Name={quoteattr(k)}>{escape(v)}</Property>" for k, v in self.clientauth.items())
            hooks.append(f'<Hook2 Name="clientauth">{props}</Hook2>')
        hooks += self.extra_hooks
        if self.zlib:
            hooks.append('<Hook3 Name="zlib-compress" />')
        if hooks:
            x.append("<Hooks>" + "".join(hooks) + "</Hooks>")
        x.append(f"<ID>{escape(self.id)}</ID>")
        x.append('<Payload Type="inline" />')
        x.append(f"<Priority>{escape(self.priority)}</Priority>")
        x.append(f"<Protocol>{escape(self.protocol)}</Protocol>")
        for a in self.attachments:
            x.append("<Attachment" + "".join(f" {k}={quoteattr(v)}" for k, v in a.items()) + " />")
        for k, v in self.extra.items():
            x.append(f"<{k}>{escape(v)}</{k}>")
        x.append(f"<ReplyMode>{escape(self.reply_mode)}</ReplyMode>")
        if self.reply_to is not None:
            x.append(f"<ReplyTo>{escape(self.reply_to)}</ReplyTo>")
        x.append(f"<SentTime>{escape(self.sent_time)}</SentTime>")
        if self.source_id is not None:
            x.append(f"<SourceID>{escape(self.source_id)}</SourceID>")
        x.append(f"<SourceHost>{escape(self.source_host)}</SourceHost>")
        target_address = self.target_address or f"mp:{self.target_endpoint}"
        x.append(f"<TargetAddress>{escape(target_address)}</TargetAddress>")
        x.append(f"<TargetEndpoint>{escape(self.target_endpoint)}</TargetEndpoint>")
        x.append(f"<TargetHost>{escape(self.target_host)}</TargetHost>")
        x.append(f"<Timeout>{escape(self.timeout)}</Timeout>")
        x.append("</Msg>")
        return "".join(x)

    @classmethod
    def from_xml(cls, text: str) -> MsgHeader:
        root = parse_xml(text)
        if root.tag != "Msg":
            raise CcmMessageError(f"header root is <{root.tag}>, not <Msg>")

        def child(name: str) -> str | None:
            el = root.find(name)
            return (el.text or "").strip() if el is not None else None

        h = cls(target_endpoint="", id=child("ID") or "", sent_time=child("SentTime") or "")
        h.correlation_id = child("CorrelationID") or ZERO_GUID
        h.target_address = child("TargetAddress")
        h.target_host = child("TargetHost") or ""
        h.source_host = child("SourceHost") or ""
        h.source_id = child("SourceID")
        h.reply_to = child("ReplyTo")
        h.reply_mode = child("ReplyMode") or "Sync"
        h.protocol = child("Protocol") or "http"
        h.priority = child("Priority") or "0"
        h.timeout = child("Timeout") or "60000"
        h.schema_version = root.get("SchemaVersion", "1.1")
        h.reply_compression = root.get("ReplyCompression")
        endpoint = child("TargetEndpoint")
        if not endpoint and h.target_address:  # mp:[http]MP_LocationManager, raw:httpsync:{mp}:MP_X
            endpoint = re.split(r"[:\]]", h.target_address)[-1]
        h.target_endpoint = endpoint or ""
        body = root.find("Body")
        if body is not None:
            try:
                h.body_length = int(body.get("Length", "0"))
                h.body_offset = int(body.get("Offset", "0"))
            except ValueError as e:
                raise CcmMessageError(f"bad Body Length/Offset: {e}") from e
        h.zlib = False
        hooks = root.find("Hooks")
        if hooks is not None:
            for hook in hooks:
                name = (hook.get("Name") or "").lower()
                if name == "zlib-compress":
                    h.zlib = True
                elif name == "clientauth":
                    h.clientauth = {p.get("Name", ""): (p.text or "").strip() for p in hook.findall("Property")}
        h.attachments = [dict(a.attrib) for a in root.findall("Attachment")]
        return h


# -- messages -----------------------------------------------------------------------------------


@dataclass
class CcmMessage:
    header: MsgHeader
    header_xml: str
    body: str  # the body XML, without NUL / CRLF
    payload: bytes  # the body part exactly as sent (what PayloadSignature covers)
    boundary: str = BOUNDARY
    attachments: list[bytes] = field(default_factory=list)


def body_payload(body_xml: str, *, compress: bool = True, crlf: bool = True) -> tuple[bytes, int]:
    """(the body part's bytes, the Body Length): UTF-16LE + NUL (+ CRLF for requests), zlib'd."""
    raw = utf16(body_xml) + b"\x00\x00"
    length = len(raw)
    if crlf:
        raw += b"\r\n"
    return (zlib.compress(raw) if compress else raw), length


def encode_message(
    header: MsgHeader, payload: bytes, *, boundary: str = BOUNDARY, attachments: Iterable[bytes] = ()
) -> bytes:
    """The multipart body of a request or reply; the header part is UTF-16 with BOM."""
    parts = [(HEADER_PART_TYPE, b"\xff\xfe" + utf16(header.to_xml())), (BODY_PART_TYPE, payload)]
    parts += [(BODY_PART_TYPE, a) for a in attachments]
    return build_multipart(parts, boundary)


def encode_request(
    header: MsgHeader,
    body_xml: str,
    *,
    compress: bool = True,
    signer: rsa.RSAPrivateKey | None = None,
    boundary: str = BOUNDARY,
) -> bytes:
    """A complete request. With `signer` (and header.source_id set), the clientauth hook is filled:
    PublicKey blob, ClientIDSignature over UTF-16LE(SourceID)+NUL, PayloadSignature over the body."""
    payload, length = body_payload(body_xml, compress=compress)
    header.body_length = length
    header.zlib = compress
    if signer is not None:
        header.clientauth = {
            "AuthSenderMachine": header.source_host,
            "PublicKey": public_key_blob(signer.public_key()).hex().upper(),
            "ClientIDSignature": sign_hex(signer, utf16(header.source_id or "") + b"\x00\x00"),
            "PayloadSignature": sign_hex(signer, payload),
            "ClientCapabilities": "NonSSL",
            "HashAlgorithm": SHA256_RSA_OID,
        }
    return encode_message(header, payload, boundary=boundary)


def decode_message(
    raw: bytes, content_type: str | None = None, *, max_decompressed: int = MAX_DECOMPRESSED
) -> CcmMessage:
    """Parse a request (or reply): any boundary, header with or without BOM, body compressed when the
    zlib hook says so or the data starts with a zlib header, Length clamped to what is there."""
    boundary, parts = split_multipart(raw, content_type)
    if len(parts) < 2:
        raise CcmMessageError(f"expected a header part and a body part, got {len(parts)} part(s)")
    header_xml = decode_utf16(parts[0].data)
    if not header_xml.lstrip().startswith("<"):
        raise CcmMessageError("header part is not UTF-16 XML")
    header = MsgHeader.from_xml(header_xml)
    payload = parts[1].data
    data = payload
    if header.zlib or payload[:1] == b"\x78":
        data = inflate(payload, max_decompressed)
    # the Length is not trusted (PXEThief hard-codes one): the text ends at its NUL terminator
    body = decode_utf16(data).split("\x00", 1)[0].rstrip("\r\n")
    if body and not body.lstrip().startswith("<"):
        raise CcmMessageError("body is not UTF-16 XML")
    return CcmMessage(header, header_xml, body, payload, boundary, [p.data for p in parts[2:]])


@functools.lru_cache(maxsize=64)
def _reply_payload(body_xml: str, compress: bool) -> tuple[bytes, int]:
    """A reply's body part, compressed once per text: many replies are the same text (every client's site
    information, one client's policy assignments within a second) and zlib at the protocol's default level is a
    good part of a small reply's cost. Bytes are immutable: a cached payload is the one a fresh one would be."""
    return body_payload(body_xml, compress=compress, crlf=False)


def encode_reply(request: MsgHeader, body_xml: str, *, source_host: str, boundary: str = BOUNDARY) -> bytes:
    """The MP's reply to `request`: zlib unless the request asked ReplyCompression="none". Its header is the text
    `MsgHeader.to_xml` writes for a reply's fields (tests/test_ccm_reply_header.py), written directly: a reply
    header has no hooks but zlib's, no attachments, no optional element but those of a reply."""
    compress = (request.reply_compression or "zlib").lower() != "none"
    payload, length = _reply_payload(body_xml, compress)
    target_address = request.reply_to or f"direct:{request.source_host}:SccmMessaging"
    target_endpoint = (request.reply_to or "").split(":")[-1] or "SccmMessaging"
    header = (
        f'<Msg SchemaVersion="1.1"><Body Type="ByteRange" Length="{length}" Offset="0" />'
        f"<CorrelationID>{escape(request.id or ZERO_GUID)}</CorrelationID>"
        + ('<Hooks><Hook3 Name="zlib-compress" /></Hooks>' if compress else "")
        + f'<ID>{guid()}</ID><Payload Type="inline" /><Priority>0</Priority>'
        f"<Protocol>{escape(request.protocol or 'http')}</Protocol><ReplyMode>Sync</ReplyMode>"
        f"<SentTime>{utc_timestamp()}</SentTime><SourceHost>{escape(source_host)}</SourceHost>"
        f"<TargetAddress>{escape(target_address)}</TargetAddress>"
        f"<TargetEndpoint>{escape(target_endpoint)}</TargetEndpoint>"
        f"<TargetHost>{escape(request.source_host)}</TargetHost><Timeout>60000</Timeout></Msg>"
    )
    return build_multipart([(HEADER_PART_TYPE, b"\xff\xfe" + utf16(header)), (BODY_PART_TYPE, payload)], boundary)


def decode_reply(
    raw: bytes, content_type: str | None = None, *, max_decompressed: int = MAX_DECOMPRESSED
) -> tuple[MsgHeader, str]:
    """(reply header, reply body XML) of an MP reply."""
    msg = decode_message(raw, content_type, max_decompressed=max_decompressed)
    return msg.header, msg.body


# -- signatures ---------------------------------------------------------------------------------


def sign(key: rsa.RSAPrivateKey, data: bytes, *, digest_info: bool = True) -> bytes:
    """RSA PKCS#1 v1.5 SHA-256, bytes reversed. digest_info=False is CRYPT_NOHASHOID."""
    if digest_info:
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        n_len = (key.key_size + 7) // 8
        digest = hashlib.sha256(data).digest()
        em = b"\x00\x01" + b"\xff" * (n_len - len(digest) - 3) + b"\x00" + digest
        nums = key.private_numbers()
        sig = pow(int.from_bytes(em, "big"), nums.d, nums.public_numbers.n).to_bytes(n_len, "big")
    return sig[::-1]


def sign_hex(key: rsa.RSAPrivateKey, data: bytes, *, digest_info: bool = True) -> str:
    return sign(key, data, digest_info=digest_info).hex().upper()


def verify(public_key: Any, data: bytes, signature: bytes | str) -> bool:
    """Check a reversed signature (bytes, or hex) over `data`: DigestInfo or bare-hash padding."""
    if not isinstance(public_key, rsa.RSAPublicKey):
        return False
    try:
        sig = bytes.fromhex(signature) if isinstance(signature, str) else signature
    except ValueError:
        return False
    sig = sig[::-1]
    if len(sig) != (public_key.key_size + 7) // 8:
        return False
    try:
        recovered = public_key.recover_data_from_signature(sig, padding.PKCS1v15(), None)
    except (InvalidSignature, ValueError):
        return False
    digest = hashlib.sha256(data).digest()
    return recovered in (digest, _SHA256_DIGEST_INFO + digest)


def verify_any(public_key: Any, candidates: Iterable[bytes], signature: bytes | str) -> bool:
    return any(verify(public_key, data, signature) for data in candidates)


# -- CryptoAPI PUBLICKEYBLOB --------------------------------------------------------------------

_BLOB_HEAD = bytes.fromhex("0602000000A40000") + b"RSA1"


def public_key_blob(key: rsa.RSAPublicKey) -> bytes:
    """PUBLICKEYBLOB: 06 02 0000 00A40000 'RSA1' bitlen exponent modulus(little-endian)."""
    nums = key.public_numbers()
    size = (key.key_size + 7) // 8
    return (
        _BLOB_HEAD + key.key_size.to_bytes(4, "little") + nums.e.to_bytes(4, "little") + nums.n.to_bytes(size, "little")
    )


def parse_public_key_blob(blob: bytes) -> rsa.RSAPublicKey:
    if len(blob) < 20 or blob[:2] != b"\x06\x02" or blob[8:12] != b"RSA1":
        raise CcmMessageError("not a PUBLICKEYBLOB")
    bits = int.from_bytes(blob[12:16], "little")
    e = int.from_bytes(blob[16:20], "little")
    modulus = blob[20 : 20 + bits // 8]
    if bits < 512 or len(modulus) != bits // 8:
        raise CcmMessageError("PUBLICKEYBLOB length does not match its bit length")
    try:
        return rsa.RSAPublicNumbers(e, int.from_bytes(modulus, "little")).public_key()
    except ValueError as ex:
        raise CcmMessageError(f"bad PUBLICKEYBLOB: {ex}") from ex


# -- registration request body ------------------------------------------------------------------


def registration_request(data_xml: str, key: rsa.RSAPrivateKey, *, sms_id: str | None = None) -> str:
    """<ClientRegistrationRequest> around a <Data> element, signed over UTF-16LE(data_xml)."""
    sig = sign_hex(key, utf16(data_xml))
    sig_attr = f" SMSID={quoteattr(sms_id)}" if sms_id else ""
    return (
        f"<ClientRegistrationRequest>{data_xml}<Signature{sig_attr}><SignatureValue>{sig}"
        f"</SignatureValue></Signature></ClientRegistrationRequest>"
    )


def cert_hex(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER).hex().upper()


# -- ClientToken headers (.sms_pol) -------------------------------------------------------------


def client_token_headers(sms_id: str, key: rsa.RSAPrivateKey, when: datetime | None = None) -> dict[str, str]:
    """`ClientToken: GUID:<id>;<time>;2` and its signature over UTF-16LE(token) + NUL."""
    token = f"{sms_id};{utc_timestamp(when)};2"
    return {"ClientToken": token, "ClientTokenSignature": sign_hex(key, utf16(token) + b"\x00\x00")}


def client_token_candidates(token: str) -> list[bytes]:
    """The byte strings real senders sign for a ClientToken: UTF-16LE with and without the NUL."""
    return [utf16(token) + b"\x00\x00", utf16(token), utf16(token.rstrip("\x00"))]


def parse_client_token(token: str) -> tuple[str, str]:
    """(`GUID:<upper id>`, timestamp) of a ClientToken header: `GUID:x;time[;2]` or `{x};time`."""
    fields = token.rstrip("\x00").split(";")
    if len(fields) < 2:
        raise CcmMessageError("ClientToken is not <id>;<time>")
    ident = fields[0].strip()
    ident = ident[5:] if ident.upper().startswith("GUID:") else ident
    ident = ident.strip("{}")
    try:
        uuid.UUID(ident)
    except ValueError as e:
        raise CcmMessageError(f"ClientToken id {fields[0]!r} is not a GUID") from e
    return "GUID:" + ident.upper(), fields[1].strip()


def parse_timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as e:
        raise CcmMessageError(f"bad timestamp {text!r}") from e
    return value if value.tzinfo else value.replace(tzinfo=UTC)
