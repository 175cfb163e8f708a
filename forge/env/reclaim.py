"""``forge reclaim``: environments idle for long are warned, then stopped with nothing lost.

On each host, in parallel, one look (:mod:`forge.env.idle`): the containers and the marks (one
round trip), the GPUs (the probe), the SSH sessions of each running environment (``docker top``,
one round trip); then, per environment, what :func:`forge.env.idle.decide` says:

- first seen idle: an ``idle`` mark; seen busy: its marks go (and a warning's notice);
- idle for ``idle_after``: a notice in the environment (shown at login and on its open
  terminals) and a ``warned`` mark; the caller tells the notify command;
- warned ``reclaim_after`` ago and still idle: **commit** its changes to
  ``forge-keep/OWNER-ENV:reclaimed-ID``, **no restart** (so a daemon restart does not start it
  again on GPUs it no longer holds), **stop**, **release** its claims, then a ``reclaimed`` mark
  naming the image. ``forge migrate`` brings it back from there.

The order is what makes an interruption safe: until the commit has succeeded the container
runs untouched; after it, the changes are in an image; a container stopped whose marks still
say ``warned`` is finished by the next run (:attr:`~forge.env.idle.Action.FINISH`). At no step
is anything the user wrote removed.

Processes outside forge that hold a GPU showing no work are reported by user with how long
they have been seen so, and never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from forge import fleet, shell
from forge.durations import format_duration
from forge.env import claims, hostvolumes, idle
from forge.env.idle import Action, Look, Mark, Rule
from forge.env.listing import Environment, HostListing, list_host
from forge.env.names import keep_repo
from forge.errors import ForgeError
from forge.fleet import FleetResult, Pool
from forge.gpu.holders import env_name, user_name
from forge.gpu.model import HostGpus
from forge.gpu.probe import probe_host
from forge.inventory import Host
from forge.progress import NoProgress, Progress
from forge.session import HostSession

TOP_MARK = "@@forge-top "
NOTICE = "/etc/forge-dev/notice"
NOTICE_PROFILE = "/etc/profile.d/zz-forge-notice.sh"
# Run as root in the container, the notice on stdin: kept for logins (a profile.d script shows
# it) and written to every open terminal of the container.
_NOTICE_SCRIPT = (
    "umask 022; mkdir -p /etc/forge-dev /etc/profile.d && cat > " + NOTICE
    + " && echo '[ -r " + NOTICE + " ] && cat " + NOTICE + "' > " + NOTICE_PROFILE
    + "; for t in /dev/pts/[0-9]*; do [ -c \"$t\" ] && cat " + NOTICE + " > \"$t\" 2>/dev/null; done; exit 0"
)  # fmt: skip
_CLEAR_SCRIPT = f"rm -f {NOTICE} {NOTICE_PROFILE}"


@dataclass
class EnvLook:
    """What one run saw of one environment and did (or, with ``dry_run``, would do)."""

    host: str
    env: str  # shown as ? when its label is not a name
    owner: str
    container: str
    gpus: tuple[str, ...]
    action: Action
    busy: str | None  # why it shows work
    idle_s: int | None  # seen idle for this long (None: not idle at this look)
    reclaim_in_s: int | None = None  # warned: seconds until it is reclaimed
    image: str | None = None  # reclaimed: where its changes are
    error: str | None = None  # the action failed (it is retried at the next run)

    def to_json(self) -> dict[str, object]:
        return {
            "host": self.host,
            "env": self.env,
            "owner": self.owner,
            "container": self.container,
            "gpus": list(self.gpus),
            "action": str(self.action),
            "busy": self.busy,
            "idle_s": self.idle_s,
            "reclaim_in_s": self.reclaim_in_s,
            "image": self.image,
            "error": self.error,
        }


@dataclass(frozen=True)
class OutsideHolder:
    """A process outside forge environments holding a GPU that shows no work."""

    host: str
    user: str
    gpu: str  # its label: 2, or 2/3 for a MIG instance
    pid: int
    memory_mib: int | None
    idle_s: int

    def to_json(self) -> dict[str, object]:
        return {"host": self.host, "user": self.user, "gpu": self.gpu, "pid": self.pid,
                "memory_mib": self.memory_mib, "idle_s": self.idle_s}  # fmt: skip


@dataclass
class HostReclaim:
    host: str
    envs: list[EnvLook] = field(default_factory=list)
    outside: list[OutsideHolder] = field(default_factory=list)


def reclaim_tag(env: Environment) -> str:
    """Where a reclaim commits an environment: one tag per container (a reclaim cut short and
    run again moves the tag, it does not pile up images)."""
    return f"{keep_repo(env.name, env.owner or 'unknown')}:reclaimed-{env.container.id[:12]}"


def sessions(s: HostSession, containers: Sequence[str]) -> dict[str, int]:
    """SSH sessions open into each running container (IDs checked), in one round trip; a
    container whose processes could not be listed is left out (counted as busy)."""
    if not containers:
        return {}
    ids = " ".join(idle.subject_of(c) for c in containers)
    r = s.run(shell.script(_SESSIONS_SCRIPT, ids, _PROC_SCRIPT, *s.docker_words), timeout=60)
    return parse_sessions(r.stdout)


# $1: the container IDs, $2: the script run in a container, then docker's words. `docker top`
# needs ps on the daemon's host; where it has none, the container's own /proc is read.
_SESSIONS_SCRIPT = (
    'ids=$1; proc=$2; shift 2; for c in $ids; do echo "' + TOP_MARK + '$c"; '
    '"$@" top "$c" -o pid,args 2>/dev/null || "$@" exec -u 0 "$c" sh -c "$proc" || echo "@@forge-failed"; done'
)
_PROC_SCRIPT = 'echo "PID COMMAND"; for f in /proc/[0-9]*/cmdline; do printf "0 "; cat "$f"; echo; done'


def parse_sessions(stdout: str) -> dict[str, int]:
    """Per container, the sessions in its block (``docker top``, or its /proc: NUL-separated)."""
    out: dict[str, int] = {}
    for block in stdout.split(TOP_MARK)[1:]:
        cid, _, top = block.partition("\n")
        if "@@forge-failed" not in top:
            out[cid.strip()] = idle.count_sessions(top.replace("\0", " "))
    return out


def look_at(
    env: Environment, listing: HostListing, gpus: HostGpus | None, open_sessions: dict[str, int], rule: Rule
) -> Look:
    """One environment at this look: running, busy or not (GPUs, then SSH sessions), its marks."""
    running = env.container.state == "running"
    busy = idle.gpus_busy(gpus, env.gpus, rule) if running else None
    if running and busy is None:
        n = open_sessions.get(env.container.id)
        if n is None:
            busy = "its processes could not be listed"
        elif n:
            busy = f"{n} SSH session(s) open"
    return Look(running, busy, idle.marks_of(listing.marks, env.container.id), listing.now_s)


class _HostRun:
    """One host's part of a ``forge reclaim``."""

    def __init__(self, s: HostSession, rule: Rule, *, dry_run: bool, progress: Progress) -> None:
        self.s, self.rule, self.dry_run, self.progress = s, rule, dry_run, progress
        self.idle_outside: set[str] = set()  # subjects of the processes outside forge seen idle

    def go(self) -> HostReclaim:
        s = self.s
        listing = list_host(s, volumes=True)
        try:
            gpus: HostGpus | None = probe_host(s, timeout=30)
        except ForgeError:
            gpus = None
        environments = listing.environments
        running = [e.container.id for e in environments if e.container.state == "running"]
        open_sessions = sessions(s, running)
        out = HostReclaim(s.name)
        for env in environments:
            look = look_at(env, listing, gpus, open_sessions, self.rule)
            out.envs.append(self.one(env, listing, look))
        out.outside = self.outside(listing, gpus)
        if not self.dry_run:
            self.forget_gone(listing)
        return out

    def one(self, env: Environment, listing: HostListing, look: Look) -> EnvLook:
        action = idle.decide(look, self.rule)
        result = EnvLook(
            host=self.s.name, env=env_name(env.name) or "?", owner=user_name(env.owner), container=env.container.name,
            gpus=env.gpus, action=action, busy=look.busy, idle_s=idle.idle_for(look.marks, look.now),
            reclaim_in_s=idle.reclaim_due(look.marks, self.rule, look.now),
        )  # fmt: skip
        if action is Action.START:
            result.idle_s = 0
        mark = look.marks.get("reclaimed")
        if action is Action.RECLAIMED and mark is not None and idle.is_reclaim_image(mark, env.name, env.owner):
            result.image = mark.image  # a mark is read from the host: only forge's own name is shown
        if action is Action.BUSY:
            result.idle_s = result.reclaim_in_s = None
        if self.dry_run:
            return result
        try:
            self.act(env, listing, look, result)
        except ForgeError as e:
            result.error = str(e)
        return result

    def act(self, env: Environment, listing: HostListing, look: Look, result: EnvLook) -> None:
        action, marks = result.action, look.marks
        if action is Action.BUSY and marks:
            if "warned" in marks:
                self.s.run(self.s.docker("exec", "-u", "0", env.container.id, "sh", "-c", _CLEAR_SCRIPT), timeout=60)
            self.unmark(list(marks.values()))
        elif action is Action.START:
            self.mark(env, "idle", look.now)
        elif action is Action.WARN:
            self.warn(env, result)
            self.mark(env, "warned", look.now)
            result.reclaim_in_s = int(self.rule.reclaim_after_s)
        elif action in (Action.RECLAIM, Action.FINISH):
            result.image = self.reclaim(env, listing, look)

    def warn(self, env: Environment, result: EnvLook) -> None:
        self.progress.note(f"{self.s.name}: warning the owner of {env.container.name}")
        text = notice(result, self.rule).encode()
        exec_ = self.s.docker("exec", "-i", "-u", "0", env.container.id, "sh", "-c", _NOTICE_SCRIPT)
        self.s.run(exec_, stdin=text, timeout=60, check=True)

    def reclaim(self, env: Environment, listing: HostListing, look: Look) -> str:
        """Commit, no restart, stop, release, mark: in this order (see the module's words)."""
        s, cid, tag = self.s, env.container.id, reclaim_tag(env)
        self.progress.note(f"{s.name}: committing {env.container.name} as {tag}")
        s.run(s.docker("commit", "-m", "forge reclaim", cid, tag), timeout=600, check=True)
        self.progress.note(f"{s.name}: {env.container.name} will not restart by itself")
        s.run(s.docker("update", "--restart=no", cid), timeout=60, check=True)
        self.progress.note(f"{s.name}: stopping {env.container.name}")
        s.run(s.docker("stop", "-t", "30", cid), timeout=120, check=True)
        self.progress.note(f"{s.name}: releasing the GPUs of {env.container.name}")
        claims.release(s, claims.claims_for(listing, env.container.name))
        self.progress.note(f"{s.name}: {env.container.name} is reclaimed")
        self.mark(env, "reclaimed", look.now, image=tag)
        self.unmark([m for k, m in look.marks.items() if k != "reclaimed"])
        return tag

    def outside(self, listing: HostListing, gpus: HostGpus | None) -> list[OutsideHolder]:
        """Processes outside forge on GPUs that show no work; their idle marks kept."""
        if gpus is None or not gpus.ok:
            return []
        out = []
        for p in gpus.processes:
            gpu = gpus.gpu(p.gpu_uuid)
            if p.env_name is not None or gpu is None:  # in a forge environment: its own look decides
                continue
            if gpu.utilization_gpu_pct is None or gpu.utilization_gpu_pct > self.rule.utilization_pct:
                continue
            subject = idle.process_subject(listing.host, p.gpu_uuid, p.pid, p.name)
            self.idle_outside.add(subject)
            mark = idle.marks_of(listing.marks, subject).get("idle")
            user = user_name(p.user)
            if mark is None and not self.dry_run:
                self.put(subject, "idle", listing.now_s, env="", owner=user)  # a name, or ?
            since = mark.since if mark else listing.now_s
            out.append(OutsideHolder(listing.host, user, gpu.label, p.pid, p.used_memory_mib, listing.now_s - since))
        return out

    def forget_gone(self, listing: HostListing) -> None:
        """Marks of subjects no longer seen idle: environments gone (a reclaimed one's mark is
        kept: it names the image its changes are in) and processes no longer idle."""
        keep = {e.container.id for e in listing.environments} | self.idle_outside
        self.unmark([m for m in listing.marks if m.kind != "reclaimed" and m.subject not in keep])

    def mark(self, env: Environment, kind: str, now: int, *, image: str = "") -> None:
        owner = user_name(env.owner)
        self.put(idle.subject_of(env.container.id), kind, now, env=env_name(env.name), owner=owner, image=image)

    def put(self, subject: str, kind: str, now: int, *, env: str, owner: str, image: str = "") -> None:
        values = (subject, kind, str(now), env, owner, image)
        hostvolumes.create(self.s, idle.volume_name(subject, kind), dict(zip(idle.LABELS, values, strict=True)))

    def unmark(self, marks: Sequence[Mark]) -> None:
        hostvolumes.remove(self.s, [m.name for m in marks])


def notice(look: EnvLook, rule: Rule) -> str:
    """The words the owner finds in the environment (made by forge from checked values)."""
    idle_for = format_duration(look.idle_s or 0)
    return (
        f"\r\n*** forge: environment {look.env} on {look.host} has been idle for {idle_for} "
        "(no GPU work, no SSH session).\r\n"
        f"*** It will be stopped in {format_duration(rule.reclaim_after_s)} to free its GPUs, its changes "
        f"kept: `forge migrate --env {look.env}` brings it back.\r\n"
        "*** Use its GPUs or stay logged in to keep it running.\r\n"
    )


def reclaim(
    hosts: Sequence[Host], rule: Rule, pool: Pool, *, dry_run: bool = False, progress: Progress | None = None
) -> FleetResult[HostReclaim]:
    """One look at every environment on ``hosts``, and what the rule says, per host."""
    p = progress or NoProgress()
    return fleet.run(hosts, lambda s: _HostRun(s, rule, dry_run=dry_run, progress=p).go(), pool=pool)
