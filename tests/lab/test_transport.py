"""The SSH transport and fleet runner against the lab's real sshd servers."""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from forge import fleet, inventory
from forge.errors import ConnectError, HostKeyError
from forge.transport import connect
from tests.unit.test_shell import NASTY

pytestmark = pytest.mark.lab


@pytest.fixture()
def inv(lab: Any) -> inventory.Inventory:
    return inventory.load_file(Path(lab.inventory_path))


def _key_of(lab: Any, host: str) -> str:
    """The lab's known_hosts line of a host (by the address its sshd listens on)."""
    address = lab.address(host)
    return next(line for line in Path(lab.known_hosts).read_text().splitlines() if line.split()[0] == address)


def _jump_keys(lab: Any) -> str:
    """Behind a bastion, the jump host's known_hosts line, which a test's own known_hosts
    needs too (the inventory's known_hosts checks every hop); nothing in a direct lab."""
    if not lab.bastion:
        return ""
    jump = lab.lab.config.jump_host().address
    return next(line for line in Path(lab.known_hosts).read_text().splitlines() if line.split()[0] == jump) + "\n"


def _forged(lab: Any, a: inventory.Host, b: inventory.Host) -> str:
    """A known_hosts line giving ``a`` the key of ``b``."""
    return _key_of(lab, b.name).replace(lab.address(b.name), lab.address(a.name), 1) + "\n"


def _refused(lab: Any) -> str:
    """What forge says of a host whose sshd is down: refused outright in a direct lab; behind
    a bastion, the jump host could not reach it (SSH does not say why)."""
    return "could not reach" if lab.bastion else "connection refused"


def forge_cli(*args: str, inventory_path: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "forge"]
    if inventory_path:
        cmd += ["-i", inventory_path]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)


def test_argv_round_trips_through_the_remote_shell(inv: inventory.Inventory) -> None:
    with connect(inv.hosts[0]) as t:
        r = t.run(["printf", "%s\\0", *NASTY], check=True)
    assert r.stdout.split("\0")[:-1] == NASTY


def test_env_and_stdin_survive_intact(inv: inventory.Inventory) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB of every byte value
    with connect(inv.hosts[0]) as t:
        r = t.run(["sha256sum"], stdin=payload, check=True)
        # the connection stays open across commands
        again = t.run(["sh", "-c", 'printf %s "$FORGE_LAB_HOST"'], check=True)
    import hashlib

    assert r.stdout.split()[0] == hashlib.sha256(payload).hexdigest()
    assert again.stdout == inv.hosts[0].name


def test_failed_command_is_a_result_not_an_exception(inv: inventory.Inventory) -> None:
    with connect(inv.hosts[0]) as t:
        r = t.run(["sh", "-c", "echo oops >&2; exit 7"])
    assert (r.exit_status, r.stderr.strip()) == (7, "oops")
    with pytest.raises(Exception, match="exited with status 7: oops"):
        r.check()


def test_much_output_on_both_streams_at_once_is_read_whole(inv: inventory.Inventory) -> None:
    """Both outputs at once, interleaved, past SSH's window of 2 MiB (8 MiB on stdout, 4 MiB
    on stderr): neither may fill its window while the other is waited on."""
    script = "for i in $(seq 64); do head -c 131072 /dev/zero | tr '\\0' o; head -c 65536 /dev/zero >&2; done; exit 3"
    with connect(inv.hosts[0]) as t:
        r = t.run(["sh", "-c", script], timeout=60)
    assert r.exit_status == 3
    assert len(r.stdout) == 64 * 131072 and set(r.stdout) == {"o"}
    assert r.stderr and set(r.stderr) == {"\0"}  # its tail, bounded


def test_parallel_results_with_one_host_down(lab: Any, inv: inventory.Inventory) -> None:
    # One host with sshd stopped (refused), one address where nothing answers (timeout).
    ghost = replace(inv.hosts[0], name="ghost", address="10.77.0.250", ssh_alias=None, connect_timeout=2.0)
    hosts = [*inv.hosts, ghost]
    down = inv.hosts[1].name
    with lab.host_down(down), fleet.Pool() as pool:
        started = time.monotonic()
        results = fleet.run(hosts, lambda t: t.run(["hostname"], check=True).stdout.strip(), pool=pool)
        elapsed = time.monotonic() - started
    assert [r.host.name for r in results] == [h.name for h in hosts]
    assert isinstance(results[down].error, ConnectError)
    assert _refused(lab) in results[down].reason
    assert isinstance(results["ghost"].error, ConnectError)
    assert "timed out" in results["ghost"].reason
    served = [r for r in results if r.ok]
    assert {r.host.name for r in served} == {h.name for h in inv.hosts} - {down}
    assert all(r.value for r in served)
    # answered within the unreachable host's connect timeout, not one timeout per host
    assert elapsed < ghost.connect_timeout + 5


def test_unknown_host_key_is_rejected(inv: inventory.Inventory, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    host = replace(inv.hosts[0], known_hosts=str(empty))
    with pytest.raises(HostKeyError, match="unknown host key") as ei, connect(host) as t:
        t.run(["true"])
    assert "SHA256:" in str(ei.value) and "accept-new" in str(ei.value)
    assert empty.read_text() == ""


def test_accept_new_records_the_key_then_strict_accepts_it(lab: Any, inv: inventory.Inventory, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(_jump_keys(lab))
    host = replace(inv.hosts[0], known_hosts=str(kh), host_key_policy="accept-new")
    with connect(host) as t:
        t.run(["true"], check=True)
    assert kh.read_text().splitlines()[-1].split()[0] == lab.address(host.name)
    with connect(replace(host, host_key_policy="strict")) as t:
        assert t.run(["true"]).ok


@pytest.mark.parametrize("policy", ["strict", "accept-new"])
def test_changed_host_key_is_refused(lab: Any, inv: inventory.Inventory, tmp_path: Path, policy: str) -> None:
    a, b = inv.hosts[0], inv.hosts[1]
    forged = tmp_path / "known_hosts"
    forged.write_text(_jump_keys(lab) + _forged(lab, a, b))
    host = replace(a, known_hosts=str(forged), host_key_policy=policy)  # type: ignore[arg-type]
    with pytest.raises(HostKeyError, match="CHANGED") as ei, connect(host) as t:
        t.run(["true"])
    assert f"host key of {lab.address(a.name)} has" in str(ei.value) and "ssh-keygen -R" in str(ei.value)
    assert forged.read_text() == _jump_keys(lab) + _forged(lab, a, b)


def test_forge_hosts_check(lab: Any) -> None:
    r = forge_cli("hosts", "--check", "--json", inventory_path=lab.inventory_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["hosts"]
    assert [x["name"] for x in rows] == list(lab.hosts)
    for x in rows:
        assert x["reachable"] is True
        assert x["docker"] and x["docker"][0].isdigit(), x
        assert x["latency_ms"] > 0


def test_forge_hosts_check_with_a_host_down(lab: Any) -> None:
    down = lab.hosts[-1]
    with lab.host_down(down):
        r = forge_cli("hosts", "--check", inventory_path=lab.inventory_path)
    assert r.returncode == 4, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith(down))
    assert "NO" in line and _refused(lab) in line
    assert sum(1 for x in r.stdout.splitlines() if " yes " in x) == len(lab.hosts) - 1


# --------------------------------------------------------------------------- bulk streams


@pytest.mark.parametrize("via", ["openssh", "paramiko"])
def test_a_stream_is_binary_safe_both_ways_through_either_pipe(
    inv: inventory.Inventory, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    import hashlib
    import io

    monkeypatch.setenv("FORGE_SSH_STREAM", via)
    payload = bytes(range(256)) * 4096 * 8  # 8 MiB of every byte value
    with connect(inv.hosts[0]) as t:
        out = io.BytesIO()
        r = t.stream(
            ["sh", "-c", "tee /dev/stderr | sha256sum >&2; cat /proc/self/status >/dev/null"],
            source=io.BytesIO(payload),
            sink=out,
        )
        back = io.BytesIO()
        echo = t.stream(["cat"], source=io.BytesIO(payload), sink=back)
        failed = t.stream(["sh", "-c", "echo oops >&2; exit 7"])
    assert r.exit_status == 0 and hashlib.sha256(payload).hexdigest() in r.stderr
    assert echo.ok and back.getvalue() == payload
    assert (failed.exit_status, failed.stderr.strip()) == (7, "oops")


@pytest.mark.parametrize("via", ["openssh", "paramiko"])
def test_a_source_that_fails_ends_the_remote_input_and_is_reported(
    inv: inventory.Inventory, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    import io

    class Failing(io.RawIOBase):
        sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            if self.sent >= 1 << 20:
                raise OSError("the disk went away")
            buffer[: len(buffer)] = bytes(len(buffer))
            self.sent += len(buffer)
            return len(buffer)

    monkeypatch.setenv("FORGE_SSH_STREAM", via)
    with connect(replace(inv.hosts[0], command_timeout=0)) as t:  # no deadline: only EOF ends `cat`
        started = time.monotonic()
        with pytest.raises(ConnectError, match="sending data failed: the disk went away"):
            t.stream(["sh", "-c", "cat > /dev/null"], source=io.BufferedReader(Failing()))
    assert time.monotonic() - started < 30


def test_the_openssh_pipe_refuses_a_host_key_forge_would_refuse(
    lab: Any, inv: inventory.Inventory, tmp_path: Path
) -> None:
    from forge.transport import openssh
    from forge.transport.route import resolve

    a, b = inv.hosts[0], inv.hosts[1]
    forged = tmp_path / "known_hosts"
    forged.write_text(_jump_keys(lab) + _forged(lab, a, b))
    empty = tmp_path / "empty"  # but for the jump host behind a bastion
    empty.write_text(_jump_keys(lab))
    ssh = openssh.client()
    assert ssh is not None
    for files in ([forged], [empty]):  # a changed key, an unknown one
        with pytest.raises(HostKeyError, match="ssh refused the host key"):
            way = resolve(replace(a, known_hosts=str(files[0])))
            openssh.stream(a, openssh.argv(way, "true", ssh=ssh), "true", source=None, sink=None, timeout=30)
    assert forged.read_text() == _jump_keys(lab) + _forged(lab, a, b) and empty.read_text() == _jump_keys(lab)
    # and the lab's real known_hosts lets it through
    ok = openssh.stream(a, openssh.argv(resolve(a), "true", ssh=ssh), "true", source=None, sink=None, timeout=30)
    assert ok.ok, ok.stderr


def test_closing_the_transport_ends_its_running_streams(inv: inventory.Inventory) -> None:
    import threading

    results: list[BaseException | object] = []
    t = connect(inv.hosts[0])
    assert t.run(["true"]).ok

    def slow() -> None:
        try:
            results.append(t.stream(["sleep", "60"]))
        except BaseException as e:
            results.append(e)

    th = threading.Thread(target=slow)
    th.start()
    time.sleep(1.0)
    t.close()
    th.join(20)
    assert not th.is_alive()
    assert len(results) == 1 and isinstance(results[0], ConnectError), results


def test_a_timed_out_command_ends_on_the_host_too(inv: inventory.Inventory) -> None:
    """Issue 11 #6: closing the channel alone left the command running on the host."""
    from forge.errors import CommandTimeout
    from forge.transport.base import REMOTE_GRACE_S

    marker = f"/tmp/forge-timeout-{time.monotonic_ns()}"
    with connect(inv.hosts[0]) as t:
        with pytest.raises(CommandTimeout):
            # a child of the command (what a docker CLI or a pipeline would be) writes its pid
            t.run(["sh", "-c", f"sleep 300 & echo $! > {marker}.pid; wait; touch {marker}"], timeout=1)
        deadline = time.monotonic() + REMOTE_GRACE_S + 8
        while time.monotonic() < deadline:
            alive = t.run(["sh", "-c", f'kill -0 "$(cat {marker}.pid)"'], timeout=10).ok
            if not alive:
                break
            time.sleep(0.5)
        assert not alive, "the timed-out command's child still runs on the host"
        assert not t.run(["test", "-e", marker]).ok
        t.run(["rm", "-f", f"{marker}.pid"])


def test_output_beyond_the_bound_is_an_error_and_the_connection_lives_on(
    inv: inventory.Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11 #6: 400 MB of output used to take 4 GB of memory."""
    from forge.transport import base

    monkeypatch.setattr(base, "MAX_OUTPUT", 1 << 20)
    with connect(inv.hosts[0]) as t:
        with pytest.raises(base.OutputTooLarge, match="more than 1 MiB"):
            t.run(["head", "-c", str(32 << 20), "/dev/zero"], timeout=60)
        assert t.run(["echo", "still here"], check=True).stdout == "still here\n"


def test_a_closed_connection_ends_its_threads_without_waiting_for_their_next_check(
    inv: inventory.Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """paramiko's thread for a connection wakes now and then to see whether it should stop
    (forge: once a minute once the connection is up, to spare an idle connection's CPU); one
    blocked in recv() on a socket closed under it stayed until then. A check an hour apart
    makes the difference plain: every hop's thread must end when forge closes the
    connection, not an hour later."""
    from forge.transport import ssh

    monkeypatch.setattr(ssh._Transport, "_idle_check_timeout", 3600.0)
    t = connect(inv.hosts[0])
    assert t.run(["true"]).ok
    threads = [c.get_transport() for c in t._clients]
    assert threads and all(th is not None and th.is_alive() for th in threads)
    assert all(th.sock.gettimeout() == 3600.0 for th in threads if th is not None)
    time.sleep(0.5)  # the command's last messages handled: each thread waits in recv()
    t.close()
    for th in threads:
        th.join(30)
        assert not th.is_alive()


# --------------------------------------------------------------------------- run_again


def _loops_on_host(t: Any, marker: str) -> list[int]:
    """Pids of the kept loops serving a command that holds ``marker`` (the lab's hosts share
    this machine's processes; ``[f]`` keeps pgrep's own command line from matching)."""
    r = t.run(["pgrep", "-f", f"[f]orge-kept .*{marker}"])
    return [int(p) for p in r.stdout.split()]


def test_a_command_run_again_is_served_by_a_kept_loop_with_the_same_result(inv: inventory.Inventory) -> None:
    marker = f"forge-again-{time.monotonic_ns()}"
    # It prints a line shaped like the loop's reply header: read as output all the same.
    script = ["sh", "-c", f'echo "0123456789abcdef 0 5 0"; echo {marker} >&2; printf "%s" "$FORGE_LAB_HOST"; exit 3']
    with connect(inv.hosts[0]) as t:
        plain = t.run(script, timeout=30)
        first = t.run_again(script, timeout=30)  # the usual way: a one-off is not kept
        assert _loops_on_host(t, marker) == []
        again = [t.run_again(script, timeout=30) for _ in range(3)]
        assert len(_loops_on_host(t, marker)) == 1  # one loop served the later runs
        for r in (first, *again):
            assert (r.exit_status, r.stdout, r.stderr) == (plain.exit_status, plain.stdout, plain.stderr)
        assert (plain.exit_status, plain.stdout) == (3, f"0123456789abcdef 0 5 0\n{inv.hosts[0].name}")
    deadline = time.monotonic() + 10
    with connect(inv.hosts[0]) as t:
        while _loops_on_host(t, marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _loops_on_host(t, marker) == []  # the loop ended with the connection


def test_callers_running_a_command_at_once_start_one_kept_loop(inv: inventory.Inventory) -> None:
    """Callers that all find no loop yet (threads sharing a connection: forge serve's
    requests) start one between them; the others run their command the usual way meanwhile.
    (Each started a loop, and all but one were closed again when dropped: a channel and a
    shell on the host per caller.)"""
    marker = f"forge-again-{time.monotonic_ns()}"
    script = ["sh", "-c", f"echo {marker}"]
    with connect(inv.hosts[0]) as t:
        t.run_again(script, timeout=30)  # seen once: the next callers start a loop
        started: list[object] = []
        keep = t._keep

        def counted(wrapped: Any) -> Any:
            started.append(wrapped)
            return keep(wrapped)

        t._keep = counted  # type: ignore[method-assign]
        start = threading.Barrier(8)

        def call(_: int) -> str:
            start.wait(10)
            return t.run_again(script, timeout=30).stdout

        with cf.ThreadPoolExecutor(8) as ex:
            outs = list(ex.map(call, range(8)))
        assert outs == [f"{marker}\n"] * 8
        assert len(started) == 1
        assert len(_loops_on_host(t, marker)) == 1
        assert t.run_again(script, timeout=30).stdout == f"{marker}\n"
        assert len(started) == 1


def test_a_kept_loop_killed_on_the_host_is_replaced_by_the_usual_way(inv: inventory.Inventory) -> None:
    marker = f"forge-again-{time.monotonic_ns()}"
    script = ["sh", "-c", f"echo {marker}"]
    with connect(inv.hosts[0]) as t:
        for _ in range(2):
            t.run_again(script, timeout=30)
        (loop,) = _loops_on_host(t, marker)
        t.run(["kill", str(loop)], check=True)
        for _ in range(3):  # the broken loop is dropped; the command runs as a one-off from then on
            assert t.run_again(script, timeout=30).stdout == f"{marker}\n"
        assert _loops_on_host(t, marker) == []
        t.close()  # a new connection: the command may be kept again
        for _ in range(2):
            assert t.run_again(script, timeout=30).stdout == f"{marker}\n"
        assert len(_loops_on_host(t, marker)) == 1


def test_a_kept_command_past_its_timeout_is_a_timeout_and_ends_on_the_host(inv: inventory.Inventory) -> None:
    from forge.errors import CommandTimeout
    from forge.transport.base import REMOTE_GRACE_S

    marker = f"/tmp/forge-again-{time.monotonic_ns()}"
    script = ["sh", "-c", f"[ -e {marker}.go ] && {{ sleep 300 & echo $! > {marker}.pid; wait; }}; echo ok"]
    with connect(inv.hosts[0]) as t:
        assert t.run_again(script, timeout=1).stdout == "ok\n"
        assert t.run_again(script, timeout=1).stdout == "ok\n"  # served by the loop
        t.run(["touch", f"{marker}.go"], check=True)
        with pytest.raises(CommandTimeout):
            t.run_again(script, timeout=1)
        deadline = time.monotonic() + REMOTE_GRACE_S + 8
        while time.monotonic() < deadline:
            if not t.run(["sh", "-c", f'kill -0 "$(cat {marker}.pid)"'], timeout=10).ok:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the timed-out command's child still runs on the host")
        t.run(["rm", "-f", f"{marker}.go"], check=True)
        assert t.run_again(script, timeout=1).stdout == "ok\n"  # a new loop, after the timed-out one
        t.run(["rm", "-f", f"{marker}.pid"])
