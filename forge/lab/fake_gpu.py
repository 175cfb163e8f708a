#!/usr/bin/python3
"""A replayed ``nvidia-smi`` for the test fleet: prints what a real one would, from a JSON file.

STANDALONE: the lab copies this file onto each GPU host as ``nvidia-smi`` and runs it with
Debian's ``/usr/bin/python3`` (3.11) as an ordinary user. Standard library only; it must never
import forge.

The state file is the one named by the environment variable ``FORGE_LAB_GPU_STATE``; when that
is unset, ``/etc/forge-lab/gpu-state.json`` if it exists, else :func:`default_state`. A state
file that is named but unreadable is an error (exit 255, message on stderr).

State schema (JSON object; every key optional unless marked)::

    {
      "mode": "ok" | "no_devices" | "driver_not_loaded",     # default "ok"
      "driver_version": "580.159.04", "cuda_version": "13.0",
      "timestamp": "Sat Nov 28 17:35:45 2026",   # plain table's first line; default: now
      "gpus": [{
        "index": 0,                               # required
        "uuid": "GPU-...",                        # required
        "name": "NVIDIA H200", "pci_bus_id": "00000000:00:06.0",
        "memory_total_mib": 143771, "memory_used_mib": 0,
        "memory_free_mib": 143156,                # default: total - used (real drivers also
                                                  #   subtract a reserve; set it to match)
        "utilization_gpu_pct": 0, "utilization_memory_pct": 0,
        "temperature_c": 34,
        "power_draw_w": 80.5, "power_limit_w": 700.0,   # printed with 2 decimals: "80.50"
        "compute_mode": "Default", "mig_mode": "Disabled",
        "persistence_mode": "Enabled", "pstate": "P0", "fan_speed_pct": null
      }],
      "processes": [{"pid": 455, "name": "python3", "used_memory_mib": 41834,
                     "gpu_uuid": "GPU-..."}]
    }

A GPU with ``"mig_mode": "Enabled"`` may list its MIG devices, as an H200's were captured
(tests/fixtures/nvidia-smi/h200-mig-driver590/)::

      "mig_devices": [{"index": 3, "gi": 9, "ci": 0, "profile": "1g.18gb", "uuid": "MIG-...",
                       "memory_total_mib": 16384, "memory_used_mib": 9}]

and a process on one names its GPU instance and compute instance (``"gi": 9, "ci": 0``); its
memory counts on every device of that GPU instance (they share it), and on the GPU.

``null`` prints as ``[N/A]`` (``N/A`` in the plain table). A string value is printed as is, so
``"[Not Supported]"`` passes through; a number gets its unit unless ``nounits``.

Supported invocations (output to stdout, like the real tool, including error messages):

- ``--query-gpu=FIELDS --format=csv[,noheader][,nounits]``
- ``--query-compute-apps=FIELDS --format=...``
- ``-L``: the GPUs and their MIG devices; ``-q``: the GPUs with their MIG devices and processes
  (the parts of the real report that say what the GPU is split into and who runs where)
- no arguments: the plain table (driver 580 layout)
- an unknown field: ``Field "x" is not a valid field to query.`` and a blank line, exit 2
- mode ``no_devices``: ``No devices were found``, exit 6
- mode ``driver_not_loaded``: ``NVIDIA-SMI has failed because it couldn't communicate with the
  NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.``, exit 9

Messages and exit codes are the real ones (see tests/fixtures/nvidia-smi/*/README.md), except
the message for an invalid argument combination, which is recalled, not captured.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

STATE_ENV = "FORGE_LAB_GPU_STATE"
DEFAULT_STATE_PATH = "/etc/forge-lab/gpu-state.json"

EXIT_OK = 0
EXIT_INVALID_ARGUMENT = 2
EXIT_NOT_FOUND = 6
EXIT_DRIVER_NOT_LOADED = 9
EXIT_OTHER = 255

NO_DEVICES = "No devices were found\n"
DRIVER_NOT_LOADED = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)
INVALID_COMBINATION = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n"

NA = "[N/A]"

Value = Any  # int | float | str | None, as read from JSON


def default_state(seed: str = "") -> dict[str, Any]:
    """Four idle H200s (driver 580) with distinct, plausible UUIDs and bus ids.

    With a ``seed`` (the lab passes the host's name) the UUIDs are derived from it, so no two
    hosts share a GPU, as on a real fleet; without one they are fixed.
    """
    uuids: tuple[str, ...] = (
        "GPU-3b9e8f4a-6c1d-4e2f-9a7b-1c2d3e4f5a61",
        "GPU-7d2c1b0a-9e8f-4d6c-8b5a-2f3e4d5c6b72",
        "GPU-c41a5e92-0b7d-4f38-a6e1-3d4c5b6a7f83",
        "GPU-e85f3d27-4a6b-4c91-b2d8-4e5f6a7b8c94",
    )
    if seed:
        import uuid

        uuids = tuple(f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'forge-lab/{seed}/{i}')}" for i in range(4))
    buses = ("00000000:18:00.0", "00000000:2A:00.0", "00000000:3A:00.0", "00000000:5D:00.0")
    gpus = [
        {
            "index": i,
            "uuid": uuid,
            "name": "NVIDIA H200",
            "pci_bus_id": bus,
            "memory_total_mib": 143771,
            "memory_used_mib": 0,
            "utilization_gpu_pct": 0,
            "utilization_memory_pct": 0,
            "temperature_c": 31 + i,
            "power_draw_w": 76.5 + i,
            "power_limit_w": 700.0,
            "compute_mode": "Default",
            "mig_mode": "Disabled",
        }
        for i, (uuid, bus) in enumerate(zip(uuids, buses, strict=True))
    ]
    return {"mode": "ok", "driver_version": "580.159.04", "cuda_version": "13.0", "gpus": gpus, "processes": []}


# ---------------------------------------------------------------------------------- fields


def _memory_free(gpu: dict[str, Any]) -> Value:
    if "memory_free_mib" in gpu:
        return gpu["memory_free_mib"]
    total, used = gpu.get("memory_total_mib"), gpu.get("memory_used_mib")
    if isinstance(total, int) and isinstance(used, int):
        return total - used
    return None


# field -> (unit shown with values and in the header, getter(gpu, state))
GPU_FIELDS: dict[str, tuple[str, Any]] = {
    "index": ("", lambda g, s: g.get("index")),
    "uuid": ("", lambda g, s: g.get("uuid")),
    "gpu_uuid": ("", lambda g, s: g.get("uuid")),
    "name": ("", lambda g, s: g.get("name")),
    "gpu_name": ("", lambda g, s: g.get("name")),
    "pci.bus_id": ("", lambda g, s: g.get("pci_bus_id")),
    "gpu_bus_id": ("", lambda g, s: g.get("pci_bus_id")),
    "count": ("", lambda g, s: len(s.get("gpus", []))),
    "driver_version": ("", lambda g, s: s.get("driver_version", "580.159.04")),
    "persistence_mode": ("", lambda g, s: g.get("persistence_mode", "Enabled")),
    "pstate": ("", lambda g, s: g.get("pstate", "P0")),
    "memory.total": ("MiB", lambda g, s: g.get("memory_total_mib")),
    "memory.used": ("MiB", lambda g, s: g.get("memory_used_mib")),
    "memory.free": ("MiB", lambda g, s: _memory_free(g)),
    "utilization.gpu": ("%", lambda g, s: g.get("utilization_gpu_pct")),
    "utilization.memory": ("%", lambda g, s: g.get("utilization_memory_pct")),
    "temperature.gpu": ("", lambda g, s: g.get("temperature_c")),
    "power.draw": ("W", lambda g, s: g.get("power_draw_w")),
    "power.limit": ("W", lambda g, s: g.get("power_limit_w")),
    "compute_mode": ("", lambda g, s: g.get("compute_mode")),
    "mig.mode.current": ("", lambda g, s: g.get("mig_mode")),
}

# field -> (unit, getter(process, gpu or {}, state))
APP_FIELDS: dict[str, tuple[str, Any]] = {
    "pid": ("", lambda p, g, s: p.get("pid")),
    "process_name": ("", lambda p, g, s: p.get("name")),
    "name": ("", lambda p, g, s: p.get("name")),
    "used_gpu_memory": ("MiB", lambda p, g, s: p.get("used_memory_mib")),
    "used_memory": ("MiB", lambda p, g, s: p.get("used_memory_mib")),
    "gpu_uuid": ("", lambda p, g, s: p.get("gpu_uuid")),
    "gpu_bus_id": ("", lambda p, g, s: g.get("pci_bus_id")),
    "gpu_name": ("", lambda p, g, s: g.get("name")),
}


def _cell(value: Value, unit: str, units: bool) -> str:
    if value is None:
        return NA
    if isinstance(value, str):
        return value  # "[Not Supported]" and friends, printed as given
    if isinstance(value, bool):
        return "Enabled" if value else "Disabled"
    text = f"{value:.2f}" if unit == "W" else str(value)  # watts: always 2 decimals
    return f"{text} {unit}" if units and unit else text


def render_csv(
    fields: list[str],
    rows: list[list[Value]],
    units_of: list[str],
    *,
    header: bool,
    units: bool,
) -> str:
    """CSV the way nvidia-smi writes it: ", " between cells, no quoting, "\\n" after rows."""
    out = []
    if header:
        out.append(", ".join(f"{f} [{u}]" if u and units else f for f, u in zip(fields, units_of, strict=True)))
    for row in rows:
        out.append(", ".join(_cell(v, u, units) for v, u in zip(row, units_of, strict=True)))
    return "".join(line + "\n" for line in out)


def _gpus(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPUs in index order, as nvidia-smi lists them."""
    return sorted(state.get("gpus", []), key=lambda g: g.get("index", 0))


def _processes(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The processes by their GPU's index, then pid, as nvidia-smi lists them."""
    index_of = {g.get("uuid"): g.get("index", 0) for g in state.get("gpus", [])}
    return sorted(state.get("processes", []), key=lambda p: (index_of.get(p.get("gpu_uuid"), 0), p.get("pid", 0)))


def query_gpu(state: dict[str, Any], fields: list[str], *, header: bool, units: bool) -> str:
    rows = [[GPU_FIELDS[f][1](g, state) for f in fields] for g in _gpus(state)]
    return render_csv(fields, rows, [GPU_FIELDS[f][0] for f in fields], header=header, units=units)


def query_apps(state: dict[str, Any], fields: list[str], *, header: bool, units: bool) -> str:
    by_uuid = {g.get("uuid"): g for g in state.get("gpus", [])}
    procs = _processes(state)
    rows = [[APP_FIELDS[f][1](p, by_uuid.get(p.get("gpu_uuid"), {}), state) for f in fields] for p in procs]
    return render_csv(fields, rows, [APP_FIELDS[f][0] for f in fields], header=header, units=units)


# ------------------------------------------------------------------------------ plain table

_WIDE = "+" + "-" * 89 + "+"
_GRID = "+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"


def _na(value: Value, fmt: str = "{}") -> str:
    return "N/A" if value is None or (isinstance(value, str) and value.startswith("[")) else fmt.format(value)


def plain_table(state: dict[str, Any]) -> str:
    """The default ``nvidia-smi`` table, in the layout of driver 580."""
    driver = state.get("driver_version", "580.159.04")
    cuda = state.get("cuda_version", "13.0")
    stamp = state.get("timestamp") or time.asctime()
    lines = [
        f"{stamp}       ",
        _WIDE,
        f"| NVIDIA-SMI {driver:<23}Driver Version: {driver:<15}CUDA Version: {cuda:<9}|",
        _GRID,
        "| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |",
        "| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |",
        "|                                         |                        |               MIG M. |",
        "|" + "=" * 41 + "+" + "=" * 24 + "+" + "=" * 22 + "|",
    ]
    gpus = _gpus(state)
    for gpu in gpus:
        pm = "On" if gpu.get("persistence_mode", "Enabled") == "Enabled" else "Off"
        name = str(gpu.get("name") or "")[:31]
        fan = _na(gpu.get("fan_speed_pct"), "{}%")
        temp = _na(gpu.get("temperature_c"), "{}C")
        draw = _na(gpu.get("power_draw_w"), "{:.0f}W")
        limit = _na(gpu.get("power_limit_w"), "{:.0f}W")
        used = _na(gpu.get("memory_used_mib"), "{}MiB")
        total = _na(gpu.get("memory_total_mib"), "{}MiB")
        util = _na(gpu.get("utilization_gpu_pct"), "{}%")
        mig = _na(gpu.get("mig_mode"))
        lines += [
            f"| {gpu.get('index', 0):>3}  {name:<31}{pm:<4}"
            f"|   {str(gpu.get('pci_bus_id') or ''):<16} Off "
            f"| {gpu.get('ecc_errors', 0):>20} |",
            f"|{fan:>4}{temp:>6}{gpu.get('pstate', 'P0'):>6}{draw:>16} / {limit:>5} "
            f"|{used:>11} / {total:>9} "
            f"|{util:>8}{_na(gpu.get('compute_mode')):>13} |",
            f"|{'':41}|{'':24}|{mig:>21} |",
            _GRID,
        ]
    lines += [
        "",
        _WIDE,
        "| Processes:" + " " * 78 + "|",
        "|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |",
        "|        ID   ID                                                               Usage      |",
        "|" + "=" * 89 + "|",
    ]
    index_of = {g.get("uuid"): g.get("index", 0) for g in gpus}
    procs = _processes(state)
    if not procs:
        lines.append("|  No running processes found" + " " * 61 + "|")
    for proc in procs:
        name = str(proc.get("name") or "")
        if len(name) > 38:  # long names keep their tail (the layout's truncation, recalled)
            name = "..." + name[-35:]
        memory = _na(proc.get("used_memory_mib"), "{}MiB")
        lines.append(
            f"|  {index_of.get(proc.get('gpu_uuid'), 0):>3}   N/A  N/A {proc.get('pid', 0):>15}"
            f"      C   {name:<38}{memory:>8} |"
        )
    lines.append(_WIDE)
    return "".join(line + "\n" for line in lines)


# ------------------------------------------------------------------------------ command line


def load_state() -> dict[str, Any]:
    path = os.environ.get(STATE_ENV)
    if not path:
        if not os.path.exists(DEFAULT_STATE_PATH):
            return default_state()
        path = DEFAULT_STATE_PATH
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    if not isinstance(state, dict):
        raise ValueError("the state must be a JSON object")
    return state


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


# ------------------------------------------------------------------------------ MIG: -L and -q


def _gi_used(gpu: dict[str, Any], gi: Any, state: dict[str, Any]) -> int:
    """Memory used on a GPU instance: its devices' own, plus its processes'."""
    base = max((d.get("memory_used_mib") or 0 for d in gpu.get("mig_devices", []) if d.get("gi") == gi), default=0)
    procs = [p for p in state.get("processes", []) if p.get("gpu_uuid") == gpu.get("uuid") and p.get("gi") == gi]
    return int(base) + sum(int(p.get("used_memory_mib") or 0) for p in procs)


def list_gpus(state: dict[str, Any]) -> str:
    """``nvidia-smi -L`` (driver 590 layout)."""
    lines = []
    for g in _gpus(state):
        lines.append(f"GPU {g.get('index', 0)}: {g.get('name')} (UUID: {g.get('uuid')})")
        if g.get("mig_mode") == "Enabled":
            for d in sorted(g.get("mig_devices", []), key=lambda d: d.get("index", 0)):
                lines.append(f"  MIG {str(d.get('profile')):<12}Device{d.get('index', 0):>3}: (UUID: {d.get('uuid')})")
    return "".join(line + "\n" for line in lines)


def _kv(indent: int, key: str, value: object, width: int = 55) -> str:
    return f"{' ' * indent + key:<{width}}: {value}"


def query_report(state: dict[str, Any]) -> str:
    """``nvidia-smi -q``, the parts forge reads (driver 590 layout): per GPU its MIG mode, its
    MIG devices with their shared memory, its processes with their GPU and compute instances."""
    gpus = _gpus(state)
    stamp = state.get("timestamp") or time.asctime()
    lines = ["", "==============NVSMI LOG==============", "", _kv(0, "Timestamp", stamp),
             _kv(0, "Driver Version", state.get("driver_version", "580.159.04")), "",
             _kv(0, "Attached GPUs", len(gpus))]  # fmt: skip
    for g in gpus:
        mig = g.get("mig_mode") or "N/A"
        lines += [f"GPU {g.get('pci_bus_id')}", _kv(4, "Product Name", g.get("name")), "    MIG Mode",
                  _kv(8, "Current", mig), _kv(8, "Pending", mig)]  # fmt: skip
        for d in sorted(g.get("mig_devices", []) if mig == "Enabled" else [], key=lambda d: d.get("index", 0)):
            used = _gi_used(g, d.get("gi"), state)
            total = int(d.get("memory_total_mib") or 0)
            lines += ["    MIG Device", _kv(8, "Index", d.get("index")), _kv(8, "GPU Instance ID", d.get("gi")),
                      _kv(8, "Compute Instance ID", d.get("ci")), "        Shared FB Memory Usage",
                      _kv(12, "Total", f"{total} MiB"), _kv(12, "Reserved", "0 MiB"), _kv(12, "Used", f"{used} MiB"),
                      _kv(12, "Free", f"{total - used} MiB")]  # fmt: skip
        procs = [p for p in _processes(state) if p.get("gpu_uuid") == g.get("uuid")]
        if not procs:
            lines.append(_kv(4, "Processes", "None"))
            continue
        lines.append("    Processes")
        for p in procs:
            lines += [_kv(8, "GPU instance ID", p.get("gi", "N/A"), 42),
                      _kv(8, "Compute instance ID", p.get("ci", "N/A"), 42), _kv(8, "Process ID", p.get("pid"), 42),
                      _kv(12, "Type", "C", 42), _kv(12, "Name", p.get("name"), 42),
                      _kv(12, "Used GPU Memory", f"{p.get('used_memory_mib')} MiB", 42)]  # fmt: skip
    return "".join(line + "\n" for line in lines)


def run(args: list[str], state: dict[str, Any]) -> tuple[str, int]:
    """Pure core: the stdout text and exit status for these arguments and this state."""
    if args in (["-L"], ["-q"]):
        failed = _failure(state)
        if failed is not None:
            return failed
        return (list_gpus(state) if args == ["-L"] else query_report(state)), EXIT_OK
    gpu_query = _option(args, "--query-gpu")
    app_query = _option(args, "--query-compute-apps")
    fmt = _option(args, "--format")
    if args and (gpu_query is None) == (app_query is None):
        return INVALID_COMBINATION, EXIT_INVALID_ARGUMENT
    if args and fmt is None:
        return INVALID_COMBINATION, EXIT_INVALID_ARGUMENT
    options: set[str] = set()
    fields: list[str] = []
    if args:
        options = {o.strip() for o in (fmt or "").split(",")}
        if "csv" not in options or not options <= {"csv", "noheader", "nounits"}:
            return INVALID_COMBINATION, EXIT_INVALID_ARGUMENT
        known = GPU_FIELDS if gpu_query is not None else APP_FIELDS
        fields = [f.strip() for f in (gpu_query or app_query or "").split(",")]
        for field in fields:
            if field not in known:
                return f'Field "{field}" is not a valid field to query.\n\n', EXIT_INVALID_ARGUMENT
    failed = _failure(state)
    if failed is not None:
        return failed
    if not args:
        return plain_table(state), EXIT_OK
    header, units = "noheader" not in options, "nounits" not in options
    if gpu_query is not None:
        return query_gpu(state, fields, header=header, units=units), EXIT_OK
    return query_apps(state, fields, header=header, units=units), EXIT_OK


def _failure(state: dict[str, Any]) -> tuple[str, int] | None:
    mode = state.get("mode", "ok")
    if mode == "no_devices":
        return NO_DEVICES, EXIT_NOT_FOUND
    if mode == "driver_not_loaded":
        return DRIVER_NOT_LOADED, EXIT_DRIVER_NOT_LOADED
    if mode != "ok":
        return f"forge lab: unknown mode {mode!r} in the GPU state\n", EXIT_OTHER
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        state = load_state()
    except (OSError, ValueError) as e:
        sys.stderr.write(f"forge lab: cannot read the GPU state: {e}\n")
        return EXIT_OTHER
    text, status = run(list(sys.argv[1:] if argv is None else argv), state)
    sys.stdout.write(text)
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
