"""The lab's federation service for federated domains (an AD FS stand-in at `sts.<domain>`), and Entra's
side of federation: SAML 1.1 assertions redeemed with the `saml1_1-bearer` grant.

The STS speaks WS-Trust 1.3 `usernamemixed` (WS-Security UsernameToken over TLS) and publishes a
metadata-exchange document (MEX, WSDL + WS-SecurityPolicy) that names the endpoint, as MSAL and ROADtools
read it (docs/protocol-notes.md, Entra §1.5; roadlib `wstrust.Mex`, `build_rst`, `parse_wstrust_response`). It issues
SAML 1.1 assertions for `urn:federation:MicrosoftOnline` with the claims Entra needs: the UPN
(`http://schemas.xmlsoap.org/claims/UPN`), the ImmutableID (the NameIdentifier and
`http://schemas.microsoft.com/LiveID/Federation/2008/05/ImmutableID`; the lab uses the user's object ID),
and the authentication method. They are signed (XML-DSig, enveloped, exclusive C14N, RSA-SHA256) with the
federation's token-signing certificate, which Entra trusts for the domain.

Lab choices: the STS checks the password of the directory's user (AD FS would ask AD; the lab keeps one
user list); `windowstransport` (Kerberos/NTLM) is not offered. Entra refuses an assertion whose signature
does not verify with the domain's certificate (AADSTS50006), that is outside its validity (AADSTS50013),
for another audience or issuer (AADSTS50008), or whose UPN is no federated user of the tenant (AADSTS50034).
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import html
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET
from lxml import etree
from signxml import InvalidInput, InvalidSignature, SignatureConfiguration, XMLSigner, XMLVerifier
from sqlalchemy.orm import Session

from cmglab.pki.builders import name as x509_name
from cmglab.pki.builders import self_signed
from cmglab.services.entra import store as st
from cmglab.services.entra.errors import AADSTSError
from cmglab.services.entra.lockout import Lockouts

log = logging.getLogger("cmglab.entra")

AUDIENCE = "urn:federation:MicrosoftOnline"
ACTION_13 = "http://docs.oasis-open.org/ws-sx/ws-trust/200512/RST/Issue"
SAML10_TOKEN_TYPE = "urn:oasis:names:tc:SAML:1.0:assertion"
SAML_NS = "urn:oasis:names:tc:SAML:1.0:assertion"
ASSERTION_LIFETIME = 3600
NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "wsa": "http://www.w3.org/2005/08/addressing",
    "wsse": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd",
    "wsu": "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd",
    "wst": "http://docs.oasis-open.org/ws-sx/ws-trust/200512",
    "wsp": "http://schemas.xmlsoap.org/ws/2004/09/policy",
}


def issuer_of(domain: str) -> str:
    """The issuer URI AD FS puts in its assertions (and Entra expects for the domain)."""
    return f"http://sts.{domain}/adfs/services/trust"


class FederationKey:
    """The token-signing certificate of the lab's federation service: made once per lab, shared by every
    Entra process of the lab (`<lab>/data/federation/`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._pair: tuple[rsa.RSAPrivateKey, x509.Certificate] | None = None

    def pair(self) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
        if self._pair is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            key_path, cert_path = self.directory / "token-signing.key", self.directory / "token-signing.pem"
            with open(self.directory / ".lock", "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not cert_path.exists():
                    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                    cert = self_signed(key, x509_name("ADFS Signing - sts.lab"), ekus=[], days=3650)
                    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(
                            key.private_bytes(
                                serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption(),
                            )
                        )
                    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), None)
            assert isinstance(loaded, rsa.RSAPrivateKey)
            self._pair = (loaded, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        return self._pair


def _t(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


# -- the STS ---------------------------------------------------------------------------------------
class SoapFault(Exception):
    def __init__(self, subcode: str, reason: str) -> None:
        super().__init__(reason)
        self.subcode, self.reason = subcode, reason

    def envelope(self) -> str:
        return (
            f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:a="{NS["wsa"]}"><s:Header>'
            f'<a:Action s:mustUnderstand="1">http://www.w3.org/2005/08/addressing/soap/fault</a:Action>'
            f"</s:Header><s:Body><s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode>"
            f'<s:Value xmlns:a="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">'
            f'a:{self.subcode}</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">'
            f"{html.escape(self.reason)}</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>"
        )


@dataclass(frozen=True)
class RstRequest:
    username: str
    password: str
    applies_to: str


def _envelope(body: bytes) -> Element:
    """The SOAP message parsed without DTDs or entities (XXE, billion laughs): a fault, never a 500."""
    try:
        root: Element = SafeET.fromstring(body, forbid_dtd=True)
    except SafeET.ParseError as e:
        raise SoapFault("InvalidSecurity", f"ID3137: the message is not well-formed XML: {e}") from e
    except DefusedXmlException as e:
        raise SoapFault(
            "InvalidSecurity",
            "ID3137: the message carries a DTD or an entity declaration, which the service does not accept.",
        ) from e
    return root


def parse_rst(body: bytes) -> RstRequest:
    """A WS-Trust 1.3 RequestSecurityToken with a UsernameToken (roadlib/MSAL `build_rst`)."""
    root = _envelope(body)
    token = root.find("s:Header/wsse:Security/wsse:UsernameToken", NS)
    if token is None:
        raise SoapFault("InvalidSecurity", "ID3134: the message has no UsernameToken in its Security header.")
    expires = root.find("s:Header/wsse:Security/wsu:Timestamp/wsu:Expires", NS)
    if expires is not None and expires.text:
        try:
            if datetime.fromisoformat(expires.text.replace("Z", "+00:00")) < datetime.now(UTC):
                raise SoapFault("MessageExpired", "ID3227: the message's security timestamp has expired.")
        except ValueError as e:
            raise SoapFault("InvalidSecurity", "ID3135: the security timestamp is not a time.") from e
    applies = root.find("s:Body/wst:RequestSecurityToken/wsp:AppliesTo/wsa:EndpointReference/wsa:Address", NS)
    return RstRequest(
        (token.findtext("wsse:Username", "", NS) or "").strip(),
        token.findtext("wsse:Password", "", NS) or "",
        (applies.text or "").strip() if applies is not None else "",
    )


def parse_rst_body(body: bytes) -> str:
    """The AppliesTo of a WS-Trust 1.3 RST without credentials (windowstransport: HTTP authentication)."""
    root = _envelope(body)
    applies = root.find("s:Body/wst:RequestSecurityToken/wsp:AppliesTo/wsa:EndpointReference/wsa:Address", NS)
    return (applies.text or "").strip() if applies is not None else ""


class FederationService:
    """`lockouts`: the same smart lockout as Entra's password sign-in (AD FS extranet lockout): without it the
    STS would be a way around Entra's lockout, an unlimited password oracle for every federated user."""

    def __init__(self, store: st.Store, key: FederationKey, lockouts: Lockouts | None = None) -> None:
        self.store, self.key, self.lockouts = store, key, lockouts

    def mex(self, base: str) -> str:
        """WSDL + policy naming the WS-Trust 1.3 usernamemixed and windowstransport endpoints (what roadlib's and
        MSAL's Mex parser look for: UsernameToken over TLS, and NegotiateAuthentication)."""
        address = f"{base}/adfs/services/trust/13/usernamemixed"
        iwa_policy = (
            '<wsp:Policy wsu:Id="WindowsTransportBinding_IWSTrust13Async_policy" '
            'xmlns:http="http://schemas.microsoft.com/ws/06/2004/policy/http" '
            'xmlns:sp2005="http://schemas.xmlsoap.org/ws/2005/07/securitypolicy"><wsp:ExactlyOne><wsp:All>'
            "<http:NegotiateAuthentication/><sp2005:TransportBinding><wsp:Policy><sp2005:TransportToken>"
            '<wsp:Policy><sp2005:HttpsToken RequireClientCertificate="false"/></wsp:Policy>'
            "</sp2005:TransportToken></wsp:Policy></sp2005:TransportBinding>"
        )
        definitions = (
            '<wsdl:definitions name="SecurityTokenService" '
            'targetNamespace="http://schemas.microsoft.com/ws/2008/06/identity/securitytokenservice" '
            'xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" '
            'xmlns:tns="http://schemas.microsoft.com/ws/2008/06/identity/securitytokenservice" '
            'xmlns:soap12="http://schemas.xmlsoap.org/wsdl/soap12/" '
            f'xmlns:wsu="{NS["wsu"]}" xmlns:wsp="{NS["wsp"]}" xmlns:wsa10="{NS["wsa"]}" '
            'xmlns:sp="http://docs.oasis-open.org/ws-sx/ws-securitypolicy/200702">'
        )
        return f'''<?xml version="1.0" encoding="utf-8"?>
{definitions}
<wsp:Policy wsu:Id="UserNameWSTrustBinding_IWSTrust13Async_policy"><wsp:ExactlyOne><wsp:All>
<sp:TransportBinding><wsp:Policy><sp:TransportToken><wsp:Policy><sp:HttpsToken/></wsp:Policy></sp:TransportToken>
<sp:AlgorithmSuite><wsp:Policy><sp:Basic256/></wsp:Policy></sp:AlgorithmSuite><sp:Layout><wsp:Policy><sp:Strict/></wsp:Policy></sp:Layout><sp:IncludeTimestamp/></wsp:Policy></sp:TransportBinding>
<sp:SignedEncryptedSupportingTokens><wsp:Policy><sp:UsernameToken sp:IncludeToken="http://docs.oasis-open.org/ws-sx/ws-securitypolicy/200702/IncludeToken/AlwaysToRecipient"><wsp:Policy><sp:WssUsernameToken10/></wsp:Policy></sp:UsernameToken></wsp:Policy></sp:SignedEncryptedSupportingTokens>
<sp:Wss11><wsp:Policy/></sp:Wss11><sp:Trust13><wsp:Policy><sp:MustSupportIssuedTokens/><sp:RequireClientEntropy/><sp:RequireServerEntropy/></wsp:Policy></sp:Trust13>
</wsp:All></wsp:ExactlyOne></wsp:Policy>
{iwa_policy}
</wsp:All></wsp:ExactlyOne></wsp:Policy>
<wsdl:binding name="WindowsTransportBinding_IWSTrust13Async" type="tns:IWSTrust13Async">
<wsp:PolicyReference URI="#WindowsTransportBinding_IWSTrust13Async_policy"/>
<soap12:binding transport="http://schemas.xmlsoap.org/soap/http"/>
<wsdl:operation name="Trust13IssueAsync"><soap12:operation soapAction="{ACTION_13}" style="document"/></wsdl:operation>
</wsdl:binding>
<wsdl:binding name="UserNameWSTrustBinding_IWSTrust13Async" type="tns:IWSTrust13Async">
<wsp:PolicyReference URI="#UserNameWSTrustBinding_IWSTrust13Async_policy"/>
<soap12:binding transport="http://schemas.xmlsoap.org/soap/http"/>
<wsdl:operation name="Trust13IssueAsync"><soap12:operation soapAction="{ACTION_13}" style="document"/></wsdl:operation>
</wsdl:binding>
<wsdl:service name="SecurityTokenService">
<wsdl:port name="UserNameWSTrustBinding_IWSTrust13Async" binding="tns:UserNameWSTrustBinding_IWSTrust13Async">
<soap12:address location="{address}"/>
<wsa10:EndpointReference><wsa10:Address>{address}</wsa10:Address></wsa10:EndpointReference>
</wsdl:port>
<wsdl:port name="WindowsTransportBinding_IWSTrust13Async" binding="tns:WindowsTransportBinding_IWSTrust13Async">
<soap12:address location="{base}/adfs/services/trust/13/windowstransport"/>
<wsa10:EndpointReference><wsa10:Address>{base}/adfs/services/trust/13/windowstransport</wsa10:Address></wsa10:EndpointReference>
</wsdl:port></wsdl:service></wsdl:definitions>'''

    def issue(self, domain: str, body: bytes) -> str:
        """The RSTR with a signed SAML 1.1 assertion, or a SoapFault."""
        rst = parse_rst(body)
        if rst.applies_to and rst.applies_to != AUDIENCE:
            raise SoapFault("InvalidRequest", f"MSIS3127: the relying party '{rst.applies_to}' is not known.")
        failed = SoapFault(
            "FailedAuthentication", "ID3242: The security token could not be authenticated or authorized."
        )
        with self.store.session() as s:
            user = st.user_by_upn(s, rst.username)
            user_domain = rst.username.rpartition("@")[2].lower()
            if user is None or user_domain != domain or not user.enabled:
                log.info("STS %s: authentication failed for %r", domain, rst.username)
                raise failed
            upn, immutable_id = user.upn, base64.b64encode(uuid.UUID(user.object_id).bytes_le).decode()
            password_hash = user.password_hash
        if self.lockouts is not None:
            try:
                self.lockouts.check(upn)
            except AADSTSError:  # AD FS answers a locked account as any failure (event 516 on the server)
                log.info("STS %s: %s is locked out (extranet lockout), not verified", domain, upn)
                raise failed from None
        if not st.verify_secret(rst.password, password_hash):
            locked = self.lockouts is not None and self.lockouts.failed(upn, rst.password)
            log.info(
                "STS %s: authentication failed for %r%s", domain, rst.username, ": now locked out" if locked else ""
            )
            raise failed
        if self.lockouts is not None:
            self.lockouts.succeeded(upn)
        return self.rstr(self.assertion(domain, upn, immutable_id))

    def issue_for_computer(self, domain: str, body: bytes, computer: dict[str, str]) -> str:
        """windowstransport: the Windows-authenticated computer account gets the on-premises claims a
        federated hybrid join needs (accounttype DJ, onpremobjectguid, primarysid)."""
        rst = parse_rst_body(body)
        if rst and rst != AUDIENCE:
            raise SoapFault("InvalidRequest", f"MSIS3127: the relying party '{rst}' is not known.")
        guid = base64.b64encode(uuid.UUID(computer["objectGUID"]).bytes_le).decode()
        extra = {
            ("accounttype", "http://schemas.microsoft.com/ws/2012/01"): "DJ",
            ("onpremobjectguid", "http://schemas.microsoft.com/identity/claims"): guid,
            ("primarysid", "http://schemas.microsoft.com/ws/2008/06/identity/claims"): computer["objectSid"],
        }
        return self.rstr(
            self.assertion(domain, None, guid, extra=extra, method="urn:federation:authentication:windows")
        )

    def rstr(self, assertion: str) -> str:
        now = datetime.now(UTC)
        return (
            f'<s:Envelope xmlns:s="{NS["s"]}" xmlns:a="{NS["wsa"]}" xmlns:u="{NS["wsu"]}"><s:Header>'
            f'<a:Action s:mustUnderstand="1">http://docs.oasis-open.org/ws-sx/ws-trust/200512/RSTRC/IssueFinal'
            f"</a:Action></s:Header><s:Body>"
            f'<trust:RequestSecurityTokenResponseCollection xmlns:trust="{NS["wst"]}">'
            f'<trust:RequestSecurityTokenResponse><trust:Lifetime><wsu:Created xmlns:wsu="{NS["wsu"]}">{_t(now)}'
            f'</wsu:Created><wsu:Expires xmlns:wsu="{NS["wsu"]}">{_t(now + timedelta(seconds=ASSERTION_LIFETIME))}'
            f'</wsu:Expires></trust:Lifetime><wsp:AppliesTo xmlns:wsp="{NS["wsp"]}"><wsa:EndpointReference '
            f'xmlns:wsa="{NS["wsa"]}"><wsa:Address>{AUDIENCE}</wsa:Address></wsa:EndpointReference></wsp:AppliesTo>'
            f"<trust:RequestedSecurityToken>{assertion}</trust:RequestedSecurityToken>"
            f"<trust:TokenType>{SAML10_TOKEN_TYPE}</trust:TokenType>"
            f"<trust:RequestType>http://docs.oasis-open.org/ws-sx/ws-trust/200512/Issue</trust:RequestType>"
            f"<trust:KeyType>http://docs.oasis-open.org/ws-sx/ws-trust/200512/Bearer</trust:KeyType>"
            f"</trust:RequestSecurityTokenResponse></trust:RequestSecurityTokenResponseCollection></s:Body>"
            f"</s:Envelope>"
        )

    def assertion(
        self,
        domain: str,
        upn: str | None,
        immutable_id: str,
        *,
        now: datetime | None = None,
        lifetime: int = ASSERTION_LIFETIME,
        extra: dict[tuple[str, str], str] | None = None,
        method: str = "urn:oasis:names:tc:SAML:1.0:am:password",
    ) -> str:
        now = now or datetime.now(UTC)
        aid = "_" + str(uuid.uuid4())
        subject = (
            f'<saml:Subject><saml:NameIdentifier Format="urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified">'
            f"{immutable_id}</saml:NameIdentifier><saml:SubjectConfirmation><saml:ConfirmationMethod>"
            f"urn:oasis:names:tc:SAML:1.0:cm:bearer</saml:ConfirmationMethod></saml:SubjectConfirmation>"
            f"</saml:Subject>"
        )
        upn_attr = (
            (
                f'<saml:Attribute AttributeName="UPN" AttributeNamespace="http://schemas.xmlsoap.org/claims">'
                f"<saml:AttributeValue>{html.escape(upn)}</saml:AttributeValue></saml:Attribute>"
            )
            if upn
            else ""
        )
        extra_attrs = "".join(
            f'<saml:Attribute AttributeName="{n}" AttributeNamespace="{ns}"><saml:AttributeValue>'
            f"{html.escape(v)}</saml:AttributeValue></saml:Attribute>"
            for (n, ns), v in (extra or {}).items()
        )
        xml = (
            f'<saml:Assertion xmlns:saml="{SAML_NS}" MajorVersion="1" MinorVersion="1" AssertionID="{aid}" '
            f'Issuer="{issuer_of(domain)}" IssueInstant="{_t(now)}"><saml:Conditions NotBefore="{_t(now)}" '
            f'NotOnOrAfter="{_t(now + timedelta(seconds=lifetime))}"><saml:AudienceRestrictionCondition>'
            f"<saml:Audience>{AUDIENCE}</saml:Audience></saml:AudienceRestrictionCondition></saml:Conditions>"
            f"<saml:AttributeStatement>{subject}{upn_attr}{extra_attrs}"
            f'<saml:Attribute AttributeName="ImmutableID" '
            f'AttributeNamespace="http://schemas.microsoft.com/LiveID/Federation/2008/05">'
            f"<saml:AttributeValue>{immutable_id}</saml:AttributeValue></saml:Attribute>"
            f"</saml:AttributeStatement><saml:AuthenticationStatement "
            f'AuthenticationMethod="{method}" AuthenticationInstant="{_t(now)}">'
            f"{subject}</saml:AuthenticationStatement></saml:Assertion>"
        )
        key, cert = self.key.pair()
        signer = XMLSigner(c14n_algorithm="http://www.w3.org/2001/10/xml-exc-c14n#")
        signed = signer.sign(
            etree.fromstring(xml.encode()),
            key=key,
            cert=[cert.public_bytes(serialization.Encoding.PEM).decode()],
            reference_uri=aid,
            id_attribute="AssertionID",
        )
        return etree.tostring(signed).decode()


# -- Entra's side ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FederatedSignIn:
    user: st.User
    amr: tuple[str, ...]


@dataclass(frozen=True)
class FederatedComputer:
    """A domain computer's windowstransport assertion: the on-premises claims of a federated hybrid join."""

    tenant_id: str
    object_guid: str
    sid: str


def computer_claims(c: FederatedComputer, resource: str, client_id: str, iat: int) -> dict[str, Any]:
    """The DRS token of a federated hybrid join (docs/protocol-notes.md, Entra §2.5: account_type DJ,
    on_prem_id, primary_sid, amr wia)."""
    return {
        "aud": resource,
        "iss": f"https://sts.windows.net/{c.tenant_id}/",
        "iat": iat,
        "nbf": iat,
        "exp": iat + 3599,
        "account_type": "DJ",
        "amr": ["wia"],
        "appid": client_id,
        "appidacr": "0",
        "on_prem_id": c.object_guid,
        "primary_sid": c.sid,
        "tid": c.tenant_id,
        "ver": "1.0",
        "uti": base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
    }


def _when(value: str | None) -> datetime:
    if not value:
        raise ValueError("no time")
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def redeem_assertion(
    s: Session, key: FederationKey, assertion_b64: str, tenant: st.TenantInfo | None
) -> FederatedSignIn | FederatedComputer:
    """A SAML 1.1 assertion from the federation of the user's domain: signature, validity, audience, issuer,
    then the user by UPN (the ImmutableID must be the user's)."""
    try:
        raw = base64.b64decode(assertion_b64, validate=True)
        etree.fromstring(raw, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except (binascii.Error, ValueError, etree.XMLSyntaxError) as e:
        raise AADSTSError(
            50008, "invalid_grant", "Unable to verify token signature: the SAML assertion is missing or malformed."
        ) from e
    _, cert = key.pair()
    try:
        result = XMLVerifier().verify(
            raw, x509_cert=cert, id_attribute="AssertionID", expect_config=SignatureConfiguration(require_x509=True)
        )
        verified = (result[0] if isinstance(result, list) else result).signed_xml
    except (InvalidSignature, InvalidInput, ValueError) as e:
        log.info("SAML assertion refused: %s", e)
        raise AADSTSError(
            50006, "invalid_grant", "Signature verification failed because of an invalid signature."
        ) from e
    if verified is None or etree.QName(verified).localname != "Assertion":
        raise AADSTSError(50008, "invalid_grant", "The SAML assertion is missing or misconfigured in the token.")
    ns = {"saml": SAML_NS}
    conditions = verified.find("saml:Conditions", ns)
    try:
        not_before = _when(conditions.get("NotBefore") if conditions is not None else None)
        not_after = _when(conditions.get("NotOnOrAfter") if conditions is not None else None)
    except ValueError as e:
        raise AADSTSError(50008, "invalid_grant", "The SAML assertion has no valid Conditions.") from e
    now = datetime.now(UTC)
    if not (not_before - timedelta(minutes=5) <= now < not_after):
        raise AADSTSError(
            50013,
            "invalid_grant",
            "Assertion is invalid: it is not within its valid time range (expired or not yet valid).",
        )
    if not st.spend_assertion(s, str(verified.get("AssertionID") or ""), int(not_after.timestamp())):
        log.info("SAML assertion %s refused: already redeemed", verified.get("AssertionID"))
        raise AADSTSError(50013, "invalid_grant", "Assertion is invalid: the SAML assertion was already redeemed.")
    audience = verified.findtext("saml:Conditions/saml:AudienceRestrictionCondition/saml:Audience", "", ns)
    upn = verified.findtext(
        "saml:AttributeStatement/saml:Attribute[@AttributeName='UPN']/saml:AttributeValue", "", ns
    ).strip()
    immutable = verified.findtext(
        "saml:AttributeStatement/saml:Attribute[@AttributeName='ImmutableID']/saml:AttributeValue", "", ns
    ).strip()
    account_type = verified.findtext(
        "saml:AttributeStatement/saml:Attribute[@AttributeName='accounttype']/saml:AttributeValue", "", ns
    ).strip()
    if account_type == "DJ":
        return _computer(s, verified, audience, tenant)
    domain = upn.rpartition("@")[2].lower()
    if audience != AUDIENCE or verified.get("Issuer") != issuer_of(domain):
        raise AADSTSError(
            50008,
            "invalid_grant",
            "The SAML assertion is not for urn:federation:MicrosoftOnline or "
            "not from the federation of the user's domain.",
        )
    row = s.get(st.Domain, domain)
    user = st.user_by_upn(s, upn)
    if (
        row is None
        or not row.federated
        or user is None
        or (tenant is not None and user.tenant_id != tenant.tenant_id)
        or base64.b64encode(uuid.UUID(user.object_id).bytes_le).decode() != immutable
    ):
        raise AADSTSError(
            50034, "invalid_grant", f"The user account {upn} does not exist in the directory of a federated domain."
        )
    if not user.enabled:
        raise AADSTSError(50057, "invalid_grant", "The user account is disabled.")
    return FederatedSignIn(user, ("fed",))


def _computer(s: Session, verified: Any, audience: str, tenant: st.TenantInfo | None) -> FederatedComputer:
    ns = {"saml": SAML_NS}

    def attribute(name: str) -> str:
        return str(
            verified.findtext(
                f"saml:AttributeStatement/saml:Attribute[@AttributeName='{name}']/saml:AttributeValue", "", ns
            )
        ).strip()

    issuer = str(verified.get("Issuer") or "")
    domain = issuer.removeprefix("http://sts.").removesuffix("/adfs/services/trust").lower()
    row = s.get(st.Domain, domain)
    if audience != AUDIENCE or issuer != issuer_of(domain) or row is None or not row.federated:
        raise AADSTSError(
            50008,
            "invalid_grant",
            "The SAML assertion is not for urn:federation:MicrosoftOnline or "
            "not from the federation service of a federated domain.",
        )
    if tenant is not None and row.tenant_id != tenant.tenant_id:
        raise AADSTSError(50008, "invalid_grant", "The SAML assertion's federation belongs to another tenant.")
    try:
        guid = str(uuid.UUID(bytes_le=base64.b64decode(attribute("onpremobjectguid"), validate=True)))
    except (ValueError, binascii.Error) as e:
        raise AADSTSError(50008, "invalid_grant", "The SAML assertion's onpremobjectguid is not a GUID.") from e
    sid = attribute("primarysid")
    if not sid.startswith("S-1-5-21-"):
        raise AADSTSError(50008, "invalid_grant", "The SAML assertion's primarysid is not a domain SID.")
    return FederatedComputer(row.tenant_id, guid, sid)
