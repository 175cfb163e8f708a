"""A streaming filter over a ``docker save`` archive: drop the layers a target already has.

Bytes are pushed in as they come from ``docker save`` (any chunk size) and pushed out to
``out`` at once; nothing but one 512-byte header or one small ``json`` member is ever held.
A ``<dir>/layer.tar`` is dropped only when its directory was identified (see
:mod:`forge.images.layers`) as a layer whose chain ID is in ``skip``; anything unknown
passes unchanged. ``docker load`` (Engine 20.10 and later) does not open the ``layer.tar``
of a layer the daemon already has, so the filtered archive loads to the same image ID.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from forge.errors import ForgeError
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
    unidentified: int = 0  # layer.tar members sent because their layer was not recognised
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


class LayerFilter:
    """Push ``docker save`` bytes in with :meth:`write`; filtered bytes go to ``out``."""

    def __init__(self, diff_ids: Sequence[str], skip: Collection[str], out: Callable[[bytes], None]) -> None:
        self._chains = chain_ids(diff_ids)
        self._skip = frozenset(skip)
        self._out = out
        self._by_diff: dict[str, list[int]] = {}
        for i, d in enumerate(diff_ids):
            self._by_diff.setdefault(d, []).append(i)
        self._dirs: dict[str, int] = {}
        self.stats = FilterStats()
        self._mode = _Mode.HEADER
        self._buf = bytearray()
        self._header = b""
        self._remaining = 0  # bytes of the current member's data (with padding) still to come
        self._size = 0
        self._pending: list[bytes] = []  # extended headers waiting for the member they describe
        self._long_name: str | None = None
        self._buffer_kind = b""
        self._name = ""

    # ------------------------------------------------------------------ input

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.stats.bytes_in += len(view)
        pos = 0
        n = len(view)
        while pos < n:
            if self._mode is _Mode.TRAILER:
                self._emit(view[pos:])
                break
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
            chunk = view[pos : pos + take]
            pos += take
            self._remaining -= take
            if self._mode is _Mode.PASS:
                self._emit(chunk)
            elif self._mode is _Mode.DROP:
                self.stats.skipped_bytes += take
            else:
                self._buf += chunk
            if self._remaining == 0:
                if self._mode is _Mode.BUFFER:
                    self._on_buffered(bytes(self._buf))
                    self._buf.clear()
                self._mode = _Mode.HEADER
        return len(view)

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
            self._emit_pending()
            self._emit(header)
            self.stats.complete = True
            self._mode = _Mode.TRAILER
            return
        try:
            size = _octal(header[124:136])
        except ValueError as e:
            raise ArchiveError(f"not a tar header at byte {self.stats.bytes_in}: {e}") from e
        kind = header[156:157]
        name = self._long_name or _member_name(header)
        self._header = header
        self._size = size
        self._remaining = (size + BLOCK - 1) // BLOCK * BLOCK
        self._name = name
        if kind in _PASS_TYPES_LONGNAME and size <= _MAX_SMALL:
            self._start_buffer(kind)
            return
        self._long_name = None
        if kind in (b"0", b"\0") and name.endswith("/json") and size <= _MAX_SMALL:
            self._start_buffer(b"json")
            return
        if kind in (b"0", b"\0") and self._droppable(name):
            self._pending.clear()
            self._mode = _Mode.DROP if self._remaining else _Mode.HEADER
            return
        self._emit_pending()
        self._emit(header)
        self._mode = _Mode.PASS if self._remaining else _Mode.HEADER

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
            self._pending.append(self._header + data)
        elif self._buffer_kind == b"L":
            self._long_name = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
            self._pending.append(self._header + data)
        else:  # a save directory's json
            directory = self._name[: -len("/json")]
            index = identify_v1_dir(payload, self._chains)
            if index is not None:
                self._dirs[directory] = index
            self._emit_pending()
            self._emit(self._header + data)
        self._mode = _Mode.HEADER

    def _emit_pending(self) -> None:
        for block in self._pending:
            self._emit(block)
        self._pending.clear()

    def _droppable(self, name: str) -> bool:
        if name.endswith("/layer.tar"):
            index = self._dirs.get(name[: -len("/layer.tar")])
            if index is None:
                self.stats.unidentified += 1
                return False
            if self._chains[index] in self._skip:
                self.stats.layers_skipped.append(index)
                return True
            self.stats.layers_sent.append(index)
            return False
        if name.startswith("blobs/sha256/"):  # the OCI layout of Engine 25+: blobs named by digest
            positions = self._by_diff.get("sha256:" + name[len("blobs/sha256/") :], [])
            if positions and all(self._chains[i] in self._skip for i in positions):
                self.stats.layers_skipped.extend(positions)
                return True
            self.stats.layers_sent.extend(positions)
        return False
