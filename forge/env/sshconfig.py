"""A managed block in ``~/.ssh/config`` so that ``ssh ENV`` reaches the environment.

The block pins the container's host keys: forge reads them with ``ssh-keyscan`` run on the GPU
host over its own verified connection, and keeps them in ``~/.ssh/forge_known_hosts`` under the
alias ``forge-ENV`` (``HostKeyAlias``), replaced at every launch (each container makes new host
keys). Nothing outside the block is touched.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from forge.env.errors import EnvError
from forge.env.names import check_name, valid_name


def begin_marker(env: str) -> str:
    return f"# >>> forge environment {env} (managed by forge migrate; edits inside are replaced) >>>"


def end_marker(env: str) -> str:
    return f"# <<< forge environment {env} <<<"


def alias(env: str) -> str:
    return f"forge-{env}"


def render_block(env: str, lines: Sequence[str]) -> str:
    """The managed block: ``Host ENV`` and ``lines`` (see :func:`forge.env.access.config_lines`)."""
    check_name(env)
    for line in lines:
        if "\n" in line or "\r" in line:
            raise EnvError(f"refusing to write a line with a line break into ~/.ssh/config: {line!r}")
    return "\n".join([begin_marker(env), f"Host {env}", *(f"    {line}" for line in lines), end_marker(env)]) + "\n"


def replace_block(text: str, env: str, block: str | None) -> str:
    """``text`` with the env's managed block replaced (or removed with ``block=None``).

    A new block goes first in the file: ssh uses the first value it finds for each option, and
    a ``Host *`` section further up would otherwise win."""
    check_name(env)
    begin, end = begin_marker(env), end_marker(env)
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    inside = after = False
    found_at: int | None = None
    for line in lines:
        if line.rstrip("\n") == begin:
            inside = True
            found_at = len(out)
            continue
        if inside:
            if line.rstrip("\n") == end:
                inside, after = False, True
            continue
        if after and not line.strip():
            after = False  # the blank line forge put after its block
            continue
        after = False
        out.append(line)
    if inside:
        raise EnvError(f"~/.ssh/config has the start of forge's block for {env!r} but not its end", hint=end)
    if block is None:
        return "".join(out)
    at = 0 if found_at is None else found_at
    if out[at:] and out[at].strip():
        block += "\n"
    return "".join(out[:at]) + block + "".join(out[at:])


def replace_known_hosts(text: str, env: str, keys: Sequence[tuple[str, str]]) -> str:
    """forge_known_hosts with the lines of ``forge-ENV`` replaced by ``keys``."""
    check_name(env)
    name = alias(env)
    kept = [line for line in text.splitlines() if line.split(" ", 1)[0] != name]
    kept += [f"{name} {kind} {key}" for kind, key in keys]
    return "\n".join(kept) + "\n" if kept else ""


def _write(path: Path, text: str) -> None:
    """Replace the file atomically; a symlink (dotfiles) is kept and its target replaced."""
    path = Path(os.path.realpath(path))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".forge-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if path.exists():
        os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def default_paths() -> tuple[Path, Path]:
    ssh = Path.home() / ".ssh"
    return ssh / "config", ssh / "forge_known_hosts"


def update(env: str, lines: Sequence[str], *, config: Path | None = None) -> Path:
    """Write (or replace) the env's block; returns the config file's path."""
    config = config or default_paths()[0]
    block = render_block(env, lines)
    _replace(config, lambda text: replace_block(text, env, block))
    return config


def has_block(env: str, *, config: Path | None = None) -> bool:
    """Whether ``~/.ssh/config`` holds forge's block for ``env`` (forge keeps it current)."""
    return valid_name(env) and begin_marker(env) in _read(config or default_paths()[0]).splitlines()


def pin_keys(env: str, keys: Sequence[tuple[str, str]], *, known_hosts: Path | None = None) -> Path:
    """Record the environment's host keys in forge's known_hosts file (under ``forge-ENV``);
    returns its path. Touches nothing else: ``~/.ssh/config`` is only written by :func:`update`."""
    known_hosts = known_hosts or default_paths()[1]
    _replace(known_hosts, lambda text: replace_known_hosts(text, env, keys))
    return known_hosts


def pinned_keys(env: str, *, known_hosts: Path | None = None) -> list[tuple[str, str]]:
    """The host keys pinned for ``env`` (empty when none)."""
    name = alias(env)
    out = []
    for line in _read(known_hosts or default_paths()[1]).splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == name:
            out.append((words[1], words[2]))
    return out


def _replace(path: Path, edit: Callable[[str], str]) -> None:
    """Write ``edit(old text)`` to ``path`` only when it differs: an unchanged file is not touched."""
    old = _read(path)
    new = edit(old)
    if new != old or not path.exists():
        _write(path, new)


def remove(env: str, *, config: Path | None = None, known_hosts: Path | None = None) -> None:
    """Remove the env's block and pinned keys; files without them are left untouched."""
    if not valid_name(env):
        return  # forge never wrote a block or keys for such a name
    d_config, d_known = default_paths()
    config, known_hosts = config or d_config, known_hosts or d_known
    if config.exists():
        _replace(config, lambda text: replace_block(text, env, None))
    if known_hosts.exists():
        _replace(known_hosts, lambda text: replace_known_hosts(text, env, []))
