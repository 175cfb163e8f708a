"""``[notify] command``: tell people what forge did, through a command of their own (mail, a
chat webhook script), run on the client with the event in environment variables.

The command is the user's own configuration and runs as given; nothing read from a host is
ever put on its command line, only in ``FORGE_*`` variables (checked: one line, no NUL). A
notifier that fails or hangs is reported as a warning; it never fails what it reports on.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence

#: Events forge sends, and what each means.
EVENTS = {
    "launched": "forge migrate started an environment (FORGE_ENV, FORGE_HOST, FORGE_GPUS, FORGE_PORT)",
    "gpus_free": "forge gpus --wait found the GPUs it waited for (FORGE_HOST, FORGE_GPUS)",
    "reclaim_warning": "forge reclaim warned the owner of an idle environment (FORGE_ENV, FORGE_OWNER, FORGE_HOST, "
    "FORGE_GPUS, FORGE_IDLE_S, FORGE_RECLAIM_IN_S)",
    "reclaimed": "forge reclaim stopped an idle environment, its changes kept (FORGE_ENV, FORGE_OWNER, FORGE_HOST, "
    "FORGE_GPUS, FORGE_IMAGE)",
}


def argv_of(command: str | Sequence[str]) -> list[str]:
    """A string runs with ``sh -c`` (pipes, redirections); a list is the argv itself."""
    return ["sh", "-c", command] if isinstance(command, str) else list(command)


def environment(event: str, fields: Mapping[str, object]) -> dict[str, str]:
    """``FORGE_EVENT`` and ``FORGE_<FIELD>`` for each field, values on one line."""
    env = {"FORGE_EVENT": event}
    for key, value in fields.items():
        text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        env[f"FORGE_{key.upper()}"] = text.replace("\0", "").replace("\n", " ").replace("\r", " ")
    return env


def notify(
    command: str | Sequence[str] | None, event: str, fields: Mapping[str, object], *, timeout: float = 30.0
) -> str | None:
    """Run the notify command for ``event``; None when it ran, else a warning to show."""
    if not command:
        return None
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")
    try:
        r = subprocess.run(
            argv_of(command),
            env={**os.environ, **environment(event, fields)},
            stdin=subprocess.DEVNULL,
            capture_output=True,  # never mixed into forge's own output (--json)
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"the notify command ran past {timeout:g} s for event {event!r}; it was stopped"
    except OSError as e:
        return f"the notify command could not run for event {event!r}: {e}"
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).decode(errors="replace").strip().splitlines()[-1:]
        detail = f": {tail[0][:200]}" if tail else ""
        return f"the notify command failed for event {event!r} (exit status {r.returncode}){detail}"
    return None
