"""``forge lab``: a fleet of GPU hosts (network namespaces with their own sshd and dockerd)
on one machine, for tests and for people trying forge."""

from forge.lab.config import BASE_IMAGE, DATA_MARKER, DATA_MARKER_CONTENT, LabConfig
from forge.lab.core import HostStatus, Lab, LabStatus
from forge.lab.errors import LabError

__all__ = [
    "BASE_IMAGE",
    "DATA_MARKER",
    "DATA_MARKER_CONTENT",
    "HostStatus",
    "Lab",
    "LabConfig",
    "LabError",
    "LabStatus",
]
