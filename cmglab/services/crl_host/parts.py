"""The CRL host's parts: the lab and its PKI, whose CRL and AIA files it serves (read fresh on every
request, so a revoke is visible at once)."""

from __future__ import annotations

from dataclasses import dataclass

from cmglab.pki.labpki import LabPKI
from cmglab.runtime.lab import Lab


@dataclass
class Parts:
    lab: Lab
    pki: LabPKI

    @classmethod
    def from_lab(cls, lab: Lab) -> Parts:
        return cls(lab, lab.pki)
