"""The lab's local commands (through forge's LocalTransport) and its process handling (psutil),
on real processes of this machine."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest

from forge.errors import CommandFailed, CommandTimeout
from forge.lab import proc
from forge.lab.errors import LabError


def test_run_captures_text_and_feeds_bytes_or_a_file() -> None:
    r = proc.run(["tr", "a-z", "A-Z"], input=b"forge\n")
    assert (r.ok, r.stdout, r.host) == (True, "FORGE\n", "lab")
    r = proc.run(["wc", "-c"], input=io.BytesIO(b"x" * 70000))
    assert r.stdout.strip() == "70000"


def test_a_failed_command_is_forge_s_command_failed_with_the_lab_s_hint() -> None:
    with pytest.raises(CommandFailed, match=r"^lab: `sh -c 'echo nope >&2; exit 3'` exited with status 3: nope") as e:
        proc.run(["sh", "-c", "echo nope >&2; exit 3"], hint="try `forge lab status`")
    assert e.value.hint == "try `forge lab status`" and e.value.exit_status == 3
    assert proc.run(["false"], check=False).exit_status == 1


def test_a_missing_tool_is_named_and_a_hung_one_ended() -> None:
    with pytest.raises(LabError, match="missing tools: no-such-tool-here"):
        proc.run(["no-such-tool-here"])
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="ran past its timeout of 1 s"):
        proc.run(["sh", "-c", "sleep 30 & wait"], timeout=1)
    assert time.monotonic() - started < 10


def test_processes_alive_descendants_and_a_zombie_counts_as_dead() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"]
    )
    try:
        assert proc.wait_until(lambda: len(proc.with_descendants([parent.pid])) == 2, 10)
        (child,) = proc.with_descendants([parent.pid]) - {parent.pid}
        assert proc.pid_alive(parent.pid) and proc.pid_alive(child)
        assert parent.pid in proc.pids_mentioning("subprocess.Popen(['sleep'", [os.path.basename(sys.executable)])
        proc.kill_all([parent.pid, child], grace=5)
        assert not proc.pid_alive(child)
        # the parent is our child: until reaped, a zombie, which counts as dead
        assert not proc.pid_alive(parent.pid)
    finally:
        parent.kill()
        parent.wait()
    assert not proc.pid_alive(parent.pid) and not proc.pid_alive(None)
