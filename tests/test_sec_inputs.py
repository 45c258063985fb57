"""Issue 15, hostile input before or around authentication: deeply nested JSON is a 400 in the protocol's own
error shape (never a 500 RecursionError) at CCM_STS (directly and through the CMG), the DRS join and the
hybrid-join PUT; the bounded-depth reader in-process."""

from __future__ import annotations

import uuid

import pytest

from cmglab.core.labconfig import DRS_RESOURCE
from cmglab.runtime.lab import Lab
from cmglab.tools.reliability.material import Material
from cmglab.wire import jsonlimits
from tests.support.cmg import cmg_has_site_config
from tests.support.lab import lab_fixture
from tests.support.sec_attacks import client, last_seq, records_after

DEEP = b"[" * 200_000 + b"]" * 200_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000


def test_depth_is_checked_before_parsing() -> None:
    with pytest.raises(jsonlimits.TooDeep):
        jsonlimits.loads(DEEP)
    with pytest.raises(jsonlimits.TooDeep):
        jsonlimits.loads(DEEP_OBJECT)
    in_string = b'{"a": "' + b"[" * 200 + b'"}'
    assert jsonlimits.loads(in_string) == {"a": "[" * 200}  # brackets inside strings do not count
    assert jsonlimits.loads(b'"\\\\[" ') == "\\["
    nested: object = 1
    for _ in range(jsonlimits.MAX_DEPTH):
        nested = [nested]
    assert jsonlimits.loads(str(nested)) == nested
    with pytest.raises(ValueError):
        jsonlimits.loads(str([nested]))


services = lab_fixture("entra", "management-point", "cmg", "cmg-connection-point", ready=cmg_has_site_config)


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT], ids=["array", "object"])
def test_nested_json_is_400_everywhere(services: Lab, tmp_path_factory: pytest.TempPathFactory, body: bytes) -> None:
    lab = services
    material = Material(lab, tmp_path_factory.mktemp("deep"))
    bulk, *_ = lab.site_signer().bulk_token()
    before = {s: last_seq(lab, s) for s in ("entra", "management-point", "cmg")}
    drs = lab.url("entra", host="enterpriseregistration.windows.net")
    with client(lab) as c:
        sts = c.post(
            f"{lab.url('management-point')}/CCM_STS",
            content=body,
            headers={"Authorization": f"Bearer {bulk}", "Content-Type": "application/json"},
        )
        assert sts.status_code == 400 and sts.json()["Error"] == "InvalidRequest", sts.text[:200]
        via_cmg = c.post(
            f"{lab.url('cmg')}/CCM_Proxy_ServerAuth/{lab.config.site.role_id}/CCM_STS",
            content=body,
            headers={"Authorization": f"Bearer {bulk}", "Content-Type": "application/json"},
        )
        assert via_cmg.status_code == 400 and via_cmg.json()["Error"] == "InvalidRequest", via_cmg.text[:200]
        user = material.entra_token(audience=DRS_RESOURCE)
        join = c.post(
            f"{drs}/EnrollmentServer/device/",
            params={"api-version": "2.0"},
            content=body,
            headers={"Authorization": f"Bearer {user}", "Content-Type": "application/json"},
        )
        assert join.status_code == 400 and join.json()["ErrorType"] == "InvalidParameter", join.text[:200]
        hybrid = c.put(
            f"{drs}/EnrollmentServer/device/{uuid.uuid4()}",
            params={"api-version": "2.0"},
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert hybrid.status_code == 400 and hybrid.json()["ErrorType"] == "InvalidParameter", hybrid.text[:200]
    for service, seq in before.items():
        assert all(r["status"] < 500 for r in records_after(lab, service, seq)), service
