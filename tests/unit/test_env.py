"""forge.env, pure parts: volume argv per driver, passwords refused, listing and claims,
ports, keyscan, the launch argv and the ~/.ssh/config block."""

from __future__ import annotations

import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from forge import shell
from forge.env import access, claims, launch, sshconfig, volume
from forge.env.errors import EnvError, LaunchError, VolumeError
from forge.env.listing import PS_FORMAT, parse_created, parse_listing
from forge.errors import CommandFailed
from forge.inventory import DataSettings, Host
from tests.unit.fakes import FakeTransport, session

HOST = Host(name="gpu1", address="10.0.0.1")
DATA = DataSettings(
    address="data.lab",
    user="alice",
    path="/srv/data",
    identity_file="/home/alice/.ssh/id_ed25519",
    known_hosts="/home/alice/.ssh/known_hosts",
)


def spec(driver: str = "sshfs", **kw: str) -> volume.VolumeSpec:
    data = DataSettings(**{**vars(DATA), "driver": driver, **kw})
    return volume.spec_for(data, host_name="gpu1", user="alice", home="/home/alice")


def test_sshfs_is_a_host_mount_bound_into_a_local_volume() -> None:
    s = spec()
    assert s.name == "forge-data-alice"
    assert s.mountpoint == "/home/alice/.forge/mnt/gpu1-forge-data-alice"
    assert volume.sshfs_argv(s) == [
        "sshfs",
        "-o",
        "StrictHostKeyChecking=yes,BatchMode=yes,UserKnownHostsFile=/home/alice/.ssh/known_hosts,"
        "IdentityFile=/home/alice/.ssh/id_ed25519,IdentitiesOnly=yes,allow_other,default_permissions,idmap=user,reconnect,"
        "ServerAliveInterval=15,ServerAliveCountMax=3,ConnectTimeout=10",
        "alice@data.lab:/srv/data",
    ]
    assert volume.create_args(s) == [
        "volume",
        "create",
        "--driver",
        "local",
        "-o",
        "type=none",
        "-o",
        "o=bind",
        "-o",
        f"device={s.mountpoint}",
        "forge-data-alice",
    ]


def test_rclone_checks_the_host_key_or_is_refused() -> None:
    argv = volume.create_args(spec("rclone"))
    assert argv[:4] == ["volume", "create", "--driver", "rclone"]
    opts = dict(argv[i + 1].split("=", 1) for i in range(4, len(argv) - 1, 2))
    assert opts == {
        "type": "sftp",
        "sftp-host": "data.lab",
        "sftp-port": "22",
        "sftp-user": "alice",
        "sftp-key-file": "/home/alice/.ssh/id_ed25519",
        "sftp-known-hosts-file": "/home/alice/.ssh/known_hosts",
        "path": "/srv/data",
        "allow-other": "true",
    }
    with pytest.raises(VolumeError, match="known_hosts"):
        volume.create_args(spec("rclone", known_hosts=None))  # type: ignore[arg-type]


def test_vieux_sshfs_command_as_built() -> None:
    s = spec("vieux-sshfs")
    assert shell.render(session(HOST).docker(*volume.vieux_install_args(s))) == (
        "docker plugin install --grant-all-permissions vieux/sshfs sshkey.source=/home/alice/.ssh"
    )
    assert shell.render(session(HOST).docker(*volume.create_args(s))) == (
        "docker volume create --driver vieux/sshfs -o sshcmd=alice@data.lab:/srv/data -o port=22 "
        "-o IdentityFile=/root/.ssh/id_ed25519 -o allow_other forge-data-alice"
    )
    with pytest.raises(VolumeError, match="never takes passwords"):
        volume.create_args(spec("vieux-sshfs", identity_file=None))  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["password", "sftp-pass", "Passphrase", "ask_password", "secret"])
def test_passwords_are_refused_with_the_reason(key: str) -> None:
    with pytest.raises(VolumeError, match="docker volume inspect"):
        volume.spec_for(DATA, host_name="gpu1", user="alice", home="/h", options={key: "x"})


def test_a_comma_cannot_hide_in_an_sshfs_option() -> None:
    with pytest.raises(VolumeError, match="comma"):
        volume.sshfs_argv(spec(identity_file="/k,allow_root"))


def test_check_reads_the_marker_as_the_user() -> None:
    argv = volume.check_args(spec(), image="img", uid=1001, gid=1002, marker="MARK")
    assert shell.render(session(HOST).docker(*argv)) == (
        "docker run --rm --network none -u 1001:1002 -v forge-data-alice:/forge-check:ro --entrypoint cat img "
        "/forge-check/MARK"
    )


def _ps_line(*cols: str) -> str:
    """One line of ``docker ps --format PS_FORMAT``: every column JSON-encoded."""
    return "\t".join(json.dumps(c) for c in cols)


#: ID, name, image, state, status, created, ports, then the labels in LABELS order: env,
#: owner, ssh_port, gpus, user, claim, claim.env, claim.owner, claim.container.
LISTING = "\n".join(
    [
        "1000",
        _ps_line(
            "c1",
            "forge-alice-dev-aaaaaa",
            "img",
            "running",
            "Up 1 minute",
            "2001-09-09 01:46:40 +0000 UTC",
            "0.0.0.0:2201->22/tcp, :::2201->22/tcp",
            "dev",
            "alice",
            "2201",
            "GPU-a,GPU-b",
            "alice",
            "",
            "",
            "",
            "",
        ),
        _ps_line(
            "c2",
            "forge-claim-GPU-a",
            "img",
            "created",
            "Created",
            "2001-09-09 01:46:40 +0000 UTC",
            "",
            "",
            "",
            "",
            "",
            "",
            "GPU-a",
            "dev",
            "alice",
            "forge-alice-dev-aaaaaa",
        ),
        _ps_line(
            "c3",
            "forge-claim-GPU-c",
            "img",
            "created",
            "Created",
            "2001-09-09 01:30:00 +0000 UTC",
            "",
            "dev",
            "alice",
            "",
            "",
            "",
            "GPU-c",
            "dev",
            "alice",
            "forge-alice-dev-gone",
        ),
        _ps_line(
            "c4",
            "forge-claim-GPU-d",
            "img",
            "created",
            "Created",
            "2001-09-09 01:46:00 +0000 UTC",
            "",
            "",
            "",
            "",
            "",
            "",
            "GPU-d",
            "dev",
            "bob",
            "forge-bob-dev-starting",
        ),
    ]
)


def test_listing_environments_and_claims() -> None:
    listing = parse_listing("gpu1", LISTING.replace("1000", "1000000000", 1))
    (env,) = listing.environments  # c3 is a claim even though it carries forge.env (commit)
    got = (env.name, env.owner, env.ssh_port, env.published_port, env.gpus, env.user)
    assert got == ("dev", "alice", 2201, 2201, ("GPU-a", "GPU-b"), "alice")
    assert [c.gpu for c in listing.claims] == ["GPU-a", "GPU-c", "GPU-d"]
    # GPU-a: its container exists. GPU-c: container gone, 1000 s old: stale. GPU-d: 40 s old, in grace.
    assert claims.claimed_gpus(listing, grace_s=300) == {"GPU-a", "GPU-d"}
    assert [c.gpu for c in listing.stale_claims(grace_s=300)] == ["GPU-c"]
    assert [c.gpu for c in listing.stale_claims(grace_s=10)] == ["GPU-c", "GPU-d"]
    assert claims.claims_for(listing, "forge-alice-dev-aaaaaa") == ["c2"]


def test_listing_format_and_bad_output() -> None:
    assert PS_FORMAT.count("\t") == 15 and '{{json (.Label "forge.claim.container")}}' in PS_FORMAT
    assert parse_created("2001-09-09 01:46:40 +0000 UTC") == 1000000000
    assert parse_created("garbage") is None
    with pytest.raises(ValueError):
        parse_listing("h", "Cannot connect to the Docker daemon")
    with pytest.raises(ValueError):  # a raw tab-separated line (a label cannot forge one)
        parse_listing("h", "1000\nc1\tname\timg\trunning\tUp\tnow\t\tdev\talice\t\t\t\t\t\t\t")


def test_labels_planted_by_other_docker_users_never_reach_a_command_line() -> None:
    """Issue 11 #3: a container claiming to be someone's environment, with a user label that
    is an ssh option and a port label pointing at another sshd."""
    planted = _ps_line(
        "c9",
        "x",
        "img",
        "running",
        "Up",
        "2001-09-09 01:46:40 +0000 UTC",
        "0.0.0.0:2299->22/tcp",
        "dev",
        "alice",
        "22",
        "",
        "-oProxyCommand=touch /tmp/pwned",
        "",
        "",
        "",
        "",
    )
    newline = _ps_line(
        "c8",
        "y",
        "img",
        "running",
        "Up",
        "2001-09-09 01:46:40 +0000 UTC",
        "",
        "dev\n1000\tforged",
        "alice",
        "2201",
        "",
        "alice\nx",
        "",
        "",
        "",
        "",
    )
    listing = parse_listing("gpu1", "\n".join(["1000", planted, newline]))
    bad, odd = listing.environments
    assert bad.user is None and odd.user is None  # not a user name: never passed on
    assert bad.ssh_port == 22 and bad.published_port == 2299  # what docker publishes, not the label
    assert odd.name == "dev\n1000\tforged" and len(listing.containers) == 2
    for label in ("\u00b2", "9" * 5000, "65536", "0"):  # not a port: none, no exception
        env = replace(bad, container=replace(bad.container, labels={**bad.container.labels, "forge.ssh_port": label}))
        assert env.ssh_port is None


def test_claim_argv_is_a_never_started_named_container() -> None:
    argv = claims.claim_args("GPU-1/x", image="img", env="dev", owner="alice", container="forge-alice-dev-1")
    assert argv[:3] == ["create", "--name", "forge-claim-GPU-1_x"]
    assert "--entrypoint" in argv and argv[-1] == "img" and "start" not in argv


ID_A, ID_B = "a" * 64, "b" * 64


@pytest.mark.parametrize("ending", ["conflict", "timeout", "ctrl-c"])
def test_a_claim_ended_early_releases_the_claims_it_had_made(ending: str) -> None:
    """The second GPU's claim is refused, runs past its timeout or meets Ctrl-C: the first
    GPU's claim is released before the error goes on (the caller's undo does not know it)."""
    from forge.errors import CommandTimeout

    second: dict[str, object] = {
        "conflict": {"status": 1, "stderr": 'Conflict. The container name "/forge-claim-GPU-b" is already in use'},
        "timeout": {"raises": CommandTimeout("gpu1", "docker create ran past its timeout of 60 s")},
        "ctrl-c": {"raises": KeyboardInterrupt()},
    }[ending]
    t = FakeTransport().on("forge-claim-GPU-a", stdout=f"{ID_A}\n").on("forge-claim-GPU-b", **second).on(" rm -f ")
    expected = {"conflict": claims.ClaimConflict, "timeout": CommandTimeout, "ctrl-c": KeyboardInterrupt}[ending]
    with pytest.raises(expected):
        claims.claim(session(Host(name="gpu1", address="x"), t), ["GPU-b", "GPU-a"], image="img", env="dev",
                     owner="alice", container="c")  # fmt: skip
    assert [x for x in t.scripts if " rm -f " in x] == [f"docker rm -f {ID_A}"]


def test_a_claim_made_while_ctrl_c_comes_is_released_with_the_others() -> None:
    """Ctrl-C lands while the second GPU's claim is being created and the create succeeds:
    that claim is recorded before the interrupt goes on, so both are released."""
    import os
    import signal
    import threading

    t = (
        FakeTransport()
        .on("forge-claim-GPU-a", stdout=f"{ID_A}\n")
        .on("forge-claim-GPU-b", stdout=f"{ID_B}\n", delay_s=0.5)
    )
    t.on(" rm -f ")
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        claims.claim(session(Host(name="gpu1", address="x"), t), ["GPU-a", "GPU-b"], image="img", env="dev",
                     owner="alice", container="c")  # fmt: skip
    assert [x for x in t.scripts if " rm -f " in x] == [f"docker rm -f {ID_A} {ID_B}"]


def test_a_claim_whose_id_is_not_one_is_released_by_its_name() -> None:
    """What docker printed for a claim is checked before it reaches another command line:
    anything but a container ID (here an option) is replaced by the claim's own name."""
    t = FakeTransport().on("forge-claim-GPU-a", stdout="--all\n").on("forge-claim-GPU-b", status=1, stderr="no")
    t.on(" rm -f ")
    with pytest.raises(CommandFailed):
        claims.claim(session(Host(name="gpu1", address="x"), t), ["GPU-a", "GPU-b"], image="img", env="dev",
                     owner="alice", container="c")  # fmt: skip
    assert [x for x in t.scripts if " rm -f " in x] == ["docker rm -f forge-claim-GPU-a"]


def test_launch_argv() -> None:
    spec_l = launch.LaunchSpec(
        env="dev",
        owner="alice",
        image="lab/dev:1",
        name="forge-alice-dev-abc",
        gpus=("GPU-a", "GPU-b"),
        uid=1001,
        gid=1002,
        user="alice",
        hostname="dev",
        volume="forge-data-alice",
        mount="/data",
        authorized_keys="ssh-ed25519 AAAA me",
    )
    argv = session(HOST).docker(*launch.run_args(spec_l, 2201))
    text = shell.render(argv)
    assert text.startswith(
        "docker run -d -t --name forge-alice-dev-abc --gpus '\"device=GPU-a,GPU-b\"' --ipc=host -p 2201:22 "
        "-u 1001:1002 -h dev -v forge-data-alice:/data --restart=always "
    )
    assert "--label forge.env=dev --label forge.owner=alice --label forge.ssh_port=2201" in text
    assert "-e 'FORGE_AUTHORIZED_KEYS=ssh-ed25519 AAAA me'" in text and text.endswith(" lab/dev:1")
    assert shlex.split(text) == argv


def test_ports() -> None:
    ss = "LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\nLISTEN 0 4096 [::]:2200 [::]:*\nLISTEN 0 5 *:2202 *:*\n"
    ss += "LISTEN 0 5 *:\u00b2 *:*\nLISTEN 0 5 *:" + "9" * 5000 + " *:*\n"  # not ports: skipped
    assert launch.parse_listening(ss) == {22, 2200, 2202}
    assert launch.choose_port(2200, 2205, {2200, 2202}, skip={2201}) == 2203
    assert launch.choose_port(2200, 2205, set(), fixed=2204) == 2204
    with pytest.raises(LaunchError):
        launch.choose_port(2200, 2201, {2200, 2201})


def test_keyscan_parse() -> None:
    out = (
        "# 127.0.0.1:2201 SSH-2.0-OpenSSH_9.2\n[127.0.0.1]:2201 ssh-ed25519 AAAAkey\n"
        "[127.0.0.1]:2201 ecdsa-sha2-nistp256 BBB\n"
    )
    assert launch.parse_keyscan(out) == [("ssh-ed25519", "AAAAkey"), ("ecdsa-sha2-nistp256", "BBB")]
    facts = launch.HostFacts(1001, 1002, "alice", "/home/alice")
    assert launch.parse_facts("1001\n1002\nalice\n/home/alice\n") == facts
    for bad in ("\u00b9\n1002\nalice\n/h\n", "1001\n-1\nalice\n/h\n", "1\n2\n-oX\n/h\n", "1001\nalice\n/h\n"):
        with pytest.raises(ValueError, match="unexpected answer"):
            launch.parse_facts(bad)


def _access(host: Host = HOST, port: int = 2201, user: str = "alice") -> access.Access:
    return access.access(host, env="dev", port=port, user=user, known_hosts=Path("/k/forge_known_hosts"))


def test_ssh_config_block_is_replaced_in_place_and_removed() -> None:
    block = sshconfig.render_block("dev", access.config_lines(_access()))
    assert "Host dev\n    HostName 10.0.0.1\n    Port 2201\n    User alice\n    ForwardX11 yes\n" in block
    assert "ForwardX11Trusted no" in block and "ForwardAgent no" in block  # issue 11 #5
    assert "HostKeyAlias forge-dev" in block and "StrictHostKeyChecking yes" in block
    assert 'UserKnownHostsFile "/k/forge_known_hosts"' in block and "ProxyCommand" not in block
    mine = "Host *\n    ServerAliveInterval 30\n"
    text = sshconfig.replace_block(mine, "dev", block)
    assert text.startswith(sshconfig.begin_marker("dev")) and text.endswith(mine)
    newer = sshconfig.render_block("dev", access.config_lines(_access(Host(name="gpu2", address="10.0.0.3"), 2202)))
    text2 = sshconfig.replace_block(text, "dev", newer)
    assert text2.count("Host dev") == 1 and "10.0.0.3" in text2 and "10.0.0.1" not in text2
    assert sshconfig.replace_block(text2, "dev", None) == mine
    with pytest.raises(EnvError):
        sshconfig.render_block("dev\nHost *", [])
    with pytest.raises(EnvError, match="line break"):
        sshconfig.render_block("dev", ["User a\nHost *"])


def test_the_way_to_an_environment_behind_a_jump_host(isolated_home: Path) -> None:
    """The container's port is reached through the host's jump hosts, every hop checked."""
    config = isolated_home / "lab_ssh_config"
    config.write_text(
        "Host bastion\n  HostName 192.0.2.1\n  User jumper\nHost gpu1\n  HostName 10.1.0.5\n  ProxyJump bastion\n"
    )
    host = Host(name="gpu1", address="", ssh_alias="gpu1", ssh_config=str(config), identity_file="/k/id")
    a = _access(host)
    assert [(h.hostname, h.port, h.user) for h in a.route.hops] == [
        ("192.0.2.1", 22, "jumper"),
        ("10.1.0.5", 2201, "alice"),
    ]
    assert access.display(a) == "ssh -X -o ForwardX11Trusted=no -J jumper@192.0.2.1:22 -p 2201 alice@10.1.0.5"
    lines = access.config_lines(a)
    proxy = next(line for line in lines if line.startswith("ProxyCommand "))
    assert "-W '[10.1.0.5]:2201'" in proxy and "StrictHostKeyChecking=yes" in proxy and "192.0.2.1" in proxy
    argv = access.ssh_argv(a, ["id", "-u"])
    assert argv[:4] == ["ssh", "-X", "-o", "ForwardX11Trusted=no"]
    assert argv[-3:] == ["--", "10.1.0.5", "id -u"] and "BatchMode=yes" not in argv


def test_known_hosts_lines_for_the_alias_are_replaced() -> None:
    text = "forge-dev ssh-ed25519 OLD\nforge-other ssh-ed25519 KEEP\n"
    out = sshconfig.replace_known_hosts(text, "dev", [("ssh-ed25519", "NEW")])
    assert out == "forge-other ssh-ed25519 KEEP\nforge-dev ssh-ed25519 NEW\n"


# --------------------------------------------------------------------------- names, ~/.ssh files, forge ssh


@pytest.mark.parametrize("name", ["bad name;x", "Bad/Name", "-oProxyCommand=x", "", "a\nb"])
def test_an_odd_environment_name_is_refused_before_anything_runs(name: str) -> None:
    from forge.env.migrate import Request

    with pytest.raises(EnvError, match="may only hold"):
        Request(env=name)
    with pytest.raises(EnvError, match="may only hold"):
        sshconfig.pin_keys(name, [("ssh-ed25519", "AAAA")], known_hosts=Path("/nonexistent/never-written"))


def test_stop_of_an_odd_name_leaves_the_ssh_files_alone(tmp_path: Path) -> None:
    config, known = tmp_path / "config", tmp_path / "known"
    config.write_text("Host x\n")
    known.write_text("forge-bad name;x ssh-ed25519 AAAA\n")
    sshconfig.remove("bad name;x", config=config, known_hosts=known)  # no error: nothing forge wrote
    assert known.read_text() == "forge-bad name;x ssh-ed25519 AAAA\n"


def test_removing_a_block_that_is_not_there_does_not_touch_the_file(tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles" / "ssh_config"
    dotfiles.parent.mkdir()
    dotfiles.write_text("Host example\n  User me\n")
    dotfiles.chmod(0o644)
    config = tmp_path / "config"
    config.symlink_to(dotfiles)
    before = dotfiles.stat()
    sshconfig.remove("dev", config=config, known_hosts=tmp_path / "known")
    assert config.is_symlink() and dotfiles.stat().st_ino == before.st_ino
    assert dotfiles.stat().st_mtime_ns == before.st_mtime_ns


def test_a_symlinked_ssh_config_stays_a_symlink(tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles" / "ssh_config"
    dotfiles.parent.mkdir()
    dotfiles.write_text("Host example\n")
    config = tmp_path / "config"
    config.symlink_to(dotfiles)
    sshconfig.update("dev", access.config_lines(_access()), config=config)
    assert config.is_symlink() and "Host dev" in dotfiles.read_text() and sshconfig.has_block("dev", config=config)
    sshconfig.remove("dev", config=config, known_hosts=tmp_path / "known")
    assert config.is_symlink() and dotfiles.read_text() == "Host example\n"
    assert not sshconfig.has_block("dev", config=config)


PLANTED = {"forge.env": "dev", "forge.ssh_port": "22", "forge.user": "-oProxyCommand=touch /tmp/pwned"}


def _forge_ssh(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    *args: str,
    labels: dict[str, str] | None = None,
    keys: list[tuple[str, str]] | None = None,
    exit_code: int = 0,
) -> list[str]:
    """Run `forge ssh ARGS` up to the exec of ssh (no host is reached); returns ssh's argv."""
    from click.testing import CliRunner

    from forge.cli import env as cli_env
    from forge.cli.main import State
    from forge.env.listing import Container, Environment
    from forge.inventory import Inventory

    inv = Inventory(path=None, hosts=(Host(name="gpu1", address="10.0.0.1", user="ana"),))
    labels = labels or {"forge.env": "dev", "forge.ssh_port": "2201", "forge.user": "alice"}
    found = Environment(
        "gpu1", Container("c1", "forge-alice-dev-1", "img", "running", "Up", 0, labels, "0.0.0.0:2201->22/tcp")
    )
    monkeypatch.setattr(cli_env.envs, "locate", lambda *a, **k: found)
    monkeypatch.setattr(cli_env, "wait_ready", lambda *a, **k: keys or [("ssh-ed25519", "AAAA")])
    monkeypatch.setattr(cli_env.sshconfig, "default_paths", lambda: (tmp_path / "config", tmp_path / "known"))
    execs: list[list[str]] = []
    monkeypatch.setattr(cli_env.os, "execvp", lambda prog, argv: execs.append(argv))
    state = State()
    state._inventory = inv
    r = CliRunner().invoke(cli_env.ssh, list(args), obj=state)
    assert r.exit_code == exit_code, (r.output, r.exception)
    return execs[0] if execs else [f"{r.output}{r.exception or ''}"]


def test_forge_ssh_passes_options_after_env_to_the_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    argv = _forge_ssh(monkeypatch, tmp_path, "dev", "ls", "--help")
    assert argv[-3:] == ["--", "10.0.0.1", "ls --help"]  # ls's --help, not forge's
    assert _forge_ssh(monkeypatch, tmp_path, "dev", "--", "ls", "-l")[-1] == "ls -l"
    assert _forge_ssh(monkeypatch, tmp_path, "dev", "printf", "%s", "a b")[-1] == "printf %s 'a b'"
    login = _forge_ssh(monkeypatch, tmp_path, "dev")
    assert login[-2:] == ["--", "10.0.0.1"] and login[:4] == ["ssh", "-X", "-o", "ForwardX11Trusted=no"]
    assert login[login.index("-l") + 1] == "alice" and login[login.index("-p") + 1] == "2201"


def test_forge_ssh_puts_no_planted_label_on_the_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Issue 11 #3: a container claiming to be the environment, with an ssh option as its user
    and the host's own sshd as its port."""
    argv = _forge_ssh(monkeypatch, tmp_path, "dev", "true", labels=PLANTED)
    assert not any("ProxyCommand=touch" in a for a in argv)
    assert argv[argv.index("-l") + 1] == "ana"  # the host's SSH user, not the label
    assert argv[argv.index("-p") + 1] == "2201"  # what docker publishes, not the label's 22


def test_forge_ssh_refuses_a_container_whose_key_is_not_the_pinned_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "known").write_text("forge-dev ssh-ed25519 PINNED\n")
    out = _forge_ssh(monkeypatch, tmp_path, "dev", "true", keys=[("ssh-ed25519", "OTHER")], exit_code=1)
    assert "not the one pinned" in out[0]
    assert (tmp_path / "known").read_text() == "forge-dev ssh-ed25519 PINNED\n"
    _forge_ssh(monkeypatch, tmp_path, "--trust-new-keys", "dev", "true", keys=[("ssh-ed25519", "OTHER")])
    assert (tmp_path / "known").read_text() == "forge-dev ssh-ed25519 OTHER\n"
    _forge_ssh(monkeypatch, tmp_path, "dev", "true", keys=[("ssh-ed25519", "OTHER")])  # pinned now


def test_a_failed_mount_says_why_without_the_mount_script() -> None:
    refused = FakeTransport().on("sshfs", status=1, stderr="read: Connection reset by peer\n")
    with pytest.raises(VolumeError) as e:
        volume.mount(session(HOST, refused), spec())
    assert str(e.value) == (
        "gpu1: mounting alice@data.lab:/srv/data with sshfs failed (exit status 1): read: Connection reset by peer"
    )


def test_a_named_target_that_is_down_is_reported_as_down_not_as_full() -> None:
    from forge import fleet
    from forge.env import migrate as mig
    from forge.errors import ConnectError
    from forge.inventory import Inventory

    def refuse(host: Host) -> launch.Transport:
        raise ConnectError(host.name, f"connection refused by {host.address}:22 (is sshd running?)")

    inv = Inventory(path=None, hosts=(HOST, Host(name="gpu2", address="10.0.0.2")))
    with fleet.Pool(refuse) as pool:
        with pytest.raises(ConnectError, match=r"^gpu1: connection refused by 10\.0\.0\.1:22"):
            mig.candidates(inv, mig.Request(env="dev", to="gpu1"), pool, current=None)
        with pytest.raises(EnvError) as e:
            mig.candidates(inv, mig.Request(env="dev", to="idle", gpus=3), pool, current=None)
    assert str(e.value).startswith("no host has 3 free GPU(s) right now (")
    assert "unreachable: gpu1, gpu2" in str(e.value)
