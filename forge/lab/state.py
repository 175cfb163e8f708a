"""``<root>/lab.json``: how a lab was built and what it changed outside its root, so that
``down`` (even of a half-built lab) undoes exactly that."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from forge.lab.config import LabConfig
from forge.lab.errors import LabError

_CONFIG_KEYS = (
    "hosts",
    "bridge",
    "network",
    "netns_prefix",
    "docker_subnet_base",
    "user",
    "flavors",
    "bastion",
    "other_user",
    "docker_group",
    "inner_network",
)
#: What a lab is made of (users, groups, files). A lab recorded with another layout was built
#: by another version of forge: it has to come down before this one brings it up again.
LAYOUT = 2


def load(root: Path) -> dict[str, Any] | None:
    path = root / "lab.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LabError(f"{path} is unreadable: {e}", hint="remove it by hand") from e
    if not isinstance(data, dict):
        raise LabError(f"{path} is not a JSON object", hint="remove it by hand")
    return data


def config_from(root: Path, data: dict[str, Any]) -> LabConfig:
    kw = {k: data[k] for k in _CONFIG_KEYS if k in data}
    if "flavors" in kw:
        kw["flavors"] = tuple(kw["flavors"])
    return LabConfig(root=root, **kw)


def config_dict(cfg: LabConfig) -> dict[str, Any]:
    """The recorded part of a config, as JSON values."""
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k in _CONFIG_KEYS}
    d["flavors"] = list(cfg.flavors)
    return d


def differences(data: dict[str, Any], cfg: LabConfig) -> list[str]:
    """How the lab recorded in ``data`` differs from ``cfg`` ("flavors ['bookworm'], not
    ['trixie']"); a record of another layout differs in that."""
    if data.get("layout", 1) != LAYOUT:
        return [f"layout {data.get('layout', 1)} (an older forge lab), not {LAYOUT}"]
    recorded = config_dict(config_from(cfg.root, data))
    return [f"{k} {recorded[k]!r}, not {v!r}" for k, v in config_dict(cfg).items() if recorded[k] != v]


def save(cfg: LabConfig, **changes: Any) -> dict[str, Any]:
    """Write the config plus the given flags, keeping flags recorded earlier."""
    data = load(cfg.root) or {"layout": LAYOUT}
    data.update(config_dict(cfg))
    for key, value in changes.items():
        # A flag once set stays set (a second `up` must not forget what the first changed).
        if key not in data or (isinstance(value, bool) and not data[key]):
            data[key] = value
    write(cfg, data)
    return data


def write(cfg: LabConfig, data: dict[str, Any]) -> None:
    """Replace the record (atomically)."""
    cfg.root.mkdir(parents=True, exist_ok=True)
    tmp = cfg.state_file.with_name(".lab.json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, cfg.state_file)


CLAIMS = Path("/run/forge-lab")


def claim_network(cfg: LabConfig) -> None:
    """Record that this root owns its bridge (and so its netns names and addresses); refuse
    when another lab's root holds it. Lives in /run, which forgets it at reboot, like the
    namespaces themselves."""
    CLAIMS.mkdir(parents=True, exist_ok=True)
    path = CLAIMS / cfg.bridge
    try:
        holder = path.read_text().strip()
    except OSError:
        holder = ""
    if holder and holder != str(cfg.root) and (Path(holder) / "lab.json").exists():
        raise LabError(
            f"bridge {cfg.bridge} (and its addresses and namespaces) belongs to the lab at {holder}",
            hint=f"take that one down first (`forge lab down --root {holder}`), or use it",
        )
    path.write_text(f"{cfg.root}\n")


def release_network(cfg: LabConfig) -> None:
    path = CLAIMS / cfg.bridge
    try:
        if path.read_text().strip() == str(cfg.root):
            path.unlink()
    except OSError:
        pass
