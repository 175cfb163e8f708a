"""argv for the docker CLI on a host, pointed at that host's daemon."""

from __future__ import annotations

from forge.inventory import Host


def docker_argv(host: Host, *args: str) -> list[str]:
    """``docker [-H DOCKER_HOST] ARGS...`` for ``host`` (its inventory's docker_host, if set)."""
    prefix = ["-H", host.docker_host] if host.docker_host else []
    return ["docker", *prefix, *args]
