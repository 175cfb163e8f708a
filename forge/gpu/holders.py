"""Who holds a GPU: the forge environment it is given to (its container or claim, by the
labels ``forge.env`` and ``forge.owner``) and the users of the processes on it.

Names come from the hosts (process owners, container labels anyone with docker there can
set): only names that look like a user or an environment name are kept, anything else is
``?``, so what forge shows or records holds no markup, control characters or unbounded text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from forge.gpu.policy import GpuVerdict

#: What a user name may look like (POSIX-ish, also the ``user@REALM`` of some sites). Names
#: end at ``\Z``: ``$`` would also match before a final newline.
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}\$?\Z")
#: An environment name as forge makes them (forge.env.names), bounded.
_ENV = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")

UNKNOWN = "?"


@dataclass(frozen=True, order=True)
class Holder:
    """Who holds a GPU: a user, and the forge environment when it is one's."""

    user: str
    env: str = ""  # "" when the GPU is not held through a forge environment

    def __str__(self) -> str:
        return f"{self.user} [{self.env}]" if self.env else self.user


def user_name(value: str | None) -> str:
    return value if value and _USER.match(value) else UNKNOWN


def env_name(value: str | None) -> str:
    if not value:
        return ""
    return value if _ENV.match(value) else UNKNOWN


def holders_of(v: GpuVerdict) -> tuple[Holder, ...]:
    """The environment the GPU is given to, and the users of its processes (their forge
    environment when they run in one), each once."""
    found: set[Holder] = set()
    if v.hold is not None:
        found.add(Holder(user_name(v.hold.owner), env_name(v.hold.env) or UNKNOWN))
    for p in v.processes:
        if p.env_name or p.env_owner:
            found.add(Holder(user_name(p.env_owner), env_name(p.env_name) or UNKNOWN))
        else:
            found.add(Holder(user_name(p.user)))
    # A user's own process on a GPU given to their environment is that environment's, not a
    # second holder (unknown users are not merged: nothing says they are the same).
    in_envs = {h.user for h in found if h.env and h.user != UNKNOWN}
    return tuple(sorted(h for h in found if h.env or h.user not in in_envs))
