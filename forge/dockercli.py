"""What the docker CLI's failures mean, in words a person can act on (the commands themselves
are built by :class:`forge.session.HostSession`)."""

from __future__ import annotations

import re

from forge.errors import HostError
from forge.inventory import Host


class DockerUnavailable(HostError):
    """The host's Docker daemon cannot be used: not running, not allowed, not installed."""


_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def is_container_id(text: str) -> bool:
    """Whether ``text``, read from a host, is a full container ID (64 hex digits) and nothing
    else: fit for another docker command line, a label, a mark's name."""
    return _CONTAINER_ID.fullmatch(text) is not None


def unavailable(text: str, exit_status: int | None = None) -> str | None:
    """Why the docker CLI could not reach its daemon, in words a person can act on, from what
    it printed; None when the failure is something else (the command itself failed)."""
    if "Cannot connect to the Docker daemon" in text or "Is the docker daemon running" in text:
        return "the Docker daemon is not running"
    if "permission denied while trying to connect to the Docker daemon" in text:
        return "the SSH user may not use the Docker daemon (permission denied on its socket)"
    if exit_status == 127 or "docker: not found" in text or "docker: command not found" in text:
        return "docker is not installed (not on the PATH of the host's shell)"
    if "error during connect" in text:
        return "the Docker daemon does not answer"
    return None


def failure(host: Host, text: str, exit_status: int | None = None) -> DockerUnavailable | None:
    """:class:`DockerUnavailable` for ``host`` when ``text`` says the daemon cannot be used."""
    why = unavailable(text, exit_status)
    if why is None:
        return None
    where = f" at {host.docker_host}" if host.docker_host and "not running" in why else ""
    hint = "start it on the host, e.g. `sudo systemctl start docker`" if "not running" in why else None
    if "permission" in why:
        hint = "add the SSH user to the host's docker group"
    return DockerUnavailable(host.name, why + where, hint=hint)
