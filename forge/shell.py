"""Building shell commands: the one place where argv lists become strings.

Remote commands travel over SSH as one string that the remote user's shell parses. forge
builds every such string here, from argv lists, with :func:`shlex.quote`; nothing else in
forge formats a command line by hand.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

Argv = Sequence[str]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Script(str):
    """A command line already rendered by this module: the only string a transport runs."""

    __slots__ = ()


class Secret(str):
    """A string that is quoted like any other but shown as ``***`` by :func:`display`."""

    __slots__ = ()


def quote(arg: str) -> str:
    """Quote one argument for a POSIX shell."""
    return shlex.quote(arg)


def _check_argv(argv: Argv) -> None:
    if isinstance(argv, str):
        raise TypeError("commands are argv lists, not strings")
    if not argv:
        raise ValueError("empty command")
    for arg in argv:
        if not isinstance(arg, str):
            raise TypeError(f"argv items must be str, got {type(arg).__name__}: {arg!r}")


def render(argv: Argv, *, env: Mapping[str, str] | None = None) -> Script:
    """Render one command, with optional environment variables, as a shell string.

    >>> render(["echo", "a b", "$(x)"], env={"X": "1 2"})
    "env X='1 2' echo 'a b' '$(x)'"
    """
    _check_argv(argv)
    prefix: list[str] = []
    if env:
        prefix.append("env")
        for name, value in env.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"invalid environment variable name: {name!r}")
            prefix.append(f"{name}={quote(value)}")
    return Script(" ".join(prefix + [quote(a) for a in argv]))


def pipeline(*commands: Argv) -> Script:
    """Render ``cmd1 | cmd2 | ...`` so that the whole fails when any stage fails.

    Runs under ``bash -o pipefail`` (GPU servers have bash; POSIX ``sh`` has no pipefail).
    """
    if not commands:
        raise ValueError("empty pipeline")
    if len(commands) == 1:
        return render(commands[0])
    return render(["bash", "-o", "pipefail", "-c", " | ".join(render(c) for c in commands)])


def script(body: str, *args: str) -> Script:
    """Run a fixed shell script body (a constant in forge's source, never user input) with
    positional arguments ``$1``, ``$2``... that are quoted like any argv item."""
    return render(["sh", "-c", body, "forge", *args])


def display(argv: Argv) -> str:
    """A command for logs and error messages: quoted, with secrets masked."""
    return " ".join("***" if isinstance(a, Secret) else quote(a) for a in argv)
