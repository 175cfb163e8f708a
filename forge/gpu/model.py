"""The GPU data model: what one probe learns about one host's GPUs and their processes.

Everything here is a frozen snapshot. Units are in the names (``_mib``, ``_pct``, ``_c``,
``_w``). A value nvidia-smi does not report (``[N/A]``, ``[Not Supported]``, ``N/A``) is
``None``, never ``0``: "not reported" and "zero" lead to different decisions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ProbeStatus(enum.StrEnum):
    """What a host's GPU probe found."""

    OK = "ok"  # nvidia-smi answered; ``gpus`` lists them (at least one)
    NO_GPUS = "no_gpus"  # nvidia-smi runs but sees no GPU ("No devices were found")
    DRIVER_ERROR = "driver_error"  # nvidia-smi cannot talk to the driver / NVML
    NOT_INSTALLED = "not_installed"  # no nvidia-smi on the host's PATH
    ERROR = "error"  # anything else: unexpected output, probe script failure


@dataclass(frozen=True)
class Gpu:
    """One physical GPU, as ``nvidia-smi --query-gpu`` reports it.

    ``uuid`` is the identity: nvidia-smi numbers GPUs in PCI bus order while CUDA numbers them
    fastest-first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so an index alone is ambiguous.
    Every ``... | None`` field is ``None`` when nvidia-smi printed ``[N/A]``,
    ``[Not Supported]``, any other ``[...]`` placeholder or ``N/A`` for it (e.g. utilization on
    a GPU in MIG mode), or when the field was not queried.
    """

    index: int  # --query-gpu=index (nvidia-smi's numbering, PCI bus order)
    uuid: str  # uuid, e.g. "GPU-a267d29a-9786-72fd-1e44-bf85190413fb"
    name: str | None  # name, e.g. "NVIDIA H200"
    pci_bus_id: str | None  # pci.bus_id, e.g. "00000000:00:06.0"
    memory_total_mib: int | None  # memory.total [MiB]
    memory_used_mib: int | None  # memory.used [MiB]
    memory_free_mib: int | None  # memory.free [MiB] (total - used - reserved by the driver)
    utilization_gpu_pct: int | None  # utilization.gpu [%], over the last sample period
    utilization_memory_pct: int | None  # utilization.memory [%] (memory bandwidth, not size)
    temperature_c: int | None  # temperature.gpu [degrees C]
    power_draw_w: float | None  # power.draw [W]
    power_limit_w: float | None  # power.limit [W]
    compute_mode: str | None  # compute_mode: Default, Exclusive_Process, Prohibited
    mig_mode: str | None  # mig.mode.current: Enabled, Disabled, or None (no MIG support)
    # A MIG instance (forge/gpu/mig.py) is a Gpu of its own: its device index on GPU ``index``,
    # its profile (e.g. "1g.18gb") and the UUID of that GPU; None on a whole GPU.
    mig_device: int | None = None
    mig_profile: str | None = None
    parent_uuid: str | None = None

    @property
    def mig_enabled(self) -> bool:
        return self.mig_mode == "Enabled"

    @property
    def is_mig_instance(self) -> bool:
        return self.mig_device is not None

    @property
    def label(self) -> str:
        """How people name it: ``2``, or ``2/3`` for MIG device 3 of GPU 2."""
        return str(self.index) if self.mig_device is None else f"{self.index}/{self.mig_device}"

    @property
    def free_memory_mib(self) -> int | None:
        """Free memory as reported, else total minus used, else ``None``."""
        if self.memory_free_mib is not None:
            return self.memory_free_mib
        if self.memory_total_mib is not None and self.memory_used_mib is not None:
            return self.memory_total_mib - self.memory_used_mib
        return None


@dataclass(frozen=True)
class GpuProcess:
    """One compute process holding a context on a GPU.

    nvidia-smi gives pid, memory and GPU UUID; it never names the user. ``user`` and ``name``
    come from the host's process table (``ps``, which escapes the control characters a name
    may hold: nvidia-smi's own process name is not asked for, see forge.gpu.nvsmi);
    ``container_id`` from ``/proc/PID/cgroup``; ``env_name`` / ``env_owner`` from the labels
    ``forge.env`` and ``forge.owner`` of that container, when forge started it. Each is
    ``None`` when unknown (``name``: empty).
    """

    pid: int  # host PID (nvidia-smi on the host reports host PIDs)
    name: str  # the command name (`ps -o comm=`); "" where unknown
    used_memory_mib: int | None  # used_gpu_memory [MiB]; None where not reported
    gpu_uuid: str  # gpu_uuid: joins to Gpu.uuid
    user: str | None = None  # owner user name, from `ps -o user=`
    container_id: str | None = None  # full 64-hex Docker container id
    env_name: str | None = None  # label forge.env of that container
    env_owner: str | None = None  # label forge.owner of that container


@dataclass(frozen=True)
class GpuHold:
    """A GPU given to a forge environment: by its container (label ``forge.gpus``) or by a
    claim made for it (a ``forge-claim-<UUID>`` container, see forge.env.claims), whether or
    not a process runs on it yet."""

    gpu_uuid: str
    env: str | None  # the environment's name
    owner: str | None  # who owns it
    kind: str  # "container" or "claim"


@dataclass(frozen=True)
class HostGpus:
    """Everything one probe learned about one host. ``reason`` says why when not ``ok``."""

    host: str
    status: ProbeStatus
    gpus: tuple[Gpu, ...] = ()
    processes: tuple[GpuProcess, ...] = ()
    reason: str | None = None
    holds: tuple[GpuHold, ...] = ()  # GPUs forge environments hold (read from docker)
    # Why ``holds`` could not be read (the Docker daemon did not answer): then no GPU of the
    # host can be called free, since forge cannot see which ones its environments hold.
    holds_unknown: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is ProbeStatus.OK

    def gpu(self, uuid: str) -> Gpu | None:
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        return None

    def hold(self, uuid: str) -> GpuHold | None:
        """The forge environment holding the GPU with this UUID, if any."""
        for h in self.holds:
            if h.gpu_uuid == uuid:
                return h
        return None

    def processes_on(self, uuid: str) -> tuple[GpuProcess, ...]:
        """The processes on the GPU with this UUID."""
        return tuple(p for p in self.processes if p.gpu_uuid == uuid)
