"""Red team on Entra's authorize endpoint (PRT cookie SSO), over the network: a redirect URI whose host a
browser reads differently from the server (a backslash before `@`, user information) or a native URI with a
tail is refused with the sign-in page (AADSTS50011) and no redirect; markup in the request reaches the sign-in
page as text."""

from __future__ import annotations

import pytest

from cmglab.runtime.lab import Lab
from tests.support.lab import lab_fixture
from tests.support.sec_attacks import client

CLIENT = "1b730954-1685-4b74-9bfd-dac224a7b894"


entra = lab_fixture("entra")


@pytest.mark.parametrize(
    "redirect",
    [
        "http://evil.example\\@localhost/",
        "https://evil.example\\@login.microsoftonline.com/common/oauth2/nativeclient",
        "http://evil.example@localhost/",
        "http://localhost@evil.example/",
        "urn:ietf:wg:oauth:2.0:oob.evil.example",
        "http://local host/",
        "javascript:alert(1)//localhost/",
    ],
)
def test_a_confusable_redirect_uri_is_refused(entra: Lab, redirect: str) -> None:
    with client(entra) as c:
        reply = c.get(
            f"{entra.url('entra')}/common/oauth2/authorize",
            params={"client_id": CLIENT, "response_type": "code", "redirect_uri": redirect},
            headers={"x-ms-RefreshTokenCredential": "x.y.z"},
        )
    assert reply.status_code == 200 and "location" not in reply.headers
    assert "AADSTS50011" in reply.text, reply.text


def test_markup_in_the_request_is_text_on_the_sign_in_page(entra: Lab) -> None:
    markup = "<script>alert(1)</script>"
    with client(entra) as c:
        reply = c.get(
            f"{entra.url('entra')}/common/oauth2/authorize",
            params={"client_id": CLIENT + markup, "redirect_uri": "https://evil.example/" + markup},
        )
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    assert markup not in reply.text and "&lt;script&gt;" in reply.text
