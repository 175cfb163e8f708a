"""The GPU "fact": one fixed remote script per host, and a pure parser for what it prints.

One round trip per host. :func:`probe_command` renders a constant ``sh -c`` script (positional
arguments carry the field lists and the docker format, quoted by :mod:`forge.shell`) that
prints these sections, each opened by a marker line and closed by its exit status::

    @@forge-gpu-probe gpus          nvidia-smi --query-gpu=...  (stdout and stderr)
    @@forge-gpu-probe status N
    @@forge-gpu-probe apps          nvidia-smi --query-compute-apps=...
    @@forge-gpu-probe status N
    @@forge-gpu-probe owners        ps -ww -o pid=,user:64=,comm= -p PID,PID...
    @@forge-gpu-probe status N
    @@forge-gpu-probe cgroups       one line per pid: "PID <its /proc/PID/cgroup, one line>"
    @@forge-gpu-probe status 0
    @@forge-gpu-probe containers    the host's clock, then docker ps -a --no-trunc: every
    @@forge-gpu-probe status N      container's forge labels (127 when docker is absent)
    @@forge-gpu-probe end

The containers section serves twice: it names the forge environment of a process running in
a container, and it tells which GPUs forge environments hold (label ``forge.gpus`` of their
containers, and claim containers, see forge.env.claims), busy or not.

When the GPU query fails the script stops after its section.

Process names are the text another user of the host chooses, and an executable's path or
argv[0] may hold a line break (or a carriage return, which ``str.splitlines`` also breaks at).
nvidia-smi prints its ``process_name`` raw, so a name there could add a CSV row of its own (a
GPU held by any pid it names) or a marker line: the apps section asks only for numbers and
UUIDs (:data:`forge.gpu.nvsmi.APP_FIELDS`), and the names come from ``ps -o comm=``, which
prints a control character as ``?``. No line of ps, the cgroup lines (which start with a
pid) or the docker lines (which start with a container id) can start with the marker. Still,
:func:`split_sections` trusts the markers only in the order the script prints them (each
section once, in the order above, each closed by its status line; ``end`` after a closed
section, then nothing but empty lines) and raises :class:`ProbeParseError` for anything
else; :func:`parse_probe` reports such a host as an error. Output cut short (no ``end``)
still parses.
``ps -o user:64=`` because procps prints a user name longer than the column as a number;
``-ww`` because it may cut its lines at a terminal's width (it cut a name at 80 columns in a
test run here).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from forge import labels, shell
from forge.dockercli import is_container_id, unavailable
from forge.errors import ForgeError
from forge.gpu.model import Gpu, GpuHold, GpuProcess, HostGpus, ProbeStatus
from forge.gpu.nvsmi import (
    APP_FIELDS,
    GPU_FIELDS,
    NvsmiParseError,
    classify_failure,
    parse_apps,
    parse_gpus,
)
from forge.hostnum import natural
from forge.session import HostSession
from forge.transport.base import CommandResult

MARKER = "@@forge-gpu-probe"
# The sections, in the order the script prints them.
SECTIONS: tuple[str, ...] = ("gpus", "apps", "owners", "cgroups", "containers")
_FORMAT_FIELDS = ("{{.ID}}", "{{json .State}}", "{{json .CreatedAt}}") + tuple(
    '{{json (.Label "' + label + '")}}'
    for label in (labels.ENV, labels.OWNER, labels.GPUS, labels.CLAIM, labels.CLAIM_ENV, labels.CLAIM_OWNER)
)
# One line per container: "<64-hex id> <JSON state> <JSON created> <JSON label>..." ("" = no label).
DOCKER_FORMAT = " ".join(_FORMAT_FIELDS)

# $1: --query-gpu fields, $2: --query-compute-apps fields, $3: docker ps --format, then the
# words of the host's docker command (``docker``, or ``docker -H DOCKER_HOST``).
# A constant: nothing from the inventory or the command line is ever spliced into it.
#
# The three slow calls run at once: each nvidia-smi call costs ~25 ms with persistence mode on
# (over a second without), `docker ps` tens of milliseconds. Without temporary files, and with
# shell builtins wherever POSIX sh has one, because every fork and exec is CPU the host pays
# on each probe (measured in docs/benchmarks.md):
# - the container listing is the first stage of a pipeline; the second stage prints the other
#   sections, then passes the listing through (`exec cat`);
# - in that second stage, a command substitution captures the process query while the GPU
#   query, started in the background inside it, prints its section straight to fd 3 (the
#   script's stdout); the substitution's exit status is the GPU query's;
# - pids, the ps list and the cgroup lines are built with parameter expansion and `read`;
# - the whole answer is captured and written at once: one SSH data message instead of a
#   dozen small ones, each of which costs forge (decryption, a thread switch) and sshd.
# GOMAXPROCS=1: the docker CLI is a Go program whose start-up is most of what `docker ps`
# costs; one scheduler thread is enough for one request and spares ~2 ms of CPU per call.
_SCRIPT = r"""M=@@forge-gpu-probe
containers() {
  date +%s
  fmt=$3; shift 3
  if command -v "$1" >/dev/null 2>&1; then
    GOMAXPROCS=1 "$@" ps -a --no-trunc --format "$fmt" 2>&1
    echo "$M status $?"
  else
    echo "$M status 127"
  fi
  echo "$M end"
}
all=$(containers "$@" | {
  exec 3>&1
  out=$(
    {
      echo "$M gpus"
      nvidia-smi --query-gpu="$1" --format=csv,noheader,nounits 2>&1
      rc=$?
      echo "$M status $rc"
      exit "$rc"
    } >&3 &
    nvidia-smi --query-compute-apps="$2" --format=csv,noheader,nounits 2>&1
    arc=$?
    echo
    echo "$M status $arc"
    wait "$!"
  )
  rc=$?
  exec 3>&-
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 14 ]; then echo "$M end"; exit 0; fi
  arc=${out##*"$M status "}
  apps=${out%"$M status "*}
  while :; do
    case $apps in *"
") apps=${apps%?} ;; *) break ;; esac
  done
  echo "$M apps"
  [ -n "$apps" ] && printf '%s\n' "$apps"
  echo "$M status $arc"
  pids= plist=
  if [ "$arc" = 0 ]; then
    set -f
    IFS='
'
    for line in $apps; do
      p=${line%%,*}
      case $p in '' | *[!0-9]* | "$line") continue ;; esac
      case " $pids " in *" $p "*) continue ;; esac
      pids="$pids $p" plist="${plist:+$plist,}$p"
    done
    unset IFS
  fi
  echo "$M owners"
  if [ -n "$plist" ]; then
    ps -ww -o pid=,user:64=,comm= -p "$plist" 2>&1
    echo "$M status $?"
  else
    echo "$M status 0"
  fi
  echo "$M cgroups"
  for pid in $pids; do
    cg=
    { while IFS= read -r l; do cg="$cg$l "; done; } 2>/dev/null <"/proc/$pid/cgroup" || continue
    echo "$pid $cg"
  done
  echo "$M status 0"
  echo "$M containers"
  exec cat
})
printf '%s\n' "$all"
"""

# Docker's cgroup paths: v2 + systemd ("/system.slice/docker-<id>.scope"), v2 + cgroupfs and
# v1 ("/docker/<id>").
_DOCKER_CGROUP = re.compile(r"docker[-/]([0-9a-f]{64})")


def probe_command(docker_words: Sequence[str] = ("docker",)) -> shell.Script:
    """The one command that probes a host's GPUs, processes, owners and forge containers."""
    return shell.script(_SCRIPT, ",".join(GPU_FIELDS), ",".join(APP_FIELDS), DOCKER_FORMAT, *docker_words)


@dataclass(frozen=True)
class Section:
    """One section of the probe's output: its text and the exit status it reported."""

    text: str
    exit_status: int | None  # None when the status line is missing (output cut short)


class ProbeParseError(ForgeError):
    """The probe's output has a marker line where the script never prints one, so which text
    belongs to which section cannot be told: none of it is trusted."""


def _out_of_place(number: int, what: str) -> ProbeParseError:
    # ``what`` names only constants (SECTIONS), never text the host printed.
    return ProbeParseError(
        f"the probe's output has a marker line out of place (line {number}: {what}), as if a "
        "program on the host printed one: none of the output is trusted"
    )


def split_sections(stdout: str) -> dict[str, Section]:
    """Split the probe's stdout at marker lines. Pure.

    The markers must come as the script prints them: the sections of :data:`SECTIONS` in
    that order, each once and closed by its status line, then ``end`` (after any closed
    section) and nothing but empty lines after it. Output cut short (no ``end``; the last
    section may lack its status line) parses. Text before the first marker and between
    sections is ignored. Raises :class:`ProbeParseError` for a marker line anywhere else.
    """
    sections: dict[str, Section] = {}
    name: str | None = None
    lines: list[str] = []
    ended = False
    prefix = MARKER + " "
    for number, line in enumerate(stdout.splitlines(), 1):
        if ended:
            if line.strip():
                raise _out_of_place(number, "text after the end marker")
            continue
        if not line.startswith(prefix):
            if name is not None:
                lines.append(line)
            continue
        word, _, arg = line[len(prefix) :].partition(" ")
        if word == "status":
            if name is None:
                raise _out_of_place(number, "a status line with no section open")
            try:
                status: int | None = int(arg)
            except ValueError:
                status = None
            sections[name] = Section("\n".join(lines) + ("\n" if lines else ""), status)
            name, lines = None, []
        elif name is not None:
            raise _out_of_place(number, f"a marker inside the {name!r} section, before its status line")
        elif word == "end":
            ended = True
        else:
            expected = SECTIONS[len(sections)] if len(sections) < len(SECTIONS) else None
            if word != expected:
                if word in sections:
                    raise _out_of_place(number, f"a second {word!r} section")
                if word in SECTIONS:
                    raise _out_of_place(number, f"the {word!r} section where {expected!r} belongs")
                raise _out_of_place(number, "a section of unknown name")
            name, lines = word, []
    if name is not None:  # output cut short: the section lacks its status line
        sections[name] = Section("\n".join(lines) + ("\n" if lines else ""), None)
    return sections


class Owner(NamedTuple):
    """A process as ``ps`` lists it: its user and its command name (``comm``, which the
    process may set to any 15 bytes; ps prints a control character as ``?``)."""

    user: str
    name: str


def parse_owners(text: str) -> dict[int, Owner]:
    """``ps -o pid=,user=,comm=`` lines to ``{pid: Owner}``; lines that don't parse are
    skipped (a name may hold spaces: it is the rest of the line)."""
    owners: dict[int, Owner] = {}
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and (pid := natural(parts[0])) is not None:
            owners[pid] = Owner(parts[1], parts[2].strip() if len(parts) == 3 else "")
    return owners


def parse_cgroups(text: str) -> dict[int, str]:
    """``PID <cgroup lines joined>`` lines to ``{pid: docker container id}`` (Docker only)."""
    containers: dict[int, str] = {}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        match = _DOCKER_CGROUP.search(rest)
        if (pid := natural(word)) is not None and match:
            containers[pid] = match.group(1)
    return containers


def _label(value: object) -> str | None:
    # docker prints "" for a missing label.
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Container:
    """One container of the host, with the forge labels it has (``None``: label absent)."""

    id: str
    state: str
    created: int | None  # seconds since the epoch
    env: str | None
    owner: str | None
    gpus: tuple[str, ...]  # label forge.gpus, split
    claim: str | None  # the GPU UUID, for a claim container
    claim_env: str | None
    claim_owner: str | None


def parse_containers(text: str) -> tuple[float | None, dict[str, Container]]:
    """The containers section: the host's clock (first line), then ``docker ps --format
    DOCKER_FORMAT`` lines, to ``(now, {container id: Container})``. Pure; skips lines that
    don't parse (e.g. "permission denied while trying to connect to the Docker daemon")."""
    lines = text.splitlines()
    clock = natural(lines[0].strip()) if lines else None
    now = None if clock is None else float(clock)
    found: dict[str, Container] = {}
    decoder = json.JSONDecoder()
    for line in lines[1:] if now is not None else lines:
        cid, _, rest = line.strip().partition(" ")
        if not is_container_id(cid):
            continue
        values: list[object] = []
        try:
            while rest.strip():
                value, end = decoder.raw_decode(rest.lstrip())
                values.append(value)
                rest = rest.lstrip()[end:]
        except ValueError:
            continue
        if len(values) != len(_FORMAT_FIELDS) - 1:
            continue
        state, created, env, owner, gpus, claim, claim_env, claim_owner = values
        found[cid] = Container(
            id=cid,
            state=state if isinstance(state, str) else "",
            created=labels.parse_created(created) if isinstance(created, str) else None,
            env=_label(env),
            owner=_label(owner),
            gpus=tuple(g for g in (_label(gpus) or "").split(",") if g),
            claim=_label(claim),
            claim_env=_label(claim_env),
            claim_owner=_label(claim_owner),
        )
    return now, found


def holds(gpus: tuple[Gpu, ...], containers: Mapping[str, Container], now: float | None) -> tuple[GpuHold, ...]:
    """GPUs held by forge environments: by a running (or restarting) environment container,
    or by a claim that is fresh or whose environment container exists. Pure."""
    by_index = {str(g.index): g.uuid for g in gpus if not g.is_mig_instance}
    uuids = {g.uuid for g in gpus}
    env_names = {c.env for c in containers.values() if c.env}
    out: dict[str, GpuHold] = {}
    for c in containers.values():
        if c.env and c.state in ("running", "restarting", "created"):
            for g in c.gpus:
                uuid = by_index.get(g, g)
                if uuid in uuids:
                    out.setdefault(uuid, GpuHold(uuid, c.env, c.owner, "container"))
    for c in containers.values():
        if not c.claim or c.claim not in uuids or c.claim in out:
            continue
        fresh = now is None or c.created is None or now - c.created < labels.CLAIM_GRACE_S
        if fresh or c.claim_env in env_names:
            out[c.claim] = GpuHold(c.claim, c.claim_env, c.claim_owner, "claim")
    return tuple(out[u] for u in sorted(out))


def _enrich(
    procs: tuple[GpuProcess, ...],
    owners: Mapping[int, Owner],
    cgroups: Mapping[int, str],
    containers: Mapping[str, Container],
) -> tuple[GpuProcess, ...]:
    out = []
    for proc in procs:
        cid = cgroups.get(proc.pid)
        c = containers.get(cid) if cid else None
        env, owner = (c.env, c.owner) if c else (None, None)
        o = owners.get(proc.pid)
        user, name = (o.user, o.name) if o else (None, proc.name)
        out.append(replace(proc, name=name, user=user, container_id=cid, env_name=env, env_owner=owner))
    return tuple(out)


def _error(host: str, status: ProbeStatus, reason: str) -> HostGpus:
    return HostGpus(host=host, status=status, reason=reason)


def parse_probe(host: str, result: CommandResult, mig_result: CommandResult | None = None) -> HostGpus:
    """Turn the probe's :class:`CommandResult` into :class:`HostGpus`. Pure; never raises
    for anything the host printed: a bad answer becomes status ``error`` with a reason.
    ``mig_result``: the answer to :data:`forge.gpu.mig.MIG_SCRIPT`, on a host with a
    MIG-enabled GPU: its instances are listed as GPUs of their own."""
    try:
        sections = split_sections(result.stdout)
    except ProbeParseError as e:
        return _error(host, ProbeStatus.ERROR, str(e))
    gpu_section = sections.get("gpus")
    if gpu_section is None or gpu_section.exit_status is None:
        tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:]
        detail = f": {tail[0]}" if tail else ""
        return _error(
            host, ProbeStatus.ERROR, f"the GPU probe script failed (exit status {result.exit_status}){detail}"
        )
    failure = classify_failure(gpu_section.exit_status, gpu_section.text)
    if failure is not None:
        return _error(host, failure.status, failure.reason)
    try:
        gpus = parse_gpus(gpu_section.text)
    except NvsmiParseError as e:
        return _error(host, ProbeStatus.ERROR, f"unexpected nvidia-smi output: {e}")
    if not gpus:
        return _error(host, ProbeStatus.NO_GPUS, "nvidia-smi lists no GPU")

    apps = sections.get("apps")
    if apps is None or apps.exit_status != 0:
        detail = apps.text.strip().splitlines()[0] if apps and apps.text.strip() else "no output"
        return HostGpus(host, ProbeStatus.ERROR, gpus, reason=f"nvidia-smi could not list GPU processes: {detail}")
    try:
        procs = parse_apps(apps.text)
    except NvsmiParseError as e:
        return HostGpus(host, ProbeStatus.ERROR, gpus, reason=f"unexpected nvidia-smi process output: {e}")
    if mig_result is not None:
        gpus, procs = _with_mig(gpus, procs, mig_result.stdout)
    # Owners, cgroups and containers are best effort: a missing piece leaves fields None.
    owners = parse_owners(sections["owners"].text) if "owners" in sections else {}
    cgroups = parse_cgroups(sections["cgroups"].text) if "cgroups" in sections else {}
    now, containers, unknown = _containers(sections.get("containers"))
    return HostGpus(
        host=host,
        status=ProbeStatus.OK,
        gpus=gpus,
        processes=_enrich(procs, owners, cgroups, containers),
        holds=holds(gpus, containers, now),
        holds_unknown=unknown,
    )


def _with_mig(
    gpus: tuple[Gpu, ...], procs: tuple[GpuProcess, ...], text: str
) -> tuple[tuple[Gpu, ...], tuple[GpuProcess, ...]]:
    """The MIG instances after their GPUs, processes on them pointed at them; as they were when
    the MIG query failed or its answer is not trusted (one answer covers every GPU of the host:
    none of its MIG GPUs is free then, each is split, and no instance of them is offered)."""
    from forge.gpu import mig  # hosts with a MIG-enabled GPU only: not on every probe's start-up

    list_text, list_rc, query_text, query_rc = mig.split(text)
    if list_rc != 0 or query_rc != 0:
        return gpus, procs
    try:
        found = mig.instances(gpus, list_text, query_text)
        pointed = mig.point_processes(procs, gpus, found, query_text)
    except mig.MigAnswerError:
        return gpus, procs
    every = tuple(sorted((*gpus, *found), key=lambda g: (g.index, -1 if g.mig_device is None else g.mig_device)))
    return every, pointed


def _containers(section: Section | None) -> tuple[float | None, dict[str, Container], str | None]:
    """The host's clock and containers, or why docker could not list them (127: no docker on
    the host, so no forge environment either)."""
    if section is not None and section.exit_status == 0:
        now, containers = parse_containers(section.text)
        return now, containers, None
    if section is not None and section.exit_status == 127:
        return None, {}, None
    text = section.text if section is not None else ""
    status = section.exit_status if section is not None else None
    return None, {}, unavailable(text, status) or f"docker ps failed: {_first(text) or 'no answer'}"


def _first(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().isdigit()]
    return lines[0][:200] if lines else ""


def probe_host(s: HostSession, *, timeout: float) -> HostGpus:
    """Run the probe on one host and parse it. Transport errors (connect, timeout) propagate:
    the fleet layer collects them per host."""
    result = s.run_again(probe_command(s.docker_words), timeout=timeout)
    found = parse_probe(result.host or s.name, result)
    if found.ok and any(g.mig_enabled for g in found.gpus):  # one more round trip, MIG hosts only
        from forge.gpu import mig

        mig_result = s.run_again(["sh", "-c", mig.MIG_SCRIPT], timeout=timeout)
        found = parse_probe(result.host or s.name, result, mig_result)
    return found
