"""The way to a host, read from the inventory and an OpenSSH client config."""

from __future__ import annotations

import getpass
import os
from pathlib import Path

import paramiko
import pytest

from forge.errors import ConfigError
from forge.inventory import Host
from forge.transport.route import load_config, resolve


def cfg(text: str) -> paramiko.SSHConfig:
    return paramiko.SSHConfig.from_text(text)


def test_without_a_config_the_inventory_is_the_whole_story(isolated_home: Path) -> None:
    r = resolve(Host(name="g", address="10.0.0.5", user="ana", port=2222, identity_file="~/.ssh/lab"))
    assert len(r.hops) == 1
    hop = r.target
    assert (hop.hostname, hop.port, hop.user, hop.policy) == ("10.0.0.5", 2222, "ana", "strict")
    assert hop.identity_files == (str(isolated_home / ".ssh/lab"),)
    # OpenSSH's default files: the user's, then the global ones
    assert hop.known_hosts == (
        isolated_home / ".ssh/known_hosts",
        isolated_home / ".ssh/known_hosts2",
        Path("/etc/ssh/ssh_known_hosts"),
        Path("/etc/ssh/ssh_known_hosts2"),
    )
    assert hop.lookup == "[10.0.0.5]:2222"


def test_an_alias_takes_the_configs_hostname_user_port_and_keys() -> None:
    c = cfg(
        "Host gpu1\n  HostName 10.0.0.5\n  User bob\n  Port 2200\n  IdentityFile /k/id_%r\n  HostKeyAlias gpu1-key\n"
    )
    hop = resolve(Host(name="g", address="", ssh_alias="gpu1"), c).target
    assert (hop.hostname, hop.user, hop.port, hop.identity_files) == ("10.0.0.5", "bob", 2200, ("/k/id_bob",))
    assert hop.lookup == "gpu1-key"
    # the inventory wins for the host itself
    hop = resolve(Host(name="g", address="", ssh_alias="gpu1", user="ana", port=22, identity_file="/k/x"), c).target
    assert (hop.user, hop.port, hop.identity_files) == ("ana", 22, ("/k/x",))


def test_user_known_hosts_file_is_a_list_of_paths_not_of_characters(isolated_home: Path) -> None:
    """Issue 11 #2: the value was iterated character by character."""
    c = cfg('Host gpu1\n  UserKnownHostsFile /var/lib/kh "/srv/with space/kh" ~/.ssh/kh3 %d/kh4 /k/%h-%p\n')
    hop = resolve(Host(name="g", address="10.0.0.5", ssh_alias="gpu1"), c).target
    assert hop.known_hosts == (
        Path("/var/lib/kh"),
        Path("/srv/with space/kh"),
        isolated_home / ".ssh/kh3",
        isolated_home / "kh4",
        Path("/k/gpu1-22"),  # %h is the HostName, which defaults to the alias
        Path("/etc/ssh/ssh_known_hosts"),
        Path("/etc/ssh/ssh_known_hosts2"),
    )
    assert all(len(p.name) > 1 for p in hop.known_hosts)


def test_the_inventorys_known_hosts_replaces_every_other_file() -> None:
    c = cfg("Host *\n  UserKnownHostsFile /var/lib/kh\n  GlobalKnownHostsFile none\n")
    assert resolve(Host(name="g", address="h", known_hosts="/lab/kh"), c).target.known_hosts == (Path("/lab/kh"),)
    assert resolve(Host(name="g", address="h"), c).target.known_hosts == (Path("/var/lib/kh"),)


def test_proxyjump_puts_verified_jump_hosts_in_front() -> None:
    c = cfg(
        "Host bastion\n  HostName 192.0.2.1\n  User jumper\n  IdentityFile /k/jump\n"
        "Host inner\n  HostName 10.1.0.9\n  Port 2022\n"
        "Host gpu*\n  ProxyJump bastion,me@inner:2200\n"
    )
    r = resolve(Host(name="gpu1", address="", ssh_alias="gpu1", user="ana", identity_file="/k/fleet"), c)
    assert [(h.label, h.hostname, h.port, h.user) for h in r.hops] == [
        ("jump host bastion", "192.0.2.1", 22, "jumper"),
        ("jump host me@inner:2200", "10.1.0.9", 2200, "me"),
        ("gpu1", "gpu1", 22, "ana"),
    ]
    # a jump host's keys: its config's IdentityFile, else the fleet's
    assert r.hops[0].identity_files == ("/k/jump",)
    assert r.hops[1].identity_files == ("/k/fleet",)
    assert all(h.policy == "strict" for h in r.hops)


def test_the_first_jump_hosts_own_proxyjump_is_followed_and_loops_stop() -> None:
    c = cfg("Host outer\n  HostName 192.0.2.1\nHost bastion\n  ProxyJump outer\nHost gpu1\n  ProxyJump bastion\n")
    r = resolve(Host(name="gpu1", address="", ssh_alias="gpu1"), c)
    assert [h.hostname for h in r.hops] == ["192.0.2.1", "bastion", "gpu1"]
    loop = cfg("Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n")
    with pytest.raises(ConfigError, match="loop"):
        resolve(Host(name="a", address="", ssh_alias="a"), loop)
    assert resolve(Host(name="g", address="", ssh_alias="x"), cfg("Host x\n  ProxyJump none\n")).jumps == ()


def test_strict_host_key_checking_in_the_config_opts_a_hop_in() -> None:
    c = cfg(
        "Host j1\n  StrictHostKeyChecking accept-new\nHost j2\n  StrictHostKeyChecking no\n"
        "Host j3\n  StrictHostKeyChecking yes\nHost gpu1\n  ProxyJump j1,j2,j3\n"
    )
    r = resolve(Host(name="gpu1", address="", ssh_alias="gpu1"), c)
    assert [h.policy for h in r.hops] == ["accept-new", "accept-new", "strict", "strict"]
    assert resolve(Host(name="gpu1", address="", ssh_alias="gpu1", host_key_policy="accept-new"), c).target.policy == (
        "accept-new"
    )


def test_a_proxycommand_is_kept_for_the_first_hop_only() -> None:
    c = cfg("Host gpu1\n  ProxyCommand nc -X connect -x proxy:3128 %h %p\n")
    r = resolve(Host(name="gpu1", address="", ssh_alias="gpu1"), c)
    assert r.target.proxy_command == "nc -X connect -x proxy:3128 gpu1 22"


@pytest.mark.parametrize(
    "text, message",
    [
        ("Host gpu1\n  ProxyJump @@@\n", "cannot read the jump host"),
        ("Host gpu1\n  Port http\n", "is not a number"),
        ("Host gpu1\n  UserKnownHostsFile %Z/kh\n", "cannot expand %Z"),
        ('Host gpu1\n  UserKnownHostsFile "/unterminated\n', "cannot read userknownhostsfile"),
    ],
)
def test_config_mistakes_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(Host(name="gpu1", address="", ssh_alias="gpu1"), cfg(text))


def test_the_inventorys_ssh_config_is_read_and_a_missing_one_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "ssh_config"
    path.write_text("Host gpu1\n  HostName 10.9.9.9\n")
    assert resolve(Host(name="g", address="", ssh_alias="gpu1", ssh_config=str(path))).target.hostname == "10.9.9.9"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope"))


def test_a_route_is_worked_out_once_per_config_and_again_once_the_file_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """paramiko's lookup scans every block of the config: a reconnect in the same process
    (the next task of `invoke deploy`, --watch after a drop) does not pay it again."""
    path = tmp_path / "ssh_config"
    path.write_text("Host gpu1\n  HostName 10.9.9.9\n")
    looked: list[str] = []
    real = paramiko.SSHConfig.lookup
    monkeypatch.setattr(paramiko.SSHConfig, "lookup", lambda self, name: looked.append(name) or real(self, name))
    host = Host(name="g", address="", ssh_alias="gpu1", ssh_config=str(path))
    routes = [resolve(host) for _ in range(3)]
    assert looked == ["gpu1"] and routes[0] is routes[2] and routes[0].target.hostname == "10.9.9.9"
    path.write_text("Host gpu1\n  HostName 10.8.8.8\n")
    os.utime(path, ns=(1, 1))  # another mtime even within one clock tick
    assert resolve(host).target.hostname == "10.8.8.8" and looked == ["gpu1", "gpu1"]


def test_the_local_user_is_the_default_user() -> None:
    assert resolve(Host(name="g", address="h"), cfg("")).target.user == getpass.getuser()


def test_a_jump_host_that_cannot_reach_the_next_hop_says_why_in_words() -> None:
    import paramiko

    from forge.transport.ssh import _channel_failure

    assert _channel_failure(paramiko.ChannelException(2, "Connect failed")) == (
        "the connection failed (is the host up and its sshd running?)"
    )
    assert "AllowTcpForwarding" in _channel_failure(paramiko.ChannelException(1, "Administratively prohibited"))
    assert _channel_failure(paramiko.ChannelException(9, "x")) == "it refused the connection (code 9)"
    assert _channel_failure(EOFError()) == "the connection to it closed"
