"""The MP's site-system logs (SMS-trace format) under <lab>/logs/management-point/."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cmglab.core.logs import smstrace_logger
from cmglab.runtime.lab import Lab

SERVICE = "management-point"


@dataclass
class MPLogs:
    sts: logging.Logger  # CCM_STS.log
    registration: logging.Logger  # MP_RegistrationManager.log
    clientauth: logging.Logger  # ClientAuth.log
    location: logging.Logger  # MP_Location.log
    policy: logging.Logger  # MP_Policy.log
    ddr: logging.Logger  # MP_DDR.log
    isapi: logging.Logger  # CcmIsapi.log: the messaging endpoint itself (envelope errors)

    @classmethod
    def open(cls, lab: Lab) -> MPLogs:
        d = lab.log_dir(SERVICE)
        return cls(
            sts=smstrace_logger(d / "CCM_STS.log", "CCM_STS"),
            registration=smstrace_logger(d / "MP_RegistrationManager.log", "MP_RegistrationManager"),
            clientauth=smstrace_logger(d / "ClientAuth.log", "ClientAuth"),
            location=smstrace_logger(d / "MP_Location.log", "MP_LocationManager"),
            policy=smstrace_logger(d / "MP_Policy.log", "MP_PolicyManager"),
            ddr=smstrace_logger(d / "MP_DDR.log", "MP_DdrEndpoint"),
            isapi=smstrace_logger(d / "CcmIsapi.log", "CcmIsapi"),
        )
