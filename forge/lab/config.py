"""Where a lab lives and how it is wired: names, addresses and paths, all derived here."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ROOT = Path("/var/lib/forge-lab")
ROOT_ENV = "FORGE_LAB_ROOT"
BASE_IMAGE = "forge-lab/debian:bookworm"
DATA_MARKER = "FORGE_DATA_MARKER"
DATA_MARKER_CONTENT = "forge lab data host\n"
DATA_HOST = "data"
IPTABLES_TAG = "forge-lab"


def default_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


@dataclass(frozen=True)
class HostSpec:
    """One host of the lab."""

    name: str
    index: int  # 0 for the data host, 1.. for gpu1..
    address: str
    netns: str
    veth: str  # the end on the bridge, in the root namespace
    gpu: bool


@dataclass(frozen=True)
class LabConfig:
    """Everything that tells two labs on one machine apart.

    The default is THE lab (``/var/lib/forge-lab``, bridge ``forgelab0``, 10.77.0.0/24).
    A second lab (e.g. the one a test takes down) needs its own root, bridge, network,
    netns prefix, docker subnet base and user.
    """

    root: Path = field(default_factory=default_root)
    hosts: int = 4
    bridge: str = "forgelab0"
    network: str = "10.77.0.0/24"
    netns_prefix: str = "forgelab-"
    docker_subnet_base: int = 0  # gpuN's containers get 10.201.(base+N).0/24
    user: str = "forgelab"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())
        net = ipaddress.IPv4Network(self.network)
        if self.hosts < 1 or 11 + self.hosts >= net.num_addresses - 1:
            raise ValueError(f"--hosts must be between 1 and {net.num_addresses - 13}")
        if self.docker_subnet_base + self.hosts > 254:
            raise ValueError("docker subnets would leave 10.201.0.0/16")

    @property
    def net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.network)

    @property
    def bridge_address(self) -> str:
        return str(self.net.network_address + 1)

    @property
    def prefixlen(self) -> int:
        return self.net.prefixlen

    @property
    def iptables_tag(self) -> str:
        return IPTABLES_TAG if self.bridge == "forgelab0" else f"{IPTABLES_TAG}:{self.bridge}"

    def host(self, name: str) -> HostSpec:
        for h in self.all_hosts():
            if h.name == name:
                return h
        raise KeyError(name)

    def all_hosts(self) -> list[HostSpec]:
        return [self._spec(DATA_HOST, 0)] + [self._spec(f"gpu{i}", i) for i in self.gpu_range()]

    def gpu_hosts(self) -> list[HostSpec]:
        return [self._spec(f"gpu{i}", i) for i in self.gpu_range()]

    def gpu_range(self) -> range:
        return range(1, self.hosts + 1)

    def _spec(self, name: str, index: int) -> HostSpec:
        address = str(self.net.network_address + 10 + index)
        # veth names are limited to 15 characters.
        veth = f"{self.bridge[:9]}-{index}"[:15]
        return HostSpec(
            name=name,
            index=index,
            address=address,
            netns=f"{self.netns_prefix}{name}",
            veth=veth,
            gpu=index > 0,
        )

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
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def authorized_keys(self) -> Path:
        return self.ssh_dir / "authorized_keys"

    @property
    def home(self) -> Path:
        return self.root / "home" / self.user

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
