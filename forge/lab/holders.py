"""Processes that hold a lab host's replayed GPUs as a given user (`forge lab gpu --user`).

The replayed nvidia-smi lists a process per busy GPU; forge's probe names its owner from the
host's process table (`ps`), which lab hosts share with this machine. So a holder is a real
process, ``sleep`` run as that user inside the host's network namespace (and so ended by
`forge lab down` with the namespace's other processes); its pid goes into the GPU state.
Which holder holds which GPUs is kept in ``<host dir>/gpu-holders.json``.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path

from forge.lab import netns
from forge.lab.config import LabConfig
from forge.lab.errors import LabError
from forge.lab.proc import kill_all, pid_alive


def _path(cfg: LabConfig, host: str) -> Path:
    return cfg.host_dir(host) / "gpu-holders.json"


def held(cfg: LabConfig, host: str) -> dict[int, list[str]]:
    """Live holders of the host: pid -> the GPU UUIDs it holds."""
    try:
        data = json.loads(_path(cfg, host).read_text())
    except (OSError, ValueError):
        return {}
    return {int(pid): list(uuids) for pid, uuids in data.items() if pid_alive(int(pid))}


def _save(cfg: LabConfig, host: str, holders: dict[int, list[str]]) -> None:
    path = _path(cfg, host)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({str(pid): uuids for pid, uuids in holders.items()}))
    os.replace(tmp, path)


def start(cfg: LabConfig, host: str, netns_name: str, user: str, uuids: list[str]) -> int:
    """A process of ``user`` on the host holding these GPUs; its pid."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise LabError(f"no user {user!r} on this machine", hint="the lab's hosts share its users") from None
    argv = [*netns.nsenter(netns_name), "setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
            "sleep", "infinity"]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    holders = held(cfg, host)
    holders[proc.pid] = uuids
    _save(cfg, host, holders)
    return proc.pid


def release(cfg: LabConfig, host: str, uuids: set[str] | None = None) -> None:
    """End the holders of these GPUs (None: all of the host's)."""
    holders = held(cfg, host)
    gone = [pid for pid, held_uuids in holders.items() if uuids is None or set(held_uuids) & uuids]
    kill_all(gone, grace=2.0)
    _save(cfg, host, {pid: u for pid, u in holders.items() if pid not in gone})
