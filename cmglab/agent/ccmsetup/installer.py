"""ccmsetup's installation steps (seed 001, "Client installation" 1–4), then the first registration.

Nothing is half-written: the client state, token caches and installed files appear only when every
step succeeded; a failure removes what this run wrote (logs stay), so the next run starts clean.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element

import httpx

from cmglab.agent.adal import Logs
from cmglab.agent.ccm.client import CcmClient, MessagingError, TokenUnavailable
from cmglab.agent.ccm.location import content_locations, site_info
from cmglab.agent.ccm.registration import ClientIDManager, RegistrationFailed
from cmglab.agent.ccm.state import AAD, BULK, DOMAIN, PKI, SELF_SIGNED, TOKEN, ClientState, ManagementPoint
from cmglab.agent.ccm.tokens import ClientTokenStore
from cmglab.agent.ccmsetup.cmdline import CcmSetupArgs, ExitCode
from cmglab.agent.device import Device, machine_account
from cmglab.agent.dsregcmd.join import join_state
from cmglab.agent.network import CRYPT_E_REVOCATION_OFFLINE, CRYPT_E_REVOKED, DeviceNetwork, NetworkError, classify
from cmglab.wire.cabinet import read_cab
from cmglab.wire.ccm_messaging import parse_xml
from cmglab.wire.site_security import site_checks_crl


class SetupFailure(Exception):
    def __init__(self, message: str, code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.code = code


class Retryable(SetupFailure):
    """A failure to reach the site: /retry: tries again."""


@dataclass
class Package:
    folder: Any
    version: str
    product_code: str
    msi: Any


class Installer:
    def __init__(self, device: Device, args: CcmSetupArgs) -> None:
        self.device, self.args = device, args
        self.log = device.ccmsetup_log()
        self.network = DeviceNetwork(device, crl_check=not args.nocrlcheck, resolve=args.resolve)
        self.download_dir = device.ccmsetup_dir / ("{" + str(uuid.uuid4()).upper() + "}")

    # -- where the client goes ----------------------------------------------------------------
    def plan(self) -> tuple[ClientState, ManagementPoint]:
        args, stores = self.args, self.device.stores
        pki = stores.pki_client_certs()
        if args.usepkicert and not pki:
            raise SetupFailure(
                "/usepkicert: no valid PKI client authentication certificate in the Personal store "
                "(clientAuth EKU, private key, chaining to a trusted root)"
            )
        state = ClientState(
            crl_check=not args.nocrlcheck, nocrlcheck=args.nocrlcheck, site_code=(args.site_code or "").upper()
        )
        if state.site_code == "AUTO" and args.ccmhostname:
            raise SetupFailure("SMSSITECODE=AUTO cannot be used with CCMHOSTNAME: give the site code")
        internet = [ManagementPoint.from_ccmhostname(args.ccmhostname, pki=bool(pki))] if args.ccmhostname else []
        intranet = None
        for url in args.mp:
            mp = ManagementPoint.from_url(url, pki=bool(pki))
            if mp.internet:
                if not any(m.base == mp.base and m.role_id == mp.role_id for m in internet):
                    internet.append(mp)
            elif intranet is None:
                intranet = mp
        smsmp = args.prop("SMSMP")
        if smsmp and intranet is None:
            mp = ManagementPoint.from_url(smsmp if "://" in smsmp else f"http://{smsmp}", pki=bool(pki))
            if mp.internet:
                internet.append(mp)
            else:
                intranet = mp
        if not internet and intranet is None:
            raise SetupFailure("no management point: give CCMHOSTNAME (the CMG), /mp: or SMSMP")
        state.internet_mps = [m.to_dict() for m in internet]
        state.intranet_mp = intranet.to_dict() if intranet else None
        source = intranet or internet[0]
        if pki:
            state.auth_mode, state.pki_thumbprint = PKI, pki[0].thumbprint
            self.log.info(
                f"Found a valid PKI client authentication certificate {pki[0].thumbprint} "
                f"({pki[0].cert().subject.rfc4514_string()}): the client will use it (PKI client)"
            )
        elif args.regtoken is not None:
            state.auth_mode = BULK
        elif source.internet:
            state.auth_mode = TOKEN if ClientTokenStore(self.device).get() else AAD
        else:
            state.auth_mode = DOMAIN if machine_account(self.device) else SELF_SIGNED
        return state, source

    # -- step 1: Entra details from the CMG ---------------------------------------------------
    def aad_info(self, client: CcmClient, mp: ManagementPoint) -> dict[str, str]:
        a = self.args
        state = join_state(self.device)
        tenant = a.prop("AADTENANTID") or (state or {}).get("TenantId")
        if a.prop("AADCLIENTAPPID") and a.prop("AADRESOURCEURI") and tenant:
            return {
                "AADTENANTID": tenant,
                "AADCLIENTAPPID": a.prop("AADCLIENTAPPID") or "",
                "AADRESOURCEURI": a.prop("AADRESOURCEURI") or "",
            }
        if not tenant or self.device.stores.device_cert() is None:
            self.log.error(
                "Failed to get AAD token: this device is not Azure AD joined (the WPJ certificate is not "
                "found). Use 'dsregcmd /status' and check the Device State section."
            )
            raise SetupFailure("the WPJ certificate is not found")
        path = f"/CCM_Proxy_ServerAuth/AADAuthInfo?TenantID={tenant}"
        self.log.info(f"Getting AAD info from CMG '{mp.netloc}'")
        self.log.info(
            f"SMS CCM 5.0: Host={mp.host}, Path={path}, Port={mp.port}, Protocol=https, CcmTokenAuth=0, "
            f"Flags=0x1304, Options=0xe0"
        )
        try:
            reply = client.conns.get().get(mp.base + path)
        except httpx.HTTPError as e:
            raise self.network_failure(e, f"Getting AAD info from CMG '{mp.netloc}'") from e
        self.connected(mp)
        if reply.status_code == 404:
            self.log.error(
                f"The CMG has no AAD information for tenant {tenant}: the tenant is not onboarded to the "
                f"site ({reply.text[:200]})"
            )
            raise SetupFailure(f"tenant {tenant} is not onboarded (CMG gave no AAD properties)")
        if reply.status_code != 200:
            self.log.error(f"Getting AAD info from CMG failed: HTTP {reply.status_code} {reply.text[:200]}")
            raise Retryable(f"AADAuthInfo failed with HTTP {reply.status_code}")
        doc = reply.json()
        self.log.info(
            f"Got AAD info from CMG: AADTENANTID={doc.get('AADTENANTID')}, AADCLIENTAPPID="
            f"{doc.get('AADCLIENTAPPID')}, AADRESOURCEURI={doc.get('AADRESOURCEURI')}"
        )
        return {k: str(doc[k]) for k in ("AADTENANTID", "AADCLIENTAPPID", "AADRESOURCEURI")}

    def connected(self, mp: ManagementPoint) -> None:
        self.log.info(f"Created connection on port {mp.port}")
        if self.network.crl_check and mp.scheme == "https":
            self.log.info("Enabled SSL revocation check.")

    def network_failure(self, e: BaseException, what: str) -> SetupFailure:
        err = classify(e)
        self.log.error(f"{what} failed: {err.text}. Error 0x{err.hresult:08X}")
        if err.hresult in (CRYPT_E_REVOCATION_OFFLINE, CRYPT_E_REVOKED):
            hint = (
                "the CRL of the server certificate cannot be checked: publish the CRL or use /nocrlcheck"
                if err.hresult == CRYPT_E_REVOCATION_OFFLINE
                else "a certificate in the chain is revoked"
            )
            self.log.error(f"Certificate revocation check failed: {hint}")
            return SetupFailure(err.text)
        if err.hresult == 0x800B0109:
            self.log.error(
                "The root certificate authority of the server certificate is not in the device's "
                "Trusted Root store: add the root CA (the device cannot validate the CMG certificate)"
            )
            return SetupFailure(err.text)
        return Retryable(err.text)

    def not_published(self, mp: ManagementPoint) -> None:
        self.log.error(
            f"The site is not reachable through '{mp.name}': HTTP 404. The CMG does not publish the "
            'management point (is "Allow clients to use a cloud management gateway" off for the site?)'
        )

    # -- steps 2-4 ----------------------------------------------------------------------------
    def contact_site(self, client: CcmClient, source: ManagementPoint) -> Package:
        st = client.state
        if st.auth_mode == AAD:
            st.aad = self.aad_info(client, source)
        if source.internet:
            self.log.info("Getting a CCM token for the site's token service")
            try:
                client.renew_token(source, self.log, adal_logs=Logs(self.log), as_named=True)
            except TokenUnavailable as e:
                self.log.error(f"Failed to get a CCM token: {e}. CcmSetup cannot continue.")
                if e.code == "NotFound":
                    self.not_published(source)
                if st.auth_mode == PKI and e.code in ("0x80072EFD", "0x80072F8F"):
                    self.log.error(
                        "The CMG closed the connection after the TLS handshake: it refused the client "
                        "authentication certificate (revoked, expired or not trusted by the site)"
                    )
                raise (Retryable if e.transient else SetupFailure)(str(e)) from e
        prefix = "ccmsetup"
        try:
            reply = site_info(
                client,
                source,
                st.site_code or "",
                self.log,
                prefix=prefix,
                connected=(lambda: self.connected(source)) if source.internet else None,
            )
            site = parse_xml(reply).find("Site")
            if site is None:
                raise SetupFailure(f"the management point knows no site {st.site_code!r}")
            st.site_code = st.site_code or (site.findtext("SiteCode") or "")
            st.follow_site_crl_setting(site_checks_crl(site), self.log)  # for the installed client
            self.log.info(f"Checking the URL '{source.display_url}/CCM_Client/ccmsetup.cab'")
            path = source.path("CCM_Client")
            self.log.info(
                f"{prefix}: Host={source.host}, Path={path}, Port={source.port}, Protocol={source.scheme}, "
                f"CcmTokenAuth={int(source.token_auth)}"
            )
            check = client.get(source, source.url("CCM_Client/ccmsetup.cab"), self.log)
            if check.status_code != 200:
                raise Retryable(f"{source.url('CCM_Client/ccmsetup.cab')} answered HTTP {check.status_code}")
            self.log.info(f"Found a valid online MP '{source.display_url}'")
            self.log.info("Searching for DP locations from MP(s)...")
            self.log.info(f"CCMSETUP bootstrap from Internet: {int(source.internet)}")
            locations = content_locations(client, source, st.site_code, "client", self.log, prefix=prefix)
            return self.download(client, source, locations)
        except MessagingError as e:
            if e.status == 404:
                self.not_published(source)
                raise SetupFailure(str(e)) from e
            if e.status in (401, 403):
                raise SetupFailure(str(e)) from e
            raise Retryable(str(e)) from e
        except TokenUnavailable as e:
            raise (Retryable if e.transient else SetupFailure)(str(e)) from e

    def download(self, client: CcmClient, mp: ManagementPoint, locations: list[Any]) -> Package:
        self.download_dir.mkdir(parents=True, exist_ok=True)
        files: dict[str, bytes] = {}
        hashes: dict[str, str] = {}
        for loc in locations:
            try:
                if "getcontentxmlsecure" in loc.url.lower():
                    files, hashes = self._cloud(client, mp, loc.url)
                elif loc.dp_type == "SERVER":
                    files, hashes = self._dp(client, loc)
                else:
                    files = {
                        name: self._get(client, mp, f"{loc.url}/{name}") for name in ("ccmsetup.cab", "client.msi")
                    }
                break
            except MessagingError as e:
                self.log.warning(f"Download from '{loc.url}' failed: {e}; trying the next location")
        else:
            raise Retryable("the client package could not be downloaded from any location")
        for name, blob in files.items():
            if name in hashes and hashlib.sha256(blob).hexdigest().upper() != hashes[name].upper():
                self.log.error(f"File '{name}' hash does not match the content location's hash")
                raise SetupFailure(f"{name}: hash mismatch", ExitCode.MANIFEST_HASH_FAILURE)
            (self.download_dir / name).write_bytes(blob)
        try:
            manifest = read_cab(files["ccmsetup.cab"])["ccmsetup.xml"]
            root = parse_xml(manifest)
        except (KeyError, ValueError, Exception) as e:
            self.log.error(f"ccmsetup.cab is not a valid client manifest: {e}")
            raise SetupFailure(f"bad ccmsetup.cab: {e}", ExitCode.MANIFEST_HASH_FAILURE) from e
        items = {i.get("FileName", ""): i for i in root.iter("Item")}
        msi = files.get("client.msi", b"")
        item: Element | None = items.get("client.msi")
        if item is None or hashlib.sha256(msi).hexdigest().upper() != (item.get("FileHash") or "").upper():
            self.log.error("client.msi does not match the hash in the ccmsetup manifest (ccmsetup.xml)")
            raise SetupFailure("client.msi: manifest hash failure", ExitCode.MANIFEST_HASH_FAILURE)
        self.log.info("Validated the client package against the ccmsetup manifest (SHA-256)")
        return Package(
            self.download_dir, root.get("Version", ""), root.get("ProductCode", ""), self.download_dir / "client.msi"
        )

    def _dp(self, client: CcmClient, loc: Any) -> tuple[dict[str, bytes], dict[str, str]]:
        """From a distribution point, as the computer account when it asks for Windows authentication;
        each file checked against the content library's hash (DownloadError otherwise)."""
        from cmglab.agent.ccm.content import DownloadError, DPSession, content_version_of

        self.log.info(f"Downloading the client package from the distribution point '{loc.url}'")
        session = DPSession(
            client.conns.get(client.pki_cert if loc.url.startswith("https:") else None),
            machine_account(client.device),
            self.log,
        )
        try:
            fetched = session.fetch(loc.url, content_version_of(loc), {"ccmsetup.cab", "client.msi"})
        except (DownloadError, httpx.HTTPError) as e:
            raise MessagingError(f"{loc.url}: {e}") from e
        for f in fetched:
            self.log.info(
                f"Downloaded '{loc.url}/{f.path}' ({len(f.data)} bytes), SHA-256 matches the content library's hash"
            )
        if {f.path for f in fetched} != {"ccmsetup.cab", "client.msi"}:
            raise MessagingError(f"the distribution point's {loc.url} lacks the client files")
        return {f.path: f.data for f in fetched}, {f.path: f.sha256 for f in fetched}

    def _get(self, client: CcmClient, mp: ManagementPoint, url: str) -> bytes:
        reply = client.get(mp, url, self.log)
        if reply.status_code != 200:
            raise MessagingError(f"GET {url}: HTTP {reply.status_code}", status=reply.status_code)
        self.log.info(f"Downloaded '{url}' ({len(reply.content)} bytes)")
        return reply.content

    def _cloud(self, client: CcmClient, mp: ManagementPoint, url: str) -> tuple[dict[str, bytes], dict[str, str]]:
        reply = client.get(mp, url, self.log, token=True)
        if reply.status_code != 200:
            raise MessagingError(f"GET {url}: HTTP {reply.status_code}", status=reply.status_code)
        root = parse_xml(reply.content)
        files, hashes = {}, {}
        for f in root.iter("File"):
            name = f.get("Name", "")
            if name in ("ccmsetup.cab", "client.msi"):
                files[name] = self._get(client, mp, f.get("URL", ""))
                hashes[name] = f.get("Hash", "")
        if set(files) != {"ccmsetup.cab", "client.msi"}:
            raise MessagingError(f"the cloud content of {url} lacks the client files")
        return files, hashes

    def install(self, client: CcmClient, package: Package) -> None:
        st = client.state
        info = json.loads(package.msi.read_bytes().split(b"\n", 1)[1]) if package.msi.exists() else {}
        st.version = info.get("ProductVersion", package.version)
        st.product_code = info.get("ProductCode", package.product_code)
        self.log.info(f"Installing version {st.version} of the client with product code {st.product_code}")
        self.log.info("Running installation package")
        self.log.info(f"Package:     {package.msi}")
        ccm = self.device.ccm_dir
        ccm.mkdir(parents=True, exist_ok=True)
        shutil.copy2(package.msi, ccm / "client.msi")
        self.log.info("Installation succeeded.")

    # -- the whole run ------------------------------------------------------------------------
    def run(self) -> ExitCode:
        existing = ClientState.load(self.device)
        if existing is not None and existing.installed and not self.args.forceinstall:
            self.log.info(
                f"The client version {existing.version} is already installed and registered as "
                f"{existing.sms_id}: nothing to do (use /forceinstall to reinstall)"
            )
            return ExitCode.SUCCESS
        try:
            state, source = self.plan()
        except (SetupFailure, ValueError) as e:
            self.log.error(f"CcmSetup failed: {e}")
            return e.code if isinstance(e, SetupFailure) else ExitCode.ERROR
        deadline = time.monotonic() + self.args.download_timeout_minutes * 60
        while True:
            client = CcmClient(self.device, self.network, state, regtoken=self.args.regtoken)
            try:
                package = self.contact_site(client, source)
                self.install(client, package)
                state.installed_at = state.installed_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                state.save(self.device)
                ClientIDManager(client).startup(source)
                state.installed = True
                state.save(self.device)
                return ExitCode.SUCCESS
            except (Retryable, RegistrationFailed) as e:
                self.rollback()
                if isinstance(e, RegistrationFailed):
                    self.log.error(f"The client was installed but could not register: {e}")
                    if not e.transient:  # the site refused it: trying again changes nothing
                        return ExitCode.ERROR
                retry = self.args.retry_minutes
                if retry is None or time.monotonic() + retry * 60 > deadline:
                    self.log.error(f"CcmSetup failed: {e}")
                    return e.code if isinstance(e, SetupFailure) else ExitCode.ERROR
                self.log.info(f"Failed: {e}. Next retry in {retry:g} minute(s)...")
                time.sleep(retry * 60)
            except SetupFailure as e:
                self.log.error(f"CcmSetup failed: {e}")
                self.rollback()
                return e.code
            except NetworkError as e:
                failure = self.network_failure(e, "Contacting the site")
                self.rollback()
                return failure.code
            finally:
                client.close()

    def rollback(self) -> None:
        """Remove what this run wrote: client state, token caches, installed files, downloads."""
        d = self.device
        for path in (d.client_path, d.token_cache_path, d.client_token_path):
            path.unlink(missing_ok=True)
        shutil.rmtree(d.policy_dir, ignore_errors=True)
        shutil.rmtree(self.download_dir, ignore_errors=True)
        if d.ccm_dir.exists():
            for child in d.ccm_dir.iterdir():
                if child.name != "Logs":
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()


def uninstall(device: Device) -> ExitCode:
    log = device.ccmsetup_log()
    state = ClientState.load(device)
    if state is None:
        log.info("The client is not installed: nothing to uninstall")
        return ExitCode.SUCCESS
    log.info(f"Uninstalling the client version {state.version} (product code {state.product_code})")
    Installer(device, CcmSetupArgs()).rollback()
    for child in device.ccmsetup_dir.iterdir():
        if child.is_dir() and child.name.startswith("{"):
            shutil.rmtree(child, ignore_errors=True)
    log.info("Uninstall succeeded.")
    return ExitCode.SUCCESS


def lock(device: Device) -> Any:
    """ccmsetup's single-instance lock (exit 8 when another ccmsetup runs on the device)."""
    import fcntl

    path = device.ccmsetup_dir / "ccmsetup.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f
