"""Entra's per-process cache of tenants and apps (issue 20) against the changes it must not outlive: two
`Parts` on one lab database stand for two worker processes (each its own engine and cache). A worker that
cached an app or tenant must refuse it once another worker's reset removed it; a miss is never cached; a unit
of work that adds rows and rolls back leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmglab.runtime.lab import Lab
from cmglab.services.entra import store as st
from cmglab.services.entra.directory import AppIn, DomainIn, TenantIn
from cmglab.services.entra.errors import AADSTSError, DRSError
from cmglab.services.entra.grants import TokenRequest
from cmglab.services.entra.issuance import Issuer
from cmglab.services.entra.parts import Parts
from tests.support.lab import new_lab

NEW_APP = "6f1d8c2e-3b7a-4c55-9e0d-2a4b6c8e0f13"
NEW_TENANT = "0c9b1a2d-4e6f-4a8b-9c0d-1e2f3a4b5c6d"


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return new_lab(tmp_path / "lab")


def sign_in(lab: Lab, parts: Parts, client_id: str) -> None:
    user = lab.config.primary_tenant.users[0]
    form = {
        "grant_type": "password",
        "username": user.upn,
        "password": user.password,
        "client_id": client_id,
        "resource": "https://graph.microsoft.com",
    }
    parts.grants.token(TokenRequest(lab.config.primary_tenant.tenant_id, False, form, "192.0.2.1"))


def refused_code(lab: Lab, parts: Parts, client_id: str) -> int:
    with pytest.raises(AADSTSError) as refused:
        sign_in(lab, parts, client_id)
    return refused.value.code


def test_an_app_another_worker_reset_away_is_refused(lab: Lab) -> None:
    worker_a, worker_b = Parts.from_lab(lab), Parts.from_lab(lab)
    try:
        assert refused_code(lab, worker_a, NEW_APP) == 700016  # unknown: not remembered as unknown
        worker_b.directory.add_app(AppIn(app_id=NEW_APP, display_name="Added by the admin"))
        sign_in(lab, worker_a, NEW_APP)  # found (and cached) by the other worker
        sign_in(lab, worker_a, NEW_APP)
        worker_b.store.reset()  # the lab reset: back to the lab config's apps
        assert refused_code(lab, worker_a, NEW_APP) == 700016
        sign_in(lab, worker_a, lab.config.apps[0].app_id)  # the seeded ones still sign in
    finally:
        worker_a.store.dispose()
        worker_b.store.dispose()


def test_a_tenant_another_worker_reset_away_is_not_found(lab: Lab) -> None:
    worker_a, worker_b = Parts.from_lab(lab), Parts.from_lab(lab)
    try:
        worker_b.directory.add_tenant(
            TenantIn(tenant_id=NEW_TENANT, display_name="Added", initial_domain="added.onmicrosoft.com")
        )
        for key in (NEW_TENANT, "added.onmicrosoft.com"):
            with worker_a.store.session() as s:
                found = Issuer.tenant(s, key)
                assert found is not None and found.tenant_id == NEW_TENANT
        worker_b.store.reset()
        for key in (NEW_TENANT, "added.onmicrosoft.com"):
            with worker_a.store.session() as s, pytest.raises(AADSTSError) as refused:
                Issuer.tenant(s, key)
            assert refused.value.code == 90002
    finally:
        worker_a.store.dispose()
        worker_b.store.dispose()


def test_rows_added_in_a_unit_of_work_that_rolls_back_are_not_cached(lab: Lab) -> None:
    parts = Parts.from_lab(lab)
    try:
        with pytest.raises(RuntimeError), parts.store.session() as s:
            st.new_generation(s)
            s.add(st.App(app_id=NEW_APP, display_name="never committed"))
            s.flush()
            assert st.app_by_id(s, NEW_APP) is not None  # this unit of work sees its own row
            raise RuntimeError("rolled back")
        with parts.store.session() as s:
            assert st.app_by_id(s, NEW_APP) is None
        assert refused_code(lab, parts, NEW_APP) == 700016
    finally:
        parts.store.dispose()


def test_a_domain_another_worker_reset_away_leaves_the_realm_and_the_drs_discovery(lab: Lab) -> None:
    """The user realm and DRS discovery read domains from the cache: a federated domain another worker added is
    found (and cached), and once that worker's reset removed it, neither finds it any more."""
    worker_a, worker_b = Parts.from_lab(lab), Parts.from_lab(lab)
    urls = {"drs_url": "https://enterpriseregistration.windows.net", "login_url": "https://login.microsoftonline.com"}
    try:
        with worker_a.store.session() as s:
            assert st.domain_by_name(s, "fed.added.test") is None  # a miss is not remembered
        worker_b.directory.add_tenant(
            TenantIn(
                tenant_id=NEW_TENANT,
                display_name="Added",
                initial_domain="added.onmicrosoft.com",
                domains=[DomainIn(name="Fed.Added.Test", federated=True)],
            )
        )
        for _ in range(2):  # found, then from the cache
            with worker_a.store.session() as s:
                assert st.domain_by_name(s, "FED.added.test") == st.DomainInfo("fed.added.test", NEW_TENANT, True)
            doc = worker_a.registration.discover("fed.added.test", **urls)
            assert doc["IdentityProviderService"]["Federated"] is True
        worker_b.store.reset()
        with worker_a.store.session() as s:
            assert st.domain_by_name(s, "fed.added.test") is None
        with pytest.raises(DRSError) as refused:
            worker_a.registration.discover("fed.added.test", **urls)
        assert refused.value.status == 404
    finally:
        worker_a.store.dispose()
        worker_b.store.dispose()
