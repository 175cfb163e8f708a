"""Benchmark: probing GPUs on 16 lab hosts with forge vs. a sequential ssh loop.

Baseline (the issue's): ``for h in ...; do ssh $h nvidia-smi --query-gpu=...; done``, run
cold (a new SSH connection per host) and warm (OpenSSH ControlMaster connections already
open). forge cold: a new ``forge gpus --json`` process (interpreter start, 16 connections in
parallel, one round trip each). forge warm: the probe again on connections already open,
what ``forge gpus --watch`` does after its first frame.

Goals: forge at least 8x faster than the loop, and 16 hosts in under 1.5x the time of one.

Also prints where the CPU went: the whole machine's against forge's own during one parallel
probe, and per probe of one host (50 in a row on an open connection), what the host spends.

Runs against a separate lab of 16 hosts (root /var/lib/forge-lab-bench, bridge forgebench0,
10.78.0.0/24), brought up here and taken down at the end unless --keep. Needs root.

    .venv/bin/python bench/bench_gpus.py [--hosts 16] [--repeat 5] [--keep]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from forge import fleet, inventory
from forge.gpu.nvsmi import GPU_FIELDS
from forge.gpu.survey import survey
from forge.lab import Lab, LabConfig


def busy_cpu_s() -> float:
    """CPU seconds this machine has spent busy (all processes, all cores) since boot."""
    fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def cpu_split(fn: Callable[[], object]) -> tuple[float, float, float]:
    """(wall s, CPU s of the whole machine, CPU s of this process) for one call."""
    machine, own, wall = busy_cpu_s(), time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - wall, busy_cpu_s() - machine, time.process_time() - own


def per_call_cpu(fn: Callable[[], object], n: int) -> tuple[float, float, float]:
    """(machine CPU s, this process's CPU s, the idle machine's CPU s over the same time) per
    call, over ``n`` calls in a row. The idle figure is measured just before, while sleeping:
    dockerd and containerd of every lab host tick along even when nobody asks them anything."""
    idle_cpu, idle_wall = busy_cpu_s(), time.perf_counter()
    time.sleep(2)
    idle_rate = (busy_cpu_s() - idle_cpu) / (time.perf_counter() - idle_wall)
    wall, machine, own = cpu_split(lambda: [fn() for _ in range(n)])
    return machine / n, own / n, idle_rate * wall / n


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` runs, in seconds."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="leave the bench lab up")
    args = ap.parse_args()

    cfg = LabConfig(
        root=Path("/var/lib/forge-lab-bench"),
        hosts=args.hosts,
        bridge="forgebench0",
        network="10.78.0.0/24",
        netns_prefix="forgebench-",
        docker_subnet_base=100,
        user="forgebench",
    )
    lab = Lab(cfg)
    t0 = time.perf_counter()
    lab.up()
    print(f"# bench lab of {args.hosts} hosts up in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    try:
        return run(lab, args.repeat)
    finally:
        if not args.keep:
            lab.down()


def run(lab: Lab, repeat: int) -> int:
    inv = inventory.load_file(lab.inventory_path)
    hosts = list(inv.hosts)
    query = ["nvidia-smi", f"--query-gpu={','.join(GPU_FIELDS)}", "--format=csv,noheader,nounits"]
    base_ssh = [
        "ssh",
        "-F",
        "none",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={lab.known_hosts}",
        "-i",
        str(lab.identity_file),
    ]
    control_dir = tempfile.mkdtemp(prefix="forge-bench-")
    mux = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir}/%h", "-o", "ControlPersist=120"]

    def loop(extra: list[str], targets: list[inventory.Host]) -> None:
        for h in targets:
            subprocess.run([*base_ssh, *extra, f"{h.user}@{h.address}", *query], check=True, capture_output=True)

    def forge_process(targets: list[inventory.Host]) -> None:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "forge",
                "-i",
                str(lab.inventory_path),
                "gpus",
                "--json",
                *[h.name for h in targets],
            ],
            capture_output=True,
        )
        if r.returncode != 0:
            raise SystemExit(f"forge gpus failed: {r.stderr.decode()}")

    def forge_cold_inprocess(targets: list[inventory.Host]) -> None:
        with fleet.Pool() as pool:
            reports = survey(inv, targets, pool=pool)
        assert all(r.answered for r in reports)

    loop(mux, hosts)  # open the ControlMaster connections for the warm loop
    warm_pool = fleet.Pool()
    survey(inv, hosts, pool=warm_pool)  # open forge's connections for the warm probe

    results = {
        "ssh loop, cold": timed(lambda: loop([], hosts), repeat),
        "ssh loop, warm (ControlMaster)": timed(lambda: loop(mux, hosts), repeat),
        "forge gpus process, cold": timed(lambda: forge_process(hosts), repeat),
        "forge probe in-process, cold": timed(lambda: forge_cold_inprocess(hosts), repeat),
        "forge probe in-process, warm": timed(lambda: survey(inv, hosts, pool=warm_pool), repeat),
        "forge gpus process, cold, 1 host": timed(lambda: forge_process(hosts[:1]), repeat),
        "forge probe in-process, cold, 1 host": timed(lambda: forge_cold_inprocess(hosts[:1]), repeat),
        "forge probe in-process, warm, 1 host": timed(lambda: survey(inv, hosts[:1], pool=warm_pool), repeat),
    }
    splits = {
        "forge probe in-process, cold": cpu_split(lambda: forge_cold_inprocess(hosts)),
        "forge probe in-process, warm": cpu_split(lambda: survey(inv, hosts, pool=warm_pool)),
    }
    probes = 50
    one_host = per_call_cpu(lambda: survey(inv, hosts[:1], pool=warm_pool), probes)
    warm_pool.close()
    subprocess.run(["rm", "-rf", control_dir], check=False)

    n = len(hosts)
    print(f"| what ({n} hosts unless noted) | median of {repeat} (s) |")
    print("| --- | --- |")
    for name, s in results.items():
        print(f"| {name} | {s:.3f} |")
    print()
    cold_ratio = results["ssh loop, cold"] / results["forge gpus process, cold"]
    warm_ratio = results["ssh loop, warm (ControlMaster)"] / results["forge probe in-process, warm"]
    one = results["forge gpus process, cold"] / results["forge gpus process, cold, 1 host"]
    one_inproc = results["forge probe in-process, cold"] / results["forge probe in-process, cold, 1 host"]
    print("| ratio | value | goal |")
    print("| --- | --- | --- |")
    print(f"| ssh loop cold / forge gpus cold | {cold_ratio:.1f}x | >= 8x |")
    print(f"| ssh loop warm / forge probe warm | {warm_ratio:.1f}x | >= 8x |")
    print(f"| forge gpus cold: {n} hosts / 1 host | {one:.2f}x | < 1.5x |")
    print(f"| forge probe in-process cold: {n} hosts / 1 host | {one_inproc:.2f}x | < 1.5x |")
    print()
    cores = os.cpu_count() or 1
    print(f"| where the CPU went ({n} hosts, one run, {cores} cores) | wall (s) | machine CPU (s) | forge's CPU (s) |")
    print("| --- | --- | --- | --- |")
    for name, (wall, machine, own) in splits.items():
        print(f"| {name} | {wall:.3f} | {machine:.3f} of {wall * cores:.3f} | {own:.3f} |")
    print()
    machine, own, idle = one_host
    print(f"| one host, {probes} warm probes in a row: CPU per probe (ms) | value |")
    print("| --- | --- |")
    print(f"| machine | {machine * 1000:.1f} |")
    print(f"| forge | {own * 1000:.1f} |")
    print(f"| idle machine over the same time | {idle * 1000:.1f} |")
    print(f"| the host (machine - forge - idle) | {(machine - own - idle) * 1000:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
