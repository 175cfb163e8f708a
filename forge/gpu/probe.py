"""The GPU "fact": one fixed remote script per host, and a pure parser for what it prints.

One round trip per host. :func:`probe_command` renders a constant ``sh -c`` script (positional
arguments carry the field lists and the docker format, quoted by :mod:`forge.shell`) that
prints these sections, each opened by a marker line and closed by its exit status::

    @@forge-gpu-probe gpus          nvidia-smi --query-gpu=...  (stdout and stderr)
    @@forge-gpu-probe status N
    @@forge-gpu-probe apps          nvidia-smi --query-compute-apps=...
    @@forge-gpu-probe status N
    @@forge-gpu-probe owners        ps -o pid=,user:64= -p PID,PID...
    @@forge-gpu-probe status N
    @@forge-gpu-probe cgroups       one line per pid: "PID <its /proc/PID/cgroup, one line>"
    @@forge-gpu-probe status 0
    @@forge-gpu-probe containers    docker ps --no-trunc --filter label=forge.env (only when a
    @@forge-gpu-probe status N      process runs in a Docker cgroup; 127 when docker is absent)
    @@forge-gpu-probe end

When the GPU query fails the script stops after its section. No line of nvidia-smi's CSV
(which starts with a value), ps, the cgroup lines (which start with a pid) or the docker
lines (which start with a container id) can start with the marker, so sections are unambiguous.
``ps -o user:64=`` because procps prints a user name longer than the column as a number.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from forge import shell
from forge.gpu.model import GpuProcess, HostGpus, ProbeStatus
from forge.gpu.nvsmi import (
    APP_FIELDS,
    GPU_FIELDS,
    NvsmiParseError,
    classify_failure,
    parse_apps,
    parse_gpus,
)
from forge.transport.base import CommandResult, Transport

MARKER = "@@forge-gpu-probe"
ENV_LABEL = "forge.env"
OWNER_LABEL = "forge.owner"
# One line per forge container: "<64-hex id> <JSON string env> <JSON string owner>".
DOCKER_FORMAT = '{{.ID}} {{json (.Label "' + ENV_LABEL + '")}} {{json (.Label "' + OWNER_LABEL + '")}}'

# $1: --query-gpu fields, $2: --query-compute-apps fields, $3: docker ps --format,
# $4: the host's docker_host from the inventory (empty: docker's default).
# A constant: nothing from the inventory or the command line is ever spliced into it.
_SCRIPT = r"""M=@@forge-gpu-probe
# The process query runs in the background while the GPU query runs: each nvidia-smi call
# costs ~25 ms with persistence mode on and can take over a second without it.
t=$(mktemp 2>/dev/null) || t=
[ -n "$t" ] && { nvidia-smi --query-compute-apps="$2" --format=csv,noheader,nounits >"$t" 2>&1 & }
echo "$M gpus"
nvidia-smi --query-gpu="$1" --format=csv,noheader,nounits 2>&1
rc=$?
echo "$M status $rc"
if [ -n "$t" ]; then
  wait $!
  arc=$?
  apps=$(cat "$t")
  rm -f "$t"
fi
if [ "$rc" -ne 0 ] && [ "$rc" -ne 14 ]; then echo "$M end"; exit 0; fi
if [ -z "$t" ]; then
  apps=$(nvidia-smi --query-compute-apps="$2" --format=csv,noheader,nounits 2>&1)
  arc=$?
fi
echo "$M apps"
[ -n "$apps" ] && printf '%s\n' "$apps"
echo "$M status $arc"
rc=$arc
pids=
if [ "$rc" -eq 0 ]; then
  pids=$(printf '%s\n' "$apps" | sed -n 's/^\([0-9][0-9]*\),.*/\1/p' | sort -un | tr '\n' ' ')
fi
echo "$M owners"
if [ -n "$pids" ]; then
  ps -o pid=,user:64= -p "$(echo $pids | tr ' ' ',')" 2>&1
  echo "$M status $?"
else
  echo "$M status 0"
fi
echo "$M cgroups"
docker_seen=
for pid in $pids; do
  cg=$( { tr '\n' ' ' < "/proc/$pid/cgroup"; } 2>/dev/null ) || continue
  echo "$pid $cg"
  case $cg in *docker*) docker_seen=1 ;; esac
done
echo "$M status 0"
if [ -n "$docker_seen" ]; then
  echo "$M containers"
  if command -v docker >/dev/null 2>&1; then
    docker ${4:+-H "$4"} ps --no-trunc --filter "label=forge.env" --format "$3" 2>&1
    echo "$M status $?"
  else
    echo "$M status 127"
  fi
fi
echo "$M end"
"""

# Docker's cgroup paths: v2 + systemd ("/system.slice/docker-<id>.scope"), v2 + cgroupfs and
# v1 ("/docker/<id>").
_DOCKER_CGROUP = re.compile(r"docker[-/]([0-9a-f]{64})")


def probe_command(docker_host: str | None = None) -> shell.Script:
    """The one command that probes a host's GPUs, processes, owners and forge containers."""
    return shell.script(_SCRIPT, ",".join(GPU_FIELDS), ",".join(APP_FIELDS), DOCKER_FORMAT, docker_host or "")


@dataclass(frozen=True)
class Section:
    """One section of the probe's output: its text and the exit status it reported."""

    text: str
    exit_status: int | None  # None when the status line is missing (output cut short)


def split_sections(stdout: str) -> dict[str, Section]:
    """Split the probe's stdout at marker lines. Pure."""
    sections: dict[str, Section] = {}
    name: str | None = None
    lines: list[str] = []
    prefix = MARKER + " "
    for line in stdout.splitlines():
        if not line.startswith(prefix):
            if name is not None:
                lines.append(line)
            continue
        word, _, arg = line[len(prefix) :].partition(" ")
        if word == "status" and name is not None:
            try:
                status: int | None = int(arg)
            except ValueError:
                status = None
            sections[name] = Section("\n".join(lines) + ("\n" if lines else ""), status)
            name, lines = None, []
        elif word == "end":
            break
        else:
            if name is not None:  # a section without its status line
                sections[name] = Section("\n".join(lines) + ("\n" if lines else ""), None)
            name, lines = word, []
    if name is not None:
        sections[name] = Section("\n".join(lines) + ("\n" if lines else ""), None)
    return sections


def parse_owners(text: str) -> dict[int, str]:
    """``ps -o pid=,user=`` lines to ``{pid: user}``; lines that don't parse are skipped."""
    owners: dict[int, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            owners[int(parts[0])] = parts[1]
    return owners


def parse_cgroups(text: str) -> dict[int, str]:
    """``PID <cgroup lines joined>`` lines to ``{pid: docker container id}`` (Docker only)."""
    containers: dict[int, str] = {}
    for line in text.splitlines():
        pid, _, rest = line.strip().partition(" ")
        match = _DOCKER_CGROUP.search(rest)
        if pid.isdigit() and match:
            containers[int(pid)] = match.group(1)
    return containers


def _label(value: object) -> str | None:
    # docker prints "" for a missing label.
    return value if isinstance(value, str) and value else None


def parse_containers(text: str) -> dict[str, tuple[str | None, str | None]]:
    """``docker ps --format DOCKER_FORMAT`` lines to ``{container id: (env, owner)}``."""
    labels: dict[str, tuple[str | None, str | None]] = {}
    for line in text.splitlines():
        cid, _, rest = line.strip().partition(" ")
        if not re.fullmatch(r"[0-9a-f]{64}", cid):
            continue  # e.g. "permission denied while trying to connect to the Docker daemon"
        try:
            decoder = json.JSONDecoder()
            env, end = decoder.raw_decode(rest)
            owner, _ = decoder.raw_decode(rest[end:].lstrip())
        except ValueError:
            continue
        labels[cid] = (_label(env), _label(owner))
    return labels


def _enrich(
    procs: tuple[GpuProcess, ...],
    owners: Mapping[int, str],
    containers: Mapping[int, str],
    labels: Mapping[str, tuple[str | None, str | None]],
) -> tuple[GpuProcess, ...]:
    out = []
    for proc in procs:
        cid = containers.get(proc.pid)
        env, owner = labels.get(cid, (None, None)) if cid else (None, None)
        out.append(replace(proc, user=owners.get(proc.pid), container_id=cid, env_name=env, env_owner=owner))
    return tuple(out)


def _error(host: str, status: ProbeStatus, reason: str) -> HostGpus:
    return HostGpus(host=host, status=status, reason=reason)


def parse_probe(host: str, result: CommandResult) -> HostGpus:
    """Turn the probe's :class:`CommandResult` into :class:`HostGpus`. Pure; never raises
    for anything the host printed: a bad answer becomes status ``error`` with a reason."""
    sections = split_sections(result.stdout)
    gpu_section = sections.get("gpus")
    if gpu_section is None or gpu_section.exit_status is None:
        tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:]
        detail = f": {tail[0]}" if tail else ""
        return _error(
            host,
            ProbeStatus.ERROR,
            f"the GPU probe script failed (exit status {result.exit_status}){detail}",
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
        return HostGpus(
            host=host,
            status=ProbeStatus.ERROR,
            gpus=gpus,
            reason=f"nvidia-smi could not list GPU processes: {detail}",
        )
    try:
        procs = parse_apps(apps.text)
    except NvsmiParseError as e:
        return HostGpus(
            host=host,
            status=ProbeStatus.ERROR,
            gpus=gpus,
            reason=f"unexpected nvidia-smi process output: {e}",
        )
    # Owners, cgroups and containers are best effort: a missing piece leaves fields None.
    owners = parse_owners(sections["owners"].text) if "owners" in sections else {}
    cgroups = parse_cgroups(sections["cgroups"].text) if "cgroups" in sections else {}
    containers = sections.get("containers")
    labels = parse_containers(containers.text) if containers is not None and containers.exit_status == 0 else {}
    return HostGpus(
        host=host,
        status=ProbeStatus.OK,
        gpus=gpus,
        processes=_enrich(procs, owners, cgroups, labels),
    )


def probe_host(transport: Transport, *, timeout: float, docker_host: str | None = None) -> HostGpus:
    """Run the probe on one host and parse it. Transport errors (connect, timeout) propagate:
    the fleet layer collects them per host."""
    result = transport.run(probe_command(docker_host), timeout=timeout)
    return parse_probe(result.host or transport.name, result)
