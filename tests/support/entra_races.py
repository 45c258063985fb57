"""Entra's limits raced, as parallel connections race them: wrong passwords sent at the same moment (smart lockout),
one user's DRS joins sent at the same moment (the device quota)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from cmglab.pki.builders import new_key
from cmglab.services.entra import store as st
from cmglab.services.entra.errors import AADSTSError, DRSError
from cmglab.services.entra.grants import TokenRequest
from cmglab.services.entra.parts import Parts
from cmglab.tools.bench.entra_scenarios import join_body


def new_user(entra: Parts, tenant_id: str, upn: str, password: str) -> None:
    with entra.store.session() as s:
        s.add(st.User(object_id=st.new_guid(), tenant_id=tenant_id, upn=upn, password_hash=st.hash_secret(password)))


def at_once(work: Callable[[int], None], count: int) -> None:
    """WORK(0) .. WORK(COUNT - 1), each on a thread of its own, released together."""
    gate = threading.Barrier(count)

    def run(n: int) -> None:
        gate.wait(30)
        work(n)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def wrong_passwords_at_once(entra: Parts, tenant_id: str, upn: str, client_id: str, count: int) -> list[object]:
    """COUNT distinct wrong passwords for UPN by ROPC, from COUNT threads released together: each answer's AADSTS
    code, or what was raised instead of the protocol's error."""
    answers: list[object] = []

    def guess(n: int) -> None:
        form = {"grant_type": "password", "username": upn, "password": f"wrong-{n}", "client_id": client_id}
        form["resource"] = "https://graph.microsoft.com"
        try:
            entra.grants.token(TokenRequest(segment=tenant_id, v2=False, form=form, ipaddr="192.0.2.1"))
        except AADSTSError as e:
            answers.append(e.code)
        except Exception as e:  # what the attack is about: anything but the protocol's error
            answers.append(repr(e))

    at_once(guess, count)
    return answers


def locked_once(answers: list[object], count: int) -> bool:
    """COUNT wrong passwords, the last of them locking the account: 50126 to all but one, 50053 to that one."""
    return sorted(answers, key=str) == sorted([50126] * (count - 1) + [50053], key=str)


def joins_at_once(
    entra: Parts, drs_token: str, domain: str, count: int, monkeypatch: pytest.MonkeyPatch
) -> list[object]:
    """COUNT DRS joins (new device keys each) with one user's DRS token, released together: "joined" for each
    device joined, the DRS error code of each refusal, or what was raised instead of the protocol's error. No join
    has its certificate signed before all have passed the quota's first count (the widest race, every time)."""
    bodies = [join_body(domain, new_key(), new_key()) for _ in range(count)]
    issue, counted = entra.registration.ca.issue, threading.Barrier(count)

    def issue_when_all_counted(*args: Any, **kwargs: Any) -> Any:
        counted.wait(30)
        return issue(*args, **kwargs)

    monkeypatch.setattr(entra.registration.ca, "issue", issue_when_all_counted)
    answers: list[object] = []

    def join(n: int) -> None:
        try:
            entra.registration.join(f"Bearer {drs_token}", bodies[n])
            answers.append("joined")
        except DRSError as e:
            answers.append(e.code)
        except Exception as e:  # what the attack is about: anything but the protocol's error
            answers.append(repr(e))

    at_once(join, count)
    return answers
