"""Names read from a host are checked whole: a trailing newline is not part of a name (in
Python's ``re``, ``$`` also matches before a final ``\\n``, so ``match(r"^...$")`` let one by)."""

from __future__ import annotations

import pytest

from forge.env import idle, names, queue
from forge.env.listing import Container, Environment
from forge.gpu import holders
from forge.gpu.model import Gpu, HostGpus, ProbeStatus
from forge.gpu.policy import FreePolicy, GpuVerdict
from forge.gpu.survey import HostReport
from forge.history.samples import UNKNOWN, samples_of
from forge.inventory import Host

SUBJECT = "ab" * 12


def test_environment_names_are_whole_words() -> None:
    assert names.valid_name("dev")
    assert not names.valid_name("dev\n")


def test_a_holders_names_are_whole_words() -> None:
    assert holders.user_name("alice") == "alice" and holders.user_name("alice\n") == holders.UNKNOWN
    assert holders.user_name("HOST$") == "HOST$" and holders.user_name("HOST$\n") == holders.UNKNOWN
    assert holders.env_name("dev") == "dev" and holders.env_name("dev\n") == holders.UNKNOWN


def test_an_environments_user_label_is_a_whole_user_name() -> None:
    def env(user: str) -> Environment:
        labels = {"forge.env": "dev", "forge.ssh_port": "2201", "forge.user": user}
        return Environment("gpu1", Container("c1", "forge-alice-dev-1", "img", "running", "Up", 0, labels, ""))

    assert env("alice").user == "alice"
    assert env("alice\n").user is None


def test_a_reclaim_tag_is_whole() -> None:
    tag = idle.keep_repo("dev", "alice") + ":reclaimed-" + "0" * 12

    def mark(image: str) -> idle.Mark:
        return idle.Mark("gpu1", f"forge-idle-{SUBJECT}-reclaimed", SUBJECT, "reclaimed", 1, "dev", "alice", image)

    assert idle.is_reclaim_image(mark(tag), "dev", "alice")
    assert not idle.is_reclaim_image(mark(tag + "\n"), "dev", "alice")


def test_idle_marks_and_tickets_have_whole_names() -> None:
    assert idle.volume_name(SUBJECT, "idle") == f"forge-idle-{SUBJECT}-idle"
    with pytest.raises(ValueError):
        idle.volume_name(SUBJECT + "\n", "idle")
    name = f"forge-idle-{SUBJECT}-idle"
    assert idle.mark_of("gpu1", [name, SUBJECT, "idle", "1", "dev", "alice", ""], 10) is not None
    assert idle.mark_of("gpu1", [name + "\n", SUBJECT, "idle", "1", "dev", "alice", ""], 10) is None

    tid = "0" * 16
    assert queue.volume_name(tid, 1) == f"forge-wait-{tid}-1"
    with pytest.raises(ValueError):
        queue.volume_name(tid + "\n", 1)
    cols = [f"forge-wait-{tid}-1", tid, "alice", "dev", "1", "0", "1", "2"]
    assert queue.ticket_of("gpu1", cols) is not None
    assert queue.ticket_of("gpu1", [cols[0] + "\n", *cols[1:]]) is None


def test_recorded_gpu_uuids_and_models_are_whole() -> None:
    def report(uuid: str, model: str) -> HostReport:
        g = Gpu(0, uuid, model, None, 1, 1, 1, 0, 0, None, None, None, None, None)
        gpus = HostGpus("gpu1", ProbeStatus.OK, (g,))
        return HostReport(
            Host(name="gpu1", address="192.0.2.1"), "me", FreePolicy(), gpus, None, (GpuVerdict(g, (), True, "free"),)
        )

    (s,) = samples_of([report("GPU-1", "H200")])
    assert (s.uuid, s.model) == ("GPU-1", "H200")
    assert samples_of([report("GPU-1\n", "H200")]) == []
    (s,) = samples_of([report("GPU-1", "H200\n")])
    assert s.model == UNKNOWN
