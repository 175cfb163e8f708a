"""The lab's pure parts: names and addresses derived from its config, flavor assignment, the
record in lab.json, the bastion's ssh_config and the inventory it writes. No host needed."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from forge.lab import LabConfig, inventory, sshconfig, state
from forge.lab.flavors import flavor, flavor_for, parse_flavors, suites

ROOT = Path("/var/lib/forge-lab-x")


def second(**kw: object) -> LabConfig:
    """A second lab beside the default one."""
    base = {
        "root": ROOT,
        "bridge": "forgelabx0",
        "network": "10.79.0.0/24",
        "netns_prefix": "forgelabx-",
        "docker_subnet_base": 100,
        "user": "forgelabx",
    }
    return LabConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_flavors_are_given_to_gpu_hosts_in_turn() -> None:
    cfg = second(hosts=5, flavors=parse_flavors("bookworm, trixie,trixie-containerd"))
    assert [h.flavor for h in cfg.gpu_hosts()] == ["bookworm", "trixie", "trixie-containerd", "bookworm", "trixie"]
    assert cfg.host("data").flavor is None
    assert [flavor_for(("trixie",), i) for i in (1, 2, 3)] == ["trixie"] * 3
    assert LabConfig(root=ROOT).flavors == ("bookworm",)


def test_flavor_properties() -> None:
    assert not flavor("bookworm").chroot and not flavor("bookworm").containerd_store
    assert flavor("trixie").chroot and flavor("trixie").suite == "trixie"
    assert flavor("trixie-containerd").containerd_store
    assert suites(("bookworm", "trixie", "trixie-containerd", "trixie")) == ["trixie"]
    assert suites(("bookworm",)) == []


@pytest.mark.parametrize("text", ["", "bookworm,sid", "trixie,,buster"])
def test_unknown_or_no_flavors_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="flavor"):
        parse_flavors(text)
    with pytest.raises(ValueError):
        second(flavors=tuple(text.split(",")))


def test_names_derive_from_the_user_and_network() -> None:
    default = LabConfig(root=ROOT)
    assert (default.other_user, default.docker_group) == ("forgelab2", "forgelab-docker")
    assert default.inner_network == "10.177.0.0/24"
    cfg = second()
    assert (cfg.other_user, cfg.docker_group, cfg.inner_network) == ("forgelabx2", "forgelabx-docker", "10.179.0.0/24")
    assert second(network="10.77.0.128/26").inner_network == "10.177.0.128/26"
    assert second(network="10.200.0.0/24").inner_network == "10.100.0.0/24"
    assert second(inner_network="10.5.5.0/24").inner_network == "10.5.5.0/24"
    with pytest.raises(ValueError, match="inner_network"):
        second(network="192.168.7.0/24")
    with pytest.raises(ValueError, match="apart"):
        second(inner_network="10.79.0.0/16")
    with pytest.raises(ValueError, match="three names"):
        second(other_user="forgelabx-docker")


def test_without_a_bastion_the_hosts_are_on_the_outer_bridge() -> None:
    cfg = second(hosts=2)
    assert [(h.name, h.address, h.bridge) for h in cfg.all_hosts()] == [
        ("data", "10.79.0.10", "forgelabx0"),
        ("gpu1", "10.79.0.11", "forgelabx0"),
        ("gpu2", "10.79.0.12", "forgelabx0"),
    ]


def test_behind_a_bastion_the_hosts_are_inner_and_the_jump_host_has_both_legs() -> None:
    cfg = second(hosts=2, bastion=True)
    hosts = {h.name: h for h in cfg.all_hosts()}
    assert [h.role for h in cfg.all_hosts()] == ["data", "gpu", "gpu", "jump"]
    assert (hosts["data"].address, hosts["gpu2"].address) == ("10.179.0.10", "10.179.0.12")
    assert {h.bridge for n, h in hosts.items() if n != "jump"} == {"forgelabx0i"}
    jump = hosts["jump"]
    assert (jump.address, jump.bridge, jump.netns) == ("10.79.0.9", "forgelabx0", "forgelabx-jump")
    assert cfg.jump_inner_address == "10.179.0.9"
    veths = [h.veth for h in cfg.all_hosts()] + [cfg.jump_inner_veth]
    assert len(set(veths)) == len(veths) and all(len(v) + 1 <= 15 for v in veths)  # peers add "p"
    assert cfg.inner_bridge != LabConfig(root=ROOT).inner_bridge


def test_the_record_round_trips_and_names_what_differs() -> None:
    cfg = second(flavors=("bookworm", "trixie"), bastion=True)
    data = {"layout": state.LAYOUT, **state.config_dict(cfg)}
    assert state.config_from(ROOT, data) == cfg
    assert state.differences(data, cfg) == []
    assert state.differences(data, dataclasses.replace(cfg, hosts=2)) == ["hosts 4, not 2"]
    assert state.differences(data, dataclasses.replace(cfg, flavors=("trixie",), bastion=False)) == [
        "flavors ['bookworm', 'trixie'], not ['trixie']",
        "bastion True, not False",
    ]
    old = {k: v for k, v in data.items() if k not in ("layout", "flavors", "bastion", "other_user")}
    assert state.config_from(ROOT, old) == second()
    assert state.differences(old, second())[0].startswith("layout 1")


def test_ssh_config_jumps_to_every_host_with_the_lab_key_and_known_hosts() -> None:
    cfg = second(hosts=2, bastion=True)
    text = sshconfig.render(cfg, cfg.user, cfg.identity_file)
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in text.split("\n\n")[1:]}
    assert list(blocks) == ["Host jump", "Host data", "Host gpu1", "Host gpu2"]
    common = [
        "User forgelabx",
        f"IdentityFile {ROOT}/ssh/id_ed25519",
        "IdentitiesOnly yes",
        f"UserKnownHostsFile {ROOT}/ssh/known_hosts",
        "StrictHostKeyChecking yes",
    ]
    assert [line.strip() for line in blocks["Host jump"]] == ["HostName 10.79.0.9", *common]
    assert [line.strip() for line in blocks["Host gpu2"]] == ["HostName 10.179.0.12", *common, "ProxyJump jump"]
    other = sshconfig.render(cfg, cfg.other_user, cfg.other_identity_file)
    assert "User forgelabx2" in other and f"IdentityFile {ROOT}/ssh/other_ed25519" in other
    assert "id_ed25519" not in other
    assert cfg.ssh_config_of(cfg.other_user) != cfg.ssh_config


def test_ssh_config_quotes_paths_with_spaces_and_refuses_quotes() -> None:
    cfg = second(root=Path("/var/lib/forge lab"), bastion=True)
    assert 'IdentityFile "/var/lib/forge lab/ssh/id_ed25519"' in sshconfig.render(cfg, cfg.user, cfg.identity_file)
    with pytest.raises(ValueError):
        sshconfig.render(cfg, 'a"b', cfg.identity_file)


def test_inventory_names_hosts_by_address_or_behind_a_bastion_by_alias() -> None:
    home = ROOT / "home" / "forgelabx"
    plain = tomllib.loads(inventory.render(second(hosts=2, flavors=("bookworm", "trixie")), home))
    assert "ssh_config" not in plain["defaults"]
    assert [(h["name"], h["address"], h["tags"]) for h in plain["hosts"]] == [
        ("gpu1", "10.79.0.11", ["lab", "bookworm"]),
        ("gpu2", "10.79.0.12", ["lab", "trixie"]),
    ]
    behind = tomllib.loads(inventory.render(second(hosts=2, bastion=True), home))
    assert behind["defaults"] == {
        "user": "forgelabx",
        "identity_file": f"{ROOT}/ssh/id_ed25519",
        "known_hosts": f"{ROOT}/ssh/known_hosts",
        "ssh_config": f"{ROOT}/ssh/config",
    }
    assert [(h["name"], h["ssh_alias"]) for h in behind["hosts"]] == [("gpu1", "gpu1"), ("gpu2", "gpu2")]
    assert all("address" not in h for h in behind["hosts"])
    assert behind["data"]["address"] == "10.179.0.10"  # GPU hosts reach it directly


def test_the_plain_inventory_loads() -> None:
    from forge.inventory import parse

    inv = parse(inventory.render(second(hosts=2), ROOT / "home" / "forgelabx"))
    assert [(h.name, h.address) for h in inv.hosts] == [("gpu1", "10.79.0.11"), ("gpu2", "10.79.0.12")]
