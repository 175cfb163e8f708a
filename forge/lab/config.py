"""Where a lab lives and how it is wired: names, addresses and paths, all derived here."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from forge.lab.flavors import DEFAULT_FLAVORS, check_flavors, flavor_for

DEFAULT_ROOT = Path("/var/lib/forge-lab")
ROOT_ENV = "FORGE_LAB_ROOT"
BASE_IMAGE = "forge-lab/debian:bookworm"
DATA_MARKER = "FORGE_DATA_MARKER"
DATA_MARKER_CONTENT = "forge lab data host\n"
DATA_HOST = "data"
JUMP_HOST = "jump"
IPTABLES_TAG = "forge-lab"
#: The address offsets of a lab network: the jump host, then the data host, then gpu1...
JUMP_OFFSET = 9
HOST_OFFSET = 10
#: How the inner (bastion) network is derived from the outer one: its second octet moved by
#: this much, e.g. 10.77.0.0/24 -> 10.177.0.0/24.
INNER_SHIFT = 100


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


@dataclass(frozen=True)
class HostSpec:
    """One host of the lab."""

    name: str
    index: int  # 0 for the data host, 1.. for gpu1..; -1 for the jump host
    address: str  # where its sshd listens (on the inner network behind a bastion)
    netns: str
    veth: str  # the end on the bridge, in the root namespace
    gpu: bool
    flavor: str | None = None  # the Docker engine of a GPU host (see forge.lab.flavors)
    bridge: str = ""  # the bridge its veth is on

    @property
    def role(self) -> str:
        return "gpu" if self.gpu else (JUMP_HOST if self.index < 0 else DATA_HOST)


def _inner_default(network: str) -> str:
    net = ipaddress.IPv4Network(network)
    octets = list(net.network_address.packed)
    if octets[0] != 10:
        raise ValueError(f"cannot derive a bastion network from {network}: give inner_network")
    octets[1] = octets[1] + INNER_SHIFT if octets[1] + INNER_SHIFT <= 255 else octets[1] - INNER_SHIFT
    return f"{ipaddress.IPv4Address(bytes(octets))}/{net.prefixlen}"


@dataclass(frozen=True)
class LabConfig:
    """Everything that tells two labs on one machine apart.

    The default is THE lab (``/var/lib/forge-lab``, bridge ``forgelab0``, 10.77.0.0/24).
    A second lab (e.g. the one a test takes down) needs its own root, bridge, network,
    netns prefix, docker subnet base and user; every other name (the inner network and
    bridge of a bastion lab, the second user, the docker socket group) derives from those.
    """

    root: Path = field(default_factory=default_root)
    hosts: int = 4
    bridge: str = "forgelab0"
    network: str = "10.77.0.0/24"
    netns_prefix: str = "forgelab-"
    docker_subnet_base: int = 0  # gpuN's containers get 10.201.(base+N).0/24
    user: str = "forgelab"
    #: Docker engine flavors, given to gpu1, gpu2, ... in turn (wrapping).
    flavors: tuple[str, ...] = DEFAULT_FLAVORS
    #: GPU and data hosts on an inner network that only the jump host reaches.
    bastion: bool = False
    other_user: str = ""  # a second, unprivileged user; default <user>2
    docker_group: str = ""  # may use every host's docker socket; default <user>-docker
    inner_network: str = ""  # the bastion's inner network; default derived from network

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())
        object.__setattr__(self, "flavors", check_flavors(tuple(self.flavors)))
        object.__setattr__(self, "other_user", self.other_user or f"{self.user}2")
        object.__setattr__(self, "docker_group", self.docker_group or f"{self.user}-docker")
        object.__setattr__(self, "inner_network", self.inner_network or _inner_default(self.network))
        net = ipaddress.IPv4Network(self.network)
        inner = ipaddress.IPv4Network(self.inner_network)
        for n in (net, inner):
            if self.hosts < 1 or HOST_OFFSET + 1 + self.hosts >= n.num_addresses - 1:
                raise ValueError(f"--hosts must be between 1 and {n.num_addresses - 13}")
        if inner.overlaps(net) or not inner.is_private:
            raise ValueError(f"the inner network {inner} must be private and apart from {net}")
        if self.docker_subnet_base + self.hosts > 254:
            raise ValueError("docker subnets would leave 10.201.0.0/16")
        if len({self.user, self.other_user, self.docker_group}) != 3:
            raise ValueError("the lab user, the other user and the docker group need three names")

    @property
    def net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.network)

    @property
    def inner_net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.inner_network)

    @property
    def bridge_address(self) -> str:
        return str(self.net.network_address + 1)

    @property
    def prefixlen(self) -> int:
        return self.net.prefixlen

    @property
    def inner_bridge(self) -> str:
        """The bastion's inner bridge (no address in the root namespace)."""
        return f"{self.bridge[:14]}i"

    @property
    def hosts_bridge(self) -> str:
        """The bridge the data and GPU hosts are on."""
        return self.inner_bridge if self.bastion else self.bridge

    @property
    def hosts_net(self) -> ipaddress.IPv4Network:
        return self.inner_net if self.bastion else self.net

    @property
    def iptables_tag(self) -> str:
        return IPTABLES_TAG if self.bridge == "forgelab0" else f"{IPTABLES_TAG}:{self.bridge}"

    def host(self, name: str) -> HostSpec:
        for h in self.all_hosts():
            if h.name == name:
                return h
        raise KeyError(name)

    def all_hosts(self) -> list[HostSpec]:
        """Every host with an sshd: the data host, the GPU hosts, and the jump host of a
        bastion lab (last)."""
        return [self._spec(DATA_HOST, 0), *self.gpu_hosts()] + ([self.jump_host()] if self.bastion else [])

    def gpu_hosts(self) -> list[HostSpec]:
        return [self._spec(f"gpu{i}", i) for i in self.gpu_range()]

    def gpu_range(self) -> range:
        return range(1, self.hosts + 1)

    def _spec(self, name: str, index: int) -> HostSpec:
        address = str(self.hosts_net.network_address + HOST_OFFSET + index)
        return HostSpec(
            name=name,
            index=index,
            address=address,
            netns=f"{self.netns_prefix}{name}",
            veth=self._veth(str(index)),
            gpu=index > 0,
            flavor=flavor_for(self.flavors, index) if index > 0 else None,
            bridge=self.hosts_bridge,
        )

    def _veth(self, suffix: str) -> str:
        # Interface names are limited to 15 characters.
        return f"{self.bridge[:9]}-{suffix}"[:15]

    def jump_host(self) -> HostSpec:
        """The bastion: its sshd on the outer network; a second leg on the inner one."""
        return HostSpec(
            name=JUMP_HOST,
            index=-1,
            address=str(self.net.network_address + JUMP_OFFSET),
            netns=f"{self.netns_prefix}{JUMP_HOST}",
            veth=self._veth("j"),
            gpu=False,
            bridge=self.bridge,
        )

    @property
    def jump_inner_address(self) -> str:
        return str(self.inner_net.network_address + JUMP_OFFSET)

    @property
    def jump_inner_veth(self) -> str:
        return self._veth("ji")

    def docker_bip(self, host: HostSpec) -> str:
        return f"10.201.{self.docker_subnet_base + host.index}.1/24"

    # Paths -------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def inventory(self) -> Path:
        return self.root / "hosts.toml"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def identity_file(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def other_identity_file(self) -> Path:
        return self.ssh_dir / "other_ed25519"

    def identity_of(self, user: str) -> Path:
        """The private key that logs ``user`` (the lab user or the other user) in."""
        return self.other_identity_file if user == self.other_user else self.identity_file

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def authorized_keys_dir(self) -> Path:
        """One file per user, named after it: sshd's ``AuthorizedKeysFile .../%u``."""
        return self.ssh_dir / "authorized"

    @property
    def ssh_config(self) -> Path:
        """The OpenSSH client config of a bastion lab (Host aliases with ProxyJump)."""
        return self.ssh_dir / "config"

    def ssh_config_of(self, user: str) -> Path:
        """The client config logging ``user`` in (the jump hop too, which ``-o`` misses)."""
        return self.ssh_dir / "other_config" if user == self.other_user else self.ssh_config

    @property
    def home(self) -> Path:
        return self.root / "home" / self.user

    @property
    def other_home(self) -> Path:
        return self.root / "home" / self.other_user

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def host_dir(self, name: str) -> Path:
        return self.root / "hosts" / name

    def bin_dir(self, name: str) -> Path:
        return self.host_dir(name) / "bin"

    def docker_socket(self, name: str) -> Path:
        return self.host_dir(name) / "docker.sock"

    def docker_host(self, name: str) -> str:
        return f"unix://{self.docker_socket(name)}"

    def gpu_state(self, name: str) -> Path:
        return self.host_dir(name) / "gpus.json"

    def gpu_hook_log(self, name: str) -> Path:
        return self.host_dir(name) / "gpu-hook.log"
