"""Self-checks of the shared test helpers (tests/support/)."""

from __future__ import annotations

from cmglab.wire import ccm_messaging as cm
from tests.support.mp import Device


def test_device_messages_round_trip() -> None:
    d = Device()
    msg = cm.decode_message(d.registration_message(), cm.CONTENT_TYPE)
    assert msg.header.target_endpoint == "MP_ClientRegistration"
    assert msg.body.startswith("<ClientRegistrationRequest><Data ")
