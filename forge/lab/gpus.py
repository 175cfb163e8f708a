"""The replayed ``nvidia-smi`` of each GPU host and the JSON state it renders.

The renderer is ``forge/lab/fake_gpu.py`` (a standalone stdlib-only script); this module only
installs it as ``<root>/hosts/<name>/bin/nvidia-smi`` and writes its state file.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from forge.lab.config import LabConfig

FAKE_GPU = Path(__file__).with_name("fake_gpu.py")
SHEBANG = "#!/usr/bin/python3"
FALLBACK_STATE: dict[str, Any] = {"gpus": [], "processes": [], "mode": "ok"}

PLACEHOLDER = f"""{SHEBANG}
import sys
sys.stderr.write("forge lab: forge/lab/fake_gpu.py was missing when this lab was built\\n")
sys.exit(9)
"""


def renderer_source(source: Path = FAKE_GPU) -> str:
    """The nvidia-smi script: fake_gpu.py with its first line replaced by the shebang."""
    if not source.exists():
        return PLACEHOLDER
    lines = source.read_text().splitlines(keepends=True)
    if lines and lines[0].startswith("#!"):
        lines = lines[1:]
    return SHEBANG + "\n" + "".join(lines)


def default_state(source: Path = FAKE_GPU) -> dict[str, Any]:
    """fake_gpu.default_state() when the script defines it, else an empty machine."""
    if source.exists():
        spec = importlib.util.spec_from_file_location("forge_lab_fake_gpu", source)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            fn = getattr(module, "default_state", None)
            if callable(fn):
                state = fn()
                if isinstance(state, dict):
                    return state
    return dict(FALLBACK_STATE)


def nvidia_smi(cfg: LabConfig, name: str) -> Path:
    return cfg.bin_dir(name) / "nvidia-smi"


def install(cfg: LabConfig, name: str, source: Path = FAKE_GPU) -> None:
    target = nvidia_smi(cfg, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(".nvidia-smi.tmp")
    tmp.write_text(renderer_source(source))
    tmp.chmod(0o755)
    os.replace(tmp, target)


def write_state(cfg: LabConfig, name: str, state: dict[str, Any]) -> None:
    """Write the state atomically (a reader never sees half a file); readable by the user."""
    path = cfg.gpu_state(name)
    tmp = path.with_name(".gpus.json.tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.chmod(0o644)
    os.replace(tmp, path)


def set_gpus(cfg: LabConfig, name: str, state: dict[str, Any] | None) -> None:
    """Give the host this GPU state, or with ``None`` no nvidia-smi at all."""
    if state is None:
        nvidia_smi(cfg, name).unlink(missing_ok=True)
        cfg.gpu_state(name).unlink(missing_ok=True)
        return
    write_state(cfg, name, state)
    if not nvidia_smi(cfg, name).exists():
        install(cfg, name)
