"""Section 8's factors: plain throughput over the 1-worker row (the goal's), and per worker CPU-second.

The load generator runs on the same two cores as the workers, so a 2-worker row's rps is short of what the
workers could do by the generator's share; `scaling_per_cpu` says what their CPU per request allows, and both
are reported (scale10, issue 20).
"""

from __future__ import annotations

from cmglab.tools.bench.scaling import add_factors


def test_both_factors_are_over_the_one_worker_row_of_the_same_request() -> None:
    rows = [
        {"name": "location", "workers": 1, "rps": 3000.0, "rps_per_cpu": 3000.0},
        {"name": "ROPC", "workers": 1, "rps": 600.0, "rps_per_cpu": 625.0},
        # the generator took 0.2 of the 2 CPUs: 2 workers at 1.8 CPUs, each request 10 % dearer than with 1
        {"name": "location", "workers": 2, "rps": 4909.1, "rps_per_cpu": 2727.3},
        {"name": "ROPC", "workers": 2, "rps": 1125.0, "rps_per_cpu": 625.0},
    ]
    add_factors(rows)
    factors = {(r["name"], r["workers"]): (r["scaling"], r["scaling_per_cpu"]) for r in rows}
    assert factors == {
        ("location", 1): (1.0, 1.0),
        ("ROPC", 1): (1.0, 1.0),
        ("location", 2): (1.64, 1.82),
        ("ROPC", 2): (1.88, 2.0),
    }


def test_a_request_without_a_one_worker_row_has_no_factor() -> None:
    rows = [{"name": "location", "workers": 2, "rps": 4000.0, "rps_per_cpu": 2500.0}]
    add_factors(rows)
    assert rows[0]["scaling"] is None and rows[0]["scaling_per_cpu"] is None
