"""MIG instances: what a MIG-enabled GPU is split into, from ``nvidia-smi -L`` and ``nvidia-smi -q``.

``--query-gpu`` says of a MIG-enabled GPU only that it is one (``mig.mode.current``), with its
utilization ``[N/A]``; ``--query-compute-apps`` names the physical GPU of each process, not its
instance. So a host with such a GPU is asked once more (:data:`MIG_SCRIPT`), and:

- ``nvidia-smi -L`` names each instance: ``MIG 1g.18gb Device 3: (UUID: MIG-...)`` under its GPU;
- ``nvidia-smi -q`` gives, per GPU (``GPU 00000000:83:00.0``), each MIG device's GPU and compute
  instance IDs and memory (``Shared FB Memory Usage``: compute instances of one GPU instance
  share it), and each process's GPU and compute instance.

Each instance becomes a :class:`~forge.gpu.model.Gpu` of its own (``mig_device`` set,
``uuid`` its ``MIG-`` UUID, the memory its own, utilization ``None``: not reported per instance),
listed after its GPU, and each process on one is pointed at the instance's UUID. Claims,
quotas, the line and reclaim then work on instances as on GPUs. Pure parsers, tested on a real
H200 capture (tests/fixtures/nvidia-smi/h200-mig-driver590/).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from forge.errors import ForgeError
from forge.gpu.model import Gpu, GpuProcess
from forge.hostnum import natural

MARKER = "@@forge-mig"
#: One round trip, only to hosts with a MIG-enabled GPU: the list, then the full query.
MIG_SCRIPT = f"nvidia-smi -L 2>&1; echo {MARKER} $?; nvidia-smi -q 2>&1; echo {MARKER} $?"

_GPU_LINE = re.compile(r"^GPU (\d{1,9}): .*\(UUID: (GPU-[0-9a-fA-F-]+)\)\s*$")
_MIG_LINE = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d{1,9}): \(UUID: (MIG-[0-9a-fA-F-]+)\)\s*$")
_Q_GPU = re.compile(r"^GPU ([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])\s*$")
_KV = re.compile(r"^(\s*)([^:]+?)\s*(?::\s*(.*?))?\s*$")  # "key : value", or a section's name


class MigAnswerError(ForgeError):
    """``nvidia-smi -q`` lists a GPU, a MIG device or a process twice. It prints each
    process's name raw, and a name with line breaks (another user's) can add lines of its own:
    a GPU block or a MIG device whose memory says unused, read after the real one. None of the
    answer is trusted then."""


@dataclass(frozen=True)
class MigDevice:
    """One MIG device as ``nvidia-smi -q`` describes it."""

    index: int
    gpu_instance: int | None
    compute_instance: int | None
    memory_total_mib: int | None
    memory_used_mib: int | None
    memory_free_mib: int | None


@dataclass(frozen=True)
class MigProcess:
    pid: int
    gpu_instance: int | None
    compute_instance: int | None


@dataclass(frozen=True)
class QueryGpu:
    """One GPU block of ``nvidia-smi -q``: its MIG devices and its processes' instances."""

    bus_id: str
    devices: tuple[MigDevice, ...]
    processes: tuple[MigProcess, ...]


def parse_list(text: str) -> dict[int, list[tuple[int, str, str]]]:
    """``nvidia-smi -L``: per GPU index, its MIG devices as (device index, profile, MIG UUID)."""
    out: dict[int, list[tuple[int, str, str]]] = {}
    current: int | None = None
    for line in text.splitlines():
        if m := _GPU_LINE.match(line):
            current = int(m.group(1))
            out[current] = []
        elif (m := _MIG_LINE.match(line)) and current is not None:
            out[current].append((int(m.group(2)), m.group(1), m.group(3)))
    return out


def _mib(value: str) -> int | None:
    number, unit = value.partition(" ")[::2]
    return natural(number) if unit == "MiB" else None


def _int(value: str) -> int | None:
    return natural(value)


def parse_query(text: str) -> list[QueryGpu]:
    """``nvidia-smi -q``: per GPU block, its MIG devices and processes (what else it says is
    not read). Keys are matched by name and indentation, the rest of the layout is free.
    Raises :class:`MigAnswerError` for a GPU, a MIG device of one GPU or a process of one GPU
    listed twice."""
    reader = _QueryReader()
    for line in text.splitlines():
        reader.line(line)
    reader.close_gpu()
    return reader.gpus


class _QueryReader:
    """One pass over ``nvidia-smi -q``: GPU blocks, their 4-space sections ("MIG Device",
    "Processes"), the 8-space keys in them, a MIG device's 12-space memory keys."""

    def __init__(self) -> None:
        self.gpus: list[QueryGpu] = []
        self.bus: str | None = None
        self.devices: list[MigDevice] = []
        self.procs: list[MigProcess] = []
        self.dev: dict[str, int | None] | None = None
        self.proc: dict[str, int | None] | None = None
        self.section = self.sub = ""

    def line(self, line: str) -> None:
        if m := _Q_GPU.match(line):
            self.close_gpu()
            self.bus, self.devices, self.procs, self.section, self.sub = m.group(1), [], [], "", ""
            return
        m = _KV.match(line) if line.strip() else None
        if self.bus is None or m is None:
            return
        indent, key, value = len(m.group(1)), m.group(2), m.group(3) or ""
        if indent == 4:
            self.flush()
            self.section = key
            self.dev = {} if key == "MIG Device" else None
        elif self.section == "MIG Device" and self.dev is not None:
            if indent == 8:
                self.sub = key
                names = {"Index": "index", "GPU Instance ID": "gi", "Compute Instance ID": "ci"}
                if key in names:
                    self.dev[names[key]] = _int(value)
            elif indent == 12 and self.sub.endswith("FB Memory Usage") and key in ("Total", "Used", "Free"):
                self.dev[key.lower()] = _mib(value)
        elif self.section == "Processes" and indent == 8:
            if key == "GPU instance ID":
                self.flush()
                self.proc = {"gi": _int(value)}
            elif self.proc is not None and key in ("Compute instance ID", "Process ID"):
                self.proc["ci" if key.startswith("Compute") else "pid"] = _int(value)

    def flush(self) -> None:
        d, p = self.dev, self.proc
        if d is not None and d.get("index") is not None:
            memory = (d.get("total"), d.get("used"), d.get("free"))
            device = MigDevice(d["index"] or 0, d.get("gi"), d.get("ci"), *memory)
            if any(x.index == device.index for x in self.devices):
                raise MigAnswerError(f"nvidia-smi -q lists MIG device {device.index} of GPU {self.bus} twice")
            self.devices.append(device)
        if p is not None and p.get("pid") is not None:
            proc = MigProcess(p["pid"] or 0, p.get("gi"), p.get("ci"))
            if any(x.pid == proc.pid for x in self.procs):
                raise MigAnswerError(f"nvidia-smi -q lists process {proc.pid} on GPU {self.bus} twice")
            self.procs.append(proc)
        self.dev = self.proc = None

    def close_gpu(self) -> None:
        self.flush()
        if self.bus is not None:
            if any(g.bus_id.upper() == self.bus.upper() for g in self.gpus):
                raise MigAnswerError(f"nvidia-smi -q lists GPU {self.bus} twice")
            self.gpus.append(QueryGpu(self.bus, tuple(self.devices), tuple(self.procs)))


def split(text: str) -> tuple[str, int | None, str, int | None]:
    """The :data:`MIG_SCRIPT` output: (list text, its status, query text, its status)."""
    parts = re.split(rf"^{MARKER} (\d{{1,9}})[ \t]*$", text, flags=re.M)
    if len(parts) < 5:
        return "", None, "", None
    return parts[0], int(parts[1]), parts[2], int(parts[3])


def instances(gpus: Sequence[Gpu], list_text: str, query_text: str) -> tuple[Gpu, ...]:
    """Each MIG instance of the MIG-enabled ``gpus`` as a :class:`Gpu` (listed devices found in
    the query; one missing there is left out: its memory is unknown)."""
    listed = parse_list(list_text)
    queried = {q.bus_id.upper(): q for q in parse_query(query_text)}
    out = []
    for gpu in gpus:
        if not gpu.mig_enabled:
            continue
        q = queried.get((gpu.pci_bus_id or "").upper())
        devices = {d.index: d for d in q.devices} if q else {}
        for dev_index, profile, uuid in listed.get(gpu.index, []):
            d = devices.get(dev_index)
            if d is None:
                continue
            out.append(replace(
                gpu, uuid=uuid, name=f"{gpu.name or 'GPU'} MIG {profile}", memory_total_mib=d.memory_total_mib,
                memory_used_mib=d.memory_used_mib, memory_free_mib=d.memory_free_mib, utilization_gpu_pct=None,
                utilization_memory_pct=None, mig_mode=None, mig_device=dev_index, mig_profile=profile,
                parent_uuid=gpu.uuid,
            ))  # fmt: skip
    return tuple(out)


def point_processes(
    procs: Sequence[GpuProcess], gpus: Sequence[Gpu], mig: Sequence[Gpu], query_text: str
) -> tuple[GpuProcess, ...]:
    """Processes on a MIG-enabled GPU pointed at their instance (by GPU and compute instance
    IDs from the query); one whose instance is not known stays on the GPU."""
    by_bus = {q.bus_id.upper(): q for q in parse_query(query_text)}
    where: dict[tuple[str, int], str] = {}  # (GPU UUID, pid) -> MIG UUID
    for gpu in gpus:
        q = by_bus.get((gpu.pci_bus_id or "").upper())
        if not gpu.mig_enabled or q is None:
            continue
        ids = {(d.gpu_instance, d.compute_instance): d.index for d in q.devices}
        uuid_of = {g.mig_device: g.uuid for g in mig if g.parent_uuid == gpu.uuid}
        for p in q.processes:
            dev = ids.get((p.gpu_instance, p.compute_instance))
            if dev is not None and dev in uuid_of:
                where[(gpu.uuid, p.pid)] = uuid_of[dev]
    return tuple(replace(p, gpu_uuid=where.get((p.gpu_uuid, p.pid), p.gpu_uuid)) for p in procs)
