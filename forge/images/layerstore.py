"""Read an image straight from a local daemon's layer store, instead of ``docker save``.

Why: Docker Engine's classic image store (20.10, and later releases without the containerd
store) answers ``docker save`` by writing *every* layer of the image into a temporary
directory and only then streaming that directory out (``image/tarexport/save.go``): on a
1.3 GB image the first byte comes after two thirds of the save, so the target's
``docker load`` cannot start early, and a nightly rebuild that changed a 40 MB top layer still
costs the whole image's write and read. When forge runs on the source host with read access
to the daemon's data root (as root, e.g. from root's crontab on the build host), it writes the
load archive itself, streaming, and reads only the layers a target lacks.

How: the daemon keeps, per layer, the tar-split metadata that lets it rebuild the exact bytes
of the layer's tar (``image/overlay2/layerdb/sha256/<chain ID>/tar-split.json.gz``: the raw
tar headers and padding as "segments", and for each file its name and size), and the files
themselves in the storage driver's directory (overlay2: ``overlay2/<cache-id>/diff``). Forge
reassembles each layer tar the way the daemon's own ``TarStream`` does, so it has the layer's
diff ID; the image config comes byte for byte from ``imagedb`` (its SHA-256 is the image ID).
The archive is forge's load archive (:mod:`forge.images.oci`): the config, the blob of each layer
to send, then the manifest and both indexes *last*, so that a stream cut anywhere loads nothing.

Nothing is trusted blindly: the config's digest must equal the image ID, every layer's
recorded diff ID must match the image's, every file must be a regular file of the recorded
size inside the layer's directory (no symlink is followed out of it), and ``docker load`` on the
target checks each layer's digest and forge the loaded image ID. Where any of that does not
hold before streaming (another storage driver, the containerd store, no read access, a
remote daemon), :func:`open_store` says why and the caller uses ``docker save``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from forge.errors import ForgeError
from forge.images import oci
from forge.images.inspect import ImageInfo
from forge.images.layers import chain_ids
from forge.session import HostSession

BLOCK = 512
_CHUNK = 1 << 20
_FILE = 1  # tar-split entry types (github.com/vbatts/tar-split/tar/storage)
_SEGMENT = 2


class LayerStoreError(ForgeError):
    """The layer store cannot produce this image (the caller falls back to ``docker save``)."""


@dataclass(frozen=True)
class Layer:
    """One layer as the store holds it."""

    chain_id: str
    diff_id: str
    tar_split: Path  # tar-split.json.gz
    files: Path  # the driver's directory of the layer's own files
    size: int  # bytes of the reassembled layer tar


@dataclass(frozen=True)
class Entry:
    """One tar-split record: raw bytes of the tar (headers, padding), or a file's contents."""

    segment: bytes = b""
    name: bytes = b""  # for a file: its path in the layer
    size: int = 0


def read_tar_split(path: Path) -> Iterator[Entry]:
    """The records of a tar-split file, in order."""
    try:
        with gzip.open(path, "rb") as f:
            for line in f:
                rec = json.loads(line)
                kind = rec.get("type")
                if kind == _SEGMENT:
                    payload = rec.get("payload")
                    if payload:
                        yield Entry(segment=base64.b64decode(payload))
                elif kind == _FILE:
                    raw = rec.get("name_raw")
                    name = base64.b64decode(raw) if raw else str(rec.get("name", "")).encode()
                    yield Entry(name=name, size=int(rec.get("size") or 0))
                else:
                    raise LayerStoreError(f"{path}: unknown tar-split record type {kind!r}")
    except (OSError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise LayerStoreError(f"cannot read {path}: {e}") from e


class _Files:
    """Opens a layer's files by their tar names, never following a symlink out of the layer."""

    def __init__(self, root: Path) -> None:
        self.root = os.fsencode(os.path.realpath(root))
        self._dirs: dict[bytes, bool] = {}

    def _path(self, name: bytes) -> bytes:
        rel = os.path.normpath(b"/" + name).lstrip(b"/")
        if not rel or rel == b".":
            raise LayerStoreError(f"file entry with no name in {self.root!r}")
        parent = os.path.dirname(rel)
        ok = self._dirs.get(parent)
        if ok is None:
            real = os.path.realpath(os.path.join(self.root, parent))
            ok = real == self.root or real.startswith(self.root + b"/")
            self._dirs[parent] = ok
        if not ok:
            raise LayerStoreError(f"{name.decode(errors='replace')!r} lies outside its layer's directory")
        return os.path.join(self.root, rel)

    def check(self, name: bytes, size: int) -> None:
        try:
            st = os.lstat(self._path(name))
        except OSError as e:
            raise LayerStoreError(f"layer file {name.decode(errors='replace')!r}: {e.strerror}") from e
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise LayerStoreError(
                f"layer file {name.decode(errors='replace')!r} is not the regular file of {size} bytes "
                "the layer recorded"
            )

    def open(self, name: bytes) -> int:
        try:
            return os.open(self._path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise LayerStoreError(f"layer file {name.decode(errors='replace')!r}: {e.strerror}") from e


def layer_tar_size(tar_split: Path, files: Path, *, check: bool = True) -> int:
    """Bytes of the reassembled layer tar; with ``check``, every file it will read must be
    there, intact."""
    getter = _Files(files)
    total = 0
    for e in read_tar_split(tar_split):
        if e.size and check:
            getter.check(e.name, e.size)
        total += len(e.segment) + e.size
    return total


def write_layer_tar(layer: Layer, out: Callable[[bytes], object]) -> int:
    """Reassemble the layer's tar into ``out``, exactly as the daemon would; returns its size."""
    getter = _Files(layer.files)
    written = 0
    for e in read_tar_split(layer.tar_split):
        if e.segment:
            out(e.segment)
            written += len(e.segment)
        if e.size:
            fd = getter.open(e.name)
            try:
                left = e.size
                while left:
                    chunk = os.read(fd, min(_CHUNK, left))
                    if not chunk:
                        break
                    out(chunk)
                    left -= len(chunk)
            finally:
                os.close(fd)
            if left:
                raise LayerStoreError(f"layer file {e.name.decode(errors='replace')!r} shrank while being read")
            written += e.size
    if written != layer.size:
        raise LayerStoreError(f"layer {layer.diff_id[:19]} came to {written} bytes, not the {layer.size} checked")
    return written


@dataclass(frozen=True)
class LayerStore:
    """A daemon's data root (overlay2), readable here."""

    root: Path

    @property
    def _db(self) -> Path:
        return self.root / "image" / "overlay2"

    def config(self, image_id: str) -> bytes:
        hexid = image_id.removeprefix("sha256:")
        path = self._db / "imagedb" / "content" / "sha256" / hexid
        try:
            data = path.read_bytes()
        except OSError as e:
            raise LayerStoreError(f"cannot read the image config {path}: {e.strerror}") from e
        if hashlib.sha256(data).hexdigest() != hexid:
            raise LayerStoreError(f"{path} does not hash to the image ID")
        return data

    def layer(self, chain_id: str, diff_id: str, *, check: bool = True) -> Layer:
        d = self._db / "layerdb" / "sha256" / chain_id.removeprefix("sha256:")
        try:
            recorded = (d / "diff").read_text().strip()
            cache_id = (d / "cache-id").read_text().strip()
        except OSError as e:
            raise LayerStoreError(f"layer {chain_id[:19]} is not in {self.root}: {e.strerror}") from e
        if recorded != diff_id:
            raise LayerStoreError(f"layer {chain_id[:19]} records diff ID {recorded[:19]}, not {diff_id[:19]}")
        if not cache_id or "/" in cache_id or cache_id.startswith("."):
            raise LayerStoreError(f"layer {chain_id[:19]} has a bad cache-id {cache_id!r}")
        files = self.root / "overlay2" / cache_id / "diff"
        tar_split = d / "tar-split.json.gz"
        if not files.is_dir():
            raise LayerStoreError(f"layer {chain_id[:19]}: no directory {files}")
        return Layer(chain_id, diff_id, tar_split, files, layer_tar_size(tar_split, files, check=check))


@dataclass(frozen=True)
class Archive:
    """The load archive of one image for one set of layers to leave out (:mod:`forge.images.oci`)."""

    image: ImageInfo
    config: bytes
    layers: tuple[Layer, ...]  # every layer of the image, bottom first
    send: tuple[Layer, ...]  # the ones to send

    @cached_property
    def manifest(self) -> oci.Manifest:
        """The image's OCI manifest (uncompressed layers): its digest is the image's ID on a
        daemon with the containerd image store."""
        config = oci.Blob(self.image.id, len(self.config), oci.CONFIG)
        return oci.canonical(config, [oci.Blob(layer.diff_id, layer.size) for layer in self.layers])

    def parts(self) -> Iterator[bytes | Layer]:
        """The archive in order: tar headers and small members as bytes, each layer's tar as
        its :class:`Layer` (read when written). One layout for :attr:`size` and :meth:`write`."""
        yield oci.member(oci.blob_path(self.image.id), self.config)
        for layer in self.send:
            yield oci.header(oci.blob_path(layer.diff_id), layer.size)
            yield layer
            yield oci.padding(layer.size)
        yield oci.tail(self.manifest)

    @cached_property
    def size(self) -> int:
        """Bytes of the whole archive."""
        return sum(p.size if isinstance(p, Layer) else len(p) for p in self.parts())

    def write(self, out: Callable[[bytes], object]) -> int:
        """Stream the archive into ``out`` in chunks of about a MiB (a layer's tar headers and
        small files are gathered, not passed one by one); returns the bytes written."""
        buf = _Coalesce(out)
        for part in self.parts():
            if isinstance(part, Layer):
                write_layer_tar(part, buf.write)
            else:
                buf.write(part)
        buf.flush()
        if buf.written != self.size:
            raise LayerStoreError(f"the archive came to {buf.written} bytes, not the {self.size} planned")
        return buf.written


class _Coalesce:
    """Gathers small writes into ~1 MiB chunks for ``out`` (each chunk costs the consumer a
    queue hop or a pipe write)."""

    def __init__(self, out: Callable[[bytes], object]) -> None:
        self._out = out
        self._buf = bytearray()
        self.written = 0

    def write(self, data: bytes) -> None:
        if len(data) >= _CHUNK:  # a big file's chunk: as it is, after what was gathered
            self.flush()
            self.written += len(data)
            self._out(data)
            return
        self._buf += data
        if len(self._buf) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self.written += len(self._buf)
            self._out(bytes(self._buf))
            self._buf.clear()


def plan_archive(store: LayerStore, image: ImageInfo, skip: Sequence[str] | frozenset[str]) -> Archive:
    """The archive for a host that has the layers ``skip`` (chain IDs): checked, not yet read
    (the files of the layers to send are checked; the others only sized, for the manifest)."""
    config = store.config(image.id)
    chains = chain_ids(image.layers)
    layers = tuple(store.layer(c, d, check=c not in skip) for c, d in zip(chains, image.layers, strict=True))
    return Archive(image, config, layers, tuple(layer for layer in layers if layer.chain_id not in skip))


# --------------------------------------------------------------------------- finding the store

#: ``docker info`` fields: where the daemon keeps its data, and with which storage driver.
INFO_FORMAT = "[{{json .DockerRootDir}},{{json .Driver}}]"


def open_store(s: HostSession) -> tuple[LayerStore | None, str]:
    """The source daemon's layer store when forge can read it here, else None and why not."""
    host = s.host
    if not host.local:
        return None, "the source is another machine"
    if host.docker_host and not host.docker_host.startswith("unix://"):
        return None, f"the source daemon is reached over {host.docker_host.split(':', 1)[0]}"
    r = s.run(s.docker("info", "--format", INFO_FORMAT))
    try:
        root_dir, driver = json.loads(r.stdout) if r.ok else ("", "")
    except (ValueError, TypeError):
        root_dir, driver = "", ""
    if not root_dir or not isinstance(root_dir, str):
        return None, "docker info did not say where the daemon keeps its data"
    if driver != "overlay2":
        return None, f"the daemon's storage driver is {driver!r}, not overlay2"
    root = Path(root_dir)
    db = root / "image" / "overlay2" / "layerdb"
    if not db.is_dir():
        return None, f"no classic layer store at {db} (containerd image store?)"
    if not os.access(db, os.R_OK | os.X_OK) or not os.access(root / "overlay2", os.R_OK | os.X_OK):
        return None, f"{root} is not readable by this user (run as root to read layers directly)"
    return LayerStore(root), ""
