"""Idle environments (forge reclaim) as pure rules over snapshots: marks read from a host's
`docker volume ls` (untrusted), SSH sessions from `docker top`, GPUs from the probe, and the one
rule that says what a look leads to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forge import inventory
from forge.env import envs, idle, queue
from forge.env.idle import Action, Look, Mark, Rule
from forge.env.listing import Container, Environment, HostListing, parse_listing
from forge.fleet import FleetResult, HostResult
from forge.gpu.model import HostGpus, ProbeStatus
from forge.inventory import Host, InventoryError, PolicySettings
from tests.unit.test_policy import gpu

CID = "0" * 63 + "1"
OTHER = "0" * 63 + "2"
RULE = Rule(utilization_pct=5, memory_mib=1024, idle_after_s=3600, reclaim_after_s=600)


def volume_line(name: str, *values: str) -> str:
    """A line of the listing's volumes (forge/env/listing.py): the tickets' labels (empty), then
    the idle marks'."""
    return "\t".join(json.dumps(v) for v in (name, *[""] * len(queue.LABELS), *values))


def marks_in(lines: str, now: int = 1000) -> tuple[Mark, ...]:
    return parse_listing("gpu1", f"{now}\n@@forge-volumes\n{lines}\n").marks


def mark(kind: str, since: int, *, subject: str = CID, image: str = "", env: str = "dev", owner: str = "alice") -> Mark:
    return Mark("gpu1", f"forge-idle-{subject}-{kind}", subject, kind, since, env, owner, image)


def test_marks_are_read_strictly_from_the_hosts_output() -> None:
    good = volume_line(f"forge-idle-{CID}-warned", CID, "warned", "900", "dev", "alice", "")
    out = "\n".join([
        good,
        volume_line(f"forge-idle-{CID}-idle", OTHER, "idle", "900", "dev", "alice", ""),  # name and subject differ
        volume_line(f"forge-idle-{CID}-idle", CID, "warned", "900", "dev", "alice", ""),  # name and kind differ
        volume_line(f"forge-idle-{CID}-idle", CID, "idle", "-5", "dev", "alice", ""),  # not a time
        volume_line(f"forge-idle-{CID}-idle", CID, "idle", "\u00b9", "dev", "alice", ""),  # isdigit(), not int()
        volume_line(f"forge-idle-{CID}-idle", CID, "idle", "2000", "dev", "alice", ""),  # in the host's future
        volume_line(f"forge-idle-{CID}-gone", CID, "gone", "900", "dev", "alice", ""),  # not a kind
        volume_line("forge-idle-xyz-idle", "xyz", "idle", "900", "dev", "alice", ""),  # not a subject
        volume_line(f"forge-idle-{CID}-idle", CID, "idle", "900", "dev"),  # columns short
        "not json\tat all",
    ])  # fmt: skip
    assert marks_in(out) == (mark("warned", 900),)


def test_one_volume_listing_carries_tickets_and_marks_and_passes_over_other_volumes() -> None:
    ticket_id = "a" * 16
    ticket = "\t".join(json.dumps(v) for v in (
        f"forge-wait-{ticket_id}-0", ticket_id, "bob", "x", "1", "0", "950", "990", *[""] * len(idle.LABELS)
    ))  # fmt: skip
    data = "\t".join(json.dumps(v) for v in ("forge-data-alice", *[""] * (len(queue.LABELS) + len(idle.LABELS))))
    marks = volume_line(f"forge-idle-{CID}-idle", CID, "idle", "900", "dev", "alice", "")
    listing = parse_listing("gpu1", f"1000\n@@forge-volumes\n{data}\n{ticket}\n{marks}\n")
    assert [t.id for t in listing.tickets] == [ticket_id] and listing.marks == (mark("idle", 900),)
    assert parse_listing("gpu1", "1000\n").marks == ()


# What `docker top ID -o pid,args` printed on a lab host for an environment with two
# connections without a terminal open (an IDE's, `forge ssh dev sleep 20`), plus the lines a
# login and OpenSSH 9.8's session process give.
TOP = """PID                 COMMAND
21821               sshd: /usr/sbin/sshd -D -e -f /etc/ssh/sshd_forge_config [listener] 0 of 10-100 startups
22098               sshd: forgelab [priv]
22103               sshd: forgelab [priv]
22105               sshd: forgelab@notty
22106               sh -c sleep 20
22107               sleep 20
22108               sshd: forgelab@notty
22109               sleep 20
"""


def test_ssh_sessions_are_counted_from_docker_top() -> None:
    assert idle.count_sessions(TOP) == 2
    assert idle.count_sessions(TOP.replace("forgelab@notty", "forgelab@pts/3", 1)) == 2
    assert idle.count_sessions("PID COMMAND\n9 sshd-session: alice@pts/0\n") == 1
    assert idle.count_sessions(TOP.splitlines()[0] + "\n21821 sshd: /usr/sbin/sshd -D [listener]\n") == 0
    # a process that only names itself like one, after its own first word, is not a session
    assert idle.count_sessions("PID COMMAND\n7 python sshd: x@pts/0\n") == 0


def test_the_reclaim_counts_sessions_per_container_and_skips_one_it_could_not_list() -> None:
    from forge.env.reclaim import parse_sessions

    out = f"@@forge-top {CID}\n{TOP}@@forge-top {OTHER}\nError: no such container\n@@forge-failed\n"
    assert parse_sessions(out) == {CID: 2}
    # a daemon's host without ps: the container's /proc/PID/cmdline (NUL-separated), as read
    # on the lab's trixie host with `forge ssh ENV sleep 15` open
    pad = "\x00" * 33
    proc = (
        f"@@forge-top {CID}\nPID COMMAND\n0 sshd: /usr/sbin/sshd -D -e -f /etc/ssh/sshd_forge_config [listener] 0 of "
        f"10-100 startups\x00\n0 sshd: forgelab [priv]{pad}\n0 sshd: forgelab@notty{pad}\n0 sleep\x0015\x00\n"
    )
    assert parse_sessions(proc) == {CID: 1}


def gpus(*gs: object) -> HostGpus:
    return HostGpus("gpu1", ProbeStatus.OK, gpus=tuple(gs))  # type: ignore[arg-type]


def test_gpus_show_work_by_utilization_or_memory_and_what_cannot_be_read_counts_as_work() -> None:
    quiet = gpus(gpu(0, host="gpu1", util=3, used=500), gpu(1, host="gpu1", util=90, used=40000))
    assert idle.gpus_busy(quiet, ["GPU-gpu1-0"], RULE) is None
    assert idle.gpus_busy(quiet, ["0"], RULE) is None  # an environment given GPUs by index
    assert idle.gpus_busy(quiet, ["GPU-gpu1-0", "GPU-gpu1-1"], RULE) == "GPU 1 at 90% utilization"
    memory = gpus(gpu(0, host="gpu1", util=0, used=2000))
    assert idle.gpus_busy(memory, ["GPU-gpu1-0"], RULE) == "GPU 0 has 2000 MiB in use"
    unknown = gpus(gpu(0, host="gpu1", util=None, used=0))
    assert idle.gpus_busy(unknown, ["GPU-gpu1-0"], RULE) == "GPU 0 at unknown utilization"
    assert idle.gpus_busy(quiet, ["GPU-elsewhere"], RULE) == "GPU GPU-elsewhere is not on the host"
    assert idle.gpus_busy(None, ["GPU-gpu1-0"], RULE) == "its GPUs could not be read"
    assert idle.gpus_busy(HostGpus("gpu1", ProbeStatus.DRIVER_ERROR), ["GPU-gpu1-0"], RULE) is not None
    assert idle.gpus_busy(None, [], RULE) is None  # no GPUs: only sessions count


@pytest.mark.parametrize(
    ("running", "busy", "marks", "now", "expected"),
    [
        (True, "1 SSH session(s) open", {}, 5000, Action.BUSY),
        (True, "GPU 0 at 90% utilization", {"idle": 100, "warned": 4000}, 5000, Action.BUSY),
        (True, None, {}, 5000, Action.START),
        (True, None, {"idle": 2000}, 5000, Action.IDLE),  # idle 3000 s < 3600
        (True, None, {"idle": 1400}, 5000, Action.WARN),  # idle 3600 s
        (True, None, {"idle": 1000, "warned": 4500}, 5000, Action.WARNED),  # warned 500 s < 600
        (True, None, {"idle": 1000, "warned": 4400}, 5000, Action.RECLAIM),
        (False, None, {"idle": 1000, "warned": 4400}, 5000, Action.FINISH),  # a reclaim cut short
        (False, None, {"idle": 1000}, 5000, Action.STOPPED),  # stopped by someone else: left alone
        (False, None, {}, 5000, Action.STOPPED),
        (False, None, {"reclaimed": 4900}, 5000, Action.RECLAIMED),
        (True, None, {"reclaimed": 4900}, 5000, Action.RECLAIMED),  # started by hand: not again
    ],
)
def test_the_rule_of_idleness_warning_and_reclaim(
    running: bool, busy: str | None, marks: dict[str, int], now: int, expected: Action
) -> None:
    look = Look(running, busy, {k: mark(k, t) for k, t in marks.items()}, now)
    assert idle.decide(look, RULE) is expected


def test_without_idle_after_nothing_is_ever_warned() -> None:
    look = Look(True, None, {"idle": mark("idle", 0)}, 10**9)
    assert idle.decide(look, Rule(idle_after_s=None)) is Action.IDLE
    assert idle.idle_for(look.marks, look.now) == 10**9
    assert idle.reclaim_due({"warned": mark("warned", 100)}, RULE, 400) == 300


def test_policy_keys_are_checked_with_the_file_and_key_named(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    head = '[[hosts]]\nname = "gpu1"\naddress = "10.0.0.1"\n[policy]\n'
    path.write_text(head + 'idle_after = "12h"\nreclaim_after = "30m"\nidle_memory_mib = 500\n')
    rule = idle.rule_of(inventory.load_file(path).policy)
    assert rule == Rule(utilization_pct=5, memory_mib=500, idle_after_s=43200, reclaim_after_s=1800)
    assert idle.rule_of(PolicySettings()).idle_after_s is None  # off unless set
    for bad, key in (('idle_after = "soon"', "idle_after"), ("idle_utilization_pct = 101", "idle_utilization_pct")):
        path.write_text(f"{head}{bad}\n")
        with pytest.raises(InventoryError) as e:
            inventory.load_file(path)
        assert f"policy.{key}" in str(e.value) and str(path) in str(e.value)


def env_container(cid: str, *, state: str = "exited", env: str = "dev", owner: str = "alice") -> Container:
    labels = {"forge.env": env, "forge.owner": owner}
    return Container(cid, f"forge-{owner}-{env}-x", "img", state, "Exited", 900, labels)


def fleet_of(listing: HostListing) -> FleetResult[HostListing]:
    return FleetResult((HostResult(Host(name="gpu1", address="10.0.0.1", user="alice"), value=listing),))


def test_migrate_brings_back_only_the_image_forge_reclaim_names_for_that_environment() -> None:
    image = f"forge-keep/alice-dev:reclaimed-{CID[:12]}"
    stopped = Environment("gpu1", env_container(CID))
    listing = HostListing("gpu1", 1000, (stopped.container,), marks=(mark("reclaimed", 900, image=image),))
    assert envs.reclaimed(fleet_of(listing), "dev", stopped) == listing.marks[0]
    running = Environment("gpu1", env_container(CID, state="running"))
    assert envs.reclaimed(fleet_of(listing), "dev", running) is None  # started by hand since
    for planted in ("evil/image:latest", f"forge-keep/bob-dev:reclaimed-{CID[:12]}", f"{image}\nx"):
        bad = HostListing("gpu1", 1000, (stopped.container,), marks=(mark("reclaimed", 900, image=planted),))
        assert envs.reclaimed(fleet_of(bad), "dev", stopped) is None, planted
    # its container removed since: the newest mark of the user's environment of that name
    newer = mark("reclaimed", 950, subject=OTHER, image=f"forge-keep/alice-dev:reclaimed-{OTHER[:12]}")
    gone = HostListing("gpu1", 1000, (), marks=(mark("reclaimed", 900, image=image), newer))
    assert envs.reclaimed(fleet_of(gone), "dev", None) == newer
    assert envs.reclaimed(fleet_of(gone), "other", None) is None
    theirs = HostListing("gpu1", 1000, (), marks=(mark("reclaimed", 900, image=image, owner="bob"),))
    assert envs.reclaimed(fleet_of(theirs), "dev", None) is None


def test_ps_shows_what_forge_reclaim_last_saw() -> None:
    from forge.cli.env import _idle

    assert _idle({}, 1000) == "-"
    assert _idle({"idle": mark("idle", 1000 - 7300)}, 1000) == "2h"
    assert _idle({"idle": mark("idle", 0), "warned": mark("warned", 900)}, 1000) == "16m (warned)"
    assert _idle({"reclaimed": mark("reclaimed", 900)}, 1000) == "reclaimed"
