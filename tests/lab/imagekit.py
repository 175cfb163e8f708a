"""Images and faults for the `forge sync` lab tests (test_sync.py, test_sync_store.py).

Every test builds its own images on gpu1 (unique names forge-test/sync-<token>, unique
content, so no layer is shared with another test) and removes them from every host after.
A cut connection is a real one: the TCP connections of the victim's sshd are reset inside its
network namespace (``ss -K``), as a dropped link or a rebooted switch would end them.
"""

from __future__ import annotations

import io
import secrets
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from forge import inventory
from forge.fleet import Pool
from forge.images.inspect import survey
from forge.images.sync import SyncReport, sync_image
from forge.inventory import Host
from forge.lab.netns import nsenter
from forge.transport import Transport, connect
from forge.transport.base import Command, CommandResult
from forge.transport.ssh import SSHTransport

SOURCE = "gpu1"


def docker(lab: Any, host: str, *args: str, stdin: bytes | None = None, timeout: float = 300) -> str:
    sock = lab.lab.config.docker_host(host)
    r = subprocess.run(["docker", "-H", sock, *args], input=stdin, capture_output=True, timeout=timeout, check=False)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout.decode().strip()


def _real_files(limit_bytes: int, salt: str) -> bytes:
    """A tar of real files from this machine (Python's stdlib), plus a unique one."""
    buf = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buf, mode="w") as t:
        for p in sorted(Path("/usr/lib/python3.11").rglob("*.py")):
            if total >= limit_bytes:
                break
            t.add(str(p), arcname="usr/lib/py/" + str(p.relative_to("/usr/lib/python3.11")))
            total += p.stat().st_size
        data = salt.encode()
        info = tarfile.TarInfo("token")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Images:
    """Images built on gpu1 for one test; removed from every lab host at the end."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.token = secrets.token_hex(4)
        self.repo = f"forge-test/sync-{self.token}"
        self.ids: set[str] = set()

    def base(self, tag: str = "base", size: int = 3 << 20) -> str:
        ref = f"{self.repo}:{tag}"
        docker(self.lab, SOURCE, "import", "-", ref, stdin=_real_files(size, self.token + tag))
        self.ids.add(docker(self.lab, SOURCE, "image", "inspect", "-f", "{{.Id}}", ref))
        return ref

    def on_top(self, parent: str, tag: str, payload: bytes) -> str:
        ref = f"{self.repo}:{tag}"
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "payload").write_bytes(payload)
            (Path(d) / "Dockerfile").write_text(f"FROM {parent}\nCOPY payload /payload-{tag}\n")
            docker(self.lab, SOURCE, "build", "-q", "-t", ref, d)
        self.ids.add(docker(self.lab, SOURCE, "image", "inspect", "-f", "{{.Id}}", ref))
        return ref

    def same(self, host: str, ref: str) -> bool:
        """Whether ``host`` has ``ref`` as the source has it. Not by ID: an image's ID is its
        config digest on a classic store and its manifest digest on a containerd store. Its
        layers and its creation time are the same on every engine."""
        fmt = "{{json .RootFS.Layers}} {{.Created}}"
        mine = self.lab.docker(host, "image", "inspect", "-f", fmt, ref)
        theirs = self.lab.docker(SOURCE, "image", "inspect", "-f", fmt, ref)
        return mine.returncode == 0 and theirs.returncode == 0 and mine.stdout == theirs.stdout

    def image_id(self, host: str, ref: str) -> str | None:
        r = self.lab.docker(host, "image", "inspect", "-f", "{{.Id}}", ref)
        return r.stdout.strip() if r.returncode == 0 else None

    def leftovers(self, host: str) -> list[str]:
        """Untagged images on ``host`` built from this test's layers."""
        mine = self._my_layers()
        with Pool() as pool:
            have = survey(pool.get(self._host(host)))
        return [i.id for i in have.images if not i.repo_tags and set(i.layers) & mine]

    def _my_layers(self) -> set[str]:
        out: set[str] = set()
        for i in self.ids:
            layers = docker(self.lab, SOURCE, "image", "inspect", "-f", '{{join .RootFS.Layers " "}}', i)
            out.update(layers.split())
        return out

    def _host(self, name: str) -> Host:
        return inventory.load_file(Path(self.lab.inventory_path)).host(name)

    def cleanup(self) -> None:
        from forge.lab import registry

        pushed = f"{registry.address(self.lab.lab.config)}/forge/{self.repo}"  # forge sync --via registry
        for host in self.lab.hosts:
            refs = []
            for repo in (self.repo, pushed):
                r = self.lab.docker(host, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repo)
                refs += r.stdout.split()
            if refs:
                self.lab.docker(host, "image", "rm", "-f", *refs)
            if host != SOURCE:
                ids = [i for i in self.ids if self.image_id(host, i)]
                if ids:
                    self.lab.docker(host, "image", "rm", "-f", *ids)


def sync(
    inv: inventory.Inventory,
    ref: str,
    targets: list[str],
    *,
    source: Host | None = None,
    pool: Pool | None = None,
    **kw: Any,
) -> SyncReport:
    """forge sync of ``ref`` from ``source`` (default: gpu1 over SSH) to the named hosts."""
    own = pool is None
    pool = pool or Pool()
    try:
        return sync_image(
            ref, source=source or inv.host(SOURCE), targets=[inv.host(n) for n in targets], pool=pool, **kw
        )
    finally:
        if own:
            pool.close()


def reset_ssh_connections(lab: Any, host: str) -> None:
    """Reset every TCP connection of ``host``'s sshd, in its network namespace."""
    netns = lab.lab.config.host(host).netns
    argv = [*nsenter(netns), "ss", "-K", "-tn", "state", "established", "( sport = :22 )"]
    subprocess.run(argv, capture_output=True, check=True)


class _CutReader(io.RawIOBase):
    """Reads from ``inner`` until the byte ``where(data, seen)`` names, then resets the host's
    SSH connections and sends nothing more (the stream ends by the cut, not by an EOF)."""

    def __init__(self, inner: IO[bytes], cut: Callable[[], None], where: Callable[[bytes, int], int | None]) -> None:
        super().__init__()
        self.inner, self.do_cut, self.where = inner, cut, where
        self.seen = 0
        self.cut = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.cut:
            time.sleep(30)  # the cut ends the stream long before
            return 0
        data = self.inner.read(len(buffer))
        if not data:
            return 0
        at = self.where(data, self.seen)
        if at is not None:
            data = data[:at]
            self.cut = True
        buffer[: len(data)] = data
        self.seen += len(data)
        if self.cut:
            threading.Timer(0.3, self.do_cut).start()  # after these bytes went out
        return len(data)


def cutting_pool(lab: Any, victim: str, where: Callable[[bytes, int], int | None]) -> Pool:
    """A pool whose streams to ``victim`` are cut at the byte ``where`` names."""

    class Cutting(SSHTransport):
        def stream(
            self,
            command: Command,
            *,
            source: IO[bytes] | None = None,
            sink: IO[bytes] | None = None,
            timeout: float | None = None,
        ) -> CommandResult:
            if source is not None:
                cut = _CutReader(source, lambda: reset_ssh_connections(lab, victim), where)
                source = cut  # type: ignore[assignment]
            return super().stream(command, source=source, sink=sink, timeout=timeout)

    def connector(host: Host) -> Transport:
        return Cutting(host) if host.name == victim else connect(host)

    return Pool(connector)


def cut_at(offset: int) -> Callable[[bytes, int], int | None]:
    """Cut after ``offset`` bytes of the stream."""

    def where(data: bytes, seen: int) -> int | None:
        return offset - seen if seen <= offset < seen + len(data) else None

    return where


def cut_before_manifest(data: bytes, seen: int) -> int | None:
    """Cut just before the tar header of ``manifest.json`` (an uncompressed stream)."""
    i = data.find(b"manifest.json\0")
    while i >= 0 and (seen + i) % 512:
        i = data.find(b"manifest.json\0", i + 1)
    return i if i >= 0 else None
