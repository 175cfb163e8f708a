"""The replayed ``nvidia-smi`` of each GPU host and the JSON state it renders.

The renderer is ``forge/lab/fake_gpu.py`` (a standalone stdlib-only script), installed as
``<root>/hosts/<name>/bin/.nvidia-smi-render``. ``bin/nvidia-smi`` itself is a small ``sh``
wrapper: the queries forge's probe makes are rendered in advance whenever the state is
written (``gpus.json.d/<arguments>.out`` and ``.rc``), and the wrapper serves them after the
latency the real tool shows (about 30 ms per query on an H200 with persistence mode on);
anything else goes to the renderer. Without this, every call would start a Python
interpreter (~20 ms of CPU), and 16 hosts sharing this machine's two cores would measure
the lab's fake rather than forge.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from forge.lab.config import LabConfig

FAKE_GPU = Path(__file__).with_name("fake_gpu.py")
SHEBANG = "#!/usr/bin/python3"
RENDERER = ".nvidia-smi-render"
#: Seconds the wrapper waits before answering a pre-rendered query, like the real tool
#: (shared/fixtures meta.txt: --query-gpu 0.03 s; ssh-facts: --query-compute-apps 22 ms).
LATENCY_S = {"--query-gpu": 0.03, "--query-compute-apps": 0.022}

# $1...: nvidia-smi's arguments. A constant; the renderer's path is its only parameter.
WRAPPER = """#!/bin/sh
# forge lab: replayed nvidia-smi (see forge/lab/gpus.py). Serves pre-rendered queries.
c="${FORGE_LAB_GPU_STATE:-/nonexistent}.d/$*"
if [ -f "$c.out" ] && read rc delay < "$c.rc"; then
  sleep "$delay"
  cat "$c.out"
  exit "$rc"
fi
exec %(renderer)s "$@"
"""


def renderer_source(source: Path = FAKE_GPU) -> str:
    """The nvidia-smi renderer: fake_gpu.py with its first line replaced by the shebang."""
    lines = source.read_text().splitlines(keepends=True)
    if lines and lines[0].startswith("#!"):
        lines = lines[1:]
    return SHEBANG + "\n" + "".join(lines)


def default_state(host: str = "") -> dict[str, Any]:
    """Four idle H200s with UUIDs of the host's own (fake_gpu.default_state)."""
    from forge.lab import fake_gpu

    return fake_gpu.default_state(host)


def nvidia_smi(cfg: LabConfig, name: str) -> Path:
    return cfg.bin_dir(name) / "nvidia-smi"


def _write_executable(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, target)


def install(cfg: LabConfig, name: str, source: Path = FAKE_GPU) -> None:
    target = nvidia_smi(cfg, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    renderer = target.with_name(RENDERER)
    _write_executable(renderer, renderer_source(source))
    _write_executable(target, WRAPPER % {"renderer": renderer})


def prerendered_queries() -> list[list[str]]:
    """The nvidia-smi invocations forge's GPU probe makes (forge/gpu/probe.py)."""
    from forge.gpu.nvsmi import APP_FIELDS, GPU_FIELDS

    fmt = "--format=csv,noheader,nounits"
    return [
        ["--query-gpu=" + ",".join(GPU_FIELDS), fmt],
        ["--query-compute-apps=" + ",".join(APP_FIELDS), fmt],
    ]


def _render_cache(cache: Path, state: dict[str, Any]) -> None:
    from forge.lab import fake_gpu

    cache.mkdir(mode=0o755)
    for args in prerendered_queries():
        text, status = fake_gpu.run(args, state)
        key = " ".join(args)  # the wrapper's "$*"
        delay = LATENCY_S[args[0].split("=")[0]]
        (cache / f"{key}.out").write_text(text)
        (cache / f"{key}.rc").write_text(f"{status} {delay}\n")
    for f in cache.iterdir():
        f.chmod(0o644)


def _cache_dir(state_path: Path) -> Path:
    """Where the state's pre-rendered answers live (the wrapper's ``$FORGE_LAB_GPU_STATE.d``)."""
    return state_path.with_name(state_path.name + ".d")


def write_state(cfg: LabConfig, name: str, state: dict[str, Any]) -> None:
    """Write the state and its pre-rendered answers; readable by the lab user.

    The state file is replaced atomically (a reader never sees half a file). The old answers
    are removed first, so a query in between goes to the renderer, which reads the new state.
    """
    path = cfg.gpu_state(name)
    cache = _cache_dir(path)
    shutil.rmtree(cache, ignore_errors=True)
    tmp = path.with_name(".gpus.json.tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.chmod(0o644)
    os.replace(tmp, path)
    staging = path.with_name(".gpus.json.d.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    _render_cache(staging, state)
    os.replace(staging, cache)


def set_gpus(cfg: LabConfig, name: str, state: dict[str, Any] | None) -> None:
    """Give the host this GPU state, or with ``None`` no nvidia-smi at all."""
    if state is None:
        nvidia_smi(cfg, name).unlink(missing_ok=True)
        cfg.gpu_state(name).unlink(missing_ok=True)
        shutil.rmtree(_cache_dir(cfg.gpu_state(name)), ignore_errors=True)
        return
    write_state(cfg, name, state)
    if not nvidia_smi(cfg, name).exists():
        install(cfg, name)


def read_state(cfg: LabConfig, name: str) -> dict[str, Any] | None:
    """The host's GPU state as last written (None: the host has no nvidia-smi)."""
    path = cfg.gpu_state(name)
    if not path.exists() or not nvidia_smi(cfg, name).exists():
        return None
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def with_load(
    state: dict[str, Any], indexes: Iterable[int], *, utilization_pct: int, memory_used_mib: int
) -> dict[str, Any]:
    """``state`` with the GPUs of ``indexes`` at this utilization and memory used (0 and 0: idle
    again); the other GPUs and the processes as they were. Memory is capped at each GPU's total."""
    want = set(indexes)
    known = {g["index"] for g in state["gpus"]}
    if missing := sorted(want - known):
        raise ValueError(f"no GPU {', '.join(map(str, missing))} (the host has {', '.join(map(str, sorted(known)))})")
    if not 0 <= utilization_pct <= 100 or memory_used_mib < 0:
        raise ValueError("utilization is 0-100 %, memory used at least 0 MiB")
    gpus = []
    for g in state["gpus"]:
        if g["index"] in want:
            used = min(memory_used_mib, g.get("memory_total_mib") or memory_used_mib)
            g = {**g, "utilization_gpu_pct": utilization_pct, "memory_used_mib": used}
            g["utilization_memory_pct"] = min(100, utilization_pct // 2)
        gpus.append(g)
    return {**state, "gpus": gpus}


def with_holder(state: dict[str, Any], uuids: Iterable[str], pid: int | None, memory_used_mib: int) -> dict[str, Any]:
    """``state`` with the processes on these GPUs replaced: by one process ``pid`` using
    ``memory_used_mib`` on each, or (``pid`` None) by none."""
    chosen = set(uuids)
    kept = [p for p in state.get("processes", []) if p.get("gpu_uuid") not in chosen]
    if pid is not None:
        name = "python3"
        kept += [{"pid": pid, "name": name, "used_memory_mib": memory_used_mib, "gpu_uuid": u} for u in sorted(chosen)]
    return {**state, "processes": kept}


#: The MIG layout of the captured H200 (tests/fixtures/nvidia-smi/h200-mig-driver590/): GPU
#: instance 2 split into two compute instances, then 2g.35gb and two 1g.18gb; memory used idle.
MIG_LAYOUT = (
    (0, 2, 0, "1c.3g.71gb", 71424, 22),
    (1, 2, 1, "2c.3g.71gb", 71424, 22),
    (2, 3, 0, "2g.35gb", 33280, 17),
    (3, 9, 0, "1g.18gb", 16384, 9),
    (4, 10, 0, "1g.18gb", 16384, 9),
)


def with_mig(state: dict[str, Any], indexes: Iterable[int]) -> dict[str, Any]:
    """``state`` with the GPUs of ``indexes`` in MIG mode, split as the captured H200 was (MIG
    UUIDs derived from each GPU's), their processes gone."""
    import uuid

    want = set(indexes)
    known = {g["index"] for g in state["gpus"]}
    if missing := sorted(want - known):
        raise ValueError(f"no GPU {', '.join(map(str, missing))} (the host has {', '.join(map(str, sorted(known)))})")
    gpus, gone = [], set()
    for g in state["gpus"]:
        if g["index"] in want:
            devices = [
                {"index": i, "gi": gi, "ci": ci, "profile": profile, "memory_total_mib": total, "memory_used_mib": used,
                 "uuid": f"MIG-{uuid.uuid5(uuid.NAMESPACE_URL, g['uuid'] + f'/mig/{i}')}"}
                for i, gi, ci, profile, total, used in MIG_LAYOUT
            ]  # fmt: skip
            g = {**g, "mig_mode": "Enabled", "mig_devices": devices, "utilization_gpu_pct": None,
                 "utilization_memory_pct": None}  # fmt: skip
            gone.add(g["uuid"])
        gpus.append(g)
    kept = [p for p in state.get("processes", []) if p.get("gpu_uuid") not in gone]
    return _mig_memory({**state, "gpus": gpus, "processes": kept})


def with_slice_holder(
    state: dict[str, Any], index: int, device: int, pid: int | None, memory_used_mib: int
) -> dict[str, Any]:
    """``state`` with MIG device ``device`` of GPU ``index`` used by process ``pid`` (None:
    by no process), ``memory_used_mib`` of its GPU instance's memory."""
    gpu = next((g for g in state["gpus"] if g["index"] == index), None)
    if gpu is None or gpu.get("mig_mode") != "Enabled":
        raise ValueError(f"GPU {index} is not in MIG mode (forge lab gpu HOST --mig {index})")
    dev = next((d for d in gpu.get("mig_devices", []) if d["index"] == device), None)
    if dev is None:
        raise ValueError(f"GPU {index} has no MIG device {device}")
    same_gi = lambda p: p.get("gpu_uuid") == gpu["uuid"] and p.get("gi") == dev["gi"]  # noqa: E731
    kept = [p for p in state.get("processes", []) if not same_gi(p)]
    if pid is not None:
        kept.append({"pid": pid, "name": "python3", "used_memory_mib": memory_used_mib, "gpu_uuid": gpu["uuid"],
                     "gi": dev["gi"], "ci": dev["ci"]})  # fmt: skip
    return _mig_memory({**state, "processes": kept})


def _mig_memory(state: dict[str, Any]) -> dict[str, Any]:
    """A MIG GPU's memory used: its GPU instances' (what --query-gpu reports for it)."""
    from forge.lab import fake_gpu

    gpus = []
    for g in state["gpus"]:
        if g.get("mig_mode") == "Enabled":
            instances = {d["gi"] for d in g.get("mig_devices", [])}
            g = {**g, "memory_used_mib": sum(fake_gpu._gi_used(g, gi, state) for gi in instances)}
        gpus.append(g)
    return {**state, "gpus": gpus}
