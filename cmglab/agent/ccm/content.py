"""Downloading content from a distribution point, as the client's Data Transfer Service does over HTTP.

A DP location (`http://<dp>/SMS_DP_SMSPKG$/<content>`, its signature `.../SMS_DP_SMSSIG$/<content>.<version>.tar`)
is walked through its directory listings (DTS: GetDirectoryList_HTTP), each file fetched and checked
against the SHA-256 the content library records for it (`SMS_DP_SMSPKG$/Datalib/<content>.<version>/<file>.INI`).
A DP that does not allow anonymous clients is answered with Windows authentication (NTLM) as the
computer account, on the same keep-alive connection (IIS authenticates the connection).

`ContentTransfer` is ContentTransferManager: it asks the MP where a package is, hands each location to a
DTS job, and writes both logs.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import uuid
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from cmglab.agent.ccm.client import CcmClient, MessagingError
from cmglab.agent.ccm.location import ContentLocation, package_locations
from cmglab.agent.ccm.state import ManagementPoint
from cmglab.agent.device import machine_account

E_HASH_MISMATCH = 0x80091007  # CRYPT_E_HASH_VALUE
E_ACCESS_DENIED = 0x80190191  # BG_E_HTTP_ERROR_401
E_NOT_FOUND = 0x80190194  # BG_E_HTTP_ERROR_404


class DownloadError(Exception):
    def __init__(self, message: str, hresult: int) -> None:
        super().__init__(message)
        self.hresult = hresult


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, bool]] = []
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.links.append((href, "<dir>" in self._text))

    def handle_data(self, data: str) -> None:
        self._text = data


@dataclass(frozen=True)
class Fetched:
    path: str  # relative, '/' between folders
    data: bytes
    sha256: str


class DPSession:
    """One DTS job's connection to a DP: GETs with NTLM as the computer account when asked."""

    def __init__(self, http: httpx.Client, account: dict[str, str] | None, log: logging.Logger) -> None:
        self.http, self.account, self.log = http, account, log

    def get(self, url: str) -> httpx.Response:
        reply = self.http.get(url)
        if reply.status_code != 401 or "NTLM" not in reply.headers.get("www-authenticate", ""):
            return reply
        if self.account is None:
            return reply
        import spnego

        ctx = spnego.client(
            self.account["username"],
            self.account["password"],
            hostname=httpx.URL(url).host,
            service="HTTP",
            protocol="ntlm",
        )
        token = ctx.step() or b""
        for _ in range(2):
            reply = self.http.get(url, headers={"Authorization": f"NTLM {base64.b64encode(token).decode()}"})
            challenge = next(
                (
                    v.split(" ", 1)[1]
                    for k, v in reply.headers.multi_items()
                    if k.lower() == "www-authenticate" and v.startswith("NTLM ")
                ),
                None,
            )
            if reply.status_code != 401 or challenge is None:
                return reply
            token = ctx.step(base64.b64decode(challenge)) or b""
        return reply

    def _ok(self, url: str) -> httpx.Response:
        reply = self.get(url)
        if reply.status_code == 401:
            raise DownloadError(f"{url}: HTTP 401 (access denied)", E_ACCESS_DENIED)
        if reply.status_code != 200:
            raise DownloadError(f"{url}: HTTP {reply.status_code}", 0x80190000 + reply.status_code)
        return reply

    def directory(self, url: str, prefix: str = "") -> list[tuple[str, str]]:
        """(relative path, URL) of every file under `url`, through the DP's listings."""
        self.log.info(f"GetDirectoryList_HTTP('{url}')")
        parser = _Links()
        parser.feed(self._ok(url).text)
        out = []
        for href, is_dir in parser.links:
            name = unquote(urlsplit(href).path.rstrip("/").rsplit("/", 1)[-1])
            link = httpx.URL(url).join(href)
            link = link.copy_with(scheme=httpx.URL(url).scheme, host=httpx.URL(url).host, port=httpx.URL(url).port)
            if is_dir:
                out += self.directory(str(link), f"{prefix}{name}/")
            else:
                out.append((f"{prefix}{name}", str(link)))
        return out

    def fetch(self, location: str, content_version: str, wanted: set[str] | None = None) -> list[Fetched]:
        """The files at a DP location, each checked against its Datalib hash."""
        vdir = location.rsplit("/", 1)[0]
        out = []
        for rel, url in self.directory(location):
            if wanted is not None and rel not in wanted:
                continue
            ini = self._ok(f"{vdir}/Datalib/{content_version}/{rel}.INI").text
            m = re.search(r"^Hash=([0-9A-Fa-f]{64})\s*$", ini, re.M)
            if m is None:
                raise DownloadError(f"{rel}: the content library has no hash for it", E_HASH_MISMATCH)
            data = self._ok(url).content
            digest = hashlib.sha256(data).hexdigest().upper()
            if digest != m.group(1).upper():
                raise DownloadError(
                    f"{rel}: SHA-256 {digest} is not the content's {m.group(1).upper()}", E_HASH_MISMATCH
                )
            out.append(Fetched(rel, data, digest))
        return out


def content_version_of(loc: ContentLocation) -> str:
    """`<content>.<version>` from the location's signature URL (`.../SMS_DP_SMSSIG$/<content>.<version>.tar`)."""
    name = loc.signature.rsplit("/", 1)[-1]
    if name.lower().endswith(".tar"):
        return name[:-4]
    return loc.url.rsplit("/", 1)[-1] + ".1"


class ContentTransfer:
    """ContentTransferManager + DataTransferService for one package, into the client cache."""

    def __init__(self, client: CcmClient) -> None:
        self.client = client
        dev = client.device
        self.ctm, self.dts = dev.ccm_log("ContentTransferManager.log"), dev.ccm_log("DataTransferService.log")
        self.cache_root = dev.home / "Windows" / "ccmcache"

    def download(self, mp: ManagementPoint, package_id: str, version: int = 1) -> Path:
        st = self.client.state
        ctm_job = "{" + str(uuid.uuid4()).upper() + "}"
        self.ctm.info(f"Created CTM job {ctm_job} for user {'S-1-5-18'}")
        self.ctm.info(f"CTM job {ctm_job} entered phase CCM_DOWNLOADSTATUS_DOWNLOADING_LOCATIONS")
        locations = package_locations(self.client, mp, st.site_code, package_id, version, self.ctm)
        self.ctm.info(f"CTM job {ctm_job} received {len(locations)} location(s)")
        dp_locations = [loc for loc in locations if loc.dp_type == "SERVER"]
        if not dp_locations:
            self.ctm.error(
                f"CTM job {ctm_job} has no distribution point location for {package_id}: "
                f"no content in this boundary group"
            )
            raise DownloadError(f"no distribution point holds {package_id}", E_NOT_FOUND)
        self.cache_root.mkdir(parents=True, exist_ok=True)
        used = [int(p.name) for p in self.cache_root.iterdir() if p.name.isdigit()]
        dest = self.cache_root / str(max(used, default=-1) + 1)
        last: DownloadError | None = None
        for loc in dp_locations:
            dts_job = "{" + str(uuid.uuid4()).upper() + "}"
            self.ctm.info(
                f"CTM job {ctm_job} (corresponding DTS job {dts_job}) started download from "
                f"'{loc.url}' for full content download."
            )
            self.ctm.info(f"CTM job {ctm_job} entered phase CCM_DOWNLOADSTATUS_DOWNLOADING_DATA")
            self.dts.info(f"DTSJob {dts_job} created to download from '{loc.url}' to '{dest}'.")
            try:
                files = self._dts(dts_job, loc)
            except (DownloadError, httpx.HTTPError, MessagingError) as e:
                hresult = e.hresult if isinstance(e, DownloadError) else 0x80072EFD
                self.dts.error(f"DTSJob {dts_job} failed to download from '{loc.url}': {e} (0x{hresult:08X})")
                self.ctm.warning(
                    f"CTM job {ctm_job} failed to download from '{loc.url}' (0x{hresult:08X}), trying the next location"
                )
                last = e if isinstance(e, DownloadError) else DownloadError(str(e), hresult)
                continue
            for f in files:
                target = dest / f.path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(f.data)
            self.dts.info(f"DTSJob {dts_job} in state 'RetrievedData'.")
            self.dts.info(f"DTSJob {dts_job} successfully completed download.")
            self.dts.info(f"DTSJob {dts_job} in state 'NotifiedComplete'.")
            self.dts.info(
                f"DTS job {dts_job} has completed: Status : SUCCESS, "
                f"Files: {len(files)}, Bytes: {sum(len(f.data) for f in files)}"
            )
            self.ctm.info(f"CTM job {ctm_job} successfully processed download completion.")
            self.ctm.info(
                f"CTM job {ctm_job} entered phase CCM_DOWNLOADSTATUS_DOWNLOAD_SUCCESS "
                f"({package_id}.{version} in {dest})"
            )
            return dest
        self.ctm.error(f"CTM job {ctm_job} failed: no location could serve {package_id}")
        raise last or DownloadError(f"{package_id}: no location", E_NOT_FOUND)

    def _dts(self, job: str, loc: ContentLocation) -> list[Fetched]:
        cv = content_version_of(loc)
        self.dts.info(f"DTSJob {job} in state 'DownloadingManifest'.")
        session = DPSession(
            self.client.conns.get(self.client.pki_cert if loc.url.startswith("https:") else None),
            machine_account(self.client.device),
            self.dts,
        )
        self.dts.info(f"DTSJob {job} in state 'PendingDownload'.")
        self.dts.info(f"DTSJob {job} in state 'DownloadingData'.")
        files = session.fetch(loc.url, cv)
        for f in files:
            self.dts.info(
                f"DTSJob {job}: downloaded '{f.path}' ({len(f.data)} bytes), SHA-256 {f.sha256} matches "
                f"the content's hash"
            )
        return files
