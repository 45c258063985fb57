"""A federated user's sign-in, as Windows does it for a federated domain (seed 002, federated join; the
WS-Trust flow MSAL and ROADtools implement, docs/protocol-notes.md, Entra §1.5): the user realm names the federation
service's metadata (MEX); the device sends the user's credentials to its WS-Trust 1.3 `usernamemixed`
endpoint and gets a SAML 1.1 assertion for `urn:federation:MicrosoftOnline`, which Entra redeems."""

from __future__ import annotations

import html
import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from defusedxml import ElementTree as SafeET

from cmglab.agent.entra import EntraError

ACTION_13 = "http://docs.oasis-open.org/ws-sx/ws-trust/200512/RST/Issue"
AUDIENCE = "urn:federation:MicrosoftOnline"
NS = {
    "wsdl": "http://schemas.xmlsoap.org/wsdl/",
    "wsa10": "http://www.w3.org/2005/08/addressing",
    "soap12": "http://schemas.xmlsoap.org/wsdl/soap12/",
    "s": "http://www.w3.org/2003/05/soap-envelope",
}
_TOKEN = re.compile(r"<(?:\w+:)?RequestedSecurityToken[^>]*>(.*)</(?:\w+:)?RequestedSecurityToken>", re.S)


def endpoint_of(mex: str, kind: str) -> str:
    """The WS-Trust 1.3 endpoint (binding soapAction RST/Issue) whose address names `kind`
    (usernamemixed or windowstransport)."""
    root = SafeET.fromstring(mex)
    actions = {}
    for b in root.findall("wsdl:binding", NS):
        op = b.find("wsdl:operation/soap12:operation", NS)
        actions[b.get("name")] = op.get("soapAction") if op is not None else None
    for port in root.findall("wsdl:service/wsdl:port", NS):
        address = port.findtext("wsa10:EndpointReference/wsa10:Address", "", NS)
        binding = (port.get("binding") or "").split(":")[-1]
        if actions.get(binding) == ACTION_13 and kind in address and address.startswith("https://"):
            return address
    raise EntraError(f"the federation metadata names no WS-Trust 1.3 {kind} endpoint")


def usernamemixed_endpoint(mex: str) -> str:
    return endpoint_of(mex, "usernamemixed")


def rst(username: str, password: str, endpoint: str) -> str:
    now = datetime.now(UTC)
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    return (
        "<s:Envelope xmlns:s='http://www.w3.org/2003/05/soap-envelope' xmlns:wsa='http://www.w3.org/2005/08/addressing'"
        " xmlns:wsu='http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd'><s:Header>"
        f"<wsa:Action s:mustUnderstand='1'>{ACTION_13}</wsa:Action><wsa:MessageID>urn:uuid:{uuid.uuid4()}"
        f"</wsa:MessageID><wsa:To s:mustUnderstand='1'>{html.escape(endpoint)}</wsa:To>"
        "<wsse:Security s:mustUnderstand='1' "
        "xmlns:wsse='http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd'>"
        f"<wsu:Timestamp wsu:Id='_0'><wsu:Created>{now:{stamp}}</wsu:Created>"
        f"<wsu:Expires>{now + timedelta(minutes=10):{stamp}}</wsu:Expires></wsu:Timestamp>"
        f"<wsse:UsernameToken wsu:Id='uuid-{uuid.uuid4()}'><wsse:Username>{html.escape(username)}</wsse:Username>"
        f"<wsse:Password>{html.escape(password)}</wsse:Password></wsse:UsernameToken></wsse:Security></s:Header>"
        "<s:Body><wst:RequestSecurityToken xmlns:wst='http://docs.oasis-open.org/ws-sx/ws-trust/200512'>"
        "<wsp:AppliesTo xmlns:wsp='http://schemas.xmlsoap.org/ws/2004/09/policy'><wsa:EndpointReference>"
        f"<wsa:Address>{AUDIENCE}</wsa:Address></wsa:EndpointReference></wsp:AppliesTo>"
        "<wst:KeyType>http://docs.oasis-open.org/ws-sx/ws-trust/200512/Bearer</wst:KeyType>"
        "<wst:RequestType>http://docs.oasis-open.org/ws-sx/ws-trust/200512/Issue</wst:RequestType>"
        "</wst:RequestSecurityToken></s:Body></s:Envelope>"
    )


def saml_assertion(http: httpx.Client, metadata_url: str, username: str, password: str) -> str:
    """The SAML assertion exactly as the STS sent it (its bytes are signed)."""
    reply = http.get(metadata_url)
    if reply.status_code != 200:
        raise EntraError(f"federation metadata {metadata_url}: HTTP {reply.status_code}")
    endpoint = usernamemixed_endpoint(reply.text)
    answer = http.post(
        endpoint,
        content=rst(username, password, endpoint),
        headers={"Content-Type": "application/soap+xml; charset=utf-8", "SOAPAction": ACTION_13},
    )
    found = _TOKEN.search(answer.text)
    if answer.status_code == 200 and found:
        return found.group(1)
    try:
        reason = SafeET.fromstring(answer.text).findtext("s:Body/s:Fault/s:Reason/s:Text", "", NS)
    except SafeET.ParseError:
        reason = answer.text[:200]
    raise EntraError(
        f"the federation service refused the sign-in: HTTP {answer.status_code} {reason}", status=answer.status_code
    )


def windows_rst(endpoint: str) -> str:
    """An RST without credentials: windowstransport authenticates the connection (Negotiate/NTLM)."""
    return (
        "<s:Envelope xmlns:s='http://www.w3.org/2003/05/soap-envelope' "
        "xmlns:wsa='http://www.w3.org/2005/08/addressing'><s:Header>"
        f"<wsa:Action s:mustUnderstand='1'>{ACTION_13}</wsa:Action><wsa:MessageID>urn:uuid:{uuid.uuid4()}"
        f"</wsa:MessageID><wsa:To s:mustUnderstand='1'>{html.escape(endpoint)}</wsa:To></s:Header>"
        "<s:Body><wst:RequestSecurityToken xmlns:wst='http://docs.oasis-open.org/ws-sx/ws-trust/200512'>"
        "<wsp:AppliesTo xmlns:wsp='http://schemas.xmlsoap.org/ws/2004/09/policy'><wsa:EndpointReference>"
        f"<wsa:Address>{AUDIENCE}</wsa:Address></wsa:EndpointReference></wsp:AppliesTo>"
        "<wst:KeyType>http://docs.oasis-open.org/ws-sx/ws-trust/200512/Bearer</wst:KeyType>"
        "<wst:RequestType>http://docs.oasis-open.org/ws-sx/ws-trust/200512/Issue</wst:RequestType>"
        "</wst:RequestSecurityToken></s:Body></s:Envelope>"
    )


def windows_assertion(http: httpx.Client, metadata_url: str, username: str, password: str) -> str:
    """The computer's SAML assertion from windowstransport, NTLM as the machine account on one connection."""
    import base64

    import spnego

    reply = http.get(metadata_url)
    if reply.status_code != 200:
        raise EntraError(f"federation metadata {metadata_url}: HTTP {reply.status_code}")
    endpoint = endpoint_of(reply.text, "windowstransport")
    body = windows_rst(endpoint)
    ctx = spnego.client(username, password, hostname=httpx.URL(endpoint).host, service="HTTP", protocol="ntlm")
    headers = {"Content-Type": "application/soap+xml; charset=utf-8", "SOAPAction": ACTION_13}
    answer = http.post(
        endpoint,
        content=body,
        headers={**headers, "Authorization": f"NTLM {base64.b64encode(ctx.step() or b'').decode()}"},
    )
    if answer.status_code == 401:
        challenge = next(
            (
                v.split(" ", 1)[1]
                for k, v in answer.headers.multi_items()
                if k.lower() == "www-authenticate" and v.startswith("NTLM ")
            ),
            None,
        )
        if challenge:
            token = ctx.step(base64.b64decode(challenge)) or b""
            answer = http.post(
                endpoint, content=body, headers={**headers, "Authorization": f"NTLM {base64.b64encode(token).decode()}"}
            )
    found = _TOKEN.search(answer.text)
    if answer.status_code == 200 and found:
        return found.group(1)
    raise EntraError(
        f"the federation service refused the computer: HTTP {answer.status_code} {answer.text[:200]}",
        status=answer.status_code,
    )
