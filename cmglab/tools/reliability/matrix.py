"""The authorization matrix: every route family × every credential → allow or deny.

`tests/test_authorization_matrix.py` executes it over real sockets against a lab; README.md shows it
(`python -m cmglab.tools.reliability.matrix --markdown` renders it, and the test checks the README still
holds exactly that table). A credential is presented the way the route takes credentials: a bearer
token in `Authorization` (and, on CCM_STS, as the proof in the body), a certificate at TLS. "Allow"
means the request got through to what the route does; "deny" means 401/403 or a refused handshake.
"""

from __future__ import annotations

import argparse
import sys

# (key, what the README calls it)
CREDENTIALS: list[tuple[str, str]] = [
    ("none", "none"),
    ("entra_user", "Entra user token"),
    ("entra_device", "Entra device token"),
    ("entra_other", "Entra token, other tenant/audience"),
    ("ccm", "CCM token"),
    ("ccm_expired", "expired CCM token"),
    ("client_unique", "client unique token"),
    ("bulk", "bulk token"),
    ("bulk_blocked", "blocked bulk token"),
    ("pki", "PKI certificate"),
    ("pki_revoked", "revoked certificate"),
    ("foreign_ca", "foreign-CA certificate"),
    ("sms_self_signed", "self-signed SMS certificate"),
    ("connection_point", "connection-point certificate"),
    ("admin", "admin token"),
]

ROUTES: list[tuple[str, str]] = [
    ("entra_token", "Entra `POST /{tenant}/oauth2/token`"),
    ("drs_join", "DRS join `POST /EnrollmentServer/device/`"),
    ("drs_delete", "DRS delete `DELETE /EnrollmentServer/device/{id}`"),
    ("cmg_mutual", "CMG `CCM_Proxy_MutualAuth/<id>/ccm_system/request`"),
    ("cmg_server_sts", "CMG `CCM_Proxy_ServerAuth/<id>/CCM_STS`"),
    ("cmg_server_other", "CMG `CCM_Proxy_ServerAuth/<id>/ccm_system_tokenauth/request`, registration"),
    ("cmg_server_message", "CMG `CCM_Proxy_ServerAuth/<id>/ccm_system_tokenauth/request`, any other message"),
    ("cmg_connector", "CMG connector `wss://…/CloudProxyChannel/v1`"),
    ("mp_ccm_system_http", "MP `ccm_system/request` (HTTP)"),
    ("mp_ccm_system_https", "MP `ccm_system/request` (HTTPS)"),
    ("mp_tokenauth", "MP `ccm_system_tokenauth/request`, registration"),
    ("mp_tokenauth_message", "MP `ccm_system_tokenauth/request`, any other message"),
    ("mp_sts_aad", "MP `CCM_STS`, AAD proof"),
    ("mp_sts_bulk", "MP `CCM_STS`, BulkRegistration proof"),
    ("mp_sts_client", "MP `CCM_STS`, ClientToken proof"),
    ("mp_sts_certificate", "MP `CCM_STS`, Certificate proof"),
    ("mp_sms_pol", "MP `SMS_MP_TokenAuth/.sms_pol` (secret policy)"),
    ("mp_cloud_config", "MP `GET /CCM_Cloud/config`"),
    ("lab_reset", "`POST /_lab/reset`"),
    ("cmg_lab_requests", "CMG `GET /_lab/requests` (internet listener)"),
]

# the credentials each route family lets through; every other pair is "deny"
ALLOW: dict[str, frozenset[str]] = {
    # the token endpoint is where credentials come from: it takes a grant, whoever asks. Entra checks a
    # presented certificate's chain at TLS (lab CA) but not the lab's CRL: Entra is not the site PKI's
    # relying party, so the revoked lab certificate passes where the foreign ones do not
    "entra_token": frozenset(
        {
            "none",
            "entra_user",
            "entra_device",
            "entra_other",
            "ccm",
            "ccm_expired",
            "client_unique",
            "bulk",
            "bulk_blocked",
            "pki",
            "pki_revoked",
            "connection_point",
            "admin",
        }
    ),
    "drs_join": frozenset({"entra_user"}),
    "drs_delete": frozenset(),  # only the device's own certificate, which none of these is
    "cmg_mutual": frozenset({"pki", "connection_point"}),
    "cmg_server_sts": frozenset({"entra_user", "entra_device", "client_unique", "bulk"}),
    # a registration carries a fresh Entra token (seed 001 "Client registration" 2-3; issue 17); every other
    # message a CCM token: the CMG passes either on this path, the MP admits an Entra token for registration only
    # (any other message with one: 403, authenticated but not authorised)
    "cmg_server_other": frozenset({"ccm", "entra_user", "entra_device"}),
    "cmg_server_message": frozenset({"ccm"}),
    "cmg_connector": frozenset({"connection_point"}),
    "mp_ccm_system_http": frozenset(k for k, _ in CREDENTIALS),  # anonymous door: nothing to check
    "mp_ccm_system_https": frozenset({"pki"}),
    "mp_tokenauth": frozenset({"ccm", "entra_user", "entra_device"}),
    "mp_tokenauth_message": frozenset({"ccm"}),
    "mp_sts_aad": frozenset({"entra_user", "entra_device"}),
    "mp_sts_bulk": frozenset({"bulk"}),
    "mp_sts_client": frozenset({"client_unique"}),
    "mp_sts_certificate": frozenset({"pki"}),
    "mp_sms_pol": frozenset({"ccm"}),
    "mp_cloud_config": frozenset({"connection_point"}),
    "lab_reset": frozenset({"admin"}),
    # every client's identity and replayable signed content URLs: the lab admin's only (issue 15)
    "cmg_lab_requests": frozenset({"admin"}),
}


def expected(route: str, credential: str) -> bool:
    return credential in ALLOW[route]


def markdown() -> str:
    """The README table: one row per route family, one column per credential."""
    head = "| route family | " + " | ".join(label for _, label in CREDENTIALS) + " |"
    rule = "|---|" + "---|" * len(CREDENTIALS)
    rows = [
        f"| {label} | " + " | ".join("allow" if expected(route, c) else "deny" for c, _ in CREDENTIALS) + " |"
        for route, label in ROUTES
    ]
    return "\n".join([head, rule, *rows]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmglab.tools.reliability.matrix", description=__doc__)
    parser.add_argument("--markdown", action="store_true", help="render the table as Markdown (the only format)")
    parser.parse_args(argv)
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
