"""The lab's network: one bridge in the root namespace, one netns + veth pair per host,
and the iptables rules (tagged with a comment) that let bridged hosts talk to each other."""

from __future__ import annotations

import shlex
from pathlib import Path

from forge.lab.config import HostSpec, LabConfig
from forge.lab.proc import run

NETNS_DIR = Path("/var/run/netns")


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def netns_exists(name: str) -> bool:
    return netns_path(name).exists()


def link_exists(name: str, netns: str | None = None) -> bool:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", "dev", name]
    return run(argv, check=False).returncode == 0


def nsenter(netns: str) -> list[str]:
    """The prefix that runs a command in a host's network namespace, and only that one:
    unlike ``ip netns exec`` it keeps /sys (and so the cgroup mounts dockerd needs)."""
    return ["nsenter", f"--net={netns_path(netns)}", "--"]


def ensure_bridge(cfg: LabConfig) -> None:
    if not link_exists(cfg.bridge):
        run(["ip", "link", "add", "name", cfg.bridge, "type", "bridge"])
    addr = f"{cfg.bridge_address}/{cfg.prefixlen}"
    shown = run(["ip", "-o", "-4", "addr", "show", "dev", cfg.bridge]).stdout
    if f" {addr} " not in shown:
        run(["ip", "addr", "add", addr, "dev", cfg.bridge])
    run(["ip", "link", "set", cfg.bridge, "up"])


def ensure_host_network(cfg: LabConfig, host: HostSpec) -> None:
    """Create the host's namespace, its veth pair on the bridge and its address."""
    if not netns_exists(host.netns):
        run(["ip", "netns", "add", host.netns])
    inner = "eth0"
    if not link_exists(inner, host.netns):
        if link_exists(host.veth):
            run(["ip", "link", "del", host.veth])
        peer = f"{host.veth}p"[:15]
        run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", peer])
        run(["ip", "link", "set", peer, "netns", host.netns])
        run(["ip", "-n", host.netns, "link", "set", peer, "name", inner])
    run(["ip", "link", "set", host.veth, "master", cfg.bridge])
    run(["ip", "link", "set", host.veth, "up"])
    addr = f"{host.address}/{cfg.prefixlen}"
    shown = run(["ip", "-n", host.netns, "-o", "-4", "addr", "show", "dev", inner]).stdout
    if f" {addr} " not in shown:
        run(["ip", "-n", host.netns, "addr", "add", addr, "dev", inner])
    run(["ip", "-n", host.netns, "link", "set", inner, "up"])
    run(["ip", "-n", host.netns, "link", "set", "lo", "up"])


def remove_host_network(host: HostSpec) -> None:
    if netns_exists(host.netns):
        run(["ip", "netns", "del", host.netns])
    if link_exists(host.veth):
        run(["ip", "link", "del", host.veth], check=False)


def remove_bridge(cfg: LabConfig) -> None:
    if link_exists(cfg.bridge):
        run(["ip", "link", "del", cfg.bridge])


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
    return [
        ["FORWARD", "-i", cfg.bridge, "-o", cfg.bridge, *tag, "-j", "ACCEPT"],
    ]


def ensure_firewall(cfg: LabConfig) -> None:
    """Let hosts on the bridge reach each other even when a dockerd in the root namespace
    has set FORWARD's policy to DROP (bridged frames go through iptables)."""
    for rule in _rules(cfg):
        if run(["iptables", "-C", *rule], check=False).returncode != 0:
            run(["iptables", "-I", *rule])


def tagged_rules(cfg: LabConfig) -> list[list[str]]:
    """This lab's rules as ``iptables -S`` prints them (chain first), found by their tag."""
    found = []
    for line in run(["iptables", "-S"]).stdout.splitlines():
        argv = shlex.split(line)
        if argv[:1] != ["-A"]:
            continue
        if "--comment" in argv and argv[argv.index("--comment") + 1] == cfg.iptables_tag:
            found.append(argv[1:])
    return found


def remove_firewall(cfg: LabConfig) -> None:
    for rule in tagged_rules(cfg):
        run(["iptables", "-D", *rule])
