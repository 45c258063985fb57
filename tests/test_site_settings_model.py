"""The one typed model of the site settings (issue 19): `cmglab site set`'s names cover it, and a change
(`POST /_lab/site`) is validated by SiteSettings itself, not by a copy of it. In-process, no lab."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cmglab.core.labconfig import SITE_SETTINGS, SiteSettings, SiteSettingsChange


def test_cmglab_site_set_names_every_setting() -> None:
    assert set(SITE_SETTINGS.values()) == set(SiteSettings.model_fields)


def test_a_change_reads_values_as_site_settings_does() -> None:
    assert SiteSettings.model_validate({"auto_approve": "ALL"}).auto_approve == "all"
    assert SiteSettingsChange.model_validate({"auto_approve": "ALL"}).given() == {"auto_approve": "all"}
    change = SiteSettingsChange.model_validate(
        {"conflicting_records": "Manual", "https_only": "yes", "allow_cmg": None}
    )
    assert change.given() == {"conflicting_records": "manual", "https_only": True}  # null: not given


@pytest.mark.parametrize(
    "bad",
    [
        {"auto_approve": "sometimes"},
        {"ccm_token_lifetime_minutes": 0},
        {"ccm_token_lifetime_minutes": 7 * 24 * 60 + 1},
        {"no_such_setting": True},
        {"allow_cmg": "perhaps"},
    ],
)
def test_a_bad_change_is_refused_as_site_settings_refuses_it(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SiteSettingsChange.model_validate(bad)
