"""The OpenSSH client's command line for bulk streams: forge's route and trust rules, spelled
for ssh, jump hosts included."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from forge.transport import openssh
from forge.transport.route import Hop, Route


def hop(name: str = "10.0.0.5", **kw: object) -> Hop:
    base: dict[str, object] = dict(label="g", hostname=name, port=22, user="ana", known_hosts=(Path("/k/a"),))
    base.update(kw)
    return Hop(**base)  # type: ignore[arg-type]


def _opts(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-o")


def test_host_keys_are_checked_strictly_against_forges_files_only() -> None:
    argv = openssh.argv(Route((hop(known_hosts=(Path("/k/a"), Path("/k/b"))),)), "docker load -q")
    o = _opts(argv)
    assert argv[argv.index("-F") + 1] == "none"  # nothing from a config file forge did not resolve
    assert o["StrictHostKeyChecking"] == "yes"
    assert o["UserKnownHostsFile"] == '"/k/a" "/k/b"' and o["GlobalKnownHostsFile"] == "none"
    assert o["UpdateHostKeys"] == "no" and o["ForwardAgent"] == "no" and o["ForwardX11"] == "no"


def test_keys_or_agent_only_and_the_script_is_one_argument_after_the_target() -> None:
    script = "'docker' 'load' '-q'"
    argv = openssh.argv(Route((hop(),)), script)
    o = _opts(argv)
    assert (o["BatchMode"], o["PasswordAuthentication"], o["KbdInteractiveAuthentication"]) == ("yes", "no", "no")
    assert argv[-3:] == ["--", "10.0.0.5", script]
    assert "-i" not in argv and "IdentitiesOnly" not in o  # the agent and default keys


def test_the_resolved_user_port_keys_and_alias_are_spelled_out() -> None:
    argv = openssh.argv(Route((hop(port=2222, identity_files=("/k/lab",), key_alias="gpu-a"),)), "true", ssh="/bin/ssh")
    assert argv[0] == "/bin/ssh"
    assert argv[argv.index("-l") + 1] == "ana" and argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-i") + 1] == "/k/lab"
    assert _opts(argv)["IdentitiesOnly"] == "yes" and _opts(argv)["HostKeyAlias"] == '"gpu-a"'


def test_jump_hosts_become_a_nested_proxycommand_under_the_same_rules() -> None:
    j1 = hop("192.0.2.1", label="jump host b", user="jumper", known_hosts=(Path("/k/j%1"),))
    j2 = hop("10.1.0.9", label="jump host c", port=2200)
    target = hop("10.2.0.5")
    argv = openssh.argv(Route((j1, j2, target)), "true")
    outer = _opts(argv)["ProxyCommand"]
    # ssh expands %-tokens in a ProxyCommand once per level
    words = shlex.split(outer.replace("%%", "%"))
    assert words[-4:] == ["-W", "[10.2.0.5]:22", "--", "10.1.0.9"]
    assert _opts(words)["StrictHostKeyChecking"] == "yes" and words[words.index("-p") + 1] == "2200"
    inner = shlex.split(_opts(words)["ProxyCommand"].replace("%%", "%"))
    assert inner[-4:] == ["-W", "[10.1.0.9]:2200", "--", "192.0.2.1"]
    assert _opts(inner)["UserKnownHostsFile"] == '"/k/j%%1"'  # a literal % in a path
    assert inner[inner.index("-l") + 1] == "jumper" and "ProxyCommand" not in _opts(inner)


def test_the_users_own_proxycommand_is_passed_as_written() -> None:
    argv = openssh.argv(Route((hop(proxy_command="nc -x proxy %h %p"),)), "true")
    assert _opts(argv)["ProxyCommand"] == "nc -x proxy %h %p"


def test_paths_ssh_config_cannot_quote_stay_on_paramiko() -> None:
    assert openssh.usable(Route((hop(known_hosts=(Path("/home/a b/known_hosts"),)),)))
    assert not openssh.usable(Route((hop(known_hosts=(Path('/home/a"b/kh'),)),)))
    with pytest.raises(ValueError):
        openssh.argv(Route((hop(known_hosts=(Path('/a"b'),)),)), "true")


def test_the_environment_can_keep_streams_on_paramiko(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(openssh.ENV, "paramiko")
    assert openssh.client() is None
    monkeypatch.setenv(openssh.ENV, "")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert openssh.client() is None  # no ssh installed: paramiko
