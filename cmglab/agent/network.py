"""The device's HTTP clients, with Windows' trust rules:

- TLS trusts the device's Root store only (no system CAs): a device without the lab root CA fails
  like Windows with CERT_E_UNTRUSTEDROOT;
- revocation checking is on by default (ccmsetup's "Enabled SSL revocation check."): on each new TLS
  connection, before its first request, the server's chain is checked against the CRLs named in each
  certificate's CDP, fetched over plain HTTP once per process and URL (kept in the device's CryptnetUrlCache).
  A CRL the device cannot fetch fails with CRYPT_E_REVOCATION_OFFLINE unless `/nocrlcheck`;
  a revoked certificate with CRYPT_E_REVOKED;
- an optional client certificate from a store (PKI client, Entra device certificate);
- names mapped curl-style (`HOST:PORT:ADDR`) so URLs, SNI and name checks keep the real names.

The clients are httpx clients (`H1Client`) on the lab's lean HTTP/1.1 transport (cmglab/wire/h1transport.py):
the agent's CPU per request was mostly httpx's and httpcore's own Python (bench section 4).
"""

from __future__ import annotations

import functools
import hashlib
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from cmglab.agent.certstore import StoredCert
from cmglab.agent.device import Device
from cmglab.agent.settings import agent_settings
from cmglab.wire import httpclient, tracing
from cmglab.wire.h1transport import H1Client, H1Transport
from cmglab.wire.tls_sessions import SessionCache

# Windows error codes the device's logs report
CERT_E_UNTRUSTEDROOT = 0x800B0109
CRYPT_E_REVOKED = 0x80092010
CRYPT_E_REVOCATION_OFFLINE = 0x80092013
WININET_E_CANNOT_CONNECT = 0x80072EFD
WININET_E_TIMEOUT = 0x80072EE2
WININET_E_SECURE_FAILURE = 0x80072F8F


class NetworkError(httpx.TransportError):
    """A request that failed the way Windows reports it: an HRESULT and its text."""

    def __init__(self, hresult: int, text: str) -> None:
        super().__init__(f"{text} (0x{hresult:08X})")
        self.hresult, self.text = hresult, text


def classify(exc: BaseException) -> NetworkError:
    """Any failure of a device request as the HRESULT Windows would log."""
    if isinstance(exc, NetworkError):
        return exc
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return NetworkError(
                CERT_E_UNTRUSTEDROOT,
                f"A certificate chain processed, but terminated in a root certificate which is "
                f"not trusted by the trust provider ({e.verify_message})",
            )
        if isinstance(e, ssl.SSLError):
            return NetworkError(WININET_E_SECURE_FAILURE, f"A security error occurred ({e.reason or e})")
    text = str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return NetworkError(WININET_E_TIMEOUT, f"The operation timed out ({text})")
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return NetworkError(CERT_E_UNTRUSTEDROOT, f"A certificate chain terminated in an untrusted root ({text})")
    if "SSL" in text or "TLS" in text or "alert" in text:
        return NetworkError(WININET_E_SECURE_FAILURE, f"A security error occurred ({text})")
    return NetworkError(WININET_E_CANNOT_CONNECT, f"A connection with the server could not be established ({text})")


def _cdp(cert: x509.Certificate) -> str | None:
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return None
    for point in points:
        for name in point.full_name or []:
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith("http"):
                return str(name.value)
    return None


# CRLs this process fetched, per device cache file: (the file's stat when written, the CRL, the CA it was
# verified against). Used while that file is unchanged and the CRL is within its NextUpdate, so a fleet's device
# downloads each CRL once per onboarding; `cmglab device break crl` (removes the file) ends the reuse. An LRU of
# FETCHED_MAX entries: a fleet or bench process runs thousands of devices (3 CRLs each) whose homes come and go.
_Fetched = tuple[tuple[int, int], x509.CertificateRevocationList, x509.Certificate]
FETCHED_MAX = 1024
_FETCHED: OrderedDict[Path, _Fetched] = OrderedDict()
_FETCHED_LOCK = threading.Lock()


def _recall(cache: Path) -> _Fetched | None:
    with _FETCHED_LOCK:
        fetched = _FETCHED.get(cache)
        if fetched is not None:
            _FETCHED.move_to_end(cache)
        return fetched


def _remember(cache: Path, fetched: _Fetched) -> None:
    with _FETCHED_LOCK:
        _FETCHED[cache] = fetched
        _FETCHED.move_to_end(cache)
        while len(_FETCHED) > FETCHED_MAX:
            _FETCHED.popitem(last=False)


# TLS contexts without a client certificate, shared by every device (thread) of the process whose Root store
# holds the same certificates: keyed by the store's bytes, read again for each context asked, so a changed Root
# store (`cmglab device break root`) gets a new context. Building one costs ~1.5 ms of CPU (OpenSSL's context,
# the bundle parsed); an onboarding asks five. Never changed once made (SSLContext is safe to share for wrapping).
TRUST_CONTEXTS_MAX = 16
CLIENT_CONTEXTS_MAX = 16  # per device network: contexts with a client certificate (a device holds one or two)


def _new_context(bundle: bytes, client_cert: StoredCert | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no system CAs: the Root store only
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if bundle:
        ctx.load_verify_locations(cadata=bundle.decode())
    if client_cert is not None and client_cert.key_path is not None:
        ctx.load_cert_chain(str(client_cert.cert_path), str(client_cert.key_path))
    return ctx


@functools.lru_cache(maxsize=TRUST_CONTEXTS_MAX)  # thread-safe; two threads may both build one, harmless
def _trust_context(bundle: bytes) -> ssl.SSLContext:
    return _new_context(bundle, None)


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class RevocationChecker:
    """Checks a server's certificate chain against its CDP CRLs, on the connection the device makes: the
    certificate the TLS handshake verified, before the first request is sent on it (Windows' chain engine)."""

    def __init__(self, device: Device, ctx: ssl.SSLContext, resolve: list[str], timeout: float = 10) -> None:
        self.device, self.ctx, self.timeout = device, ctx, timeout
        self.resolve = resolve
        self.checked: set[bytes] = set()  # leaf certificates (DER) this checker found good
        self._http: httpx.Client | None = None  # CRL downloads of the chain walk under way

    def check_connection(self, tls: Any, host: str) -> None:
        """The peer certificate of a TLS connection just made (the trace's "ssl_object": an SSL socket or
        object, or a socket's inner _ssl object, whose getpeercert takes its flag positionally); raises
        NetworkError."""
        der = tls.getpeercert(True) if tls is not None else None
        if not der:
            raise NetworkError(WININET_E_SECURE_FAILURE, f"{host} presented no certificate")
        if der in self.checked:
            return
        self.check_chain(x509.load_der_x509_certificate(der))
        self.checked.add(der)

    def check_chain(self, cert: x509.Certificate) -> None:
        try:
            self._walk(cert)
        finally:
            if self._http is not None:  # the walk's CRL downloads shared one keep-alive connection per host
                self._http.close()
                self._http = None

    def _walk(self, cert: x509.Certificate) -> None:
        roots = self.device.stores.roots()
        current = cert
        for _ in range(5):
            if current.subject == current.issuer:
                return  # a trusted root: nothing revokes it
            issuer = next((r for r in roots if r.subject == current.issuer), None)
            if issuer is None:
                raise NetworkError(CERT_E_UNTRUSTEDROOT, f"no trusted issuer for {current.subject.rfc4514_string()}")
            url = _cdp(current)
            if url is None:
                raise NetworkError(
                    CRYPT_E_REVOCATION_OFFLINE, f"{current.subject.rfc4514_string()} names no CRL distribution point"
                )
            crl = self._crl(url, issuer)
            if crl.get_revoked_certificate_by_serial_number(current.serial_number) is not None:
                raise NetworkError(
                    CRYPT_E_REVOKED,
                    f"The certificate is revoked: {current.subject.rfc4514_string()} "
                    f"(serial {current.serial_number:x})",
                )
            current = issuer

    def _cache_path(self, url: str) -> Path:
        return self.device.crl_cache / (hashlib.sha1(url.encode()).hexdigest().upper() + ".crl")

    def _crl(self, url: str, issuer: x509.Certificate) -> x509.CertificateRevocationList:
        now = datetime.now(UTC)
        cache = self._cache_path(url)
        fetched = _recall(cache)
        if fetched is not None:
            stat, kept, verified_by = fetched
            if stat == _stat_key(cache) and verified_by == issuer and (kept.next_update_utc or now) > now:
                return kept  # fetched by this process, its cache file untouched since
        data: bytes | None = None
        error = ""
        try:
            if self._http is None:
                self._http = crl_client(self.ctx, self.resolve, self.timeout)
            reply = self._http.get(url)
            if reply.status_code == 200:
                data = reply.content
            else:
                error = f"HTTP {reply.status_code}"
        except httpx.HTTPError as e:
            error = str(e) or type(e).__name__
        crl = _load_crl(data) if data else None
        if crl is None and cache.exists():  # offline: a cached CRL still within its NextUpdate does
            cached = _load_crl(cache.read_bytes())
            if cached is not None and (cached.next_update_utc or now) > now:
                crl = cached
        if crl is None:
            raise NetworkError(
                CRYPT_E_REVOCATION_OFFLINE,
                f"The revocation function was unable to check revocation because the revocation "
                f"server was offline: {url} ({error or 'not a CRL'})",
            )
        if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise NetworkError(CRYPT_E_REVOCATION_OFFLINE, f"the CRL from {url} is not signed by its issuer")
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            raise NetworkError(CRYPT_E_REVOCATION_OFFLINE, f"the CRL from {url} has expired")
        if data:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(data)
            stat_now = _stat_key(cache)
            if stat_now is not None:
                _remember(cache, (stat_now, crl, issuer))
        return crl


def crl_client(ctx: ssl.SSLContext, resolve: list[str], timeout: float) -> httpx.Client:
    """The client of one chain walk's CRL downloads (plain HTTP, one keep-alive connection per host)."""
    return H1Client(transport=H1Transport(ctx, httpclient.parse_resolve(resolve)), timeout=timeout)


def _load_crl(data: bytes) -> x509.CertificateRevocationList | None:
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        return None


def _on_handshake(checker: RevocationChecker, request: httpx.Request) -> Callable[[str, dict[str, Any]], None]:
    """httpx's trace extension (as httpcore and H1Transport call it): when a new connection's TLS handshake
    completes (before the request goes out on it), its peer certificate's revocation is checked; a connection
    that fails the check is closed."""
    outer = request.extensions.get("trace")
    host = request.url.host

    def trace(event: str, info: dict[str, Any]) -> None:
        if outer is not None:
            outer(event, info)
        if event != "connection.start_tls.complete":
            return
        stream = info["return_value"]
        try:
            checker.check_connection(stream.get_extra_info("ssl_object"), host)
        except BaseException:
            stream.close()
            raise

    return trace


class _CheckingTransport(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport, checker: Callable[[], RevocationChecker | None]) -> None:
        self.inner, self.checker = inner, checker  # asked per request: the site's CRL setting may change

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            checker = self.checker()
            if checker is not None and request.url.scheme == "https":
                request.extensions = {**request.extensions, "trace": _on_handshake(checker, request)}
            return self.inner.handle_request(request)
        except NetworkError:
            raise
        except (httpx.TransportError, OSError) as e:
            raise classify(e) from e

    def close(self) -> None:
        self.inner.close()


class DeviceNetwork:
    def __init__(
        self, device: Device, *, crl_check: bool = True, resolve: list[str] | None = None, timeout: float | None = None
    ) -> None:
        self.device = device
        self.crl_check = crl_check
        self.resolve = device.resolve(resolve)
        self.hosts = httpclient.parse_resolve(self.resolve)
        self.timeout = timeout if timeout is not None else agent_settings().client_timeout
        self._checker: RevocationChecker | None = None
        # the device's TLS sessions, as Schannel's client cache (per process here; per device in a fleet)
        self.tls_sessions = SessionCache()
        self._client_contexts: dict[tuple[bytes, str, Any, Any], ssl.SSLContext] = {}

    def ssl_context(self, client_cert: StoredCert | None = None) -> ssl.SSLContext:
        """The device's Root store as the only trust (read now); with a client certificate, a context of its own,
        kept while the Root store and the certificate's files are unchanged (a TLS session is resumed only on
        the context it was made on)."""
        bundle = self.device.stores.trust_bundle()
        if client_cert is None or client_cert.key_path is None:
            return _trust_context(bundle)
        key = (bundle, client_cert.thumbprint, _stat_key(client_cert.cert_path), _stat_key(client_cert.key_path))
        ctx = self._client_contexts.get(key)
        if ctx is None:
            ctx = _new_context(bundle, client_cert)
            if len(self._client_contexts) >= CLIENT_CONTEXTS_MAX:
                self._client_contexts.clear()
            self._client_contexts[key] = ctx
        return ctx

    def checker(self) -> RevocationChecker | None:
        if not self.crl_check:
            return None
        if self._checker is None:
            self._checker = RevocationChecker(self.device, self.ssl_context(), self.resolve)
        return self._checker

    def transport(self, ctx: ssl.SSLContext, credential: str | None = None) -> httpx.BaseTransport:
        """What sends the device's requests once revocation is checked (a fleet wraps it to watch them); TLS
        sessions resumed from the device's cache under CREDENTIAL (the client certificate's thumbprint)."""
        return H1Transport(ctx, self.hosts, sessions=self.tls_sessions, credential=credential)

    def client(self, client_cert: StoredCert | None = None) -> httpx.Client:
        ctx = self.ssl_context(client_cert)
        credential = client_cert.thumbprint if client_cert is not None and client_cert.key_path is not None else None
        inner = self.transport(ctx, credential)
        # every request carries W3C trace headers tagged with the device and its step (the lab console)
        return H1Client(
            transport=_CheckingTransport(inner, self.checker),
            timeout=self.timeout,
            event_hooks={"request": [tracing.httpx_hook(self.device.info.name)]},
        )
