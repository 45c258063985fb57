"""The DP's refusals, answered with the pages IIS and HTTP.sys send (never FastAPI's JSON), and one
place that turns them into responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from starlette.responses import Response

from cmglab.runtime import errors
from cmglab.runtime.admin import record
from cmglab.runtime.windowsauth import IIS_401

SERVER = "Microsoft-IIS/10.0"

# (status, substatus) -> (title, explanation): IIS's custom error pages (remote requests)
_IIS_PAGES = {
    (403, 4): ("403 - Forbidden: Access is denied.", "SSL is required to view this resource."),
    (403, 7): (
        "403 - Forbidden: Client certificate required.",
        "You must provide a client certificate to view this page.",
    ),
    (404, 0): (
        "404 - File or directory not found.",
        "The resource you are looking for might have been removed, had its name changed, or is "
        "temporarily unavailable.",
    ),
    (404, 11): (
        "404 - File or directory not found.",
        "The request filtering module is configured to deny a request that contains a double escape sequence.",
    ),
    (405, 0): (
        "405 - HTTP verb used to access this page is not allowed.",
        "The page you are looking for cannot be displayed because an invalid method (HTTP verb) was used "
        "to attempt access.",
    ),
}
# HTTP.sys answers these itself, before IIS sees the request
_HTTPSYS_PAGES = {
    400: ("Bad Request", "Bad Request - Invalid URL", "HTTP Error 400. The request URL is invalid."),
    416: (
        "Requested Range Not Satisfiable",
        "Requested Range Not Satisfiable",
        "HTTP Error 416. The requested range is not satisfiable.",
    ),
}


def _iis_page(title: str, text: str) -> str:
    return (
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\r\n<html xmlns="http://www.w3.org/1999/xhtml">\r\n'
        '<head>\r\n<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-1"/>\r\n'
        f'<title>{title}</title>\r\n</head>\r\n<body>\r\n<div id="header"><h1>Server Error</h1></div>\r\n'
        '<div id="content">\r\n <div class="content-container"><fieldset>\r\n'
        f"  <h2>{title}</h2>\r\n  <h3>{text}</h3>\r\n </fieldset></div>\r\n</div>\r\n</body>\r\n</html>\r\n"
    )


def _httpsys_page(title: str, heading: str, text: str) -> str:
    return (
        '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN""http://www.w3.org/TR/html4/strict.dtd">\r\n'
        f"<HTML><HEAD><TITLE>{title}</TITLE>\r\n"
        '<META HTTP-EQUIV="Content-Type" Content="text/html; charset=us-ascii"></HEAD>\r\n'
        f"<BODY><h2>{heading}</h2>\r\n<hr><p>{text}</p>\r\n</BODY></HTML>\r\n"
    )


class IISError(errors.ServiceError):
    """A refusal: status and IIS substatus (logged in the IIS log's sc-substatus), why (for the logs),
    and extra headers (WWW-Authenticate, Content-Range)."""

    def __init__(
        self, status: int, reason: str, *, substatus: int = 0, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(reason)
        self.status, self.substatus, self.reason = status, substatus, reason
        self.headers = headers or []

    def response(self, request: Request | None = None) -> Response:
        if self.status == 401:
            body, server = IIS_401, SERVER
        elif self.status in _HTTPSYS_PAGES:
            body, server = _httpsys_page(*_HTTPSYS_PAGES[self.status]), "Microsoft-HTTPAPI/2.0"
        else:
            title, text = _IIS_PAGES.get((self.status, self.substatus), _IIS_PAGES[(404, 0)])
            body, server = _iis_page(title, text), SERVER
        resp = Response(body, status_code=self.status, media_type="text/html")
        resp.headers["Server"] = server
        for name, value in self.headers:
            resp.headers.append(name, value)
        return resp


def not_found(what: str) -> IISError:
    return IISError(404, f"{what}: no such file or directory")


def challenge_leg(e: IISError) -> bool:
    """The handshake's own 401s (anonymous first request, NTLM challenge): part of the protocol, no refusal."""
    return e.status == 401 and (e.substatus == 2 or "continues" in e.reason)


def observe(request: Request, e: IISError) -> None:
    """What a refusal leaves behind: the request record's `refused` and the service log's line."""
    if challenge_leg(e):
        return
    record(request).refused = f"{e.status}.{e.substatus}"
    client = request.client.host if request.client else "?"
    # the path as it came on the wire (still escaped): a decoded %0a would forge a line in the service log
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.decode("latin-1").encode("unicode_escape").decode("ascii")
    logging.getLogger("cmglab.distribution_point").warning(
        f"{request.method} {path} from {client}: {e.status}.{e.substatus} {e.reason}"
    )


def install_error_handler(app: FastAPI) -> None:
    errors.install_error_handler(app, IISError, observe)
