"""Benchmark: probing GPUs on 16 lab hosts with forge vs. a sequential ssh loop.

Baseline (the issue's): ``for h in ...; do ssh $h nvidia-smi --query-gpu=...; done``, run
cold (a new SSH connection per host) and warm (OpenSSH ControlMaster connections already
open). forge cold: a new ``forge gpus --json`` process (interpreter start, 16 connections in
parallel, one round trip each). forge warm: the probe again on connections already open,
what ``forge gpus --watch`` does after its first frame.

Goals: forge at least 8x faster than the loop, and 16 hosts in under 1.5x the time of one.

Also prints where the CPU went: the whole machine's against forge's own during one parallel
probe, and per probe of one host (50 in a row on an open connection), what the host spends.

Topology (issue 13): with ``--latency MS`` every SSH link from this machine into the bench lab
is delayed by MS each way (forge/lab/latency.py), so a round trip costs what it costs to a
fleet far away, and the figures say what is the network's and what is the machine's. The
lab's floor for probing N hosts is max(one host's time, the hosts' CPU for N probes / cores):
forge cannot beat waiting for the slowest host, nor the CPU the hosts themselves spend
(all lab hosts share this machine's cores). forge's own CPU per host probed, cold and warm,
is reported apart, and so is its start-up (``forge --version`` against a bare interpreter, a
``forge gpus`` process for one host against forge's in-process probe of it). Two more floors:
a plain paramiko client doing the same cold probe (:func:`paramiko_alone`), and a process that
imports paramiko and click and nothing else (:data:`IMPORTS`). The rows of a table are timed in
turn, round after round (:func:`interleaved`): this VM's speed drifts.

Runs against a separate lab of 16 hosts (root /var/lib/forge-lab-bench, bridge forgebench0,
10.78.0.0/24), brought up here and taken down at the end unless --keep. Needs root.

    .venv/bin/python bench/bench_gpus.py [--hosts 16] [--repeat 5] [--latency MS] [--keep]
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from forge import fleet, inventory
from forge.gpu.nvsmi import GPU_FIELDS
from forge.gpu.probe import probe_command
from forge.gpu.survey import survey
from forge.lab import Lab, LabConfig, latency


def busy_cpu_s() -> float:
    """CPU seconds this machine has spent busy (all processes, all cores) since boot."""
    fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def bench_lab(hosts: int) -> LabConfig:
    """The benchmarks' own lab, beside the tests' one (its own root, bridge, network, user)."""
    return LabConfig(
        root=Path("/var/lib/forge-lab-bench"),
        hosts=hosts,
        bridge="forgebench0",
        network="10.78.0.0/24",
        netns_prefix="forgebench-",
        docker_subnet_base=100,
        user="forgebench",
    )


def cpu_split(fn: Callable[[], object]) -> tuple[float, float, float]:
    """(wall s, CPU s of the whole machine, CPU s of this process) for one call."""
    machine, own, wall = busy_cpu_s(), time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - wall, busy_cpu_s() - machine, time.process_time() - own


CPUACCT = Path("/sys/fs/cgroup/cpuacct")


def host_cgroup(lab: Lab, name: str) -> Path | None:
    """Put one lab host's processes (its sshd with every session, its dockerd and containerd)
    in a cgroup v1 cpuacct group of their own, whose ``cpuacct.usage`` counts the CPU time of
    everything they run from then on, exactly (scheduler run time, not tick samples); the
    machine-wide counters also count the other hosts' idle daemons and anything else running.
    None where there is no cpuacct hierarchy (cgroup v2 only)."""
    if not (CPUACCT / "cpuacct.usage").exists():
        return None
    key = f"{lab.root}/hosts/{name}/"
    parent: dict[int, int] = {}
    roots = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parent[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        if key in cmdline and any(d in cmdline for d in ("sshd", "dockerd", "containerd")):
            roots.append(int(entry))
    members: set[int] = set()
    todo = roots
    while todo:
        pid = todo.pop()
        if pid not in members:
            members.add(pid)
            todo.extend(p for p, pp in parent.items() if pp == pid)
    group = CPUACCT / f"forge-bench-{name}"
    group.mkdir(exist_ok=True)
    for pid in members:
        try:
            (group / "cgroup.procs").write_text(f"{pid}\n")
        except OSError:
            pass  # gone meanwhile
    return group


def host_cpu_per_call(group: Path, fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(CPU s of the host's processes, CPU s of this process) per call, over ``n`` calls."""
    usage, own = int((group / "cpuacct.usage").read_text()), time.process_time()
    for _ in range(n):
        fn()
    return (int((group / "cpuacct.usage").read_text()) - usage) / 1e9 / n, (time.process_time() - own) / n


def paramiko_alone(targets: list[inventory.Host]) -> None:
    """A cold probe with paramiko and nothing of forge's, done as cheaply as paramiko allows:
    the key and the known_hosts file parsed once, and per host, in parallel, a TCP_NODELAY
    socket, a plain ``SSHClient`` given the key (no agent, no key search) and AES-GCM, the same probe
    script, both outputs read, the connection closed. What any tool built on paramiko spends;
    forge's CPU per host is measured against it."""
    import paramiko  # after forge's imports: invoke deferred as in forge

    script = str(probe_command())
    first = targets[0]
    key = paramiko.PKey.from_path(first.identity_file or "")
    known = paramiko.HostKeys(first.known_hosts or "")
    # AES-GCM, as forge negotiates it (paramiko's own first choice, aes128-ctr, checks each MAC in Python)
    not_gcm = {"ciphers": [c for c in paramiko.Transport._preferred_ciphers if "-gcm@" not in c]}

    def one(h: inventory.Host) -> None:
        sock = socket.create_connection((h.address, h.port or 22))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = paramiko.SSHClient()
        for kind, host_key in (known.lookup(h.address) or {}).items():
            client.get_host_keys().add(h.address, kind, host_key)
        client.connect(
            h.address, username=h.user, pkey=key, sock=sock, allow_agent=False, look_for_keys=False,
            disabled_algorithms=not_gcm,
        )  # fmt: skip
        _, out, err = client.exec_command(script)
        out.read(), err.read()
        assert out.channel.recv_exit_status() == 0
        client.close()

    with ThreadPoolExecutor(len(targets)) as ex:
        list(ex.map(one, targets))


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median wall time of each, in seconds, run in turn round after round (A B C A B C ...):
    this VM's speed drifts by a quarter within minutes, and so it moves every row alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in samples.items()}


#: What any CLI on forge's stack imports before it can probe a host: paramiko (without the
#: invoke it imports for ``Match exec``, which forge defers) and click. A process that does
#: only this, plus forge's in-process probe, is the floor for a ``forge gpus`` process.
IMPORTS = "import sys; sys.modules['invoke'] = None; import paramiko, click"  # no forge module
IMPORTS_ALONE = "python: paramiko and click imported, nothing else"


def _python(*args: str, bytecode: bool) -> None:
    """``python ARGS`` as an installed forge runs: its modules' bytecode cached (pip writes it at
    install), or compiled from source every run (``PYTHONDONTWRITEBYTECODE`` and no cache)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if not bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    r = subprocess.run([sys.executable, *args], capture_output=True, env=env, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{args}: {r.stderr.decode()}")


def _bytecode(present: bool) -> None:
    forge_dir = Path(__file__).resolve().parent.parent / "forge"
    for cache in forge_dir.rglob("__pycache__"):
        subprocess.run(["rm", "-rf", str(cache)], check=True)
    if present:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(forge_dir)], check=True)


def startup(lab: Lab, repeat: int) -> int:
    """A ``forge gpus`` process for one host against forge's in-process probe of it, and
    ``forge --version`` against a bare interpreter: with forge's bytecode cached and without."""
    inv = inventory.load_file(lab.inventory_path)
    one = list(inv.hosts)[:1]

    def cold_inprocess() -> None:
        with fleet.Pool() as pool:
            assert all(r.answered for r in survey(inv, one, pool=pool))

    gpus = ("-m", "forge", "-i", str(lab.inventory_path), "gpus", "--json", one[0].name)
    rows: dict[str, float] = {}
    for present in (True, False):  # each row in turn, round after round, within a cache state
        _bytecode(present)
        label = "bytecode cached" if present else "no bytecode cache"
        fns: dict[str, Callable[[], object]] = {
            "forge probe in-process, cold, 1 host": cold_inprocess,
            f"forge gpus process, cold, 1 host ({label})": functools.partial(_python, *gpus, bytecode=present),
            f"forge --version ({label})": functools.partial(_python, "-m", "forge", "--version", bytecode=present),
        }
        if present:
            fns["python3 -c pass"] = functools.partial(_python, "-c", "pass", bytecode=True)
            fns[IMPORTS_ALONE] = functools.partial(_python, "-c", IMPORTS, bytecode=True)
        rows.update({k: v for k, v in interleaved(fns, repeat).items() if k not in rows})
    _bytecode(False)
    print("| start-up | median (s) |")
    print("| --- | --- |")
    for name, s in rows.items():
        print(f"| {name} | {s:.3f} |")
    inproc = rows["forge probe in-process, cold, 1 host"]
    floor = (rows[IMPORTS_ALONE] + inproc) / inproc
    print(f"| the stack's floor: ({IMPORTS_ALONE} + in-process probe) / in-process probe | {floor:.2f}x |")
    for label in ("bytecode cached", "no bytecode cache"):
        above = rows[f"forge --version ({label})"] - rows["python3 -c pass"]
        ratio = rows[f"forge gpus process, cold, 1 host ({label})"] / inproc
        print(f"| {label}: forge --version above a bare interpreter | {above * 1000:.0f} ms (goal < 150 ms) |")
        print(f"| {label}: forge gpus process / in-process probe, 1 host | {ratio:.2f}x (goal <= 2x) |")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="leave the bench lab up")
    ap.add_argument("--latency", type=float, default=0.0, metavar="MS", help="delay each way on every SSH link")
    ap.add_argument("--startup", action="store_true", help="only the start-up figures, with and without bytecode")
    args = ap.parse_args()

    lab = Lab(bench_lab(args.hosts))
    t0 = time.perf_counter()
    lab.up()
    lab.set_latency(args.latency)
    print(f"# bench lab of {args.hosts} hosts up in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if args.latency:
        rtt = latency.measure(lab.config.host("gpu1").address, 22)
        print(f"# SSH links delayed {args.latency:g} ms each way; TCP connect + banner: {rtt * 1000:.1f} ms")
    try:
        return startup(lab, args.repeat) if args.startup else run(lab, args.repeat)
    finally:
        if not args.keep:
            lab.down()
            for group in CPUACCT.glob("forge-bench-*"):
                group.rmdir()  # empty once the lab is down


def run(lab: Lab, repeat: int) -> int:
    inv = inventory.load_file(lab.inventory_path)
    hosts = list(inv.hosts)
    query = ["nvidia-smi", f"--query-gpu={','.join(GPU_FIELDS)}", "--format=csv,noheader,nounits"]
    control_dir = tempfile.mkdtemp(prefix="forge-bench-")
    mux = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir}/%h", "-o", "ControlPersist=120"]

    def loop(extra: list[str], targets: list[inventory.Host]) -> None:
        for h in targets:
            subprocess.run(lab.ssh_argv(h.name, *query, options=tuple(extra)), check=True, capture_output=True)

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

    results = interleaved(
        {
            "ssh loop, cold": lambda: loop([], hosts),
            "ssh loop, warm (ControlMaster)": lambda: loop(mux, hosts),
            "forge gpus process, cold": lambda: forge_process(hosts),
            "forge probe in-process, cold": lambda: forge_cold_inprocess(hosts),
            "forge probe in-process, warm": lambda: survey(inv, hosts, pool=warm_pool),
            "forge gpus process, cold, 1 host": lambda: forge_process(hosts[:1]),
            "forge probe in-process, cold, 1 host": lambda: forge_cold_inprocess(hosts[:1]),
            "forge probe in-process, warm, 1 host": lambda: survey(inv, hosts[:1], pool=warm_pool),
        },
        repeat,
    )

    def median_split(fn: Callable[[], object]) -> tuple[float, ...]:
        runs = [cpu_split(fn) for _ in range(repeat)]
        return tuple(statistics.median(column) for column in zip(*runs, strict=True))

    splits = {
        "forge probe in-process, cold": median_split(lambda: forge_cold_inprocess(hosts)),
        "forge probe in-process, warm": median_split(lambda: survey(inv, hosts, pool=warm_pool)),
        "paramiko alone, cold (no forge)": median_split(lambda: paramiko_alone(hosts)),
    }
    probes = 50
    group = host_cgroup(lab, hosts[0].name)
    one_host = host_cpu_per_call(group, lambda: survey(inv, hosts[:1], pool=warm_pool), probes) if group else None
    one_cold = host_cpu_per_call(group, lambda: forge_cold_inprocess(hosts[:1]), 10) if group else None
    idle_s, own = 5.0, time.process_time()
    time.sleep(idle_s)  # the warm pool's connections open, nothing asked: what keeping them costs
    idle_ms = (time.process_time() - own) / idle_s / len(hosts) * 1000
    warm_pool.close()
    startup = interleaved(
        {
            "python3 -c pass": lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
            "forge --version": lambda: subprocess.run(
                [sys.executable, "-m", "forge", "--version"], check=True, capture_output=True
            ),
            IMPORTS_ALONE: lambda: subprocess.run([sys.executable, "-c", IMPORTS], check=True),
        },
        repeat * 2,
    )
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
    title = f"where the CPU went ({n} hosts, median of {repeat} runs, {cores} cores)"
    print(f"| {title} | wall (s) | machine CPU (s) | forge's CPU (s) |")
    print("| --- | --- | --- | --- |")
    for name, (wall, machine, own) in splits.items():
        print(f"| {name} | {wall:.3f} | {machine:.3f} of {wall * cores:.3f} | {own:.3f} |")
    print(f"\nforge with {n} connections open and idle (`--watch` between rounds, `forge serve`): "
          f"{idle_ms:.3f} ms of CPU per host and second")  # fmt: skip
    if one_host is not None and one_cold is not None:
        host_s, own_s = one_host
        print()
        print(f"| one host, CPU per probe ({probes} warm; 10 cold, a new connection each) | warm (ms) | cold (ms) |")
        print("| --- | --- | --- |")
        host_ms = f"{host_s * 1000:.1f} | {one_cold[0] * 1000:.1f}"
        print(f"| the host's sshd, sessions, dockerd, containerd (cpuacct) | {host_ms} |")
        print(f"| forge | {own_s * 1000:.1f} | {one_cold[1] * 1000:.1f} |")
        print()
        print_floor(results, splits, n, cores, warm=host_s, cold=one_cold[0])
    print()
    print("| start-up | median (s) |")
    print("| --- | --- |")
    for name, s in startup.items():
        print(f"| {name} | {s:.3f} |")
    above = startup["forge --version"] - startup["python3 -c pass"]
    per_process = results["forge gpus process, cold, 1 host"] / results["forge probe in-process, cold, 1 host"]
    print(f"| forge --version above a bare interpreter | {above * 1000:.0f} ms (goal < 150 ms) |")
    print(f"| forge gpus process / in-process probe, 1 host, cold | {per_process:.2f}x (goal <= 2x) |")
    inproc = results["forge probe in-process, cold, 1 host"]
    print(f"| the stack's floor: ({IMPORTS_ALONE} + in-process probe) / in-process probe | "
          f"{(startup[IMPORTS_ALONE] + inproc) / inproc:.2f}x |")  # fmt: skip
    return 0


def print_floor(
    results: dict[str, float], splits: dict[str, tuple[float, ...]], n: int, cores: int, *, warm: float, cold: float
) -> None:
    """The lab's floor for probing ``n`` hosts, cold and warm: max(one host's time, the hosts'
    CPU for n probes / cores); forge against it, and forge's own CPU per host."""
    print(f"| {n} hosts against the lab's floor | forge (s) | one host (s) | hosts' CPU / {cores} cores (s) "
          "| floor (s) | forge / floor (goal <= 1.2x) | forge's CPU per host (ms) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind, host_cpu in (("cold", cold), ("warm", warm)):
        forge_s = results[f"forge probe in-process, {kind}"]
        one = results[f"forge probe in-process, {kind}, 1 host"]
        cpu_bound = host_cpu * n / cores
        floor = max(one, cpu_bound)
        own_ms = splits[f"forge probe in-process, {kind}"][2] / n * 1000
        goal = "5" if kind == "cold" else "1"
        print(f"| {kind} | {forge_s:.3f} | {one:.3f} | {cpu_bound:.3f} | {floor:.3f} | {forge_s / floor:.2f}x "
              f"| {own_ms:.2f} (goal <= {goal}) |")  # fmt: skip
    alone = splits.get("paramiko alone, cold (no forge)")
    if alone is not None:
        print(f"| cold, paramiko alone (no forge: the same script, a plain SSHClient per host) | {alone[0]:.3f} "
              f"| | | | | {alone[2] / n * 1000:.2f} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
