"""The lab's inventory, ``<root>/hosts.toml``, in the schema forge's loader reads."""

from __future__ import annotations

import json
from pathlib import Path

from forge.lab import registry
from forge.lab.config import BASE_IMAGE, LabConfig


def _s(value: str | Path) -> str:
    # A JSON string is a valid TOML basic string for the characters paths and names use.
    return json.dumps(str(value))


def render(cfg: LabConfig, user_home: Path) -> str:
    """The inventory; behind a bastion, hosts are named by their aliases in the lab's
    ssh_config (``ssh_alias``), which forge reads instead of ~/.ssh/config."""
    data = cfg.host("data")
    lines = [
        "# Inventory of the forge lab (written by `forge lab up`).",
        "[defaults]",
        f"user = {_s(cfg.user)}",
        f"identity_file = {_s(cfg.identity_file)}",
        f"known_hosts = {_s(cfg.known_hosts)}",
        *([f"ssh_config = {_s(cfg.ssh_config)}"] if cfg.bastion else []),
        "",
        "[data]",
        f"address = {_s(data.address)}",
        f"user = {_s(cfg.user)}",
        f"path = {_s(cfg.data_dir)}",
        f"identity_file = {_s(user_home / '.ssh' / 'id_ed25519')}   # path on the GPU hosts",
        f"known_hosts = {_s(user_home / '.ssh' / 'known_hosts')}     # path on the GPU hosts",
        "",
        "[environment]",
        'name = "dev"',
        f"image = {_s(BASE_IMAGE)}",
        'mount = "/data"',
    ]
    if (registry.directory(cfg) / "config.yml").exists():
        lines += [
            "",
            "[registry]  # the lab's docker-registry; hosts log in with docker's own config",
            f"address = {_s(registry.address(cfg))}",
        ]
    for host in cfg.gpu_hosts():
        lines += [
            "",
            "[[hosts]]",
            f"name = {_s(host.name)}",
            f"ssh_alias = {_s(host.name)}" if cfg.bastion else f"address = {_s(host.address)}",
            f"tags = {json.dumps(['lab', host.flavor])}",
        ]
    return "\n".join(lines) + "\n"


def write(cfg: LabConfig, user_home: Path) -> Path:
    cfg.inventory.write_text(render(cfg, user_home))
    cfg.inventory.chmod(0o644)
    return cfg.inventory
