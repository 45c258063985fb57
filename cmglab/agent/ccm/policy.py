"""PolicyAgent: machine policy assignments (MP_PolicyManager) and policy bodies (.sms_pol), secret
policies decrypted with the SMS Encryption key (CMS EnvelopedData)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cmglab.agent.ccm.client import CcmClient, MessagingError
from cmglab.agent.ccm.cms import CMSError, decrypt_enveloped
from cmglab.agent.ccm.state import ManagementPoint
from cmglab.agent.protect import write_private
from cmglab.wire import tracing
from cmglab.wire.ccm_messaging import client_token_headers, decode_utf16, parse_xml, utc_timestamp

SECRET_FLAG = 4
SECRET_PURPOSE = "secret policy"


@dataclass
class PolicyAssignment:
    policy_id: str
    version: str
    category: str
    flags: int
    location: str

    @property
    def secret(self) -> bool:
        return bool(self.flags & SECRET_FLAG)


class PolicyAgent:
    def __init__(self, client: CcmClient) -> None:
        self.client = client
        self.log = client.device.ccm_log("PolicyAgent.log")
        self.messaging_log = client.device.ccm_log("CcmMessaging.log")

    def request_assignments(self, mp: ManagementPoint) -> list[PolicyAssignment]:
        st, info = self.client.state, self.client.device.info
        self.log.info(f"Requesting Machine policy assignments from '{mp.name}'")
        body = (
            f'<RequestAssignments SchemaVersion="1.00" ACK="false" RequestType="Always"><Identification>'
            f"<Machine><ClientID>{st.sms_id}</ClientID><FQDN>{info.fqdn}</FQDN><NetBIOSName>{info.name}"
            f"</NetBIOSName><SID /></Machine><User /></Identification><PolicySource>SMS:{st.site_code}"
            f'</PolicySource><Resource ResourceType="Machine" /><ServerCookie /></RequestAssignments>'
        )
        reply = self.client.send(mp, "MP_PolicyManager", body, log=self.messaging_log, signed=True, remote_sync=True)
        root = parse_xml(reply.body)
        out = []
        for policy in root.iter("Policy"):
            loc = policy.find("PolicyLocation")
            out.append(
                PolicyAssignment(
                    policy.get("PolicyID", ""),
                    policy.get("PolicyVersion", ""),
                    policy.get("PolicyCategory", ""),
                    int(policy.get("PolicyFlags", "0")),
                    (loc.text or "").strip() if loc is not None else "",
                )
            )
        self.log.info(
            f"Received {len(out)} Machine policy assignment(s) "
            f"({sum(1 for p in out if p.secret)} secret) from '{mp.name}'"
        )
        return out

    def policy_url(self, mp: ManagementPoint, location: str) -> str:
        path = location.split("<mp>", 1)[1] if "<mp>" in location else "/" + location.split("/", 3)[-1]
        if mp.token_auth:
            path = path.replace("/SMS_MP/", "/SMS_MP_TokenAuth/", 1)
        return mp.url(path)

    def download(self, mp: ManagementPoint, assignment: PolicyAssignment) -> str:
        st = self.client.state
        url = self.policy_url(mp, assignment.location)
        headers = client_token_headers(st.sms_id or "", self.client.signing.key()) if assignment.secret else {}
        reply = self.client.get(mp, url, self.log, headers=headers)
        if reply.status_code != 200 or reply.content.lstrip().upper().startswith(b"<HTML>"):
            raise MessagingError(
                f"policy {assignment.policy_id} download refused: HTTP {reply.status_code}", status=reply.status_code
            )
        if assignment.secret:
            try:
                plain = decrypt_enveloped(reply.content, self.client.encryption.key())
            except CMSError as e:
                raise MessagingError(f"secret policy {assignment.policy_id} cannot be decrypted: {e}") from e
            text = decode_utf16(plain)
            blob = self.client.device.dpapi.protect(text.encode(), SECRET_PURPOSE)
            write_private(self.client.device.policy_dir / f"{assignment.policy_id}.bin", blob)
            self.log.info(
                f"Downloaded secret policy {assignment.policy_id} ({assignment.category}); decrypted "
                "with the SMS Encryption certificate and stored protected"
            )
        else:
            text = decode_utf16(reply.content)
            write_private(self.client.device.policy_dir / f"{assignment.policy_id}.xml", text.encode())
            self.log.info(f"Downloaded policy {assignment.policy_id} ({assignment.category}) from {url}")
            self.apply_client_settings(text)
        return text

    def apply_client_settings(self, text: str) -> None:
        """Client settings, Cloud Services: "Allow clients to use a cloud management gateway"."""
        m = re.search(
            r'class="CCM_ClientCloudManagementGatewayConfig".*?name="AllowCMG"[^>]*><value>(\d)</value>', text, re.S
        )
        if m is None:
            return
        allowed = m.group(1) == "1"
        st = self.client.state
        if allowed != st.allow_cmg:
            self.log.info(
                f"Client setting 'Allow clients to use a cloud management gateway' is now {'on' if allowed else 'off'}"
            )
        st.allow_cmg = allowed

    def evaluate(self, mp: ManagementPoint) -> int:
        with tracing.operation(self.client.device.info.name, tracing.Step.POLICY):
            assignments = self.request_assignments(mp)
            for a in assignments:
                self.download(mp, a)
        self.client.state.last_policy = utc_timestamp()
        self.client.state.save(self.client.device)
        self.log.info(f"Policy evaluation complete: {len(assignments)} policies applied")
        return len(assignments)
