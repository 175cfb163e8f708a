"""The lab's network: one bridge in the root namespace, one netns + veth pair per host,
and the iptables rules (tagged with a comment) that let bridged hosts talk to each other.
Behind a bastion, the data and GPU hosts are on a second, inner bridge instead, which only
the jump host (one leg on each bridge, no forwarding between them) reaches."""

from __future__ import annotations

import shlex
from pathlib import Path

from forge.lab.config import JUMP_HOST, HostSpec, LabConfig
from forge.lab.proc import run

NETNS_DIR = Path("/var/run/netns")


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def netns_exists(name: str) -> bool:
    return netns_path(name).exists()


def link_exists(name: str, netns: str | None = None) -> bool:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", "dev", name]
    return run(argv, check=False).ok


def nsenter(netns: str) -> list[str]:
    """The prefix that runs a command in a host's network namespace, and only that one:
    unlike ``ip netns exec`` it keeps /sys (and so the cgroup mounts dockerd needs)."""
    return ["nsenter", f"--net={netns_path(netns)}", "--"]


def ensure_bridges(cfg: LabConfig) -> None:
    """The lab's bridge, with the root namespace's address on it; behind a bastion also the
    inner bridge, which has none (the root namespace cannot reach the hosts there)."""
    _ensure_bridge(cfg.bridge)
    addr = f"{cfg.bridge_address}/{cfg.prefixlen}"
    shown = run(["ip", "-o", "-4", "addr", "show", "dev", cfg.bridge]).stdout
    if f" {addr} " not in shown:
        run(["ip", "addr", "add", addr, "dev", cfg.bridge])
    if cfg.bastion:
        _ensure_bridge(cfg.inner_bridge)


def _ensure_bridge(name: str) -> None:
    if not link_exists(name):
        run(["ip", "link", "add", "name", name, "type", "bridge"])
    run(["ip", "link", "set", name, "up"])


def ensure_host_network(cfg: LabConfig, host: HostSpec) -> None:
    """Create the host's namespace, its veth pair on its bridge and its address; the jump
    host gets a second leg on the inner bridge."""
    if not netns_exists(host.netns):
        run(["ip", "netns", "add", host.netns])
    prefixlen = cfg.net.prefixlen if host.role == JUMP_HOST else cfg.hosts_net.prefixlen
    _ensure_leg(host.netns, "eth0", host.veth, host.bridge, f"{host.address}/{prefixlen}")
    if host.role == JUMP_HOST:
        inner = f"{cfg.jump_inner_address}/{cfg.inner_net.prefixlen}"
        _ensure_leg(host.netns, "eth1", cfg.jump_inner_veth, cfg.inner_bridge, inner)
    run(["ip", "-n", host.netns, "link", "set", "lo", "up"])


def _ensure_leg(netns: str, inner: str, veth: str, bridge: str, addr: str) -> None:
    """Interface ``inner`` in ``netns`` with address ``addr``, its peer ``veth`` on ``bridge``."""
    if not link_exists(inner, netns):
        if link_exists(veth):
            run(["ip", "link", "del", veth])
        peer = f"{veth}p"[:15]
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer])
        run(["ip", "link", "set", peer, "netns", netns])
        run(["ip", "-n", netns, "link", "set", peer, "name", inner])
    run(["ip", "link", "set", veth, "master", bridge])
    run(["ip", "link", "set", veth, "up"])
    shown = run(["ip", "-n", netns, "-o", "-4", "addr", "show", "dev", inner]).stdout
    if f" {addr} " not in shown:
        run(["ip", "-n", netns, "addr", "add", addr, "dev", inner])
    run(["ip", "-n", netns, "link", "set", inner, "up"])


def remove_host_network(cfg: LabConfig, host: HostSpec) -> None:
    if netns_exists(host.netns):
        run(["ip", "netns", "del", host.netns])
    for veth in [host.veth] + ([cfg.jump_inner_veth] if host.role == JUMP_HOST else []):
        if link_exists(veth):
            run(["ip", "link", "del", veth], check=False)


def remove_bridges(cfg: LabConfig) -> None:
    """Both bridges, whether or not the lab was recorded with a bastion."""
    for name in (cfg.bridge, cfg.inner_bridge):
        if link_exists(name):
            run(["ip", "link", "del", name])


def list_netns(prefix: str) -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def netns_pids(name: str) -> set[int]:
    """Every process whose network namespace is this one."""
    if not netns_exists(name):
        return set()
    out = run(["ip", "netns", "pids", name], check=False).stdout
    return {int(p) for p in out.split() if p.isdigit()}


# iptables ---------------------------------------------------------------------------------


def _rules(cfg: LabConfig) -> list[list[str]]:
    tag = ["-m", "comment", "--comment", cfg.iptables_tag]
    bridges = [cfg.bridge] + ([cfg.inner_bridge] if cfg.bastion else [])
    return [["FORWARD", "-i", b, "-o", b, *tag, "-j", "ACCEPT"] for b in bridges]


def ensure_firewall(cfg: LabConfig) -> None:
    """Let hosts on the bridge reach each other even when a dockerd in the root namespace
    has set FORWARD's policy to DROP (bridged frames go through iptables)."""
    for rule in _rules(cfg):
        if not run(["iptables", "-C", *rule], check=False).ok:
            run(["iptables", "-I", *rule])


def tagged_rules(cfg: LabConfig, table: str = "filter") -> list[list[str]]:
    """This lab's rules of ``table`` as ``iptables -S`` prints them (chain first), found by
    their tag."""
    found = []
    for line in run(["iptables", "-t", table, "-S"]).stdout.splitlines():
        argv = shlex.split(line)
        if argv[:1] != ["-A"]:
            continue
        if "--comment" in argv and argv[argv.index("--comment") + 1] == cfg.iptables_tag:
            found.append(argv[1:])
    return found


def remove_firewall(cfg: LabConfig) -> None:
    for rule in tagged_rules(cfg):
        run(["iptables", "-D", *rule])
    remove_delay(cfg)


def add_delay(cfg: LabConfig, port: int) -> None:
    """This machine's SSH connections into the lab's networks go through the delay proxy on
    ``port`` (forge/lab/latency.py); tagged like the lab's other rules."""
    from forge.lab.latency import redirect_rule

    tag = ["-m", "comment", "--comment", cfg.iptables_tag]
    for network in [cfg.network] + ([cfg.inner_network] if cfg.bastion else []):
        rule = redirect_rule(network, port)
        run(["iptables", *rule[:2], "-I", *rule[2:], *tag])


def remove_delay(cfg: LabConfig) -> None:
    """The lab's redirect rules (nat table), found by their tag."""
    for rule in tagged_rules(cfg, "nat"):
        run(["iptables", "-t", "nat", "-D", *rule])
