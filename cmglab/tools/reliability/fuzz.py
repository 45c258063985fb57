"""Schemathesis against each service's published OpenAPI (`GET /_lab/openapi.json`): positive and
negative cases for every operation, sent over TLS to the service's loopback port without credentials
(the admin-only operations must refuse them; the campaign must not reset the lab it is measuring)."""

from __future__ import annotations

import contextlib
import itertools
import time
import warnings
from dataclasses import dataclass

import hypothesis
import hypothesis.errors
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity
from schemathesis import GenerationMode
from schemathesis.core.result import Err

from cmglab.runtime.lab import Lab
from cmglab.tools.reliability.labview import LabView
from cmglab.tools.reliability.report import Report


class _OutOfTime(Exception):
    """The budget is spent: raised from inside schemathesis's loop to leave it at once."""


@dataclass
class Target:
    service: str
    base_url: str  # the loopback address: the server certificates name 127.0.0.1 too
    verify: str | bool


def targets(lab: Lab) -> list[Target]:
    bundle = str(lab.pki.ca_bundle)
    addr = lab.config.bind_address
    return [
        Target("entra", f"https://{addr}:{lab.port('entra')}", bundle),
        Target("cmg", f"https://{addr}:{lab.port('cmg')}", bundle),
        Target("management-point", f"https://{addr}:{lab.port('management-point')}", bundle),
        Target("cmg-connection-point", f"http://{addr}:{lab.port('cmg-connection-point')}", False),
    ]


def run(lab: Lab, view: LabView, report: Report, *, deadline: float, examples: int = 8) -> None:
    """Fuzz every operation of every service in passes of `examples` cases per operation and mode,
    round robin, until `deadline` (monotonic): a longer budget buys more passes, not a skewed spread."""
    session = requests.Session()
    per_service: list[list[tuple[Target, schemathesis.APIOperation]]] = []
    for target in targets(lab):
        schema = schemathesis.openapi.from_dict(view.get(target.service, "/_lab/openapi.json"))
        operations = []
        for result in schema.get_all_operations():
            if isinstance(result, Err):  # FastAPI's own document: one that does not load is our bug
                raise result.err()
            operations.append(result.ok())
        report.operations[target.service] = len(operations)
        per_service.append([(target, op) for op in operations])
    # interleaved, one operation of each service in turn: a short budget still reaches every service
    plan = [pair for group in itertools.zip_longest(*per_service) for pair in group if pair is not None]
    with session, contextlib.suppress(_OutOfTime):
        while time.monotonic() < deadline:
            for target, op in plan:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    _fuzz(op, mode, target, session, report, deadline, examples)


def _fuzz(
    op: schemathesis.APIOperation,
    mode: GenerationMode,
    target: Target,
    session: requests.Session,
    report: Report,
    deadline: float,
    examples: int,
) -> None:
    tally = report.tally(target.service)

    # no shrinking, no example database: the campaign counts answers, it does not minimise failures
    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        verbosity=Verbosity.quiet,
        print_blob=False,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(op.as_strategy(generation_mode=mode))
    def send(case: schemathesis.Case) -> None:
        if time.monotonic() >= deadline:
            raise _OutOfTime
        tally.inputs += 1
        tally.fuzzed += 1
        what = f"{case.method} {case.formatted_path}"
        try:
            response = case.call(base_url=target.base_url, session=session, verify=target.verify, timeout=15)
        except requests.RequestException as e:
            tally.server_errors += 1  # a dropped connection is as bad as a 5xx, and no record shows it
            report.finding("connection failure", target.service, what, repr(e))
            return
        if response.status_code >= 500:  # counted from the service's own records (labview), named here
            report.finding(f"{response.status_code}", target.service, what, f"query={case.query!r} body={case.body!r}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # schemathesis warns about the schema's missing security schemes
        try:
            send()
        except hypothesis.errors.Unsatisfiable:
            pass  # negative mode of an operation with nothing to violate (no parameters, no body)
