"""``forge sync``: ship a Docker image from one host to many, sending only what each lacks.

Per run: inspect the image on the source (one command) and survey every target (one command
each, in parallel) -> a plan per host: ``current`` (same image ID, tags in place: nothing to
do), ``tag`` (the image is there under its ID: tag it), or ``send`` (with the set of layers,
by chain ID, that the host already has). Hosts to send to go in waves of ``concurrency``; each
wave reads ``docker save <ID>`` from the source once; hosts that lack the same layers and use
the same codec share one filter and one compressor; every host loads with ``decompress |
docker load`` over its own SSH channel. The image is saved by ID, so ``docker load`` tags
nothing; forge checks the loaded ID against the source's and only then tags it. After a failed
load forge removes what it left behind (untagged images it created); a rerun completes the
job, shipping only what is still missing.

Where forge can read the source daemon's layer store here (a local daemon, overlay2, readable:
as root), it writes each group's load archive itself from the store
(:mod:`forge.images.layerstore`) instead of reading ``docker save``, which writes the whole
image to a temporary directory before its first byte and always every layer. ``read="save"``
forces ``docker save``; ``read="store"`` fails when the store cannot be read.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Literal, cast

from forge import fleet, shell
from forge.dockercli import docker_argv
from forge.errors import ForgeError, HostError
from forge.fleet import FleetResult, HostResult, Pool
from forge.images import codec as codecs
from forge.images.inspect import (
    FORMAT,
    HostImages,
    ImageInfo,
    inspect_image,
    is_image_id,
    normalize_ref,
    parse_image_line,
    survey,
)
from forge.images.layerstore import Archive, LayerStore, LayerStoreError, open_store, plan_archive
from forge.images.savetar import LayerFilter
from forge.images.stream import Compressor, Direct, Fanout, HostFeed, StreamError, Tee
from forge.inventory import Host
from forge.progress import NoProgress, Progress
from forge.transport import Transport

Action = Literal["current", "tag", "send"]
READS = ("auto", "store", "save")
DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 3600.0


class SyncFailed(HostError):
    """The image could not be loaded or verified on a host."""


@dataclass(frozen=True)
class HostPlan:
    host: Host
    action: Action
    have: HostImages
    skip: frozenset[str] = frozenset()  # chain IDs of the source's layers the host has
    codec: codecs.Codec = codecs.CODECS["none"]
    stale_id: str | None = None  # the image the wanted tag points to now, if another one


@dataclass
class HostSync:
    """What one host got."""

    host: str
    action: Action
    codec: str = "none"
    layers_total: int = 0
    layers_sent: int = 0
    tar_bytes: int = 0  # bytes of the (filtered) save archive sent, before compression
    wire_bytes: int = 0  # bytes over this host's channel, compressed
    removed: tuple[str, ...] = ()  # leftovers of a failed load that were removed
    seconds: float = 0.0


@dataclass(frozen=True)
class SyncReport:
    ref: str
    image: ImageInfo
    tags: tuple[str, ...]
    results: FleetResult[HostSync]
    read: str = ""  # how the source was read: "store", "save", or "" (nothing was sent)
    read_note: str = ""  # why not from the layer store, when it could not be


@dataclass
class _Group:
    skip: frozenset[str]
    codec: codecs.Codec
    plans: list[HostPlan] = field(default_factory=list)
    archive: Archive | None = None  # from the layer store; None: filtered docker save


def wanted_tags(ref: str, image: ImageInfo) -> tuple[str, ...]:
    """The tags to give the image on the targets: the name asked for, else the source's tags.

    ``ref`` is an ID when docker resolved it as one: any prefix of the image's ID (docker takes
    unique prefixes of any length, with or without ``sha256:``) that is not one of its names.
    """
    if "@" in ref or _is_id_of(ref, image):
        return image.repo_tags
    return (normalize_ref(ref),)


def _is_id_of(ref: str, image: ImageInfo) -> bool:
    if normalize_ref(ref) in image.repo_tags:  # docker looks a reference up by name first
        return False
    hexpart = ref.removeprefix("sha256:")
    full = image.id.removeprefix("sha256:")
    return bool(hexpart) and is_image_id(hexpart.ljust(64, "0")) and full.startswith(hexpart)


def plan_host(host: Host, have: HostImages, image: ImageInfo, tags: Sequence[str], compress: str) -> HostPlan:
    """Pure: what to do on one host, given its survey."""
    stale = next((i.id for t in tags if (i := have.tagged(t)) is not None and i.id != image.id), None)
    present = have.by_id(image.id)
    if present is not None and present.layers == image.layers:
        missing_tag = any(t not in present.repo_tags for t in tags)
        return HostPlan(host, "tag" if missing_tag else "current", have, stale_id=stale)
    skip = frozenset(c for c in image.chains if c in have.chain_ids)
    codec = codecs.choose(compress, have.tools, codecs.local_tools())
    return HostPlan(host, "send", have, skip=skip, codec=codec, stale_id=stale)


def plan(
    ref: str,
    *,
    source: Host,
    targets: Sequence[Host],
    pool: Pool,
    compress: str = "auto",
    concurrency: int = fleet.DEFAULT_CONCURRENCY,
) -> tuple[ImageInfo, tuple[str, ...], FleetResult[HostPlan]]:
    """Inspect the source image and survey the targets: one round trip per host."""
    image = inspect_image(source, pool.get(source), ref)
    if not image.layers:
        raise ForgeError(f"{source.name}: image {ref!r} has no layers to send")
    tags = wanted_tags(ref, image)
    by_name = {h.name: h for h in targets}
    plans = fleet.run(
        targets,
        lambda t: plan_host(by_name[t.name], survey(by_name[t.name], t), image, tags, compress),
        pool=pool,
        concurrency=concurrency,
    )
    return image, tags, plans


def sync_image(
    ref: str,
    *,
    source: Host,
    targets: Sequence[Host],
    pool: Pool,
    compress: str = "auto",
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Progress | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    read: str = "auto",
) -> SyncReport:
    """Make ``ref`` (a name or an image ID on ``source``) present and tagged on every target.

    ``read``: ``auto`` (the layer store where readable, else ``docker save``), ``store`` or
    ``save``.
    """
    if read not in READS:
        raise ForgeError(f"unknown way to read the image {read!r}", hint="one of " + ", ".join(READS))
    progress = progress or NoProgress()
    targets = [t for t in targets if t.name != source.name]
    image, tags, plans = plan(ref, source=source, targets=targets, pool=pool, compress=compress)
    results: dict[str, HostResult[HostSync]] = {r.host.name: cast(HostResult[HostSync], r) for r in plans.failed}

    quick = [r.value for r in plans.succeeded if r.value is not None and r.value.action != "send"]
    quick_by = {p.host.name: p for p in quick}

    def finish_quick(t: Transport) -> HostSync:
        p = quick_by[t.name]
        started = time.monotonic()
        if p.action == "tag":
            _tag(p.host, t, image, tags)
        return HostSync(t.name, p.action, layers_total=len(image.layers), seconds=time.monotonic() - started)

    for r in fleet.run([p.host for p in quick], finish_quick, pool=pool):
        results[r.host.name] = r

    to_send = [r.value for r in plans.succeeded if r.value is not None and r.value.action == "send"]
    store: LayerStore | None = None
    note = ""
    if to_send and read != "save":
        store, note = open_store(source, pool.get(source))
        if store is None and read == "store":
            raise LayerStoreError(f"{source.name}: cannot read the layer store: {note}", hint="use --read save")
    used = ""
    for i in range(0, len(to_send), max(1, concurrency)):
        wave = to_send[i : i + max(1, concurrency)]
        groups, why = _groups(image, wave, store, strict=read == "store")
        note = note or why
        used = "store" if all(g.archive is not None for g in groups) else "save"
        for r in _send_wave(image, tags, source, groups, pool, progress, timeout_s):
            results[r.host.name] = r
    return SyncReport(ref, image, tags, FleetResult(tuple(results[h.name] for h in targets)), read=used, read_note=note)


def _groups(
    image: ImageInfo, wave: list[HostPlan], store: LayerStore | None, *, strict: bool
) -> tuple[list[_Group], str]:
    """Hosts that lack the same layers and use the same codec share one archive stream.

    With a store, every group's archive is planned (and its files checked) before any byte
    is sent; if one cannot be, the whole wave reads ``docker save`` (unless ``strict``).
    """
    groups: dict[tuple[frozenset[str], str], _Group] = {}
    for p in wave:
        groups.setdefault((p.skip, p.codec.name), _Group(p.skip, p.codec)).plans.append(p)
    if store is None:
        return list(groups.values()), ""
    try:
        for g in groups.values():
            g.archive = plan_archive(store, image, g.skip)
    except LayerStoreError as e:
        if strict:
            raise
        for g in groups.values():
            g.archive = None
        return list(groups.values()), str(e)
    return list(groups.values()), ""


# --------------------------------------------------------------------------- one wave


def _send_wave(
    image: ImageInfo,
    tags: tuple[str, ...],
    source: Host,
    groups: list[_Group],
    pool: Pool,
    progress: Progress,
    timeout_s: float,
) -> FleetResult[HostSync]:
    wave = [p for g in groups for p in g.plans]
    feeds = {p.host.name: HostFeed(p.host.name) for p in wave}
    plans = {p.host.name: p for p in wave}
    writers: dict[str, _LiveWriter] = {}
    sinks: list[Compressor | Direct] = []
    group_writers: list[tuple[_Group, _LiveWriter]] = []
    try:
        for g in groups:
            fan = Fanout([feeds[p.host.name] for p in g.plans])
            sink: Compressor | Direct = Compressor(g.codec.compress, fan) if g.codec.compress else Direct(fan)
            sinks.append(sink)
            filt = LayerFilter(image.layers, g.skip, sink.write) if g.archive is None else None
            writer = _LiveWriter(fan, sink.write, filt)
            group_writers.append((g, writer))
            for p in g.plans:
                writers[p.host.name] = writer
    except OSError as e:
        for s in sinks:
            s.abort()
        raise StreamError(f"cannot start the local compressor: {e}") from e

    source_error: list[BaseException] = []

    def advancer(names: Sequence[str]) -> Callable[[int], None]:
        def advance(n: int) -> None:
            for name in names:
                if not feeds[name].consumer_gone.is_set():
                    progress.advance(name, n)

        return advance

    def read_save() -> None:
        result = pool.get(source).stream(
            docker_argv(source, "save", image.id),
            sink=cast(IO[bytes], Tee([w.write for _, w in group_writers], advancer(list(feeds)))),
            timeout=timeout_s,
        )
        if not result.ok:
            tail = "\n".join(result.stderr.strip().splitlines()[-2:])
            raise HostError(source.name, f"docker save failed with status {result.exit_status}: {tail}")
        for _, w in group_writers:
            w.finish()

    def read_store() -> None:
        errors: list[BaseException] = []

        def one(g: _Group, w: _LiveWriter) -> None:
            advance = advancer([p.host.name for p in g.plans])

            def out(data: bytes) -> None:
                w.write(data)
                advance(len(data))

            try:
                assert g.archive is not None
                g.archive.write(out)
            except _GroupGone:
                pass
            except BaseException as e:
                errors.append(e)

        threads = [
            threading.Thread(target=one, args=gw, name="forge-sync-store", daemon=True) for gw in group_writers[1:]
        ]
        for th in threads:
            th.start()
        one(*group_writers[0])
        for th in threads:
            th.join()
        if errors:
            raise errors[0]

    def read_source() -> None:
        try:
            if not any(w.fan.alive for _, w in group_writers):
                raise StreamError("no target is left to send to")
            if all(g.archive is not None for g in groups):
                read_store()
            else:
                read_save()
            for s in sinks:
                s.close()
        except BaseException as e:
            source_error.append(e)
            for s in sinks:
                s.abort()
            for feed in feeds.values():  # the hosts' loads see a truncated stream and fail
                feed.end()

    for g in groups:
        for p in g.plans:
            progress.start(p.host.name, g.archive.size if g.archive is not None else image.size_bytes)
    reader = threading.Thread(target=read_source, name="forge-sync-source", daemon=True)
    reader.start()

    def load(t: Transport) -> HostSync:
        p = plans[t.name]
        ok = False
        try:
            value = _load_one(p, t, feeds[t.name], writers[t.name], image, tags, source_error, reader, timeout_s)
            ok = True
            return value
        finally:
            feeds[t.name].stop()
            progress.finish(t.name, ok)

    results = fleet.run([p.host for p in wave], load, pool=pool, concurrency=len(wave))
    reader.join()
    return results


class _GroupGone(Exception):
    """Every host of a group stopped reading its stream (they failed, and say why)."""


class _LiveWriter:
    """One group's way into its sink: through the save-archive filter, or straight."""

    def __init__(self, fan: Fanout, sink: Callable[[bytes], None], filt: LayerFilter | None) -> None:
        self.fan = fan
        self.filt = filt
        self._out = filt.write if filt is not None else sink
        self.bytes = 0

    def write(self, data: bytes) -> None:
        if not self.fan.alive:  # every host of this group failed: stop writing for them
            if self.filt is None:
                raise _GroupGone  # the group's own archive: stop reading it
            return
        self._out(data)
        if self.filt is None:
            self.bytes += len(data)

    def finish(self) -> None:
        if self.filt is not None:
            self.filt.finish()

    @property
    def tar_bytes(self) -> int:
        return self.filt.stats.bytes_out if self.filt is not None else self.bytes


def _load_one(
    p: HostPlan,
    t: Transport,
    feed: HostFeed,
    writer: _LiveWriter,
    image: ImageInfo,
    tags: tuple[str, ...],
    source_error: list[BaseException],
    reader: threading.Thread,
    timeout_s: float,
) -> HostSync:
    host = p.host
    started = time.monotonic()
    stages: list[list[str]] = []
    if p.codec.decompress:
        stages.append(list(p.codec.decompress))
    stages.append(docker_argv(host, "load", "-q"))
    command = shell.pipeline(*stages)
    out = io.BytesIO()
    failure: ForgeError | None = None
    try:
        result = t.stream(command, source=cast(IO[bytes], feed), sink=out, timeout=timeout_s)
    except ForgeError as e:
        failure = e
    else:
        feed.stop()
        if not result.ok:
            reader.join(60)  # a failed source ends every host's stream: report that cause
        if not result.ok and source_error:
            failure = SyncFailed(host.name, f"the source stream failed: {_reason(source_error[0])}")
        elif result.exit_status == -1:  # paramiko: the channel closed without an exit status
            failure = SyncFailed(host.name, "the SSH connection was cut before docker load finished")
        elif not result.ok:
            tail = "\n".join(result.stderr.strip().splitlines()[-2:]) or f"status {result.exit_status}"
            failure = SyncFailed(host.name, f"docker load failed: {tail}")
    feed.stop()
    if failure is not None:
        removed = _cleanup(p, t, image)
        if removed is not None:  # else the image did arrive complete after all
            note = f" (removed {len(removed)} leftover image(s))" if removed else ""
            raise SyncFailed(host.name, _reason(failure) + note) from failure
    _verify(host, t, image)
    _tag(host, t, image, tags)
    return HostSync(
        host.name,
        "send",
        codec=p.codec.name,
        layers_total=len(image.layers),
        layers_sent=len(image.layers) - len(p.skip),
        tar_bytes=writer.tar_bytes,
        wire_bytes=feed.bytes_read,
        seconds=time.monotonic() - started,
    )


def _reason(e: BaseException) -> str:
    if isinstance(e, HostError):
        return e.reason if not e.hint else f"{e.reason} ({e.hint})"
    return str(e) or type(e).__name__


def _verify(host: Host, t: Transport, image: ImageInfo) -> None:
    r = t.run(docker_argv(host, "image", "inspect", "--format", FORMAT, image.id))
    got = parse_image_line(r.stdout.strip()) if r.ok else None
    if got is None or got.id != image.id or got.layers != image.layers:
        raise SyncFailed(host.name, f"after loading, the image {image.id[:19]} is not there intact; nothing was tagged")


def _tag(host: Host, t: Transport, image: ImageInfo, tags: Sequence[str]) -> None:
    for tag in tags:
        r = t.run(docker_argv(host, "tag", image.id, tag))
        if not r.ok:
            raise SyncFailed(host.name, f"docker tag {tag} failed: {r.stderr.strip()[-200:]}")


_CLEANUP_LOOKS = 10
_CLEANUP_PAUSE_S = 0.3


def _cleanup(p: HostPlan, t: Transport, image: ImageInfo) -> tuple[str, ...] | None:
    """Remove untagged images a failed load created. None: the image is there, complete."""
    try:
        after = survey(p.host, t)
    except ForgeError:
        return ()  # the host is unreachable now; the next run's cleanup is the same
    done = after.by_id(image.id)
    if done is not None and done.layers == image.layers:
        return None
    before = {i.id for i in p.have.images}
    ours = set(image.chains)
    removed: list[str] = []
    # Docker's legacy loader (the path a stream cut before manifest.json takes) can still be
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
            if t.run(docker_argv(p.host, "image", "rm", i.id)).ok:
                removed.append(i.id)
        time.sleep(_CLEANUP_PAUSE_S)
        try:
            after = survey(p.host, t)
        except ForgeError:
            break
    return tuple(removed)
