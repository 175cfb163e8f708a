"""Environment names: one word wherever forge writes one (a container label, a hostname, a
``Host`` line of ``~/.ssh/config``, a known_hosts alias), checked before anything is created;
and the names of the images an environment's changes are committed to."""

from __future__ import annotations

import re

from forge.env.errors import EnvError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


def valid_name(env: str) -> bool:
    return bool(_NAME.match(env))


def check_name(env: str) -> None:
    if not valid_name(env):
        raise EnvError(
            f"environment name {env!r} may only hold letters, digits, '_', '.' and '-', "
            "and starts with a letter or digit"
        )


KEEP_REPO = "forge-keep"  # where `migrate --keep-changes` and `forge reclaim` commit a container
_REPO_UNSAFE = re.compile(r"[^a-z0-9_./-]")


def keep_repo(env: str, owner: str) -> str:
    """The repository an environment's changes are committed to: ``forge-keep/OWNER-ENV``."""
    return _REPO_UNSAFE.sub("-", f"{KEEP_REPO}/{owner}-{env}".lower())
