"""CCM_STS: exchange a proof for a CCM token (lab-defined request/reply, docs/architecture.md).

Proofs: `AAD` (an Entra access token for the site's resource URI, from an onboarded tenant),
`BulkRegistration` (a bulk registration token + the self-signed certificate + a signature by its key),
`ClientToken` (the MP-issued unique token + the same proof of possession), `Certificate` (the PKI
client certificate from TLS). CCM tokens live 8 hours. A `ClientToken` exchange also renews the
unique token when asked (`"RenewClientToken": true`) or when it is older than 30 days.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509

from cmglab.core.logs import held_lines
from cmglab.services.management_point.caller import Caller, cert_from_hex, cert_subject, cert_thumbprint
from cmglab.services.management_point.errors import STSError
from cmglab.services.management_point.parts import Parts
from cmglab.services.management_point.registration import normalise_sms_id
from cmglab.services.management_point.store import NOT_APPROVED
from cmglab.services.management_point.transport import off_loop
from cmglab.services.management_point.units import SiteUnit, TokenRecord
from cmglab.wire import entra_tokens, site_tokens
from cmglab.wire.ccm_messaging import parse_timestamp, utf16, verify
from cmglab.wire.entra_tokens import EntraKeys, EntraTokenError
from cmglab.wire.kinds import Proof

PROOF_SKEW = timedelta(minutes=15)
PROOFS = tuple(Proof)


@dataclass
class STSRequest:
    proof_type: Proof
    bearer: str | None
    client_id: str | None
    certificate_hex: str | None
    timestamp: str | None
    signature: str | None
    renew_client_token: bool = False

    @classmethod
    def from_json(cls, doc: Any, bearer: str | None) -> STSRequest:
        if not isinstance(doc, dict):
            raise STSError(400, "InvalidRequest", "the request body must be a JSON object")
        proof = doc.get("ProofType")
        if proof not in PROOFS:
            raise STSError(400, "InvalidRequest", f"ProofType must be one of {', '.join(PROOFS)}")

        def text(name: str) -> str | None:
            v = doc.get(name)
            if v is not None and not isinstance(v, str):
                raise STSError(400, "InvalidRequest", f"{name} must be a string")
            return v

        return cls(
            Proof(proof),
            bearer,
            text("ClientId"),
            text("Certificate"),
            text("Timestamp"),
            text("Signature"),
            bool(doc.get("RenewClientToken", False)),
        )


def _ccm_reply(token: str, token_type: str, expires: datetime) -> dict[str, Any]:
    return {"Token": token, "TokenType": token_type, "ExpiresOn": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}


def _naive(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None)


class TokenService:
    def __init__(self, mp: Parts, entra: EntraKeys) -> None:
        self.mp, self.entra = mp, entra
        self.log = mp.logs.sts

    async def process(self, req: STSRequest, caller: Caller, url: str) -> dict[str, Any]:
        # the whole exchange in one thread hop, its six CCM_STS.log lines with it (crypto and database off the event
        # loop; the lines in the order they had when four of them were written on the loop)
        return await off_loop(self._process_now, req, caller, url)

    def _process_now(self, req: STSRequest, caller: Caller, url: str) -> dict[str, Any]:
        # the request's CCM_STS.log lines in one write when it ends, answered or failed (core/logs.py held_lines)
        with held_lines(self.log):
            self.log.info("ProcessRequest - Start")
            self.log.info(f"Incoming request URL: {url}")
            try:
                if req.proof_type == Proof.AAD:
                    result = self.aad(req)
                elif req.proof_type == Proof.BULK_REGISTRATION:
                    result = self.bulk(req)
                elif req.proof_type == Proof.CLIENT_TOKEN:
                    result = self.client_token(req)
                else:
                    result = self.certificate(req, caller)
            except STSError as e:
                self.log.warning(f"Failed to issue token ({req.proof_type} proof): {e.code}: {e.reason}")
                raise
            self.log.info("Issued token")
            self.log.info("Return token to client")
            return result

    # -- proofs ---------------------------------------------------------------------------------
    def _issue(
        self,
        unit: SiteUnit,
        *,
        token_type: str,
        proof: Proof,
        sms_id: str | None,
        cert_tp: str | None = None,
        bulk_guid: str | None = None,
        tenant: str | None = None,
        user: str | None = None,
        device: str | None = None,
        user_sid: str | None = None,
    ) -> tuple[str, datetime, dict[str, Any]]:
        """A CCM token, its expiry and its claims (read back from its text), its row written in UNIT; once UNIT
        has committed, `_known` makes it known to the MP's token checks."""
        minutes = unit.site_settings().ccm_token_lifetime_minutes  # the site's setting, live
        token, expires = self.mp.signer.ccm_token(
            token_type=token_type,
            sms_id=sms_id,
            tenant_id=tenant,
            user_id=user,
            device_id=device,
            user_sid=user_sid,
            lifetime=timedelta(minutes=minutes),
        )
        claims = site_tokens.claims_of(token)
        unit.record(
            TokenRecord(
                unique_id=str(claims["UniqueId"]),
                kind="ccm",
                token_type=token_type,
                proof=proof,
                sms_id=sms_id,
                cert_thumbprint=cert_tp,
                bulk_token_guid=bulk_guid,
                aad_tenant_id=tenant,
                aad_device_id=device,
                aad_user_id=user,
                expires_at=_naive(expires),
            )
        )
        return token, expires, claims

    def _known(self, token: str, claims: dict[str, Any]) -> None:
        """The token was signed and its row committed: known to this MP's token checks from its first use."""
        self.mp.ccm_tokens.issued(token, claims)

    def aad(self, req: STSRequest) -> dict[str, Any]:
        if not req.bearer:
            raise STSError(401, "InvalidProof", "an AAD proof needs the Entra token in Authorization: Bearer")
        return self._aad(req, req.bearer)

    def _aad(self, req: STSRequest, bearer: str) -> dict[str, Any]:
        # one unit of work: the site's Entra rule, the client, the site's setting, the token's row (one pooled
        # connection where the rule's read took one of its own)
        with self.mp.store.unit() as unit:
            # the site's one Entra rule (entra_tokens.EntraPolicy): the audience bound to the token's own tenant; a
            # token accepted before under the same rule is known by its text (entra_known.py)
            policy = self.mp.store.entra_policy(unit=unit)
            try:
                claims = self.mp.entra_known.claims_now(policy, self.entra, bearer)
            except EntraTokenError as e:
                if e.kind == entra_tokens.OTHER_TENANT:
                    raise STSError(403, "TenantNotOnboarded", f"{e.reason} (site {self.mp.site_code})") from e
                if e.kind == entra_tokens.UNAVAILABLE:
                    raise STSError(503, "EntraUnavailable", e.reason) from e
                code = "TokenExpired" if e.kind == entra_tokens.EXPIRED else "InvalidProof"
                raise STSError(401, code, e.reason) from e
            tid = str(claims["tid"]).lower()
            device = str(claims.get("deviceid") or "").lower()
            user = str(claims.get("oid") or "").lower()
            is_user = claims.get("idtyp", "user") != "device" and bool(
                claims.get("upn") or claims.get("unique_name") or claims.get("scp")
            )
            token_type = site_tokens.UDA if is_user else site_tokens.DEVICE
            # onprem_sid is the user's SID in a user token, the computer's in a hybrid device's token
            onprem_sid = str(claims.get("onprem_sid") or "")
            user_sid, device_sid = (onprem_sid, "") if is_user else ("", onprem_sid)
            self.log.info(
                f"Validated AAD token. TokenType: {token_type} TenantId: {tid} UserId: {user if is_user else ''}"
                f" DeviceId: {device} OnPrem_UserSid: {user_sid} OnPrem_DeviceSid: {device_sid}"
            )
            self.log.info(f"TokenType is {token_type}")
            uid = user if is_user else None
            sms_id, token, expires, signed = self._aad_issue(unit, req, token_type, tid, uid, device, user_sid or None)
        sccm_user = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sccm-user:{tid}:{uid}")) if uid else ""
        self._known(token, signed)
        self.log.info(
            f"Created SCCM token, token type: {token_type}, hierarchyId: "
            f"{self.mp.lab.config.site.hierarchy_id}, userId: {sccm_user}, deviceId: {sms_id}"
        )
        return _ccm_reply(token, token_type, expires)

    def _aad_issue(
        self,
        unit: SiteUnit,
        req: STSRequest,
        token_type: str,
        tid: str,
        user: str | None,
        device: str,
        user_sid: str | None,
    ) -> tuple[str, str, datetime, dict[str, Any]]:
        """(the client's SMSID, the CCM token, its expiry, its claims), its row written in UNIT."""
        sms_id = None
        wanted = normalise_sms_id(req.client_id)
        if wanted:
            client = unit.client(wanted)
            # only the Entra device that registered it: an AAD proof proves no SMS key, so a record without a
            # device ID (registered any other way) is not this device's to claim (issue 15)
            if client is not None and client.aad_device_id == device:
                sms_id = wanted
        if sms_id is None:
            sms_id = unit.client_by_aad_device(device) or "GUID:" + str(uuid.uuid4()).upper()
        token, expires, signed = self._issue(
            unit,
            token_type=token_type,
            proof=Proof.AAD,
            sms_id=sms_id,
            tenant=tid,
            user=user,
            device=device,
            user_sid=user_sid,
        )
        return sms_id, token, expires, signed

    def _possession(self, req: STSRequest) -> x509.Certificate:
        """The self-signed certificate of the request, after checking its signature over token;time."""
        if not req.certificate_hex or not req.timestamp or not req.signature or not req.bearer:
            raise STSError(400, "InvalidRequest", "Certificate, Timestamp and Signature are required with this proof")
        try:
            cert = cert_from_hex(req.certificate_hex, "Certificate")
            when = parse_timestamp(req.timestamp)
        except Exception as e:
            raise STSError(400, "InvalidRequest", f"bad Certificate or Timestamp: {e}") from e
        if abs(datetime.now(UTC) - when) > PROOF_SKEW:
            raise STSError(401, "InvalidProof", "the proof's Timestamp is too far from the server's time")
        if not verify(cert.public_key(), utf16(f"{req.bearer};{req.timestamp}"), req.signature):
            tp = cert_thumbprint(cert)
            self.mp.logs.clientauth.warning(f"CCM_STS proof of possession failed for certificate {tp}")
            raise STSError(401, "InvalidProof", "the signature does not verify with the certificate's key")
        return cert

    def _site_token(self, token: str | None, kind: str) -> dict[str, Any]:
        if not token:
            raise STSError(401, "InvalidProof", f"a {kind} proof needs the token in Authorization: Bearer")
        try:  # a site token verified before is known by its text (a bulk token serves many devices): no RSA
            return self.mp.ccm_tokens.verify(token, (kind,))
        except site_tokens.SiteTokenError as e:
            code = "TokenExpired" if "expired" in e.reason else "InvalidProof"
            raise STSError(401, code, e.reason) from e

    def bulk(self, req: STSRequest) -> dict[str, Any]:
        claims = self._site_token(req.bearer, site_tokens.BULK)
        guid = str(claims.get("UniqueId", "")).lower()
        with self.mp.store.unit() as unit:  # one unit of work: the bulk token, the client, the token's row
            blocked = unit.bulk_blocked(guid)
            if blocked is None:
                raise STSError(401, "InvalidProof", f"bulk registration token {guid} was not issued by this site")
            if blocked:
                raise STSError(403, "BulkTokenBlocked", f"bulk registration token {guid} is blocked")
            cert = self._possession(req)
            tp = cert_thumbprint(cert)
            sms_id = normalise_sms_id(req.client_id)
            if sms_id:
                client = unit.client(sms_id)
                sms_id = sms_id if client is not None and client.signing_thumbprint == tp else None
            self.log.info(f"Validated bulk registration token {guid} (certificate {tp})")
            token, expires, signed = self._issue(
                unit,
                token_type=site_tokens.DEVICE,
                proof=Proof.BULK_REGISTRATION,
                sms_id=sms_id,
                cert_tp=tp,
                bulk_guid=guid,
            )
        self._known(token, signed)
        self.log.info(
            f"Created SCCM token, token type: {site_tokens.DEVICE}, hierarchyId: "
            f"{self.mp.lab.config.site.hierarchy_id}, userId: , deviceId: {sms_id or ''}"
        )
        return _ccm_reply(token, site_tokens.DEVICE, expires)

    def client_token(self, req: STSRequest) -> dict[str, Any]:
        claims = self._site_token(req.bearer, site_tokens.CLIENT)
        cert = self._possession(req)
        tp = cert_thumbprint(cert)
        if str(claims.get("CertThumbprint", "")).upper() != tp:
            raise STSError(401, "InvalidProof", "the client token is bound to another certificate")
        sms_id = str(claims.get("DeviceId", ""))
        with self.mp.store.unit() as unit:  # one unit of work: the client, the site's setting, the token's rows
            client = unit.client(sms_id)
            if client is None or client.signing_thumbprint != tp:
                raise STSError(403, "NotRegistered", f"{sms_id} is not registered with this certificate")
            if client.approval == NOT_APPROVED:
                raise STSError(403, "NotRegistered", f"{sms_id} is not approved")
            self.log.info(f"Validated client token of {sms_id} (certificate {tp})")
            token, expires, signed = self._issue(
                unit, token_type=site_tokens.DEVICE, proof=Proof.CLIENT_TOKEN, sms_id=sms_id, cert_tp=tp
            )
            reply = _ccm_reply(token, site_tokens.DEVICE, expires)
            renewed = self._renew(unit, req, claims, sms_id, tp, reply)
        self._known(token, signed)
        self.log.info(
            f"Created SCCM token, token type: {site_tokens.DEVICE}, hierarchyId: "
            f"{self.mp.lab.config.site.hierarchy_id}, userId: , deviceId: {sms_id}"
        )
        if renewed is not None:
            self.log.info(f"Renewed the unique client token of {sms_id}; valid until {renewed:%Y-%m-%d %H:%M:%S}")
        return reply

    def _renew(
        self, unit: SiteUnit, req: STSRequest, claims: dict[str, Any], sms_id: str, tp: str, reply: dict[str, Any]
    ) -> datetime | None:
        """A fresh unique client token into `reply` when asked for or when the old one is due for renewal;
        its expiry (None: not renewed)."""
        issued_at = datetime.fromtimestamp(int(claims.get("iat", claims["nbf"])), UTC)
        if not req.renew_client_token and datetime.now(UTC) - issued_at < site_tokens.CLIENT_TOKEN_RENEWAL:
            return None
        fresh, fresh_exp = self.mp.signer.client_token(sms_id=sms_id, cert_thumbprint=tp)
        unit.record(
            TokenRecord(
                unique_id=str(site_tokens.claims_of(fresh)["UniqueId"]),
                kind="client",
                token_type=site_tokens.CLIENT,
                proof=Proof.CLIENT_TOKEN,
                sms_id=sms_id,
                cert_thumbprint=tp,
                expires_at=_naive(fresh_exp),
            )
        )
        reply["ClientToken"] = fresh
        reply["ClientTokenExpiresOn"] = fresh_exp.strftime("%Y-%m-%dT%H:%M:%SZ")
        return fresh_exp

    def certificate(self, req: STSRequest, caller: Caller) -> dict[str, Any]:
        cert = caller.pki_cert
        if cert is None:
            raise STSError(403, "CertificateRequired", "a Certificate proof needs a PKI client certificate at TLS")
        tp = cert_thumbprint(cert)
        with self.mp.store.unit() as unit:  # one unit of work: the client, the site's setting, the token's row
            sms_id = unit.client_by_pki(tp)
            self.log.info(f"Validated client certificate {tp} ({cert_subject(cert)})")
            token, expires, signed = self._issue(
                unit, token_type=site_tokens.DEVICE, proof=Proof.CERTIFICATE, sms_id=sms_id, cert_tp=tp
            )
        self._known(token, signed)
        self.log.info(
            f"Created SCCM token, token type: {site_tokens.DEVICE}, hierarchyId: "
            f"{self.mp.lab.config.site.hierarchy_id}, userId: , deviceId: {sms_id or ''}"
        )
        return _ccm_reply(token, site_tokens.DEVICE, expires)
