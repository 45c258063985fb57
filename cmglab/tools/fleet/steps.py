"""Which onboarding step a device request belongs to, read from the request itself.

The agent runs whole flows (`Joiner.join`, `Installer.run`, `PolicyAgent.evaluate`); the fleet does not
re-implement them to time their parts. It classifies each request the agent sends instead: the trace
step the agent put in `tracestate` (the join is one operation), the URL, and for CcmMessaging the MP
component and request the message carries. A device's CRL checks (RevocationChecker, its own client)
are not requests of the device's clients: their time falls into the first request to each host.
"""

from __future__ import annotations

import json

import httpx

from cmglab.wire import ccm_messaging as cm
from cmglab.wire import tracing

# in onboarding order: the summary table lists them so
STEPS = ("join", "aad-info", "device token", "ccm token", "site info", "content location", "download",
         "registration", "ccm token (registered)", "policy assignments", "policy bodies")

_MESSAGES = (("<SiteInformationRequest", "site info"), ("<ContentLocationRequest", "content location"),
             ("<ClientRegistrationRequest", "registration"), ("<RequestAssignments", "policy assignments"))


def _message_step(request: httpx.Request) -> str:
    try:
        body = cm.decode_message(bytes(request.content), request.headers.get("content-type")).body
    except (cm.CcmMessageError, httpx.RequestNotRead, ValueError):
        return "messaging"
    return next((step for marker, step in _MESSAGES if body.lstrip().startswith(marker)), "messaging")


def _sts_step(request: httpx.Request) -> str:
    try:
        registered = bool(json.loads(request.content).get("ClientId"))
    except (ValueError, AttributeError, httpx.RequestNotRead):
        registered = False
    return "ccm token (registered)" if registered else "ccm token"


def step_of(request: httpx.Request) -> str:
    path = request.url.path.lower()
    if tracing.cmglab_fields(request.headers.get("tracestate")).get("step") == "join":
        return "join"
    if "aadauthinfo" in path:
        return "aad-info"
    if "/oauth2/" in path:
        return "device token"
    if path.endswith("/ccm_sts"):
        return _sts_step(request)
    if "ccm_system" in path:
        return _message_step(request)
    if "ccm_client" in path or "downloadrestservice" in path:
        return "download"
    if "sms_mp" in path:
        return "policy bodies"
    return "other"
