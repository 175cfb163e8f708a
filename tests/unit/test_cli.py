"""The forge command as a user meets it: exit codes, one-line errors, JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import forge


def forge_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    e = {k: v for k, v in os.environ.items() if k != "FORGE_INVENTORY"}
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "forge", *args], capture_output=True, text=True, cwd=cwd, env=e, timeout=60
    )


def test_version() -> None:
    r = forge_cli("--version")
    assert r.returncode == 0 and forge.__version__ in r.stdout


def test_no_inventory_means_the_local_host(tmp_path: Path) -> None:
    r = forge_cli("hosts", "--json", cwd=tmp_path, env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["inventory"] is None
    assert data["hosts"] == [{"name": "local", "target": "local", "tags": [], "host_key_policy": "strict"}]


def test_local_host_check_runs_without_ssh(tmp_path: Path) -> None:
    r = forge_cli("hosts", "--check", "--json", cwd=tmp_path, env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)["hosts"]
    assert row["reachable"] is True and row["latency_ms"] >= 0
    assert r.stderr == ""  # progress is drawn only on a terminal


def test_broken_inventory_is_one_line_and_exit_3(tmp_path: Path) -> None:
    p = tmp_path / "hosts.toml"
    p.write_text('[[hosts]]\nname = "gpu1"\naddress = "x"\nprot = 22\n')
    r = forge_cli("-i", str(p), "hosts")
    assert r.returncode == 3
    assert r.stdout == ""
    assert r.stderr.strip() == (f"forge: error: {p}: host 'gpu1': key 'prot': unknown key (did you mean 'port'?)")
    assert "Traceback" not in r.stderr


def test_inventory_from_environment_variable(tmp_path: Path) -> None:
    p = tmp_path / "inv.toml"
    p.write_text('[[hosts]]\nname = "gpu7"\naddress = "10.1.2.3"\n')
    r = forge_cli("hosts", "--json", env={"FORGE_INVENTORY": str(p)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["hosts"][0]["name"] == "gpu7"


def test_unknown_target_is_a_usage_error(tmp_path: Path) -> None:
    p = tmp_path / "inv.toml"
    p.write_text('[[hosts]]\nname = "gpu7"\naddress = "10.1.2.3"\n')
    r = forge_cli("-i", str(p), "hosts", "gpu8")
    assert r.returncode == 2
    assert "'gpu8' is neither a host nor a tag" in r.stderr and "did you mean 'gpu7'?" in r.stderr


def test_unreachable_fleet_exit_code(tmp_path: Path) -> None:
    p = tmp_path / "inv.toml"
    # Port 1 on loopback: connection refused at once, no traffic leaves the machine.
    p.write_text('[[hosts]]\nname = "nowhere"\naddress = "127.0.0.1"\nport = 1\nconnect_timeout = 2\n')
    r = forge_cli("-i", str(p), "hosts", "--check")
    assert r.returncode == 5, r.stdout + r.stderr
    assert "connection refused" in r.stdout


def test_a_port_that_never_sends_an_ssh_banner_is_one_clean_line(tmp_path: Path) -> None:
    """Issue 11 #6: paramiko's failed handshake used to print its traceback to stderr."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # accept and say nothing, as a wedged service does
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    try:
        port = server.getsockname()[1]
        inv = tmp_path / "hosts.toml"
        inv.write_text(
            f'[defaults]\nconnect_timeout = 1\nknown_hosts = "{tmp_path}/kh"\n'
            f'[[hosts]]\nname = "mute"\naddress = "127.0.0.1"\nport = {port}\n'
        )
        r = forge_cli("-i", str(inv), "hosts", "--check", "--json")
    finally:
        stop.set()
        for s in held:
            s.close()
        server.close()
    assert r.returncode == 5, r.stderr
    assert r.stderr == ""  # no traceback, no paramiko log line
    (row,) = json.loads(r.stdout)["hosts"]
    assert row["reachable"] is False and "no SSH server answered" in row["error"], row


def test_what_a_host_prints_cannot_drive_the_terminal() -> None:
    """Issue 11 #6: escape sequences in labels, names or command output reached the terminal."""
    from forge.cli import output

    evil = "dev\x1b]0;pwned\x07\x1b[2J\r\u202eexe.txt\x9b31m"
    shown = output.clean(evil)
    assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown and "\u202e" not in shown
    assert shown == "dev\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\u202eexe.txt\\x9b31m"
    assert output.clean("a\nb\tc") == "a\nb\tc" and output.clean("a\nb\tc", one_line=True) == "a\\nb c"
    table = output.table([["gpu1", evil]], ["HOST", "ENV"])
    assert "\x1b" not in table and len(table.splitlines()) == 3

    import io

    sink = io.BytesIO()
    w = output.CleanWriter(sink)
    data = "step 1/2\n\x1b[1A\x1b[2Kdoné\n".encode()
    for i in range(len(data)):  # byte by byte: a UTF-8 character split across writes
        w.write(data[i : i + 1])
    assert sink.getvalue().decode() == "step 1/2\n\\x1b[1A\\x1b[2Kdoné\n"


def test_the_local_host_ends_a_late_command_with_what_it_started_and_bounds_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from forge.errors import CommandTimeout
    from forge.transport import base
    from forge.transport.local import LocalTransport

    marker = tmp_path / "child.pid"
    t = LocalTransport("local")
    started = time.monotonic()
    try:
        t.run(["sh", "-c", f"sleep 300 & echo $! > {marker}; wait"], timeout=1)
        raise AssertionError("no timeout")
    except CommandTimeout as e:
        assert "ran past its timeout of 1 s" in str(e)
    assert time.monotonic() - started < 10
    import os

    pid = int(marker.read_text())
    time.sleep(0.2)
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
    monkeypatch.setattr(base, "MAX_OUTPUT", 1 << 16)
    try:
        t.run(["head", "-c", str(1 << 20), "/dev/zero"])
        raise AssertionError("no bound")
    except base.OutputTooLarge:
        pass
    assert t.run(["printf", "a\\nb"]).stdout == "a\nb" and t.run(["sh", "-c", "echo x >&2; exit 3"]).stderr == "x\n"
