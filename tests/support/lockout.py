"""Smart lockout's attack: wrong passwords sent at the same moment, as parallel connections send them."""

from __future__ import annotations

import threading

from cmglab.services.entra import store as st
from cmglab.services.entra.errors import AADSTSError
from cmglab.services.entra.grants import TokenRequest
from cmglab.services.entra.parts import Parts


def new_user(entra: Parts, tenant_id: str, upn: str, password: str) -> None:
    with entra.store.session() as s:
        s.add(st.User(object_id=st.new_guid(), tenant_id=tenant_id, upn=upn, password_hash=st.hash_secret(password)))


def wrong_passwords_at_once(entra: Parts, tenant_id: str, upn: str, client_id: str, count: int) -> list[object]:
    """COUNT distinct wrong passwords for UPN by ROPC, from COUNT threads released together: each answer's AADSTS
    code, or what was raised instead of the protocol's error."""
    gate = threading.Barrier(count)
    answers: list[object] = []

    def guess(n: int) -> None:
        form = {"grant_type": "password", "username": upn, "password": f"wrong-{n}", "client_id": client_id}
        form["resource"] = "https://graph.microsoft.com"
        gate.wait(30)
        try:
            entra.grants.token(TokenRequest(segment=tenant_id, v2=False, form=form, ipaddr="192.0.2.1"))
        except AADSTSError as e:
            answers.append(e.code)
        except Exception as e:  # what the attack is about: anything but the protocol's error
            answers.append(repr(e))

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def locked_once(answers: list[object], count: int) -> bool:
    """COUNT wrong passwords, the last of them locking the account: 50126 to all but one, 50053 to that one."""
    return sorted(answers, key=str) == sorted([50126] * (count - 1) + [50053], key=str)
