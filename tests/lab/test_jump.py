"""Jump hosts (ProxyJump) through forge's two pipes, every hop's key checked (issue 11 #1).

The lab's data host serves as the jump host on the way to gpu1 (behind a bastion, the lab's
own jump host does): forge must refuse an unknown or changed key on the jump hop as it does
on the host itself, under paramiko (commands) and under the ssh client (streams)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from forge.errors import HostKeyError
from forge.inventory import Host
from forge.transport import connect
from forge.transport.openssh import client as ssh_client

pytestmark = pytest.mark.lab


def _key_line(lab: Any, address: str) -> str:
    return next(line for line in Path(lab.known_hosts).read_text().splitlines() if line.split()[0] == address)


def _jump(lab: Any) -> tuple[str, str]:
    """The jump host's address and the one gpu1 sees its connections come from: the data
    host's in a direct lab, the bastion's outer and inner ones behind a bastion."""
    if lab.bastion:
        cfg = lab.lab.config
        return cfg.jump_host().address, cfg.jump_inner_address
    return lab.address("data"), lab.address("data")


def _setup(lab: Any, tmp: Path, known: list[str], jump_policy: str = "yes") -> Host:
    jump, target = _jump(lab)[0], lab.address(lab.hosts[0])
    config = tmp / "ssh_config"
    config.write_text(
        f"Host thejump\n  HostName {jump}\n  User {lab.user}\n  IdentityFile {lab.identity_file}\n"
        f"  StrictHostKeyChecking {jump_policy}\n"
        f"Host gpu-behind\n  HostName {target}\n  ProxyJump thejump\n"
    )
    kh = tmp / "known_hosts"
    kh.write_text("".join(line + "\n" for line in known))
    return Host(
        name="gpu1",
        address="",
        ssh_alias="gpu-behind",
        user=lab.user,
        identity_file=str(lab.identity_file),
        known_hosts=str(kh),
        ssh_config=str(config),
        connect_timeout=10,
    )


def _peer(host: Host, *, stream: bool) -> str:
    """The address the host saw the connection come from (the jump host's, through it)."""
    with connect(host) as t:
        if not stream:
            return t.run(["sh", "-c", "echo ${SSH_CONNECTION%% *}"], check=True).stdout.strip()
        sink = io.BytesIO()
        r = t.stream(["sh", "-c", "echo ${SSH_CONNECTION%% *}"], sink=sink)
        assert r.ok, r.stderr
        return sink.getvalue().decode().strip()


@pytest.mark.parametrize("stream", [False, True], ids=["paramiko", "openssh"])
def test_the_way_through_a_verified_jump_host(lab: Any, tmp_path: Path, stream: bool) -> None:
    if stream and ssh_client() is None:
        pytest.skip("no ssh client")
    (jump, seen), target = _jump(lab), lab.address(lab.hosts[0])
    host = _setup(lab, tmp_path, [_key_line(lab, jump), _key_line(lab, target)])
    assert _peer(host, stream=stream) == seen


def test_an_unknown_jump_host_key_is_rejected(lab: Any, tmp_path: Path) -> None:
    host = _setup(lab, tmp_path, [_key_line(lab, lab.address(lab.hosts[0]))])
    with pytest.raises(HostKeyError, match=r"unknown host key for jump host thejump .*on the way to gpu1"):
        _peer(host, stream=False)


def test_a_changed_jump_host_key_is_refused_even_when_it_opts_into_new_keys(lab: Any, tmp_path: Path) -> None:
    jump, target = _jump(lab)[0], lab.address(lab.hosts[0])
    forged = _key_line(lab, lab.address(lab.hosts[1])).replace(lab.address(lab.hosts[1]), jump, 1)
    for policy in ("yes", "accept-new"):
        host = _setup(lab, tmp_path, [forged, _key_line(lab, target)], jump_policy=policy)
        with pytest.raises(HostKeyError, match=r"host key of jump host thejump .* has CHANGED"):
            _peer(host, stream=False)
    assert forged in Path(host.known_hosts or "").read_text()


def test_a_jump_host_that_opts_in_records_its_new_key(lab: Any, tmp_path: Path) -> None:
    (jump, seen), target = _jump(lab), lab.address(lab.hosts[0])
    host = _setup(lab, tmp_path, [_key_line(lab, target)], jump_policy="accept-new")
    assert _peer(host, stream=False) == seen
    recorded = Path(host.known_hosts or "").read_text().splitlines()
    assert recorded[-1].split()[:2] == [jump, "ssh-ed25519"]
    assert recorded[-1].split()[2] == _key_line(lab, jump).split()[2]


def test_the_openssh_pipe_refuses_a_jump_host_forge_would_refuse(lab: Any, tmp_path: Path) -> None:
    """ssh -J hands the jump connection none of forge's options; forge's ProxyCommand does."""
    if ssh_client() is None:
        pytest.skip("no ssh client")
    from forge.transport import openssh
    from forge.transport.route import resolve

    jump, target = _jump(lab)[0], lab.address(lab.hosts[0])
    forged = _key_line(lab, lab.address(lab.hosts[1])).replace(lab.address(lab.hosts[1]), jump, 1)
    host = _setup(lab, tmp_path, [forged, _key_line(lab, target)])
    argv = openssh.argv(resolve(host), "true", ssh=ssh_client() or "ssh")
    with pytest.raises(HostKeyError, match="ssh refused the host key"):
        openssh.stream(host, argv, "true", source=None, sink=None, timeout=30)
