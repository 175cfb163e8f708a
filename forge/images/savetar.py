"""A streaming transcoder from a ``docker save`` archive to forge's load archive
(:mod:`forge.images.oci`), leaving out the layers a target already has.

Bytes are pushed in as they come from ``docker save`` (any chunk size) and pushed out to
``out`` at once; nothing but one 512-byte header or one small ``json`` member is ever held.
It reads what every engine writes:

- Engine 20.10 (classic store): ``<v1 dir>/{VERSION,json,layer.tar}``, ``<config>.json``,
  ``manifest.json``. A ``<dir>/json`` comes before its ``layer.tar`` and tells which layer the
  directory holds (:mod:`forge.images.layers`); the ``layer.tar`` goes out as the blob of that
  diff ID, or not at all when the target has the layer. A directory that matches no layer
  stops the stream (its blob could not be named).
- Engine 25+ (OCI layout): ``blobs/sha256/<digest>`` sorted by digest, then ``index.json``,
  ``manifest.json``. With the classic store a layer's blob digest is its diff ID; with the
  containerd store the blobs are the ones the image was pulled or built with (compressed), so
  the source's manifest, read first (:func:`forge.images.sync`'s pre-pass), says which blob
  is which layer.

The config and the layers to send pass through under their blob names; everything else (the
source's own indexes and manifests, v1 metadata) is left out, and :func:`forge.images.oci.tail`
ends the archive: the source's manifest when one was given, else the canonical one made from the
layer sizes seen on the way.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from forge.errors import ForgeError
from forge.images import oci
from forge.images.layers import chain_ids, identify_v1_dir

BLOCK = 512
_MAX_SMALL = 4 << 20  # json members and extended headers are buffered up to this size
_PASS_TYPES_LONGNAME = (b"x", b"L")


class ArchiveError(ForgeError):
    """The ``docker save`` stream is not a tar archive this filter can read."""


@dataclass
class FilterStats:
    """What went through the filter, in bytes of the uncompressed archive."""

    bytes_in: int = 0
    bytes_out: int = 0
    layers_sent: list[int] = field(default_factory=list)  # indices, 0 = bottom layer
    layers_skipped: list[int] = field(default_factory=list)
    skipped_bytes: int = 0
    complete: bool = False  # the end-of-archive marker was seen


class _Mode(enum.Enum):
    HEADER = 1
    PASS = 2
    DROP = 3
    BUFFER = 4
    TRAILER = 5


def _octal(field_: bytes) -> int:
    if field_ and field_[0] & 0x80:  # base-256 (GNU) for big sizes
        value = field_[0] & 0x7F
        for b in field_[1:]:
            value = (value << 8) | b
        return value
    text = field_.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _member_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "replace")


def _pax_path(data: bytes) -> str | None:
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            return None
        try:
            length = int(data[pos:space])
        except ValueError:
            return None
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "replace")
        if length <= 0:
            return None
        pos += length
    return None


class SaveTranscoder:
    """Push ``docker save`` bytes in with :meth:`write`; forge's load archive goes to ``out``.

    ``diff_ids``: the image's layers; ``config``: its config digest; ``source_manifest``: the
    manifest of a containerd-store source (which blob is which layer), None otherwise.
    """

    def __init__(
        self,
        diff_ids: Sequence[str],
        skip: Collection[str],
        out: Callable[[bytes], None],
        *,
        config: str,
        source_manifest: oci.Manifest | None = None,
    ) -> None:
        self._diff_ids = list(diff_ids)
        self._chains = chain_ids(diff_ids)
        self._skip = frozenset(skip)
        self._out = out
        self._config = config
        self._source_manifest = source_manifest
        blobs = [b.digest for b in source_manifest.layers] if source_manifest else self._diff_ids
        if len(blobs) != len(self._diff_ids):
            raise ArchiveError("the source's manifest does not list the image's layers")
        self._by_blob: dict[str, list[int]] = {}
        for i, d in enumerate(blobs):
            self._by_blob.setdefault(d, []).append(i)
        self._sizes: list[int | None] = [None] * len(blobs)
        self._config_size: int | None = None
        self._dirs: dict[str, int] = {}
        self.stats = FilterStats()
        self.manifest: oci.Manifest | None = None  # the manifest written, once complete
        self._mode = _Mode.HEADER
        self._buf = bytearray()
        self._header = b""
        self._remaining = 0  # bytes of the current member's data (with padding) still to come
        self._size = 0
        self._long_name: str | None = None
        self._buffer_kind = b""
        self._name = ""

    # ------------------------------------------------------------------ input

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.stats.bytes_in += len(view)
        pos, n = 0, len(view)
        while pos < n and self._mode is not _Mode.TRAILER:
            if self._mode is _Mode.HEADER:
                take = min(BLOCK - len(self._buf), n - pos)
                self._buf += view[pos : pos + take]
                pos += take
                if len(self._buf) == BLOCK:
                    header = bytes(self._buf)
                    self._buf.clear()
                    self._on_header(header)
                continue
            take = min(self._remaining, n - pos)
            self._on_data(view[pos : pos + take])
            pos += take
        return len(view)

    def _on_data(self, chunk: memoryview) -> None:
        self._remaining -= len(chunk)
        if self._mode is _Mode.PASS:
            self._emit(chunk)
        elif self._mode is _Mode.DROP:
            self.stats.skipped_bytes += len(chunk)
        else:
            self._buf += chunk
        if self._remaining == 0:
            if self._mode is _Mode.BUFFER:
                self._on_buffered(bytes(self._buf))
                self._buf.clear()
            self._mode = _Mode.HEADER

    def finish(self) -> FilterStats:
        """Call at the end of the stream; raises when the archive was cut short."""
        if not self.stats.complete:
            raise ArchiveError("the docker save stream ended before the end of the archive")
        return self.stats

    # ------------------------------------------------------------------ members

    def _emit(self, data: bytes | memoryview) -> None:
        if data:
            self.stats.bytes_out += len(data)
            self._out(bytes(data))

    def _on_header(self, header: bytes) -> None:
        if header == bytes(BLOCK):
            self._end()
            return
        try:
            size = _octal(header[124:136])
        except ValueError as e:
            raise ArchiveError(f"not a tar header at byte {self.stats.bytes_in}: {e}") from e
        kind = header[156:157]
        self._name = self._long_name or _member_name(header)
        self._header, self._size = header, size
        self._remaining = (size + BLOCK - 1) // BLOCK * BLOCK
        if kind in _PASS_TYPES_LONGNAME and size <= _MAX_SMALL:
            self._start_buffer(kind)  # an extended header: only its name is kept
            return
        self._long_name = None
        if kind in (b"0", b"\0") and self._name.endswith("/json") and size <= _MAX_SMALL:
            self._start_buffer(b"json")
            return
        target = self._route(self._name, size) if kind in (b"0", b"\0") else None
        if target is None:
            self._mode = _Mode.DROP if self._remaining else _Mode.HEADER
            return
        self._emit(oci.header(target, size))
        self._mode = _Mode.PASS if self._remaining else _Mode.HEADER

    def _route(self, name: str, size: int) -> str | None:
        """The blob name a member goes out under, or None to leave it out."""
        if name.startswith("blobs/sha256/"):
            digest = "sha256:" + name[len("blobs/sha256/") :]
            if digest == self._config:
                self._config_size = size
                return name
            positions = self._by_blob.get(digest)
            return self._layer(positions, size, name) if positions else None
        if name == self._config.removeprefix("sha256:") + ".json":
            self._config_size = size
            return oci.blob_path(self._config)
        if name.endswith("/layer.tar"):
            index = self._dirs.get(name[: -len("/layer.tar")])
            if index is None:
                raise ArchiveError(f"the docker save stream holds a layer forge cannot identify ({name})")
            return self._layer([index], size, oci.blob_path(self._diff_ids[index]))
        return None  # the source's manifests and indexes, v1 metadata, directories

    def _layer(self, positions: list[int], size: int, name: str) -> str | None:
        for i in positions:
            self._sizes[i] = size
        if all(self._chains[i] in self._skip for i in positions):
            self.stats.layers_skipped.extend(positions)
            return None
        self.stats.layers_sent.extend(positions)
        return name

    def _start_buffer(self, kind: bytes) -> None:
        self._buffer_kind = kind
        if self._remaining:
            self._mode = _Mode.BUFFER
        else:
            self._on_buffered(b"")

    def _on_buffered(self, data: bytes) -> None:
        payload = data[: self._size]
        if self._buffer_kind == b"x":
            self._long_name = _pax_path(payload) or self._long_name
        elif self._buffer_kind == b"L":
            self._long_name = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
        else:  # a save directory's json: which layer the directory holds
            index = identify_v1_dir(payload, self._chains)
            if index is not None:
                self._dirs[self._name[: -len("/json")]] = index
        self._mode = _Mode.HEADER

    def _end(self) -> None:
        """End of the source archive: the manifest, the indexes, and the end of ours."""
        missing = [i for i, size in enumerate(self._sizes) if size is None]
        if self._config_size is None or missing:
            what = "its config" if self._config_size is None else f"layer {missing[0]}"
            raise ArchiveError(f"the docker save stream ended without {what}")
        if self._source_manifest is not None:
            manifest = self._source_manifest
        else:
            config = oci.Blob(self._config, self._config_size, oci.CONFIG)
            sizes = [s or 0 for s in self._sizes]
            manifest = oci.canonical(config, [oci.Blob(d, n) for d, n in zip(self._diff_ids, sizes, strict=True)])
        self._emit(oci.tail(manifest))
        self.manifest = manifest
        self.stats.complete = True
        self._mode = _Mode.TRAILER
