"""`cmglab site` and `cmglab tenant`: the site's settings (Administration > Site Configuration) and the
Entra tenants onboarded to it (Cloud Services > Azure Services), on a lab that may be running.

lab.json is the persistent record: a command writes lab.json and the site database's row of the one setting
or tenant it names, so the change applies to the running lab at once (the MP reads its settings per request;
the CMG gets them with the connection point's next heartbeat) and persists across restarts, and a change of
another setting made over `POST /_lab/site` stays. A hand edit of lab.json applies at the MP's next start,
which writes lab.json over the database rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from cmglab.core.labconfig import SITE_SETTINGS, SiteSettings, SiteSettingsChange, Tenant, save_config
from cmglab.runtime.lab import Lab
from cmglab.tools.labdir import load_lab
from cmglab.tools.output import print_rows

site_app = typer.Typer(
    help="Site settings that apply to the running lab and persist in lab.json.", no_args_is_help=True
)
tenant_app = typer.Typer(
    help="Onboard or offboard an Entra tenant to the site (Cloud Services > Azure Services).", no_args_is_help=True
)
console = Console()
LabOption = Annotated[Path, typer.Option("--lab", envvar="CMGLAB_LAB_DIR", help="The lab directory.")]
DEFAULT_LAB = Path(".cmglab")


def _lab(lab_dir: Path) -> Lab:
    return load_lab(lab_dir)  # the reason on one line, never read as markup (a path may hold brackets)


def _apply(lab: Lab, *, setting: str | None = None, tenant: Tenant | None = None) -> None:
    """Persist lab.json, then write lab.json's value of the one `setting` (a SiteSettings field) or `tenant` it
    names over the running site's row: a change made to another setting (`POST /_lab/site`) stays. A site
    database never seeded (the MP never started) is seeded from all of lab.json, as the MP's start would."""
    from cmglab.services.management_point.policy_defaults import default_policies
    from cmglab.services.management_point.store import Store

    save_config(lab.config, Lab.config_path(lab.dir))
    store = Store(lab, policy_factory=default_policies, seed=False)
    try:
        if store.stored_site_settings() is None:
            store.seed()
        elif setting is not None:
            value = getattr(lab.config.site, setting)
            store.change_site_settings(SiteSettingsChange.model_validate({setting: value}))
        elif tenant is not None:
            store.write_lab_tenant(tenant)
    finally:
        store.dispose()


def parse_value(name: str, raw: str, current: SiteSettings) -> SiteSettings:
    """`current` with the setting `name` (a `cmglab site set` name) parsed from `raw` as SiteSettings types it:
    true/false (yes/no, on/off, 1/0), all/domain/none, automatic/manual, minutes 1 to 10080."""
    try:
        return current.changed({SITE_SETTINGS[name]: raw})
    except ValidationError as e:
        raise ValueError(f"{name}: {e.errors()[0]['msg']}") from e


def enforced(lab: Lab) -> dict[str, Any]:
    """The settings and tenants as the site database holds them (what the MP and CMG enforce)."""
    from cmglab.services.management_point.store import Store

    store = Store(lab, seed=False)  # read only: nothing written over what the running services hold
    settings = store.stored_site_settings()
    if settings is None:
        raise LookupError("the site database was never seeded (the MP has not started yet)")
    return {
        "settings": settings_by_name(settings),
        "tenants": {t["tenant_id"]: t["onboarded"] for t in store.tenants(False)},
    }


def settings_by_name(settings: SiteSettings) -> dict[str, Any]:
    """The settings under their `cmglab site set` names."""
    values = settings.model_dump()
    return {name: values[field] for name, field in SITE_SETTINGS.items()}


def site_view(lab: Lab) -> dict[str, Any]:
    site = lab.config.site
    configured = settings_by_name(site.site_settings())
    try:
        live = enforced(lab)
    except LookupError:  # no site database yet (the MP never started): lab.json is what it will enforce
        live = {"settings": configured, "tenants": {t.tenant_id: t.onboarded for t in lab.config.tenants}}
    return {
        "site_code": site.code,
        "settings": {
            name: {"lab_json": value, "enforced": live["settings"].get(name)} for name, value in configured.items()
        },
        "tenants": [
            {
                "name": t.display_name,
                "tenant_id": t.tenant_id,
                "lab_json": t.onboarded,
                "enforced": live["tenants"].get(t.tenant_id),
            }
            for t in lab.config.tenants
        ],
    }


def print_site(view: dict[str, Any]) -> None:
    rows = []
    for name, v in view["settings"].items():
        note = "" if v["enforced"] == v["lab_json"] else " (applies at the MP's next start)"
        rows.append((name, json.dumps(v["enforced"]), f"{json.dumps(v['lab_json'])}{note}"))
    print_rows(console, f"site {view['site_code']} settings", ("setting", "enforced", "lab.json"), rows)
    print_rows(
        console,
        "tenants onboarded to the site",
        ("tenant", "tenant ID", "onboarded", "lab.json"),
        [(x["name"], x["tenant_id"], json.dumps(x["enforced"]), json.dumps(x["lab_json"])) for x in view["tenants"]],
    )


@site_app.command("show")
def show(
    lab: LabOption = DEFAULT_LAB,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The site settings and onboarded tenants: what the services enforce, and lab.json."""
    view = site_view(_lab(lab))
    if as_json:
        typer.echo(json.dumps(view, indent=2))
    else:
        print_site(view)


@site_app.command("set")
def set_setting(
    name: Annotated[str, typer.Argument(help=" | ".join(SITE_SETTINGS))],
    value: Annotated[str, typer.Argument(help="true/false; all/domain/none; minutes")],
    lab: LabOption = DEFAULT_LAB,
) -> None:
    """Change a site setting in lab.json and in the running site (e.g. `cmglab site set allow-cmg false`)."""
    if name not in SITE_SETTINGS:
        console.print(f"[red]unknown setting {name!r}: one of {', '.join(SITE_SETTINGS)}[/red]")
        raise typer.Exit(2)
    the_lab = _lab(lab)
    site = the_lab.config.site
    try:
        settings = parse_value(name, value, site.site_settings())
    except ValueError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from e
    for field, new in settings.model_dump().items():
        setattr(site, field, new)
    parsed = getattr(settings, SITE_SETTINGS[name])
    _apply(the_lab, setting=SITE_SETTINGS[name])
    typer.echo(
        f"{name} = {json.dumps(parsed)} (lab.json and the site database; the CMG takes it with the "
        "connection point's next heartbeat)"
    )


def _onboard(tenant: str, lab_dir: Path, onboarded: bool) -> None:
    the_lab = _lab(lab_dir)
    key = tenant.lower()
    match = [
        t
        for t in the_lab.config.tenants
        if key in (t.display_name.lower(), t.tenant_id.lower(), t.initial_domain.lower())
        or key == t.initial_domain.lower().split(".")[0]
    ]
    if not match:
        names = ", ".join(f"{t.display_name} ({t.initial_domain})" for t in the_lab.config.tenants)
        console.print(f"[red]no tenant {tenant!r} in the lab: {names}[/red]")
        raise typer.Exit(2)
    match[0].onboarded = onboarded
    _apply(the_lab, tenant=match[0])
    typer.echo(
        f"tenant {match[0].display_name} ({match[0].tenant_id}) "
        f"{'onboarded to' if onboarded else 'offboarded from'} site {the_lab.config.site.code}"
    )


@tenant_app.command("onboard")
def onboard(
    tenant: Annotated[str, typer.Argument(help="Display name, tenant ID or domain.")], lab: LabOption = DEFAULT_LAB
) -> None:
    """Onboard the tenant: its devices get AADAuthInfo and CCM tokens through the CMG."""
    _onboard(tenant, lab, True)


@tenant_app.command("offboard")
def offboard(
    tenant: Annotated[str, typer.Argument(help="Display name, tenant ID or domain.")], lab: LabOption = DEFAULT_LAB
) -> None:
    """Offboard the tenant (seed 001: the CMG then gives its devices no AAD info)."""
    _onboard(tenant, lab, False)
