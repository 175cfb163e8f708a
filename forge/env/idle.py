"""Idle environments, with no server: what ``forge reclaim`` sees and remembers on each host.

An environment is *idle* when none of its GPUs shows work (utilization at most ``[policy]
idle_utilization_pct`` and memory used at most ``idle_memory_mib``) and no SSH session is open
into it (an ``sshd`` session process in the container: a login, an IDE's connection, a copy).
It is idle *for* the time since ``forge reclaim`` first saw it so, as long as every look since
found it idle: one busy look starts it over. forge looks when ``forge reclaim`` runs (from cron,
every few minutes), so work that starts and ends between two looks is not seen.

What was seen is kept on the host, in the form the line for GPUs uses (:mod:`forge.env.queue`):
a Docker volume per fact, named ``forge-idle-<SUBJECT>-<KIND>``, whose labels say since when
(the host's clock). The subject is the environment's container ID; for a process outside forge
holding a GPU (reported, never touched), a digest of its host, GPU, PID and start time. Kinds:

- ``idle``: first seen idle then;
- ``warned``: the owner was warned then (a notice in the environment, the notify command);
- ``reclaimed``: its changes were committed to ``forge.idle.image`` and it was stopped.

Every rule here is a pure function over what one look found (:func:`decide`). Marks are read
from the host, so they are untrusted: a malformed one is ignored, one dated in the future too,
and a reclaimed mark's image is used only when it is a ``forge-keep/`` name for that
environment. Anyone who can run docker on the host can plant or remove marks; they could as well
stop the container. The marks keep the honest informed.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from forge.dockercli import is_container_id
from forge.durations import parse_duration
from forge.env.names import keep_repo
from forge.gpu.model import HostGpus
from forge.hostnum import natural
from forge.inventory import PolicySettings
from forge.labels import IDLE, IDLE_ENV, IDLE_IMAGE, IDLE_KIND, IDLE_OWNER, IDLE_SINCE

PREFIX = "forge-idle-"
KINDS = ("idle", "warned", "reclaimed")
LABELS = (IDLE, IDLE_KIND, IDLE_SINCE, IDLE_ENV, IDLE_OWNER, IDLE_IMAGE)
_RECLAIM_TAG = re.compile(r"^[a-z0-9_./-]{1,200}:reclaimed-[0-9a-f]{12}\Z")
_SUBJECT = re.compile(r"^[0-9a-f]{24,64}\Z")
_NAME = re.compile(r"^forge-idle-([0-9a-f]{24,64})-(idle|warned|reclaimed)\Z")
#: An sshd session process, as ps shows it: a login (``user@pts/0``) or a connection without a
#: terminal (``user@notty``: IDEs, scp, sftp). OpenSSH 9.8 and later name it sshd-session.
_SESSION = re.compile(r"^sshd(?:-session)?: [^ ]+@(?:pts/\d+|notty)(?: |$)")


@dataclass(frozen=True)
class Rule:
    """``[policy]``: when an environment is idle, and what happens then."""

    utilization_pct: int = 5
    memory_mib: int = 1024
    idle_after_s: float | None = None  # None: environments are never reclaimed
    reclaim_after_s: float = 3600.0  # from the warning to the reclaim


@dataclass(frozen=True)
class Mark:
    """One fact ``forge reclaim`` recorded on a host (a volume)."""

    host: str
    name: str  # the volume
    subject: str
    kind: str
    since: int
    env: str = ""
    owner: str = ""
    image: str = ""


def subject_of(container_id: str) -> str:
    """An environment's subject: its full container ID (checked: 64 hex digits)."""
    if not is_container_id(container_id):
        raise ValueError(f"not a container ID: {container_id!r}")
    return container_id


def process_subject(host: str, gpu: str, pid: int, started: str) -> str:
    """A process outside forge: its host, GPU, PID and start time (a PID is reused)."""
    return hashlib.sha256(f"{host}\0{gpu}\0{pid}\0{started}".encode()).hexdigest()[:32]


def volume_name(subject: str, kind: str) -> str:
    if not _SUBJECT.match(subject) or kind not in KINDS:
        raise ValueError(f"not an idle mark: {subject!r} {kind!r}")
    return f"{PREFIX}{subject}-{kind}"


def mark_of(host: str, cols: Sequence[str], now: int) -> Mark | None:
    """One volume (its name, then the values of LABELS) as a mark; None when it is not one."""
    name, subject, kind, since, env, owner, image = cols
    m = _NAME.match(name)
    when = natural(since, 15)
    if not m or m.group(1) != subject or m.group(2) != kind or when is None or when > now + 5:
        return None
    return Mark(host, name, subject, kind, when, env, owner, image)


def is_reclaim_image(mark: Mark, env: str, owner: str | None) -> bool:
    """A reclaimed mark's image is used (and shown) only when it is the one forge reclaim names
    for that environment and owner: ``forge-keep/OWNER-ENV:reclaimed-<12 hex>``."""
    return (
        bool(owner)
        and bool(_RECLAIM_TAG.match(mark.image))
        and mark.image.startswith(keep_repo(env, owner or "") + ":reclaimed-")
    )


def marks_of(marks: Iterable[Mark], subject: str) -> dict[str, Mark]:
    """A subject's marks by kind."""
    return {m.kind: m for m in marks if m.subject == subject}


def count_sessions(top_stdout: str) -> int:
    """SSH sessions in ``docker top ID -o pid,args`` output (a header, then PID and command)."""
    n = 0
    for line in top_stdout.splitlines()[1:]:
        _, _, args = line.strip().partition(" ")
        if _SESSION.match(args.strip()):
            n += 1
    return n


def gpus_busy(gpus: HostGpus | None, held: Sequence[str], rule: Rule) -> str | None:
    """Why the GPUs an environment holds show work (None: they show none). A GPU that cannot be
    read counts as busy: forge never reclaims on what it could not see."""
    if not held:
        return None
    if gpus is None or not gpus.ok:
        return "its GPUs could not be read"
    for ref in held:
        gpu = next((g for g in gpus.gpus if ref in (g.uuid, str(g.index))), None)
        if gpu is None:
            return f"GPU {ref} is not on the host"
        # a MIG instance reports no utilization of its own (nvidia-smi: N/A): its memory says
        busy_util = gpu.utilization_gpu_pct is None or gpu.utilization_gpu_pct > rule.utilization_pct
        if busy_util and not gpu.is_mig_instance:
            return f"GPU {gpu.label} at {_pct(gpu.utilization_gpu_pct)} utilization"
        if gpu.memory_used_mib is None or gpu.memory_used_mib > rule.memory_mib:
            return f"GPU {gpu.label} has {_mib(gpu.memory_used_mib)} in use"
    return None


def _pct(v: int | None) -> str:
    return "unknown" if v is None else f"{v}%"


def _mib(v: int | None) -> str:
    return "unknown memory" if v is None else f"{v} MiB"


class Action(enum.StrEnum):
    """What ``forge reclaim`` does with an environment after one look."""

    BUSY = "busy"  # it shows work: its idle marks (if any) are removed
    START = "start"  # first seen idle: an idle mark
    IDLE = "idle"  # idle, not yet for ``idle_after``
    WARN = "warn"  # idle for ``idle_after``: warn the owner
    WARNED = "warned"  # warned, ``reclaim_after`` not yet passed
    RECLAIM = "reclaim"  # warned ``reclaim_after`` ago, still idle: commit, stop, release
    FINISH = "finish"  # warned and already stopped (a reclaim cut short): finish it
    RECLAIMED = "reclaimed"  # reclaimed earlier; stays stopped until migrate brings it back
    STOPPED = "stopped"  # stopped, not by forge reclaim: left alone


@dataclass(frozen=True)
class Look:
    """One look at one environment."""

    running: bool
    busy: str | None  # why it is not idle (GPUs or sessions); None: idle
    marks: dict[str, Mark]  # its marks by kind
    now: int  # the host's clock


def decide(look: Look, rule: Rule) -> Action:
    """The one rule of idleness, warning and reclaim (pure)."""
    marks = look.marks
    if "reclaimed" in marks:
        return Action.RECLAIMED
    if not look.running:
        return Action.FINISH if "warned" in marks else Action.STOPPED
    if look.busy is not None:
        return Action.BUSY
    if "idle" not in marks:
        return Action.START
    if "warned" in marks:
        return Action.RECLAIM if look.now - marks["warned"].since >= rule.reclaim_after_s else Action.WARNED
    if rule.idle_after_s is not None and look.now - marks["idle"].since >= rule.idle_after_s:
        return Action.WARN
    return Action.IDLE


def idle_for(marks: dict[str, Mark], now: int) -> int | None:
    """How long it has been seen idle (None: it was not, at the last look)."""
    m = marks.get("idle")
    return max(0, now - m.since) if m else None


def reclaim_due(marks: dict[str, Mark], rule: Rule, now: int) -> int | None:
    """Seconds until a warned environment is reclaimed (None: not warned)."""
    m = marks.get("warned")
    return None if m is None else max(0, int(m.since + rule.reclaim_after_s - now))


def rule_of(policy: PolicySettings) -> Rule:
    """The rule ``[policy]`` sets (durations checked when the inventory was loaded)."""
    return Rule(
        utilization_pct=policy.idle_utilization_pct,
        memory_mib=policy.idle_memory_mib,
        idle_after_s=parse_duration(policy.idle_after) if policy.idle_after else None,
        reclaim_after_s=parse_duration(policy.reclaim_after),
    )
