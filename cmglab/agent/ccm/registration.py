"""ClientIDManagerStartup: registration (RegTask) and the approval the site answers (seed 001,
"Client registration"; seeds 003/004 for bulk-token and internal-network registration)."""

from __future__ import annotations

import time
import uuid

from cmglab.agent.adal import Logs
from cmglab.agent.ccm.client import CcmClient, MessagingError, TokenUnavailable
from cmglab.agent.ccm.state import AAD, BULK, DOMAIN, PKI, SELF_SIGNED, TOKEN, ManagementPoint
from cmglab.agent.settings import agent_settings
from cmglab.wire import tracing
from cmglab.wire.ccm_messaging import cert_hex, parse_xml, registration_request, utc_timestamp


class RegistrationFailed(Exception):
    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient  # the site could not be reached (not: it refused the registration)


def _data_xml(client: CcmClient, sms_id: str, internet: bool) -> str:
    info = client.device.info
    return (
        f'<Data HashAlgorithm="1.2.840.113549.1.1.11" SMSID="{sms_id}" RequestType="Registration" '
        f'TimeStamp="{utc_timestamp()}"><AgentInformation AgentIdentity="CcmExec.exe" '
        f'AgentVersion="{client.state.version or "5.00.8968.1000"}" AgentType="0" />'
        f'<Certificates><Encryption Encoding="HexBinary" KeyType="1">{cert_hex(client.encryption.cert())}'
        f'</Encryption><Signing Encoding="HexBinary" KeyType="1">{cert_hex(client.signing.cert())}</Signing>'
        f'</Certificates><DiscoveryProperties><Property Name="Netbios Name" Value="{info.name}" />'
        f'<Property Name="FQ Name" Value="{info.fqdn}" /><Property Name="Locale ID" Value="1033" />'
        f'<Property Name="InternetFlag" Value="{int(internet)}" /></DiscoveryProperties></Data>'
    )


class ClientIDManager:
    def __init__(self, client: CcmClient) -> None:
        self.client = client
        self.log = client.device.ccm_log("ClientIDManagerStartup.log")
        self.adal_logs = Logs(client.device.ccm_log("ADALOperationProvider.log"))

    def startup(self, mp: ManagementPoint) -> None:
        """What CcmExec does at start when the client is not registered yet."""
        st = self.client.state
        if st.sms_id and st.approval is not None:
            self.log.info(f"Client is registered. ClientID is {st.sms_id}. Approval status {st.approval}")
            return
        if st.auth_mode == AAD:
            self.log.info("AADJoinStatusTask: Client hasn't been registered yet.")
        self.log.info("RegEndPoint: Event notification: CCM_RemoteClient_Reassigned")
        self.log.info(
            f"RegEndPoint: Received notification for site assignment change from '<none>' to '{st.site_code}'."
        )
        self.register(mp)

    def register(self, mp: ManagementPoint) -> None:
        """RegTask: attempts with a sleep between them (the real task sleeps minutes, then tries again);
        the proposed SMSID stays the same across attempts, so a registration the site completed but
        whose reply was lost is the same client when the next attempt arrives."""
        settings = agent_settings()
        attempts, interval = settings.regtask_attempts, settings.regtask_interval
        st = self.client.state
        proposed = "GUID:" + str(uuid.uuid4()).upper()
        last: Exception | None = None
        for attempt in range(1, attempts + 1):
            self.log.info(f"[RegTask] - Starting registration, attempt {attempt}.")
            try:
                with tracing.operation(self.client.device.info.name, tracing.Step.REGISTRATION):
                    self._attempt(mp, proposed)
                return
            except (MessagingError, TokenUnavailable) as e:
                last = e
                self.log.error(f"RegTask: Failed to send registration request message. Error: 0x{e.hresult:08x}")
            except RegistrationFailed as e:
                last = e
                self.log.error(f"[RegTask] - {e}")
            if attempt < attempts:
                self.log.info(f"[RegTask] - Sleeping for {interval:g} seconds ...")
                time.sleep(interval)
        self.log.error(f"[RegTask] - Client registration failed after {attempts} attempt(s): {last}")
        st.sms_id, st.approval = None, None
        raise RegistrationFailed(
            str(last), transient=isinstance(last, (MessagingError, TokenUnavailable)) and last.transient
        )

    def _attempt(self, mp: ManagementPoint, proposed: str) -> None:
        client, st = self.client, self.client.state
        self.log.info(f"[RegTask] - Client is not registered. Sending registration request for {proposed} ...")
        windows_auth, entra_token = False, None
        if st.auth_mode == AAD:
            self.log.info("Registering client using AAD auth.")
            if mp.token_auth:  # seed 001 "Client registration" 2: a fresh Entra token registers the client
                entra_token = client.entra_token(self.adal_logs)
        elif st.auth_mode == BULK:
            self.log.info("Registering client using bulk registration token.")
        elif st.auth_mode == TOKEN:
            self.log.info("Registering client using the client's unique token.")
        elif st.auth_mode == PKI:
            self.log.info("Registering client using its PKI client authentication certificate.")
        elif st.auth_mode == DOMAIN:
            self.log.info("Registering client using Windows authentication (domain computer account).")
            windows_auth = True
        else:
            self.log.info("Registering client using its self-signed certificate.")
        body = registration_request(_data_xml(client, proposed, mp.internet), client.signing.key())
        reply = client.send(
            mp,
            "MP_ClientRegistration",
            body,
            log=self.log,
            windows_auth=windows_auth,
            prefix="ccmhttp",
            flags="0x4100",
            options="0xe0",
            entra_token=entra_token,
        )
        root = parse_xml(reply.body)
        status = root.get("Status")
        if root.tag != "ClientRegistrationResponse" or status != "0" or not root.get("SMSID"):
            raise RegistrationFailed(f"the site refused the registration (Status {status})")
        sms_id, approval = root.get("SMSID", ""), int(root.get("ApprovalStatus", "0"))
        st.sms_id, st.approval, st.registered_at = sms_id, approval, utc_timestamp()
        if root.get("PreAuthToken"):
            client.client_tokens.put(root.get("PreAuthToken", ""))
            st.client_token_issued = utc_timestamp()
            if st.auth_mode in (BULK, DOMAIN, SELF_SIGNED):
                st.auth_mode = TOKEN if st.auth_mode == BULK else st.auth_mode
            self.log.info("Received the client's unique token from the management point (valid 90 days).")
        st.save(client.device)
        self.log.info(
            f"[RegTask] - Client is registered. Server assigned ClientID is {sms_id}. Approval status {approval}"
        )
        if mp.token_auth or (st.auth_mode == PKI and mp.internet):
            # seed 001 "Client registration" 4: then a new CCM token (for AAD: a fresh Entra token as its proof)
            client.renew_token(mp, self.log, adal_logs=self.adal_logs, entra_token=entra_token)
