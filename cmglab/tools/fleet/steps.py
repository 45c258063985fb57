"""Which onboarding step a device request belongs to, read from the request itself, in the lab's one step
vocabulary (`cmglab.wire.tracing.Step`).

The agent runs whole flows (`Joiner.join`, `Installer.run`, `PolicyAgent.evaluate`); the fleet does not
re-implement them to time their parts. It classifies each request the agent sends instead: the trace
step the agent put in `tracestate` (the join is one operation), else `tracing.step_of` (the URL, and for
CcmMessaging the MP component the message is for), then a detail where one step holds several of the
fleet's timings (`Step.LOCATION` is site information and content location; a CCM token before and after
registration). A device's CRL downloads (RevocationChecker, its own client) are not requests of the device's
clients: their time falls into the first request on each new connection.
"""

from __future__ import annotations

import json

import httpx

from cmglab.wire import ccm_messaging as cm
from cmglab.wire import tracing
from cmglab.wire.tracing import Step


def label(step: Step, detail: str | None = None) -> str:
    """A fleet timing's name: the step, and the detail that tells two timings of one step apart."""
    return f"{step} ({detail})" if detail else str(step)


# in onboarding order: the summary table lists them so
STEPS = (
    label(Step.JOIN),
    label(Step.AADINFO),
    label(Step.TOKEN, "device"),
    label(Step.CCMSTS),
    label(Step.LOCATION, "site info"),
    label(Step.LOCATION, "content"),
    label(Step.DOWNLOAD),
    label(Step.REGISTRATION),
    label(Step.CCMSTS, "registered"),
    label(Step.POLICY, "assignments"),
    label(Step.POLICY, "bodies"),
)

_LOCATION = (("<SiteInformationRequest", "site info"), ("<ContentLocationRequest", "content"))


def _body(request: httpx.Request) -> bytes:
    try:
        return bytes(request.content)
    except httpx.RequestNotRead:  # a streamed body: the path alone decides
        return b""


def _location_detail(request: httpx.Request) -> str | None:
    try:
        body = cm.decode_message(_body(request), request.headers.get("content-type")).body
    except (cm.CcmMessageError, ValueError):
        return None
    return next((detail for marker, detail in _LOCATION if body.lstrip().startswith(marker)), None)


def _registered(request: httpx.Request) -> bool:
    try:
        return bool(json.loads(_body(request)).get("ClientId"))
    except (ValueError, AttributeError):
        return False


def step_of(request: httpx.Request) -> str:
    if tracing.cmglab_fields(request.headers.get("tracestate")).get("step") == Step.JOIN:
        return label(Step.JOIN)
    step = tracing.step_of(request.method, request.url.path, _body(request))
    match step:
        case Step.TOKEN:
            return label(Step.TOKEN, "device")
        case Step.CCMSTS:
            return label(Step.CCMSTS, "registered" if _registered(request) else None)
        case Step.LOCATION:
            return label(Step.LOCATION, _location_detail(request))
        case Step.POLICY:
            return label(Step.POLICY, "assignments" if "ccm_system" in request.url.path.lower() else "bodies")
        case Step.MESSAGING | Step.DDR:
            return label(Step.MESSAGING)
        case Step.JOIN | Step.AADINFO | Step.DOWNLOAD:
            return label(Step(step))
    if step == Step.REGISTRATION:
        return label(Step.REGISTRATION)
    return "other"
