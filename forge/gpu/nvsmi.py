"""nvidia-smi's query output: the field lists forge asks for and pure parsers for the answers.

Parsers take text and return the typed model of :mod:`forge.gpu.model`; they never run
anything. They read ``--format=csv,noheader,nounits`` (what the probe asks for) and also the
``csv`` variants with a header line and units (``143771 MiB``, ``100 %``, ``687.71 W``), as
people paste them. Tested on real captures in ``tests/fixtures/nvidia-smi/``.

Facts about nvidia-smi this module relies on (sources in tests/fixtures/nvidia-smi/*/README.md):

- Cells are separated by ``", "`` and never quoted, so a process name containing ``", "``
  spills into extra cells; :func:`split_rows` glues them back into the one free-text field.
- A value the device cannot give is printed in brackets: ``[N/A]``, ``[Not Supported]``
  (older drivers), ``[Unknown Error]``, ``[Insufficient Permissions]``... Each becomes ``None``.
- Errors go to **stdout**, not stderr, with a documented exit status (``man nvidia-smi``,
  RETURN VALUE): 2 bad argument (``Field "x" is not a valid field to query.``), 6 object not
  found (``No devices were found``), 9 driver not loaded (``NVIDIA-SMI has failed because it
  couldn't communicate with the NVIDIA driver...``), 14 infoROM corrupted (a warning: the data
  still follows), 15 GPU fallen off the bus, 255 other (``Failed to initialize NVML: ...``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from forge.errors import ForgeError
from forge.gpu.model import Gpu, GpuProcess, ProbeStatus
from forge.hostnum import natural

# Only fields that every driver since the R450 branch (first with MIG) accepts; see
# help_query_gpu.txt of the H200 capture. memory.reserved is newer, so it is not asked for.
GPU_FIELDS: tuple[str, ...] = (
    "index",
    "uuid",
    "name",
    "pci.bus_id",
    "memory.total",
    "memory.used",
    "memory.free",
    "utilization.gpu",
    "utilization.memory",
    "temperature.gpu",
    "power.draw",
    "power.limit",
    "compute_mode",
    "mig.mode.current",
)
#: No ``process_name``: it is the one cell another user of the host writes (an executable's
#: path or argv[0] may hold a line break, and nvidia-smi prints it raw, so a name could add a
#: whole row of its own: a GPU held by any pid it names). The probe reads each process's name
#: from ``ps``, which escapes control characters (forge.gpu.probe).
APP_FIELDS: tuple[str, ...] = ("pid", "used_gpu_memory", "gpu_uuid")

# Free-text fields: the only ones whose value may contain the ", " separator (``process_name``
# in captured output asked with it, as people paste it; forge's own query leaves it out).
_FREE_TEXT = ("process_name", "name")

_HEADER_UNIT = re.compile(r"\s*\[[^\]]*\]$")  # "memory.total [MiB]" -> "memory.total"
# At most 18 digits each side: a host's thousand-digit "number" would read as infinity.
_NUMBER = re.compile(r"(-?\d{1,18}(?:\.\d{1,18})?)(?:\s*(?:MiB|%|W|C|MHz))?", re.ASCII)

# Exit statuses documented in nvidia-smi(1), RETURN VALUE.
EXIT_INVALID_ARGUMENT = 2
EXIT_NOT_FOUND = 6
EXIT_DRIVER_NOT_LOADED = 9
EXIT_INFOROM_CORRUPTED = 14  # a warning: the query output still follows
EXIT_FELL_OFF_BUS = 15
SHELL_NOT_EXECUTABLE = 126
SHELL_NOT_FOUND = 127

_DRIVER_EXITS: Mapping[int, str] = {
    EXIT_DRIVER_NOT_LOADED: "the NVIDIA driver is not loaded",
    10: "the NVIDIA kernel module detected an interrupt issue with a GPU",
    12: "the NVML shared library could not be found or loaded",
    13: "the installed NVML does not implement a function nvidia-smi needs",
    EXIT_FELL_OFF_BUS: "a GPU has fallen off the bus or is otherwise inaccessible",
}


class NvsmiParseError(ForgeError):
    """nvidia-smi printed something this parser does not understand."""


def is_not_available(value: str) -> bool:
    """``[N/A]``, ``[Not Supported]``, any ``[...]`` placeholder, ``N/A`` or an empty cell."""
    return _placeholder(value.strip())


def _placeholder(value: str) -> bool:
    return not value or value == "N/A" or (value[0] == "[" and value[-1] == "]")


@lru_cache(maxsize=128)
def canonical_field(name: str) -> str:
    """A field name without its header unit and with nvidia-smi's aliases resolved."""
    name = _HEADER_UNIT.sub("", name.strip())
    if name == "gpu_name":
        return "name"
    if name == "used_memory":
        return "used_gpu_memory"
    return name


def _data_lines(text: str) -> list[str]:
    # "WARNING: infoROM is corrupted at gpu ..." (exit 14) precedes the data; blank lines none.
    return [line.rstrip("\r") for line in text.splitlines() if line.strip() and not line.startswith("WARNING:")]


def _looks_like_header(cells: Sequence[str], fields: Sequence[str]) -> bool:
    # A data row starts with a value (an index, a pid), never with the first field's name.
    return canonical_field(cells[0]) == canonical_field(fields[0])


def _split_line(line: str, width: int, free_index: int | None) -> list[str]:
    cells = line.split(", ")
    if len(cells) == width:
        return [c.strip() for c in cells]
    if len(cells) > width and free_index is not None:
        tail = width - free_index - 1
        glued = ", ".join(cells[free_index : len(cells) - tail])
        return [c.strip() for c in cells[:free_index] + [glued] + cells[len(cells) - tail :]]
    raise NvsmiParseError(f"expected {width} comma-separated values, got {len(cells)}: {line!r}")


def split_rows(text: str, fields: Sequence[str]) -> list[dict[str, str]]:
    """Split CSV output into one ``{canonical field: raw cell}`` dict per line.

    ``fields`` is what was asked for. A header line, when present, wins: its names (units
    stripped) key the cells, so ``--format=csv`` output with extra columns parses too.
    """
    if not fields:
        raise ValueError("no fields")
    lines = _data_lines(text)
    names = [canonical_field(f) for f in fields]
    if lines and _looks_like_header(lines[0].split(", "), fields):
        names = [canonical_field(c) for c in lines[0].split(", ")]
        lines = lines[1:]
    free_index = next((names.index(f) for f in _FREE_TEXT if f in names), None)
    return [dict(zip(names, _split_line(line, len(names), free_index), strict=True)) for line in lines]


def _text(row: Mapping[str, str], field: str) -> str | None:
    value = row.get(field)  # cells come stripped from split_rows
    return None if value is None or _placeholder(value) else value


def _number(field: str, value: str) -> float:
    match = _NUMBER.fullmatch(value)
    if not match:
        raise NvsmiParseError(f"{field}: expected a number, got {value!r}")
    return float(match.group(1))


def _num(row: Mapping[str, str], field: str) -> float | None:
    value = _text(row, field)
    if value is None:
        return None
    whole = natural(value)  # what nounits output mostly is, read without the regex
    return float(whole) if whole is not None else _number(field, value)


def _int(row: Mapping[str, str], field: str) -> int | None:
    value = _text(row, field)
    if value is None:
        return None
    whole = natural(value)
    return whole if whole is not None else int(_number(field, value))


def _required(row: Mapping[str, str], field: str) -> str:
    value = _text(row, field)
    if value is None:
        raise NvsmiParseError(f"{field} missing or not available in {dict(row)!r}")
    return value


def _required_int(row: Mapping[str, str], field: str) -> int:
    value = _int(row, field)
    if value is None:
        raise NvsmiParseError(f"{field} missing or not available in {dict(row)!r}")
    return value


def parse_gpus(text: str, fields: Sequence[str] = GPU_FIELDS) -> tuple[Gpu, ...]:
    """Parse ``nvidia-smi --query-gpu=FIELDS --format=csv[,noheader][,nounits]`` output.

    ``index`` and ``uuid`` are required; any other field may be missing from ``fields`` or
    not available, and becomes ``None``.
    """
    return tuple(
        Gpu(
            index=_required_int(row, "index"),
            uuid=_required(row, "uuid"),
            name=_text(row, "name"),
            pci_bus_id=_text(row, "pci.bus_id"),
            memory_total_mib=_int(row, "memory.total"),
            memory_used_mib=_int(row, "memory.used"),
            memory_free_mib=_int(row, "memory.free"),
            utilization_gpu_pct=_int(row, "utilization.gpu"),
            utilization_memory_pct=_int(row, "utilization.memory"),
            temperature_c=_int(row, "temperature.gpu"),
            power_draw_w=_num(row, "power.draw"),
            power_limit_w=_num(row, "power.limit"),
            compute_mode=_text(row, "compute_mode"),
            mig_mode=_text(row, "mig.mode.current"),
        )
        for row in split_rows(text, fields)
    )


def parse_apps(text: str, fields: Sequence[str] = APP_FIELDS) -> tuple[GpuProcess, ...]:
    """Parse ``nvidia-smi --query-compute-apps=FIELDS --format=...`` output.

    Empty output (``noheader``) or a header alone (``csv``) means no process. Owner and
    container are not in nvidia-smi's output: they stay ``None`` here (see forge.gpu.probe).
    """
    return tuple(
        GpuProcess(
            pid=_required_int(row, "pid"),
            name=row.get("process_name", "").strip(),
            used_memory_mib=_int(row, "used_gpu_memory"),
            gpu_uuid=_required(row, "gpu_uuid"),
        )
        for row in split_rows(text, fields)
    )


@dataclass(frozen=True)
class Failure:
    """Why nvidia-smi gave no GPU table: a probe status and a sentence for a person."""

    status: ProbeStatus
    reason: str


def _first_line(output: str) -> str:
    for line in output.splitlines():
        if line.strip():
            return line.strip()
    return ""


def classify_failure(exit_status: int, output: str) -> Failure | None:
    """Map a ``--query-gpu`` exit status and its output (stdout + stderr) to a failure.

    Returns ``None`` when the output is a GPU table to parse (exit 0, or 14: the infoROM
    warning). Pure; the exact strings and codes are in the fixtures' README.
    """
    text = output.strip()
    first = _first_line(output)
    if exit_status in (0, EXIT_INFOROM_CORRUPTED) and "No devices were found" not in text:
        if exit_status == 0 and not _data_lines(output):
            return Failure(ProbeStatus.NO_GPUS, "nvidia-smi lists no GPU")
        return None
    # dash: "forge: 1: nvidia-smi: not found"; bash: "bash: line 1: nvidia-smi: command not
    # found"; both exit 127 (captured on Debian 12, edge-cases/not_found_*.txt).
    if exit_status == SHELL_NOT_FOUND or ("nvidia-smi" in first and ("not found" in first or "No such file" in first)):
        return Failure(ProbeStatus.NOT_INSTALLED, "nvidia-smi is not installed (not on the PATH of the host's shell)")
    if exit_status == SHELL_NOT_EXECUTABLE:
        return Failure(ProbeStatus.ERROR, f"nvidia-smi could not be executed: {first}")
    # Text quoted in beasteers/singuconda#6, NVIDIA/open-gpu-kernel-modules#862; exit 6 per man page.
    if "No devices were found" in text or exit_status == EXIT_NOT_FOUND:
        return Failure(ProbeStatus.NO_GPUS, "nvidia-smi found no GPU (No devices were found)")
    # "Failed to initialize NVML: No supported GPUs were found", exit 255
    # (kubernetes-sigs/dra-driver-nvidia-gpu#1008): NVML sees no GPU bound to the driver.
    if "No supported GPUs were found" in text:
        return Failure(ProbeStatus.NO_GPUS, f"nvidia-smi found no supported GPU: {first}")
    # Quoted in lyulyul/shine-cluster#50, GoogleCloudPlatform/compute-gpu-installation#18; exit 9.
    if "couldn't communicate with the NVIDIA driver" in text:
        return Failure(ProbeStatus.DRIVER_ERROR, f"the NVIDIA driver is not loaded: {first}")
    # "Failed to initialize NVML: Driver/library version mismatch" exit 18 (anderskm/gputil#55),
    # "...: Unknown Error" exit 255 (gpustack/gpustack#2078).
    if first.startswith("Failed to initialize NVML"):
        return Failure(ProbeStatus.DRIVER_ERROR, first)
    if exit_status in _DRIVER_EXITS:
        detail = f": {first}" if first else ""
        return Failure(ProbeStatus.DRIVER_ERROR, f"{_DRIVER_EXITS[exit_status]}{detail}")
    detail = f": {first}" if first else ""
    return Failure(ProbeStatus.ERROR, f"nvidia-smi exited with status {exit_status}{detail}")
