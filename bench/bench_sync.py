"""Benchmark of `forge sync` against the old bzip2 pipeline, on the forge lab.

    python bench/bench_sync.py            (as root, with the lab up; a few minutes)

Source: this machine, reading gpu1's daemon through its socket (a local inventory host); as
root, forge reads the layers from gpu1's layer store, and `--read save` rows use docker save.
Targets: every other GPU host of the lab (gpu2..gpuN) over SSH, each link shaped to 1 Gbit/s
with tc (removed at the end); `forge lab up --hosts 9` for the issue's 8 hosts at once.
Last, the first transfer again with the source side on CPU 0 and the target on CPU 1 (taskset),
as between two one-core machines, its floor measured pinned the same way.
Image: ~1.2 GB of real libraries (/usr/lib/x86_64-linux-gnu, /usr/lib/jvm) in one base layer
plus a ~50 MB top layer (/usr/lib/python3); a "nightly rebuild" changes only the top layer.
Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from forge import inventory  # noqa: E402
from forge.fleet import Pool  # noqa: E402
from forge.images.inspect import inspect_image  # noqa: E402
from forge.images.layerstore import open_store, plan_archive  # noqa: E402
from forge.images.sync import sync_image  # noqa: E402
from forge.inventory import Host  # noqa: E402
from forge.lab import Lab  # noqa: E402

LAB = Path(os.environ.get("FORGE_LAB_ROOT", "/var/lib/forge-lab"))
REPO = "forge-bench/sync"
BASE_DIRS = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/jvm"]
TOP_DIR = "/usr/lib/python3"
LINK_RATE = "1gbit"
LINK_BYTES_S = 125e6
# Targets: every GPU host of the lab but gpu1 (the source); `forge lab up --hosts 9` gives 8.
TARGETS: list[str] = []


def sock(host: str) -> str:
    return f"unix://{LAB}/hosts/{host}/docker.sock"


def docker(host: str, *args: str, stdin: Any = None, check: bool = True) -> str:
    r = subprocess.run(["docker", "-H", sock(host), *args], stdin=stdin, capture_output=True, text=True, check=False)
    if check and r.returncode:
        raise SystemExit(f"docker {' '.join(args)} on {host}: {r.stderr}")
    return r.stdout.strip()


def image_id(host: str, ref: str) -> str | None:
    return docker(host, "image", "inspect", "-f", "{{.Id}}", ref, check=False) or None


def build_images() -> tuple[str, str]:
    """forge-bench/sync:v1 and :v2 on gpu1 (built once, reused)."""
    base, v1, v2 = f"{REPO}:base", f"{REPO}:v1", f"{REPO}:v2"
    if not image_id("gpu1", base):
        print("building the base layer from", BASE_DIRS, file=sys.stderr)
        tar = subprocess.Popen(["tar", "-C", "/", "-c", *[d.lstrip("/") for d in BASE_DIRS]], stdout=subprocess.PIPE)
        docker("gpu1", "import", "-", base, stdin=tar.stdout)
        tar.wait()
    for tag, stamp in ((v1, "nightly-1"), (v2, "nightly-2")):
        if image_id("gpu1", tag):
            continue
        with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
            shutil.copytree(TOP_DIR, Path(d) / "top", symlinks=True)
            (Path(d) / "top" / "BUILD").write_text(stamp)
            (Path(d) / "Dockerfile").write_text(f"FROM {base}\nCOPY top /opt/app\n")
            subprocess.run(["docker", "-H", sock("gpu1"), "build", "-q", "-t", tag, d], check=True, capture_output=True)
    return v1, v2


def veth(host: str) -> str:
    out = subprocess.run(
        ["nsenter", f"--net=/var/run/netns/forgelab-{host}", "ip", "-o", "link"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    peer = next(w.split("@if")[1].rstrip(":") for w in out.split() if w.startswith("eth0@if"))
    for p in Path("/sys/class/net").iterdir():
        if (p / "ifindex").read_text().strip() == peer:
            return p.name
    raise SystemExit(f"no veth for {host}")


def shape(on: bool) -> None:
    for h in TARGETS:
        dev = veth(h)
        subprocess.run(["tc", "qdisc", "del", "dev", dev, "root"], capture_output=True, check=False)
        if on:  # traffic towards the host leaves the bridge port: shape its egress
            subprocess.run(
                [
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    LINK_RATE,
                    "burst",
                    "256kb",
                    "latency",
                    "50ms",
                ],
                check=True,
            )


def wipe(host: str, *refs: str) -> None:
    ids = {i for r in refs if (i := image_id(host, r))}
    ids |= {i for r in refs if (i := image_id("gpu1", r)) and image_id(host, i)}
    tags = [r for r in refs if image_id(host, r)]
    if tags or ids:
        docker(host, "image", "rm", "-f", *tags, *ids, check=False)
    base = image_id("gpu1", f"{REPO}:base")
    if base and image_id(host, base):
        docker(host, "image", "rm", "-f", base, check=False)


def timed(fn: Callable[[], object]) -> float:
    t = time.monotonic()
    fn()
    return time.monotonic() - t


SOURCE = Host(name="local", address="localhost", local=True, docker_host=sock("gpu1"), command_timeout=3600)


def forge_sync(inv: inventory.Inventory, ref: str, hosts: list[str], read: str = "auto") -> tuple[float, object]:
    with Pool() as pool:
        t = time.monotonic()
        rep = sync_image(ref, source=SOURCE, targets=[inv.host(h) for h in hosts], pool=pool, read=read)
        dt = time.monotonic() - t
    bad = [r.reason for r in rep.results if not r.ok]
    if bad:
        raise SystemExit(f"forge sync failed: {bad}")
    if read != "save" and rep.read not in ("store", ""):
        raise SystemExit(f"forge sync did not read the layer store: {rep.read_note}")
    return dt, rep


def store_read_alone(ref: str) -> float:
    """Writing the load archive from gpu1's layer store to nowhere (what forge reads as root)."""
    with Pool() as pool:
        store, why = open_store(pool.get(SOURCE))
        if store is None:
            raise SystemExit(f"cannot read the layer store: {why}")
        image = inspect_image(pool.get(SOURCE), ref)
    t = time.monotonic()
    plan_archive(store, image, frozenset()).write(lambda _: None)
    return time.monotonic() - t


def pin(host: str, cpus: str) -> None:
    """Every thread of the host's dockerd and sshd (their future children inherit it) on ``cpus``."""
    for pidfile in (LAB / "hosts" / host / "dockerd.pid", LAB / "hosts" / host / "sshd" / "sshd.pid"):
        pid = pidfile.read_text().strip()
        subprocess.run(["taskset", "-a", "-c", "-p", cpus, pid], capture_output=True, check=True)


def first_transfer_pinned(inv: inventory.Inventory, ref: str, target: str) -> list[tuple[str, str]]:
    """The first transfer as between two one-core machines: the source side (this process, its
    compressor, gpu1's dockerd) on CPU 0, the target's sshd and dockerd (and what they start) on
    CPU 1; the floor's parts measured pinned the same way."""
    everything = f"0-{os.cpu_count() - 1}"  # type: ignore[operator]
    try:
        os.sched_setaffinity(0, {0})
        pin("gpu1", "0")
        pin(target, "1")
        with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
            archive = Path(d) / "img.tar"
            save_s = timed(lambda: docker("gpu1", "save", "-o", str(archive), ref))
            wipe(target, ref)
            os.sched_setaffinity(0, {1})  # the docker CLI feeding the target's daemon: target side
            load_s = timed(lambda: docker(target, "load", "-q", "-i", str(archive)))
            os.sched_setaffinity(0, {0})
        wipe(target, ref)
        first_s, rep = forge_sync(inv, ref, [target])
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        pin("gpu1", everything)
        pin(target, everything)
    r = rep.results[target].value  # type: ignore[attr-defined]
    floor = max(save_s, load_s, r.wire_bytes / LINK_BYTES_S)
    return [
        ("pinned: docker save alone (source core)", f"{save_s:.1f} s"),
        ("pinned: docker load from a local file alone (target core)", f"{load_s:.1f} s"),
        ("pinned: floor", f"{floor:.1f} s"),
        ("pinned: forge sync, first transfer (layer store)", f"{first_s:.1f} s = {first_s / floor:.2f}x floor"),
    ]


def bzip2_pipeline(ref: str, host: str) -> float:
    """docker save IMG | bzip2 | ssh host 'cat | docker load' (the pipeline people use today)."""
    t = time.monotonic()
    save = subprocess.Popen(["docker", "-H", sock("gpu1"), "save", ref], stdout=subprocess.PIPE)
    bz = subprocess.Popen(["bzip2", "-c"], stdin=save.stdout, stdout=subprocess.PIPE)
    assert save.stdout and bz.stdout
    save.stdout.close()
    remote = Lab.at(LAB).ssh_argv(host, "sh", "-c", "cat | docker load -q")
    load = subprocess.run(remote, stdin=bz.stdout, capture_output=True, check=False)
    bz.wait()
    save.wait()
    if load.returncode:
        raise SystemExit(f"bzip2 pipeline failed: {load.stderr!r}")
    return time.monotonic() - t


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root (tc, the lab's sockets)")
    inv = inventory.load_file(LAB / "hosts.toml")
    TARGETS[:] = [h.name for h in inv.hosts if h.name != "gpu1"]
    v1, v2 = build_images()
    size = int(docker("gpu1", "image", "inspect", "-f", "{{.Size}}", v2))
    top = int(docker("gpu1", "history", "--format", "{{.Size}}", "--human=false", v2).split()[0])
    rows: list[tuple[str, str]] = [("image", f"{size / 1e9:.2f} GB, top layer {top / 1e6:.1f} MB ({top / size:.1%})")]
    for h in TARGETS:
        wipe(h, v1, v2)
    shape(True)
    try:
        # ---- floor of a first transfer: save alone, load from a local file alone, compressed bytes on the link
        with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
            archive = Path(d) / "img.tar"
            save_s = timed(lambda: docker("gpu1", "save", "-o", str(archive), v1))
            load_s = timed(lambda: docker("gpu2", "load", "-q", "-i", str(archive)))
        wipe("gpu2", v1, v2)
        store_s = store_read_alone(v1)
        first_save_s, _ = forge_sync(inv, v1, ["gpu2"], read="save")
        wipe("gpu2", v1, v2)
        first_s, rep = forge_sync(inv, v1, ["gpu2"])
        r = rep.results["gpu2"].value  # type: ignore[attr-defined]
        wire_s = r.wire_bytes / LINK_BYTES_S
        floor = max(save_s, load_s, wire_s)
        rows += [
            ("docker save alone", f"{save_s:.1f} s"),
            ("docker load from a local file alone", f"{load_s:.1f} s"),
            (f"compressed bytes on a 1 Gbit/s link ({r.wire_bytes / 1e6:.0f} MB, zstd)", f"{wire_s:.1f} s"),
            ("floor (slowest of the three)", f"{floor:.1f} s"),
            ("(forge reading the layer store alone, as root)", f"{store_s:.1f} s"),
            (
                "forge sync, first transfer (layer store)",
                f"{first_s:.1f} s = {first_s / floor:.2f}x floor",
            ),
            (
                "forge sync, first transfer (--read save)",
                f"{first_save_s:.1f} s = {first_save_s / floor:.2f}x floor",
            ),
        ]
        wipe("gpu3", v1, v2)
        bz_first = bzip2_pipeline(v1, "gpu3")
        rows.append(("bzip2 pipeline, first transfer", f"{bz_first:.1f} s (forge is {bz_first / first_s:.1f}x faster)"))
        # ---- nightly rebuild: only the top layer changed
        if len(TARGETS) > 2:  # the same nightly case through docker save, on a host with v1
            forge_sync(inv, v1, [TARGETS[2]])
            nightly_save_s, _ = forge_sync(inv, v2, [TARGETS[2]], read="save")
        nightly_s, rep = forge_sync(inv, v2, ["gpu2"])
        r = rep.results["gpu2"].value  # type: ignore[attr-defined]
        bz_nightly = bzip2_pipeline(v2, "gpu3")
        rows += [
            (
                "forge sync, nightly rebuild (layer store)",
                f"{nightly_s:.1f} s, {r.wire_bytes / 1e6:.1f} MB on the wire "
                f"= {r.wire_bytes / top:.2f}x the top layer ({r.layers_sent}/{r.layers_total} layers)",
            ),
            ("bzip2 pipeline, nightly rebuild", f"{bz_nightly:.1f} s (forge is {bz_nightly / nightly_s:.1f}x faster)"),
        ]
        if len(TARGETS) > 2:
            rows.append(
                (
                    "forge sync, nightly rebuild (--read save)",
                    f"{nightly_save_s:.1f} s (bzip2 pipeline / this = {bz_nightly / nightly_save_s:.1f}x)",
                )
            )
        # ---- unchanged
        same_s, _ = forge_sync(inv, v2, ["gpu2"])
        rows.append(("forge sync, unchanged re-sync", f"{same_s:.2f} s"))
        # ---- many hosts: fresh hosts, all at once vs one
        for h in TARGETS:
            wipe(h, v1, v2)
        one_s, _ = forge_sync(inv, v1, ["gpu2"])
        for h in TARGETS:
            wipe(h, v1, v2)
        many_s, _ = forge_sync(inv, v1, TARGETS)
        rows.append(
            (
                f"forge sync to {len(TARGETS)} fresh hosts at once vs 1",
                f"{many_s:.1f} s vs {one_s:.1f} s = {many_s / one_s:.2f}x",
            )
        )
        # ---- the first transfer again, as between two one-core machines
        for h in TARGETS:
            wipe(h, v1, v2)
        rows += first_transfer_pinned(inv, v1, "gpu2")
    finally:
        shape(False)
        for h in TARGETS:
            wipe(h, v1, v2)
    print(f"| measure (2 vCPUs, links shaped to {LINK_RATE}) | result |\n| --- | --- |")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
