"""What forge has running on a host: environment containers and GPU claims, from one command.

A host is listed with ``date +%s; docker ps -a`` in one round trip (the host's clock, so claim
ages never depend on this machine's clock), parsed by the pure :func:`parse_listing`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from forge import shell
from forge.inventory import Host
from forge.labels import (  # the env modules name them from here
    CLAIM,
    CLAIM_CONTAINER,
    CLAIM_ENV,
    CLAIM_OWNER,
    ENV,
    GPUS,
    OWNER,
    SSH_PORT,
    USER,
    parse_created,
)
from forge.transport import Transport

LABELS = (ENV, OWNER, SSH_PORT, GPUS, USER, CLAIM, CLAIM_ENV, CLAIM_OWNER, CLAIM_CONTAINER)
_FIXED = ("{{.ID}}", "{{.Names}}", "{{.Image}}", "{{.State}}", "{{.Status}}", "{{.CreatedAt}}")
PS_FORMAT = "\t".join([*_FIXED, *(f'{{{{.Label "{label}"}}}}' for label in LABELS)])


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    image: str
    state: str  # docker's: created, running, restarting, exited, paused, dead
    status: str  # docker's words, e.g. "Up 5 minutes"
    created_s: int | None  # Unix time on the host's clock; None when unparsable
    labels: Mapping[str, str] = field(default_factory=dict)

    def label(self, name: str) -> str | None:
        return self.labels.get(name) or None


@dataclass(frozen=True)
class Environment:
    """A forge environment container on a host."""

    host: str
    container: Container

    @property
    def name(self) -> str:
        return self.container.labels[ENV]

    @property
    def owner(self) -> str | None:
        return self.container.label(OWNER)

    @property
    def ssh_port(self) -> int | None:
        p = self.container.label(SSH_PORT)
        return int(p) if p and p.isdigit() else None

    @property
    def gpus(self) -> tuple[str, ...]:
        g = self.container.label(GPUS)
        return tuple(g.split(",")) if g else ()

    @property
    def user(self) -> str | None:
        return self.container.label(USER)


@dataclass(frozen=True)
class Claim:
    """A claim on one GPU of a host: a container named ``forge-claim-<GPU>`` (never started)."""

    host: str
    container: Container

    @property
    def gpu(self) -> str:
        return self.container.labels[CLAIM]

    @property
    def for_container(self) -> str | None:
        return self.container.label(CLAIM_CONTAINER)


@dataclass(frozen=True)
class HostListing:
    host: str
    now_s: int  # the host's clock when listed
    containers: tuple[Container, ...]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.containers)

    @property
    def environments(self) -> list[Environment]:
        # A claim made from a committed image inherits its forge.env label: not an environment.
        return [Environment(self.host, c) for c in self.containers if c.label(ENV) and not c.label(CLAIM)]

    @property
    def claims(self) -> list[Claim]:
        return [Claim(self.host, c) for c in self.containers if c.label(CLAIM)]

    def is_stale(self, claim: Claim, *, grace_s: float) -> bool:
        """A claim is stale when the environment container it was made for is gone, and it
        is older than ``grace_s`` (the claim is made a moment before its container)."""
        if claim.for_container and claim.for_container in self.names:
            return False
        created = claim.container.created_s
        return created is None or self.now_s - created > grace_s

    def live_claims(self, *, grace_s: float) -> list[Claim]:
        return [c for c in self.claims if not self.is_stale(c, grace_s=grace_s)]

    def stale_claims(self, *, grace_s: float) -> list[Claim]:
        return [c for c in self.claims if self.is_stale(c, grace_s=grace_s)]


def parse_listing(host: str, stdout: str) -> HostListing:
    """Parse ``date +%s`` then ``docker ps -a --format PS_FORMAT``."""
    lines = stdout.splitlines()
    if not lines or not lines[0].strip().isdigit():
        raise ValueError(f"unexpected listing output: {stdout[:200]!r}")
    containers = []
    width = len(_FIXED) + len(LABELS)
    for line in lines[1:]:
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != width:
            raise ValueError(f"unexpected docker ps line: {line!r}")
        cid, name, image, state, status, created = cols[: len(_FIXED)]
        labels = {k: v for k, v in zip(LABELS, cols[len(_FIXED) :], strict=True) if v}
        containers.append(Container(cid, name, image, state, status, parse_created(created), labels))
    return HostListing(host, int(lines[0]), tuple(containers))


def docker_env(host: Host) -> dict[str, str]:
    """Environment for a remote script that runs ``docker``: the host's daemon, if set."""
    return {"DOCKER_HOST": host.docker_host} if host.docker_host else {}


def listing_command(host: Host) -> shell.Script:
    return shell.render(
        ["sh", "-c", 'date +%s && exec docker ps -a --no-trunc --format "$1"', "forge", PS_FORMAT],
        env=docker_env(host),
    )


def list_host(host: Host, t: Transport, *, timeout: float = 60.0) -> HostListing:
    r = t.run(listing_command(host), timeout=timeout, check=True)
    return parse_listing(host.name, r.stdout)
