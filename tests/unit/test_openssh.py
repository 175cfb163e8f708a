"""The OpenSSH client's command line for bulk streams: forge's trust rules, spelled for ssh."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge.inventory import Host
from forge.transport import openssh


def _opts(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-o")


def test_host_keys_are_checked_strictly_against_forges_files_only() -> None:
    argv = openssh.argv(Host(name="g", address="10.0.0.5"), [Path("/k/a"), Path("/k/b")], "docker load -q")
    o = _opts(argv)
    assert o["StrictHostKeyChecking"] == "yes"
    assert o["UserKnownHostsFile"] == "/k/a /k/b" and o["GlobalKnownHostsFile"] == "/dev/null"
    assert o["UpdateHostKeys"] == "no"


def test_keys_or_agent_only_and_the_script_is_one_argument_after_the_target() -> None:
    script = "'docker' 'load' '-q'"
    argv = openssh.argv(Host(name="g", address="10.0.0.5"), [Path("/k")], script)
    o = _opts(argv)
    assert (o["BatchMode"], o["PasswordAuthentication"], o["KbdInteractiveAuthentication"]) == ("yes", "no", "no")
    assert argv[-3:] == ["--", "10.0.0.5", script]
    assert "-i" not in argv and "-l" not in argv and "-p" not in argv  # ~/.ssh/config decides


def test_the_inventorys_user_port_key_and_alias_win() -> None:
    host = Host(name="g", address="10.0.0.5", ssh_alias="gpu-alias", user="ana", port=2222, identity_file="~/.ssh/lab")
    argv = openssh.argv(host, [Path("/k")], "true", ssh="/usr/bin/ssh")
    assert argv[0] == "/usr/bin/ssh"
    assert argv[argv.index("-l") + 1] == "ana" and argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-i") + 1] == str(Path("~/.ssh/lab").expanduser())
    assert _opts(argv)["IdentitiesOnly"] == "yes"
    assert argv[-2] == "gpu-alias"


def test_known_hosts_paths_with_whitespace_stay_on_paramiko() -> None:
    assert not openssh.usable([Path("/home/a b/known_hosts")])
    assert not openssh.usable([])
    assert openssh.usable([Path("/k")])
    with pytest.raises(ValueError):
        openssh.argv(Host(name="g", address="h"), [Path("/a b")], "true")


def test_the_environment_can_keep_streams_on_paramiko(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(openssh.ENV, "paramiko")
    assert openssh.client() is None
    monkeypatch.setenv(openssh.ENV, "")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert openssh.client() is None  # no ssh installed: paramiko
