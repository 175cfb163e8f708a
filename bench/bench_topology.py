"""Benchmark of where `forge sync`'s bytes go, on the forge lab with every link shaped.

    forge lab up --hosts 9
    python bench/bench_topology.py [--rate 20mbit] [--size-mb 100]     (as root; ~10 minutes)

Every link is shaped with tc tbf so that the network, not this machine's two cores, is the
limit: each host's link both ways (its veth's bridge end: traffic into the host; its eth0 in
its namespace: traffic out of it) and the client's (the lab bridge's own egress: what leaves
this machine). Image: SIZE_MB of real files (/usr/lib/x86_64-linux-gnu) plus RANDOM_MB of
random data (model weights do not compress either), in one layer on gpu1; "the client" reads
it from gpu1's daemon through its socket (a local inventory host, as forge run on the build
host). Targets: gpu2..gpu9. Rows, in one run:

- one target from the client (the baseline of the relay's goal);
- eight targets from the client: the flat fan-out (forge's waves) and the relay;
- eight targets `--from gpu1`: through the client, straight from gpu1 (`--via direct`), relay,
  and through the lab's registry on the data host (push, then eight pulls at once; its link
  shaped too; the registry is emptied first, so the push sends every layer);
- eight targets `--from gpu1` along a chain whose second hop (gpu3), then whose first hop
  (gpu2), has a slow link (`--slow-rate`, both ways): once with the slow hop left in the chain
  (its cut-out disabled), once as forge runs (it is cut out and the chain goes around it;
  the first hop only after the source's trial showed its own uplink is not the limit); for these, when each
  target's load finished (its image appearing in its daemon's image store, polled).

each with its time, the bytes that crossed the client's link (the bridge's counters: the
client's only way into the lab) and the lab machine's CPU use over the row (all its cores:
every host and forge share them). Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sync import LAB, docker, image_id, sock, veth  # noqa: E402

from forge import inventory  # noqa: E402
from forge.fleet import Pool  # noqa: E402
from forge.images import linkscripts  # noqa: E402
from forge.images.sync import SyncReport, sync_image  # noqa: E402
from forge.inventory import Host  # noqa: E402

REF = "forge-bench/topology:v2"
BRIDGE = "forgelab0"
TARGETS = [f"gpu{i}" for i in range(2, 10)]
SLOW = "gpu3"  # the second hop of a chain
SLOW_FIRST = "gpu2"  # its first hop
HERE = Host(name="here", address="localhost", local=True, docker_host=sock("gpu1"), command_timeout=3600)


def _ns(host: str) -> list[str]:
    return ["nsenter", f"--net=/var/run/netns/forgelab-{host}"]


def _tbf(prefix: list[str], dev: str, rate: str | None) -> None:
    subprocess.run([*prefix, "tc", "qdisc", "del", "dev", dev, "root"], capture_output=True, check=False)
    if rate:
        tbf = ["tbf", "rate", rate, "burst", "64kb", "latency", "200ms"]
        subprocess.run([*prefix, "tc", "qdisc", "add", "dev", dev, "root", *tbf], check=True)


def shape(rate: str | None) -> None:
    """Every host's link both ways, and the client's uplink; None: unshaped."""
    for h in ["gpu1", "data", *TARGETS]:
        _tbf([], veth(h), rate)
        _tbf(_ns(h), "eth0", rate)
    _tbf([], BRIDGE, rate)


def build_image(size_mb: int, random_mb: int) -> None:
    if image_id("gpu1", REF):
        return
    print(f"building {REF} from {size_mb} MB of /usr/lib/x86_64-linux-gnu + {random_mb} MB random", file=sys.stderr)
    files, total = [], 0
    for p in sorted(Path("/usr/lib/x86_64-linux-gnu").rglob("*")):
        if p.is_file() and not p.is_symlink():
            files.append(str(p.relative_to("/")))
            total += p.stat().st_size
            if total >= size_mb << 20:
                break
    weights = Path("/var/tmp/forge-bench-weights.bin")  # like model weights: does not compress
    weights.write_bytes(os.urandom(random_mb << 20))
    files.append(str(weights.relative_to("/")))
    tar = subprocess.Popen(["tar", "-C", "/", "-c", "-T", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    load = subprocess.Popen(["docker", "-H", sock("gpu1"), "import", "-", REF], stdin=tar.stdout)
    assert tar.stdin is not None
    tar.stdin.write("\n".join(files).encode())
    tar.stdin.close()
    load.wait()
    tar.wait()
    weights.unlink()


def wipe() -> None:
    storage = LAB / "registry" / "storage" / "docker"
    if storage.exists():  # the registry forgets the image: every row pushes it whole
        subprocess.run(["rm", "-rf", str(storage)], check=True)
    iid = image_id("gpu1", REF)
    for h in TARGETS:
        for ref in (REF, iid):
            if ref and image_id(h, ref):
                docker(h, "image", "rm", "-f", ref, check=False)


def _bridge_bytes() -> tuple[int, int]:
    stats = Path("/sys/class/net") / BRIDGE / "statistics"
    return int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text())


def _cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class Loaded(threading.Thread):
    """When each target's load finished: its image's config appearing in its daemon's image
    store (a file test every 50 ms: no CPU to speak of)."""

    def __init__(self, image: str) -> None:
        super().__init__(daemon=True)
        hexid = image.split(":", 1)[1]
        self.files = {h: LAB / "hosts" / h / "docker/image/overlay2/imagedb/content/sha256" / hexid for h in TARGETS}
        self.at: dict[str, float] = {}
        self.started = time.monotonic()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            for h, f in self.files.items():
                if h not in self.at and f.exists():
                    self.at[h] = time.monotonic() - self.started


def row(name: str, fn: Callable[[], SyncReport], *, loads: bool = False) -> dict[str, object]:
    wipe()
    watch = Loaded(image_id("gpu1", REF) or "sha256:none") if loads else None
    if watch:
        watch.start()
    tx0, rx0 = _bridge_bytes()
    busy0, total0 = _cpu()
    me0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.monotonic()
    report = fn()
    dt = time.monotonic() - t
    if watch:
        watch.stop.set()
        watch.join()
    me1 = resource.getrusage(resource.RUSAGE_SELF)
    busy1, total1 = _cpu()
    tx1, rx1 = _bridge_bytes()
    bad = [f"{r.host.name}: {r.reason}" for r in report.results if not r.ok]
    if bad:
        raise SystemExit(f"{name}: {bad}")
    vias = sorted({r.value.via for r in report.results if r.value is not None})
    wire = max(r.value.wire_bytes for r in report.results if r.value is not None)
    out = {
        "name": name,
        "s": dt,
        "out": tx1 - tx0,  # bytes this machine sent into the lab
        "in": rx1 - rx0,  # bytes it received from the lab
        "cpu": (busy1 - busy0) / max(1, total1 - total0),
        "forge_cpu": (me1.ru_utime - me0.ru_utime) + (me1.ru_stime - me0.ru_stime),
        "wire": wire,
        "via": ",".join(vias),
        "loaded": dict(watch.at) if watch else {},
        "notes": {r.host.name: r.value.note for r in report.results if r.value is not None and r.value.note},
    }
    print(f"{name}: {dt:.1f} s via {out['via']}, out {out['out'] / 1e6:.1f} MB, in {out['in'] / 1e6:.1f} MB, "
          f"cpu {out['cpu']:.0%}", file=sys.stderr)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", default="20mbit", help="every link's rate (tc tbf)")
    ap.add_argument("--size-mb", type=int, default=100, help="MB of real files in the image")
    ap.add_argument("--random-mb", type=int, default=30, help="MB of random data in it (weights: incompressible)")
    ap.add_argument("--slow-rate", default="5mbit", help="the slow hop's link (gpu3), both ways")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (tc, the lab's sockets)")
    inv = inventory.load_file(LAB / "hosts.toml")
    missing = [h for h in TARGETS if h not in inv.names]
    if missing:
        raise SystemExit(f"the lab lacks {missing}: forge lab up --hosts 9")
    build_image(args.size_mb, args.random_mb)
    gpu1 = inv.host("gpu1")
    hosts = [inv.host(h) for h in TARGETS]

    def run(source: Host, targets: list[Host], via: str) -> Callable[[], SyncReport]:
        def go() -> SyncReport:
            with Pool() as pool:
                reg = inv.registry
                return sync_image(
                    REF, source=source, targets=targets, pool=pool, via=via, timeout_s=3600, registry_settings=reg
                )

        return go

    shape(args.rate)
    try:
        rows = [
            row("1 target from the client", run(HERE, hosts[:1], "client")),
            row("8 targets from the client, flat fan-out", run(HERE, hosts, "client")),
            row("8 targets from the client, relay", run(HERE, hosts, "relay")),
            row("8 targets --from gpu1, through the client", run(gpu1, hosts, "client")),
            row("8 targets --from gpu1, direct", run(gpu1, hosts, "direct")),
            row("8 targets --from gpu1, relay", run(gpu1, hosts, "relay")),
            row("8 targets --from gpu1, registry (push + 8 pulls)", run(gpu1, hosts, "registry")),
        ]
        for hop, where in ((SLOW, "second hop"), (SLOW_FIRST, "first hop")):
            rows += slow_hop_rows(hop, where, args.slow_rate, run(gpu1, hosts, "relay"), args.rate)
    finally:
        shape(None)
        wipe()
    report(rows, args)


def slow_hop_rows(
    hop: str, where: str, slow_rate: str, go: Callable[[], SyncReport], rate: str
) -> list[dict[str, object]]:
    """The relay with ``hop``'s link slow both ways: left in the chain (its cut-out disabled),
    then as forge runs it; the link shaped back to ``rate`` after."""
    slow = f"{hop} ({where}) at {slow_rate}"
    _tbf([], veth(hop), slow_rate)
    _tbf(_ns(hop), "eth0", slow_rate)
    lag = linkscripts.LAG_BYTES
    rows = []
    try:
        linkscripts.LAG_BYTES = 1 << 62  # never cut: the chain waits for its slowest hop
        rows.append(row(f"8 targets --from gpu1, relay, {slow}, left in the chain", go, loads=True))
    finally:
        linkscripts.LAG_BYTES = lag
    rows.append(row(f"8 targets --from gpu1, relay, {slow}, cut out (forge)", go, loads=True))
    for r in rows:
        r["slow"] = hop
    _tbf([], veth(hop), rate)
    _tbf(_ns(hop), "eth0", rate)
    return rows


def report(rows: list[dict[str, object]], args: argparse.Namespace) -> None:
    one = float(rows[0]["s"])  # type: ignore[arg-type]
    copy = int(rows[0]["wire"])  # type: ignore[call-overload]
    cores = os.cpu_count() or 1
    size = int(docker("gpu1", "image", "inspect", "-f", "{{.Size}}", REF))
    print(f"\nimage {size / 1e6:.1f} MB ({args.random_mb} MB of it random), {copy / 1e6:.1f} MB compressed (zstd); "
          f"every link {args.rate}; "
          f"{cores} cores\n")  # fmt: skip
    print("| transfer | via | time | vs one target | bytes out of the client | in | machine CPU | forge CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        s, out, inn = float(r["s"]), int(r["out"]), int(r["in"])  # type: ignore[arg-type, call-overload]
        print(
            f"| {r['name']} | {r['via']} | {s:.1f} s | {s / one:.2f}x | {out / 1e6:.1f} MB ({out / copy:.2f} copies) "
            f"| {inn / 1e6:.1f} MB | {float(r['cpu']):.0%} | {float(r['forge_cpu']):.1f} s |"  # type: ignore[arg-type]
        )
    print("\n| a slow hop in the chain | the other 7 loaded by | vs one target | the slow hop loaded at | note |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        loaded: dict[str, float] = r["loaded"]  # type: ignore[assignment]
        if not loaded:
            continue
        slow = str(r["slow"])
        others = max(t for h, t in loaded.items() if h != slow)
        notes: dict[str, str] = r["notes"]  # type: ignore[assignment]
        print(
            f"| {r['name']} | {others:.1f} s | {others / one:.2f}x | {loaded.get(slow, float('nan')):.1f} s "
            f"| {notes.get(slow, '') or 'none'} |"
        )


if __name__ == "__main__":
    main()
