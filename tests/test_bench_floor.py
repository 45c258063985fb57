"""The bench's floors (issue 20): the primitives are timed at several moments of a run and each floor holds the
fastest timing, recomputed at the end for rows measured before it; and `cmglab bench --only` picks sections.
Pure functions and made-up numbers: nothing here is timed."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from cmglab.tools.bench import floor, report, runner, sections
from cmglab.tools.cli import app

TRANSPORT = 0.2
# the host slow for the encode at the first timing and for the signature at the second; tls_handshake is
# section 1's, in the first timing only
TIMINGS = {
    "after_s1_ms": {
        "rsa_sign": 0.36,
        "rsa_verify": 0.03,
        "jwt_encode": 0.57,
        "jwt_decode": 0.08,
        "pbkdf2": 0.32,
        "rsa_oaep": 0.03,
        "tls_handshake": 2.3,
    },
    "after_s3_ms": {
        "rsa_sign": 0.54,
        "rsa_verify": 0.025,
        "jwt_encode": 0.375,
        "jwt_decode": 0.07,
        "pbkdf2": 0.49,
        "rsa_oaep": 0.03,
    },
}
USED = {
    "rsa_sign": 0.36,
    "rsa_verify": 0.025,
    "jwt_encode": 0.375,
    "jwt_decode": 0.07,
    "pbkdf2": 0.32,
    "rsa_oaep": 0.03,
    "tls_handshake": 2.3,
}


def test_the_fastest_timing_of_each_primitive_is_used() -> None:
    assert floor.fastest(TIMINGS) == USED
    assert floor.fastest({"only": {"rsa_sign": 0.4}}) == {"rsa_sign": 0.4}
    assert floor.fastest({}) == {}


def _sections() -> dict[str, Any]:
    """Rows as sections 2-4 leave them (services_sections no longer annotates; a stale floor is overwritten)."""
    return {
        "ceiling": {"title": "1. Transport ceiling", "columns": ["name"], "rows": [{"name": "keep-alive"}]},
        "services": {
            "title": "2. Hot endpoints",
            "rows": [
                {"name": floor.STS_CERT, "rps": 1000.0, "server_cpu_ms": 1.0, "requests_per_op": 1, "floor_ms": 9.9},
                {"name": floor.DEVICE_TOKEN, "rps": 500.0, "server_cpu_ms": 2.0, "requests_per_op": 2},
                {"name": "not in the inventory", "rps": 10.0, "server_cpu_ms": 1.0, "requests_per_op": 1},
            ],
        },
        "cmg_path": {
            "title": "3. Through the CMG",
            "rows": [{"name": "CMG -> CP -> MP CCM_STS (MutualAuth)", "rps": 400.0, "server_cpu_ms": 2.5}],
        },
        "onboarding": {
            "title": "4. Onboardings",
            "rows": [{"devices": 10}],
            "fleet_summaries": [{"succeeded": 10, "requests": {"entra": 80.0, "management-point": 40.0}}],
            "tables": [
                {"rows": [{"devices": 10, "service": "entra", "cpu_ms_per_onboarding": 20.0}]},
                {"title": "steps", "rows": []},
            ],
        },
    }


def test_settle_floors_recomputes_every_floor_with_the_fastest_timings() -> None:
    got = _sections()
    runner.settle_floors(got, TRANSPORT, TIMINGS)

    # section 1: both timings and the one used, per primitive; the inventory's floors from the used ones
    crypto, inventory = got["ceiling"]["tables"]
    assert crypto["columns"] == ["operation", "what", "after_s1_ms", "after_s3_ms", "used_ms"]
    by_op = {r["operation"]: r for r in crypto["rows"]}
    assert by_op["jwt_encode"]["after_s1_ms"] == 0.57 and by_op["jwt_encode"]["after_s3_ms"] == 0.375
    assert {op: r["used_ms"] for op, r in by_op.items()} == USED
    assert by_op["tls_handshake"]["after_s3_ms"] is None  # timed once, in section 1
    assert "fastest" in crypto["note"] and "least the host can do" in crypto["note"]
    sts = next(r for r in inventory["rows"] if r["endpoint"] == floor.STS_CERT)
    assert sts["floor_ms"] == pytest.approx(TRANSPORT + USED["jwt_encode"])

    # section 2: the floor from the fastest encode (the stale 9.9 gone) and both ratios from it
    cert, device, other = got["services"]["rows"]
    assert cert["floor_ms"] == pytest.approx(0.575)
    assert cert["ratio_to_floor"] == pytest.approx(1000 / round(1000 / 0.575, 1), abs=1e-3)
    assert cert["cpu_ratio_to_floor"] == pytest.approx(0.575, abs=1e-3)
    device_floor = 2 * TRANSPORT + USED["rsa_verify"] + USED["jwt_decode"] + USED["jwt_encode"]
    assert device["floor_ms"] == pytest.approx(device_floor, abs=1e-3)  # two requests' transport
    assert "floor_ms" not in other

    # section 3: the MP's floor, the CMG's own check and two more hops
    (proxied,) = got["cmg_path"]["rows"]
    assert proxied["floor_ms"] == pytest.approx(3 * TRANSPORT + USED["jwt_encode"] + USED["jwt_decode"], abs=1e-3)

    # section 4: the itemised floor inserted after the memory table, from the same primitives
    onboarding = got["onboarding"]["tables"]
    assert len(onboarding) == 3 and onboarding[2]["title"] == "steps"
    entra = next(r for r in onboarding[1]["rows"] if r["service"] == "entra")
    # ROPC, DRS join, PRT, two device tokens (floor.ONBOARDING)
    need = {"rsa_verify": 4, "jwt_decode": 4, "pbkdf2": 2, "jwt_encode": 5, "rsa_sign": 1, "rsa_oaep": 1}
    crypto_ms = sum(USED[op] * n for op, n in need.items())
    assert entra["floor_ms"] == pytest.approx(8 * TRANSPORT + crypto_ms + 2 * USED["tls_handshake"], abs=0.01)


def test_the_primitives_table_renders_its_note_and_every_timing() -> None:
    got = _sections()
    runner.settle_floors(got, TRANSPORT, TIMINGS)
    text = report.render({"machine": report.machine(), "ceiling": got["ceiling"]})
    assert "| operation | what | after_s1_ms | after_s3_ms | used_ms |" in text
    assert "the lowest timing is used" in text


def test_interleaved_timing_gives_each_op_a_time() -> None:
    ops = {"a": lambda: sum(range(500)), "b": lambda: sorted(range(500))}
    got = floor.cpu_ms_each(ops, rounds=2, min_batch_s=0.001)
    assert set(got) == {"a", "b"} and all(ms > 0 for ms in got.values())


def test_only_takes_numbers_and_names_and_brings_what_a_section_needs() -> None:
    assert sections.select(["held"]) == (frozenset({"connections"}), "only 5 connections")
    assert sections.select(["5", "Storm"])[0] == {"connections", "storm"}
    chosen, ran = sections.select(["cmg"])
    assert chosen == {"ceiling", "services", "cmg_path"}
    assert ran.startswith("only 1 ceiling, 2 services, 3 cmg_path (") and "2 is measured with 3" in ran
    assert sections.select(["4"])[0] == {"ceiling", "onboarding"}
    assert sections.select(["1", "2"])[0] == {"ceiling", "services", "cmg_path"}
    for wrong in ("9", "0", "helt", ""):
        with pytest.raises(ValueError, match="unknown section"):
            sections.select([wrong])


def test_an_unknown_section_is_refused_before_anything_runs() -> None:
    result = CliRunner().invoke(app, ["bench", "--only", "held", "--only", "nine", "--out", "/nonexistent/x"])
    assert result.exit_code == 2
    said = " ".join(word for word in result.output.split() if word != "│")  # rich's box wraps the message
    assert "unknown section 'nine'" in said and "5 connections" in said
