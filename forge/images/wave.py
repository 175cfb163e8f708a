"""One wave of ``forge sync``: one read of the source, fanned out to the hosts of the wave.

The steps, each a method below:

1. :meth:`Wave._groups`: hosts that lack the same layers and take the same codec share one
   archive stream; with a readable layer store every group's archive is planned (and its files
   checked) before a byte is sent, else the wave reads ``docker save`` once for all groups;
2. :meth:`Wave._open`: per group, a :class:`~forge.images.stream.Fanout` into the hosts'
   bounded feeds, behind a local compressor or not, behind the save transcoder or not;
3. :meth:`Wave._read` (a thread): the source into every group;
4. :meth:`Wave._load` (per host, in parallel): ``decompress | docker load``, then
   :func:`verify` and :func:`tag`; on failure, :func:`cleanup` of what the load left behind.

Data flows by push; bounded queues make the slowest host set the pace; a host that failed stops
consuming and is skipped from then on; a failed source ends every host's stream, and each host
reports that cause.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, cast

from forge import fleet, shell
from forge.errors import ForgeError, HostError, why
from forge.fleet import FleetResult
from forge.images import codec as codecs
from forge.images import memo, oci
from forge.images.inspect import CLASSIC, FORMAT, ImageInfo, parse_image_line, survey
from forge.images.job import Job
from forge.images.layerstore import Archive, LayerStoreError, plan_archive
from forge.images.plan import HostPlan
from forge.images.savetar import SaveTranscoder
from forge.images.source import Source
from forge.images.stream import Compressor, Direct, Fanout, HostFeed, StreamError, Tee
from forge.session import HostSession


class SyncFailed(HostError):
    """The image could not be loaded or verified on a host."""


@dataclass
class HostSync:
    """What one host got."""

    host: str
    action: str  # "current", "tag" or "send"
    codec: str = "none"
    layers_total: int = 0
    layers_sent: int = 0
    tar_bytes: int = 0  # bytes of the load archive sent, before compression
    wire_bytes: int = 0  # bytes over this host's channel, compressed
    removed: tuple[str, ...] = ()  # leftovers of a failed load that were removed
    seconds: float = 0.0
    image_id: str | None = None  # the image's ID on that host
    incomplete: bool = False  # loaded but hidden (containerd store): send again, everything
    via: str = "client"  # the bytes' way: "client" (through this machine) or "direct" (source to host)
    note: str = ""  # why it came through the client when another way was asked; or a chain's word on it


@dataclass
class _Group:
    skip: frozenset[str]
    codec: codecs.Codec
    plans: list[HostPlan] = field(default_factory=list)
    archive: Archive | None = None  # from the layer store; None: docker save, transcoded
    transcoder: SaveTranscoder | None = None
    fan: Fanout | None = None
    sink: Compressor | Direct | None = None
    bytes: int = 0  # archive bytes written into the group

    def manifest(self, src: Source) -> oci.Manifest | None:
        if self.archive is not None:
            return self.archive.manifest
        if self.transcoder is not None and self.transcoder.manifest is not None:
            return self.transcoder.manifest
        return src.manifest

    @property
    def tar_bytes(self) -> int:
        return self.transcoder.stats.bytes_out if self.transcoder is not None else self.bytes


class _GroupGone(Exception):
    """Every host of a group stopped reading its stream (they failed, and say why)."""


class Wave:
    def __init__(self, job: Job, plans: Sequence[HostPlan]) -> None:
        self.src = job.src  # its layer store dropped if an archive cannot be planned from it
        self.tags, self.pool, self.progress, self.timeout_s = job.tags, job.pool, job.progress, job.timeout_s
        self._plans = {p.host.name: p for p in plans}
        self.groups = self._groups(list(plans))
        self.read_kind = "store" if all(g.archive is not None for g in self.groups) else "save"
        self._feeds = {name: HostFeed(name) for name in self._plans}
        self._group_of = {p.host.name: g for g in self.groups for p in g.plans}
        self._source_error: list[BaseException] = []

    def plan(self, name: str) -> HostPlan:
        return self._plans[name]

    def run(self) -> FleetResult[HostSync]:
        self._open()
        for g in self.groups:
            for p in g.plans:
                self.progress.start(p.host.name, g.archive.size if g.archive else self.src.image.size_bytes)
        reader = threading.Thread(target=self._read, name="forge-sync-source", daemon=True)
        reader.start()
        self._reader = reader
        hosts = [self._plans[n].host for n in self._plans]
        results = fleet.run(hosts, self._load, pool=self.pool, concurrency=len(hosts))
        reader.join()
        return results

    # ------------------------------------------------------------------ 1. groups

    def _groups(self, plans: list[HostPlan]) -> list[_Group]:
        groups: dict[tuple[frozenset[str], str], _Group] = {}
        for p in plans:
            groups.setdefault((p.skip, p.codec.name), _Group(p.skip, p.codec)).plans.append(p)
        store = self.src.layer_store
        if store is not None:
            try:
                for g in groups.values():
                    g.archive = plan_archive(store, self.src.image, g.skip)
            except LayerStoreError as e:  # the whole wave reads docker save instead
                for g in groups.values():
                    g.archive = None
                self.src = _with_note(self.src, str(e))
        return list(groups.values())

    # ------------------------------------------------------------------ 2. pipes

    def _open(self) -> None:
        src = self.src
        try:
            for g in self.groups:
                g.fan = Fanout([self._feeds[p.host.name] for p in g.plans])
                g.sink = Compressor(g.codec.compress, g.fan) if g.codec.compress else Direct(g.fan)
                if g.archive is None:
                    g.transcoder = SaveTranscoder(
                        src.image.layers, g.skip, g.sink.write, config=src.config, source_manifest=src.manifest
                    )
        except OSError as e:
            for g in self.groups:
                if g.sink is not None:
                    g.sink.abort()
            raise StreamError(f"cannot start the local compressor: {e}") from e

    def _writer(self, g: _Group) -> Callable[[bytes], None]:
        """Into a group: through its transcoder (docker save) or straight (its own archive)."""
        assert g.sink is not None and g.fan is not None
        sink, fan = g.sink, g.fan
        transcoder = g.transcoder

        def write(data: bytes) -> None:
            if not fan.alive:  # every host of this group failed: stop writing for them
                if transcoder is None:
                    raise _GroupGone  # the group's own archive: stop reading it
                return
            if transcoder is not None:
                transcoder.write(data)
            else:
                sink.write(data)
                g.bytes += len(data)

        return write

    def _advance(self, names: Sequence[str]) -> Callable[[int], None]:
        def advance(n: int) -> None:
            for name in names:
                if not self._feeds[name].consumer_gone.is_set():
                    self.progress.advance(name, n)

        return advance

    # ------------------------------------------------------------------ 3. the source

    def _read(self) -> None:
        try:
            if not any(g.fan is not None and g.fan.alive for g in self.groups):
                raise StreamError("no target is left to send to")
            if self.read_kind == "store":
                self._read_store()
            else:
                self._read_save()
            for g in self.groups:
                assert g.sink is not None
                g.sink.close()
        except BaseException as e:
            self._source_error.append(e)
            for g in self.groups:
                if g.sink is not None:
                    g.sink.abort()
            for feed in self._feeds.values():  # the hosts' loads see a truncated stream and fail
                feed.end()

    def _read_save(self) -> None:
        src = self.src
        writers = [self._writer(g) for g in self.groups]
        session = self.pool.get(src.host)
        result = session.stream(
            session.docker("save", src.image.id),
            sink=cast(IO[bytes], Tee(writers, self._advance(list(self._feeds)))),
            timeout=self.timeout_s,
        )
        if not result.ok:
            tail = "\n".join(result.stderr.strip().splitlines()[-2:])
            raise HostError(src.host.name, f"docker save failed with status {result.exit_status}: {tail}")
        for g in self.groups:
            if g.transcoder is not None and (g.fan is None or g.fan.alive):
                g.transcoder.finish()

    def _read_store(self) -> None:
        errors: list[BaseException] = []

        def one(g: _Group) -> None:
            write, advance = self._writer(g), self._advance([p.host.name for p in g.plans])

            def out(data: bytes) -> None:
                write(data)
                advance(len(data))

            try:
                assert g.archive is not None
                g.archive.write(out)
            except _GroupGone:
                pass
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=one, args=(g,), name="forge-sync-store", daemon=True) for g in self.groups]
        for th in threads[1:]:
            th.start()
        one(self.groups[0])
        for th in threads[1:]:
            th.join()
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ 4. each host

    def _load(self, s: HostSession) -> HostSync:
        p, feed = self._plans[s.name], self._feeds[s.name]
        ok = False
        try:
            value = self._load_one(p, s, feed)
            ok = True
            return value
        finally:
            feed.stop()
            self.progress.finish(s.name, ok)

    def _load_one(self, p: HostPlan, s: HostSession, feed: HostFeed) -> HostSync:
        started = time.monotonic()
        g = self._group_of[p.host.name]
        failure = self._stream(p, s, feed)
        expected = self._expected(p, g)
        if failure is not None:
            removed = cleanup(p, s, self.src.image, expected)
            if removed is not None:  # else the image did arrive complete after all
                note = f" (removed {len(removed)} leftover image(s))" if removed else ""
                raise SyncFailed(p.host.name, why(failure) + note) from failure
        assert expected is not None
        listed = verify(s, self.src.image, expected, store=p.have.store)
        if p.have.store != CLASSIC:
            memo.remember(self.src.config, expected)
        if listed:
            tag(s, expected, self.tags)
        image = self.src.image
        return HostSync(
            p.host.name,
            "send",
            codec=p.codec.name,
            layers_total=len(image.layers),
            layers_sent=len(image.layers) - len(p.skip),
            tar_bytes=g.tar_bytes,
            wire_bytes=feed.bytes_read,
            seconds=time.monotonic() - started,
            image_id=expected,
            incomplete=not listed,
        )

    def _stream(self, p: HostPlan, s: HostSession, feed: HostFeed) -> ForgeError | None:
        """``decompress | docker load`` fed by the host's feed; the failure, if any."""
        stages: list[list[str]] = [list(p.codec.decompress)] if p.codec.decompress else []
        stages.append(s.docker("load", "-q"))
        try:
            result = s.stream(
                shell.pipeline(*stages), source=cast(IO[bytes], feed), sink=io.BytesIO(), timeout=self.timeout_s
            )
        except ForgeError as e:
            return e
        feed.stop()
        if not result.ok:
            self._reader.join(60)  # a failed source ends every host's stream: report that cause
        if not result.ok and self._source_error:
            return SyncFailed(p.host.name, f"the source stream failed: {why(self._source_error[0])}")
        if result.exit_status == -1:  # paramiko: the channel closed without an exit status
            return SyncFailed(p.host.name, "the SSH connection was cut before docker load finished")
        if not result.ok:
            tail = "\n".join(result.stderr.strip().splitlines()[-2:]) or f"status {result.exit_status}"
            return SyncFailed(p.host.name, f"docker load failed: {tail}")
        return None

    def _expected(self, p: HostPlan, g: _Group) -> str | None:
        """The ID the image has on this host once loaded."""
        if p.image_id:
            return p.image_id
        if p.have.store == CLASSIC:
            return self.src.config
        manifest = g.manifest(self.src)
        return manifest.digest if manifest is not None else None


def _with_note(src: Source, note: str) -> Source:
    from dataclasses import replace

    return replace(src, layer_store=None, store_note=note)


# --------------------------------------------------------------------------- on a target


def verify(s: HostSession, image: ImageInfo, expected: str, *, store: str) -> bool:
    """The loaded image must be there under ``expected`` with the source's layers. Returns
    whether the daemon lists it: a containerd store that got a left-out layer under another
    blob keeps such an image out of its list (and ``docker save`` of it is empty)."""
    r = s.run(s.docker("image", "inspect", "--format", FORMAT, expected))
    got = parse_image_line(r.stdout.strip()) if r.ok else None
    if got is None or got.id != expected or got.layers != image.layers:
        raise SyncFailed(s.name, f"after loading, the image {expected[:19]} is not there intact; nothing was tagged")
    if store == CLASSIC:
        return True
    listed = s.run(s.docker("image", "ls", "-a", "-q", "--no-trunc"), timeout=120)
    return listed.ok and expected in listed.stdout.split()


def tag(s: HostSession, image_id: str, tags: Sequence[str]) -> None:
    for name in tags:
        r = s.run(s.docker("tag", image_id, name))
        if not r.ok:
            raise SyncFailed(s.name, f"docker tag {name} failed: {r.stderr.strip()[-200:]}")


_CLEANUP_LOOKS = 10
_CLEANUP_PAUSE_S = 0.3


def cleanup(p: HostPlan, s: HostSession, image: ImageInfo, expected: str | None) -> tuple[str, ...] | None:
    """Remove what a failed load created. None: the image is there, complete."""
    try:
        after = survey(s)
    except ForgeError:
        return ()  # the host is unreachable now; the next run's cleanup is the same
    done = after.by_id(expected) if expected else None
    if done is not None and done.layers == image.layers:
        return None
    removed: list[str] = []
    before = {i.id for i in p.have.images}
    if expected and expected not in before:  # a containerd store keeps a broken record
        if s.run(s.docker("image", "inspect", expected)).ok and s.run(s.docker("image", "rm", expected)).ok:
            removed.append(expected)
    ours = set(image.chains)
    # Docker's legacy loader (an old-style archive cut before manifest.json) can still be
    # creating images on the daemon after the client's `docker load` has exited, and it leaves
    # a chain of images, each the parent of the next. So: remove children first (longest layer
    # chain first), and look again until two looks in a row find nothing.
    quiet = 0
    for _ in range(_CLEANUP_LOOKS):
        leftovers = sorted(
            (i for i in after.images if i.id not in before and not i.repo_tags and i.chains and i.chains[-1] in ours),
            key=lambda i: -len(i.chains),
        )
        quiet = 0 if leftovers else quiet + 1
        if quiet >= 2:
            break
        for i in leftovers:
            if s.run(s.docker("image", "rm", i.id)).ok:
                removed.append(i.id)
        time.sleep(_CLEANUP_PAUSE_S)
        try:
            after = survey(s)
        except ForgeError:
            break
    return tuple(removed)
