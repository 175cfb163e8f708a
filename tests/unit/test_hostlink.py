"""The transfer keys of `forge sync --via direct`: the text forge writes (pure) and the scripts
that place and remove it, run by a real shell on a scratch home directory."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from forge import shell
from forge.errors import ForgeError
from forge.images import hostlink, linkscripts
from forge.images.hostlink import Peer

LOAD = shell.pipeline(["zstd", "-q", "-d", "-c"], ["docker", "-H", "unix:///run/d ock.sock", "load", "-q"])
PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0b2tlbg== forge-link-0123456789abcdef-0"


def _sh(script: shell.Script, home: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", script],
        env={"HOME": str(home), "PATH": os.environ["PATH"]},
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        check=False,
    )


def test_key_options_restrict_and_force_the_load_with_quotes_escaped() -> None:
    opts = hostlink.key_options(LOAD)
    assert opts.startswith('restrict,command="') and opts.endswith('"')
    inner = opts[len('restrict,command="') : -1]
    assert '"' not in inner.replace('\\"', "")  # every quote inside is escaped for sshd
    command = inner.replace('\\"', '"')  # as sshd reads it
    assert command == hostlink.forced_command(LOAD)
    probe = subprocess.run(
        ["sh", "-c", command], env={"SSH_ORIGINAL_COMMAND": "forge-probe"}, capture_output=True, text=True
    )
    assert probe.stdout == "forge-link-ok\n"
    other = subprocess.run(
        ["sh", "-c", command.replace(LOAD, "echo loading")],
        env={"SSH_ORIGINAL_COMMAND": "rm -rf ~", "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    )
    assert other.stdout == "loading\n"  # anything else asked for: the load, never the request


@pytest.mark.parametrize("bad", ["a\\b", "a\nb", "a\rb"])
def test_a_load_command_sshd_would_read_otherwise_is_refused(bad: str) -> None:
    with pytest.raises(ForgeError, match="backslash or a line break"):
        hostlink.key_options(shell.Script(f"docker load {bad}"))


def test_the_source_pins_the_host_key_forge_verified_and_uses_nothing_of_the_user() -> None:
    peer = Peer(3, "gpu2", "10.0.0.2", 2222, "alice", "ssh-ed25519", "AAAAkey")
    argv = hostlink.ssh_argv("/tmp/forge-link.abc", peer, "forge-probe")
    text = " ".join(argv)
    for option in (
        "-F none",
        "-i /tmp/forge-link.abc/key3",
        "StrictHostKeyChecking=yes",
        "UserKnownHostsFile=/tmp/forge-link.abc/known_hosts",
        "GlobalKnownHostsFile=/dev/null",
        "HostKeyAlias=forge-link-3",
        "IdentityAgent=none",
        "ForwardAgent=no",
        "BatchMode=yes",
    ):
        assert option in text
    assert argv[-5:] == ["-l", "alice", "--", "10.0.0.2", "forge-probe"]
    assert argv[argv.index("-p") + 1] == "2222"
    assert hostlink.known_hosts([peer]) == "forge-link-3 ssh-ed25519 AAAAkey\n"


def test_a_peer_refuses_a_host_key_that_is_not_one() -> None:
    with pytest.raises(ValueError):
        Peer(0, "gpu2", "h", 22, "u", "ssh-ed25519", "AAAA\nforge-link-1 ssh-rsa BBBB")


def test_the_source_answer_is_checked_before_use() -> None:
    token = "0123456789abcdef"
    good = f"/tmp/forge-link.Xy12\n{PUB}\n"
    assert hostlink.parse_keys(good, token, [0]) == ("/tmp/forge-link.Xy12", [PUB])
    for bad in (
        f"/tmp/forge-link.Xy12\n{PUB}\n{PUB}\n",  # one key too many
        f"/home/../etc/forge-link.x\n{PUB}\n",  # a path forge did not make
        f"/tmp/forge-link.Xy12\n{PUB.replace('-0', '-1')}\n",  # another key's comment
        f"/tmp/forge-link.Xy12\n{PUB} extra\n",
        f"/tmp/forge-link.Xy12\nssh-rsa AAAA forge-link-{token}-0\n",
    ):
        with pytest.raises(ValueError):
            hostlink.parse_keys(bad, token, [0])


def test_adding_keeps_the_file_and_its_last_line_and_removing_takes_only_the_transfer_keys(tmp_path: Path) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    keys = ssh / "authorized_keys"
    keys.write_text("ssh-ed25519 AAAAmine me@laptop")  # no newline at the end
    keys.chmod(0o600)
    inode = keys.stat().st_ino
    r = _sh(hostlink.add_key(hostlink.key_options(LOAD), PUB, 3600), tmp_path)
    assert r.returncode == 0, r.stderr
    lines = keys.read_text().splitlines()
    assert lines[0] == "ssh-ed25519 AAAAmine me@laptop"
    assert lines[1].startswith('restrict,command="') and lines[1].endswith(f'Z" {PUB}')
    assert 'expiry-time="2' in lines[1]
    r = _sh(hostlink.remove_keys("0123456789abcdef"), tmp_path)
    assert r.returncode == 0, r.stderr
    assert keys.read_text() == "ssh-ed25519 AAAAmine me@laptop\n"
    assert keys.stat().st_ino == inode and stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert sorted(p.name for p in ssh.iterdir()) == ["authorized_keys"]  # no temporary file left


def test_a_home_without_ssh_gets_a_private_directory_and_file(tmp_path: Path) -> None:
    assert _sh(hostlink.add_key(hostlink.key_options(LOAD), PUB, 60), tmp_path).returncode == 0
    assert stat.S_IMODE((tmp_path / ".ssh").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / ".ssh" / "authorized_keys").stat().st_mode) == 0o600
    assert _sh(hostlink.remove_keys("0123456789abcdef"), tmp_path).returncode == 0
    assert (tmp_path / ".ssh" / "authorized_keys").read_text() == ""
    assert _sh(hostlink.remove_keys("0123456789abcdef"), tmp_path).returncode == 0  # nothing to do


def _make_keys(
    tmp_path: Path, tmpdir: str, indexes: list[int], *, spool_bytes: int = 0, known: str = ""
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The key set-up's script run here, with ``TMPDIR`` a new ``tmp_path/tmpdir``."""
    env_tmp = tmp_path / tmpdir
    env_tmp.mkdir()
    r = subprocess.run(
        ["sh", "-c", hostlink.make_keys("0123456789abcdef", indexes, spool_bytes=spool_bytes)],
        env={"TMPDIR": str(env_tmp), "PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        input=known,
        capture_output=True,
        text=True,
        check=False,
    )
    return env_tmp, r


def test_the_source_directory_is_made_private_and_only_it_is_removed(tmp_path: Path) -> None:
    _, r = _make_keys(tmp_path, "tmp", [4, 5], known="forge-link-4 ssh-ed25519 AAAA\n")
    assert r.returncode == 0, r.stderr  # ssh, ssh-keygen, dd, tail, stat: all installed here
    directory, pubs = hostlink.parse_keys(r.stdout, "0123456789abcdef", [4, 5])
    assert stat.S_IMODE(Path(directory).stat().st_mode) == 0o700
    assert (Path(directory) / "known_hosts").read_text() == "forge-link-4 ssh-ed25519 AAAA\n"
    assert len(pubs) == 2 and pubs[0] != pubs[1]
    assert _sh(hostlink.remove_dir(str(tmp_path)), tmp_path).returncode != 0  # not forge's: refused
    assert tmp_path.exists()
    assert _sh(hostlink.remove_dir(directory), tmp_path).returncode == 0
    assert not Path(directory).exists()


def test_a_temporary_directory_forge_could_not_name_back_is_refused_and_removed(tmp_path: Path) -> None:
    """forge reads the directory back from the host and checks it before any use: one it
    would refuse (a space in TMPDIR) is removed there, not left with its keys."""
    env_tmp, r = _make_keys(tmp_path, "my tmp", [1])
    assert r.returncode == 5 and r.stdout == ""
    assert "set TMPDIR" in r.stderr
    assert list(env_tmp.iterdir()) == []


def test_the_directory_is_found_in_output_whose_keys_cannot_be_read() -> None:
    """A shell start-up file that prints (a ~/.bashrc) breaks the key set-up's answer; the
    directory it made is still named, for forge to remove."""
    noisy = "Welcome to gpu1\n/var/tmp/forge-link.AbC123\nssh-ed25519 AAAA forge-link-0123456789abcdef-1\n"
    with pytest.raises(ValueError):
        hostlink.parse_keys(noisy, "0123456789abcdef", [1])
    assert hostlink.directory_in(noisy) == "/var/tmp/forge-link.AbC123"
    assert hostlink.directory_in("Welcome\n/var/tmp/../etc/forge-link.x\n") is None
    assert hostlink.directory_in("nothing here\n") is None


# --------------------------------------------------------------------------- what the source says


def test_the_source_report_is_parsed_strictly() -> None:
    lines = [
        "forge-link save 0",
        "forge-link wire 12345",
        "forge-link host 0 0",
        "forge-link host 1 255",
        "forge-link out 0 Loaded image ID: sha256:" + "a" * 64,
        "forge-link err 1 ssh: connect to host 10.0.0.3 port 22: Connection refused\x1b[2J",
        "forge-link host 2 x",  # not a status
        "forge-link host 3 \u00b2",  # isdigit(), but not a number int() reads
        "forge-link link 3 " + "9" * 5000,  # more digits than int() reads
        "forge-link wire " + "9" * 5000,
        "forge-link probe 1 forge-link-ok",
        "someone else's line",
    ]
    r = linkscripts.parse_report(lines)
    assert (r.save_status, r.wire, r.status) == (0, 12345, {0: 0, 1: 255})
    assert linkscripts.loaded_id(r.out[0]) == "sha256:" + "a" * 64
    assert r.err[1] == ["ssh: connect to host 10.0.0.3 port 22: Connection refused?[2J"]
    assert r.probe == {1: "forge-link-ok"}
    assert linkscripts.loaded_id(["Loaded image ID: sha256:abc"]) is None


def test_progress_comes_from_dd_counts_and_other_output_is_kept_bounded() -> None:
    seen: list[int] = []
    out = linkscripts.Lines(seen.append)
    out.write(b"1048576 bytes (1.0 MB, 1.0 MiB) copied, 1 s, 1.0 MB/s\r3145")
    out.write(b"728 bytes (3.1 MB, 3.0 MiB) copied, 2 s, 1.5 MB/s\rforge-link save 0\n")
    out.write(b"3145728 bytes (3.1 MB) copied\n")  # dd's summary repeats the count
    assert seen == [1048576, 2097152] and out.total == 3145728
    assert out.lines == ["forge-link save 0"]


def test_a_chain_sends_one_copy_and_each_hop_passes_it_on_while_loading() -> None:
    from forge.images import codec as codecs

    peers = [Peer(i, f"gpu{i}", f"10.0.0.{i}", 22, "u", "ssh-ed25519", "AAAA") for i in range(4)]
    zstd = codecs.CODECS["zstd"]
    save = ["docker", "save", "sha256:x"]
    flat = linkscripts.source_script("/tmp/forge-link.a", save, zstd, peers)
    assert flat.count("follow | ssh ") == 4 and flat.count(" forge-load ") == 4 and "tee" not in flat
    chain = linkscripts.chain_source_script("/tmp/forge-link.a", save, zstd, peers[0], peers[1])
    assert "forward 0 1 0 trial > forward.out" in shlex.split(chain)[2]  # the source tries its spare first
    assert "link0()" in chain and "link1()" in chain and "rate1()" in chain and "link2()" not in chain
    alone = linkscripts.chain_source_script("/tmp/forge-link.a", save, zstd, peers[0], None)
    assert "forward 0 '' 0 trial > forward.out" in shlex.split(alone)[2] and "link1()" not in alone
    middle = linkscripts.relay_script("/tmp/forge-link.b", 1, peers[2], peers[3], LOAD)
    before_last = linkscripts.relay_script("/tmp/forge-link.c", 2, peers[3], None, LOAD)
    last = linkscripts.relay_script("/tmp/forge-link.d", 3, None, None, LOAD)
    assert f"follow | {LOAD} > load.out" in middle and 'forward 2 3 "$g"' in middle
    assert "HostKeyAlias=forge-link-2" in middle and "HostKeyAlias=forge-link-3" in middle
    assert "forward 3 '' \"$g\"" in before_last and "link2()" not in before_last
    assert f"follow | {LOAD} > load.out" in last and "ssh" not in last and "forward" not in last  # it only loads
    assert "-gt 8388608 ]" in middle and "-gt 3 ]" in middle  # what cuts a hop out
    for script in (middle, before_last, last):
        assert script.startswith("set -o pipefail\n") and 'exit "$rc"' in script
        assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0  # it parses
    for script in (flat, chain, alone):
        assert subprocess.run(["bash", "-n", "-c", shlex.split(script)[2]]).returncode == 0


def test_a_hop_asked_for_a_trial_throws_the_stream_away_and_starts_nothing(tmp_path: Path) -> None:
    """The source's trial (``forge-rate``) reaches the spare's relay script: the bytes go to
    /dev/null, no instance of the hop starts (none stops the one the chain feeds)."""
    script = linkscripts.relay_script(str(tmp_path), 2, None, None, "cat > loaded")
    env = {**os.environ, "SSH_ORIGINAL_COMMAND": linkscripts.RATE}
    r = subprocess.run(["bash", "-c", script], input=b"x" * 3_000_000, env=env, capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == b"" and list(tmp_path.iterdir()) == []
    env["SSH_ORIGINAL_COMMAND"] = "forge-load 0"  # the same script loads otherwise
    r = subprocess.run(["bash", "-c", script], input=b"x" * 1000, env=env, capture_output=True, timeout=60)
    assert b"forge-link host 2 0" in r.stdout
    assert [p.name[:4] for p in tmp_path.iterdir()] == ["run."]


def test_a_cut_hop_is_reported_with_how_far_behind_it_was() -> None:
    lines = ["forge-link link 1 0", "forge-link host 1 0", "forge-link cut 1 40000000", "forge-link cut 2 x"]
    r = linkscripts.parse_report(lines)
    assert r.cut == {1: 40000000} and r.status == {1: 0} and r.link == {1: 0} and r.slow == {}
    assert linkscripts.parse_report(["forge-link slow 3 9000000"]).slow == {3: 9000000}


def test_the_registry_name_of_an_image_is_its_first_tag_under_the_namespace() -> None:
    from forge.images import registry
    from forge.inventory import RegistrySettings

    reg = RegistrySettings("registry.lab:5000", "forge")
    assert registry.remote_name(reg, ("team/dev:2024-11",), "sha256:" + "a" * 64) == (
        "registry.lab:5000/forge/team/dev",
        "2024-11",
    )
    assert registry.remote_name(reg, ("ubuntu",), "sha256:x")[1] == "latest"
    assert registry.remote_name(reg, ("ghcr.io/org/img:v1",), "sha256:x")[0] == "registry.lab:5000/forge/org/img"
    assert registry.remote_name(reg, (), "sha256:" + "b" * 64) == ("registry.lab:5000/forge/image", "id-bbbbbbbbbbbb")


def test_a_hop_without_room_for_the_relays_copy_of_the_stream_says_so_and_keeps_nothing(tmp_path: Path) -> None:
    env_tmp, r = _make_keys(tmp_path, "tmp", [1], spool_bytes=1 << 60)
    assert r.returncode == 4 and r.stdout == ""
    assert f"not enough space in {env_tmp} for the relay's copy of the stream" in r.stderr
    assert "MiB free, 1099511627776 MiB needed" in r.stderr
    assert list(env_tmp.iterdir()) == []


def test_a_newer_instance_of_a_hop_stops_the_older_one_and_takes_its_group_file(tmp_path: Path) -> None:
    """The older instance, stopped, cannot remove its group's number: the newer one does, so
    the transfer's clean-up (which signals every group file left) never signals that number
    again once the system may have given it to someone else."""
    older = subprocess.Popen(["sleep", "60"], start_new_session=True)  # the older instance's group
    try:
        run = tmp_path / "run.older"
        run.mkdir()
        (run / "gen").write_text("0\n")
        (run / "pgid").write_text(f"{older.pid}\n")
        script = linkscripts.relay_script(str(tmp_path), 2, None, None, "cat > loaded")
        env = {**os.environ, "SSH_ORIGINAL_COMMAND": "forge-load 1"}
        r = subprocess.run(["bash", "-c", script], input=b"x" * 1000, env=env, capture_output=True, timeout=60)
        assert b"forge-link host 2 0" in r.stdout
        assert older.wait(10) == -15  # SIGTERM to its group
        assert not (run / "pgid").exists() and (run / "gen").exists()
    finally:
        older.kill()
        older.wait()
