"""What forge has running on a host: environment containers and GPU claims, from one command.

A host is listed with ``date +%s; docker ps -a`` in one round trip (the host's clock, so claim
ages never depend on this machine's clock), parsed by the pure :func:`parse_listing`.

Anyone who may run docker on a host can create containers with any name and labels, so every
field is printed JSON-encoded (a label holding a tab or a newline cannot forge a second line)
and every value forge later puts on a command line is checked first (:attr:`Environment.user`,
:attr:`Environment.published_port`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from forge import dockercli, shell
from forge.env import hostvolumes, idle, queue
from forge.env.idle import Mark
from forge.env.queue import Ticket
from forge.errors import CommandFailed, HostError
from forge.hostnum import natural
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
from forge.session import HostSession

LABELS = (ENV, OWNER, SSH_PORT, GPUS, USER, CLAIM, CLAIM_ENV, CLAIM_OWNER, CLAIM_CONTAINER)
_FIXED = ("ID", "Names", "Image", "State", "Status", "CreatedAt", "Ports")
PS_FORMAT = "\t".join(
    [*(f"{{{{json .{f}}}}}" for f in _FIXED), *(f'{{{{json (.Label "{label}")}}}}' for label in LABELS)]
)
#: A login name forge passes to ssh: POSIX-portable, as useradd accepts by default (to
#: ``\Z``: ``$`` would also match before a final newline, which a label can hold).
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
_SSH_PUBLISHED = re.compile(r":(\d{1,5})->22/tcp\b")
VOLUMES_MARK = "@@forge-volumes"
#: forge's record volumes (the line's tickets, the idle marks), listed at once by name.
VOLUME_LABELS = (*queue.LABELS, *idle.LABELS)
VOLUME_FORMAT = hostvolumes.list_format(VOLUME_LABELS)


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    image: str
    state: str  # docker's: created, running, restarting, exited, paused, dead
    status: str  # docker's words, e.g. "Up 5 minutes"
    created_s: int | None  # Unix time on the host's clock; None when unparsable
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: str = ""  # docker's Ports column, e.g. "0.0.0.0:2201->22/tcp, :::2201->22/tcp"

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
        """The port its label names (kept free for it while it is stopped); a claim only."""
        p = self.container.label(SSH_PORT)
        port = natural(p or "", 5)
        return port if port and port < 65536 else None

    @property
    def published_port(self) -> int | None:
        """The host port docker really publishes the container's port 22 on (running only)."""
        ports = {int(p) for p in _SSH_PUBLISHED.findall(self.container.ports) if 0 < int(p) < 65536}
        return ports.pop() if len(ports) == 1 else None

    @property
    def gpus(self) -> tuple[str, ...]:
        g = self.container.label(GPUS)
        return tuple(g.split(",")) if g else ()

    @property
    def user(self) -> str | None:
        """The login name in its label, when it is a plain user name (None otherwise)."""
        u = self.container.label(USER)
        return u if u and USER_NAME.match(u) else None

    def to_json(self) -> dict[str, object]:
        c = self.container
        return {
            "host": self.host,
            "env": self.name,
            "owner": self.owner,
            "container": c.name,
            "gpus": list(self.gpus),
            "port": self.published_port or self.ssh_port,
            "user": self.user,
            "image": c.image,
            "created_s": c.created_s,
            "state": c.state,
            "status": c.status,
        }


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

    @property
    def owner(self) -> str | None:
        return self.container.label(CLAIM_OWNER)

    @property
    def env(self) -> str | None:
        return self.container.label(CLAIM_ENV)


@dataclass(frozen=True)
class HostListing:
    host: str
    now_s: int  # the host's clock when listed
    containers: tuple[Container, ...]
    tickets: tuple[Ticket, ...] = ()  # places in line for GPUs (forge/env/queue.py)
    marks: tuple[Mark, ...] = ()  # what forge reclaim saw of idle environments (forge/env/idle.py)

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
    """Parse ``date +%s``, ``docker ps -a --format PS_FORMAT`` (one JSON value per column), then
    after a line ``@@forge-volumes`` forge's volumes (:data:`VOLUME_FORMAT`): the tickets of the
    line (:func:`forge.env.queue.ticket_of`) and the idle marks (:func:`forge.env.idle.mark_of`)."""
    stdout, _, volumes = stdout.partition(f"\n{VOLUMES_MARK}\n")
    lines = stdout.splitlines()
    now = natural(lines[0].strip()) if lines else None
    if now is None:
        raise ValueError(f"unexpected listing output: {stdout[:200]!r}")
    containers = []
    width = len(_FIXED) + len(LABELS)
    for line in lines[1:]:
        if not line.strip():
            continue
        try:
            cols = [json.loads(c) for c in line.split("\t")]
        except ValueError:
            cols = []
        if len(cols) != width or not all(isinstance(c, str) for c in cols):
            raise ValueError(f"unexpected docker ps line: {line[:200]!r}")
        cid, name, image, state, status, created, ports = cols[: len(_FIXED)]
        labels = {k: v for k, v in zip(LABELS, cols[len(_FIXED) :], strict=True) if v}
        containers.append(Container(cid, name, image, state, status, parse_created(created), labels, ports))
    tickets, marks = [], []
    split = 1 + len(queue.LABELS)
    for cols in hostvolumes.rows(volumes, VOLUME_LABELS):
        name = cols[0]
        if name.startswith(queue.PREFIX) and (t := queue.ticket_of(host, cols[:split])) is not None:
            tickets.append(t)
        elif name.startswith(idle.PREFIX) and (m := idle.mark_of(host, [name, *cols[split:]], now)) is not None:
            marks.append(m)
    return HostListing(host, now, tuple(containers), tuple(tickets), tuple(marks))


def listing_command(s: HostSession, *, volumes: bool = False) -> shell.Script:
    """``date +%s`` and ``docker ps -a`` in one round trip ($1: the format, then docker's
    words); with ``volumes`` also forge's record volumes ($2: their format): the places in line
    for GPUs and the idle marks, which only what chooses GPUs or shows them needs (one more
    docker process on the host: a listing took 20 ms on a lab host, 35 ms with it)."""
    if not volumes:
        return shell.script(
            'fmt=$1; shift; date +%s && exec "$@" ps -a --no-trunc --format "$fmt"', PS_FORMAT, *s.docker_words
        )
    return shell.script(
        'fmt=$1; vfmt=$2; shift 2; date +%s && "$@" ps -a --no-trunc --format "$fmt" && echo '
        + VOLUMES_MARK + ' && exec "$@" volume ls --filter name=forge- --format "$vfmt"',
        PS_FORMAT,
        VOLUME_FORMAT,
        *s.docker_words,
    )  # fmt: skip


def list_host(s: HostSession, *, timeout: float = 60.0, volumes: bool = False) -> HostListing:
    r = s.run(listing_command(s, volumes=volumes), timeout=timeout)
    if not r.ok:
        raise dockercli.failure(s.host, r.stderr + r.stdout, r.exit_status) or CommandFailed(
            s.name, r.command, r.exit_status, r.stderr
        )
    try:
        return parse_listing(s.name, r.stdout)
    except ValueError as e:
        raise HostError(s.name, f"cannot read the container listing: {e}") from None
