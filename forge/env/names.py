"""Environment names: one word wherever forge writes one (a container label, a hostname, a
``Host`` line of ``~/.ssh/config``, a known_hosts alias), checked before anything is created."""

from __future__ import annotations

import re

from forge.env.errors import EnvError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def valid_name(env: str) -> bool:
    return bool(_NAME.match(env))


def check_name(env: str) -> None:
    if not valid_name(env):
        raise EnvError(
            f"environment name {env!r} may only hold letters, digits, '_', '.' and '-', "
            "and starts with a letter or digit"
        )
