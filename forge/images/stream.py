"""Plumbing for one source read fanned out to many hosts: feeds, fan-out, local compressor.

Data flows by push from the source (``docker save``'s bytes) through a :class:`Tee` into one
:class:`~forge.images.savetar.LayerFilter` per group of hosts, optionally through a local
compressor, into a :class:`Fanout` that puts each chunk into every live host's bounded
:class:`HostFeed`, which the host's SSH channel reads. Bounded queues make the slowest host set
the pace instead of buffering the image in memory; a host that failed stops consuming and is
skipped from then on.
"""

from __future__ import annotations

import io
import queue
import subprocess
import threading
from collections.abc import Callable, Sequence

from forge.errors import ForgeError

_QUEUE_CHUNKS = 64
_READ = 1 << 20


class StreamError(ForgeError):
    pass


class HostFeed(io.RawIOBase):
    """What one host's channel reads: chunks put by the fan-out, then EOF."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self._left = b""
        self._eof = False
        self.consumer_gone = threading.Event()
        self.bytes_read = 0

    # producer side
    def put(self, chunk: bytes) -> bool:
        """Queue a chunk; False once the host stopped reading (it is then skipped)."""
        if not chunk:  # the reader takes an empty read for the end of the stream
            return not self.consumer_gone.is_set()
        while not self.consumer_gone.is_set():
            try:
                self._q.put(chunk, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def end(self) -> None:
        """No more data: the host's reader gets EOF once it has drained the queue."""
        while not self.consumer_gone.is_set():
            try:
                self._q.put(None, timeout=0.2)
                return
            except queue.Full:
                continue

    # consumer side
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._left:
            if self._eof:
                return 0
            chunk = self._q.get()
            if chunk is None:
                self._eof = True
                return 0
            self._left = chunk
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        self.bytes_read += n
        return n

    def stop(self) -> None:
        """The host is done reading (finished or failed): never block a producer again."""
        self.consumer_gone.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._q.get_nowait()
            except queue.Empty:
                break


class Fanout:
    """One writer, many host feeds."""

    def __init__(self, feeds: Sequence[HostFeed]) -> None:
        self.feeds = list(feeds)
        self.bytes = 0

    def write(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        for feed in self.feeds:
            feed.put(chunk)

    def close(self) -> None:
        for feed in self.feeds:
            feed.end()

    @property
    def alive(self) -> bool:
        return any(not f.consumer_gone.is_set() for f in self.feeds)


class Compressor:
    """A local compressor process between a group's filter and its fan-out."""

    def __init__(self, argv: Sequence[str], fanout: Fanout) -> None:
        self.argv = list(argv)
        self.fanout = fanout
        self._proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._pump, name="forge-compress", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        out = self._proc.stdout
        assert out is not None
        while chunk := out.read1(_READ):  # type: ignore[attr-defined]
            self.fanout.write(chunk)

    def write(self, chunk: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(chunk)
        except BrokenPipeError as e:
            raise StreamError(f"the compressor {self.argv[0]} stopped: {self._stderr()}") from e

    def close(self) -> None:
        """End of input: wait for the compressor, then end every host's feed."""
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        self._reader.join()
        rc = self._proc.wait()
        if rc != 0:
            raise StreamError(f"the compressor {self.argv[0]} failed with status {rc}: {self._stderr()}")
        self.fanout.close()

    def abort(self) -> None:
        self._proc.kill()
        self._proc.wait()
        self._reader.join(5)

    def _stderr(self) -> str:
        err = self._proc.stderr
        return err.read().decode("utf-8", "replace").strip()[-300:] if err else ""


class Direct:
    """No compression: the filter writes straight into the fan-out."""

    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout

    def write(self, chunk: bytes) -> None:
        self.fanout.write(chunk)

    def close(self) -> None:
        self.fanout.close()

    def abort(self) -> None:
        pass


class Tee(io.RawIOBase):
    """The sink of the source's ``docker save``: every chunk to every group's writer."""

    def __init__(self, writers: Sequence[Callable[[bytes], object]], on_bytes: Callable[[int], None]) -> None:
        super().__init__()
        self._writers = list(writers)
        self._on_bytes = on_bytes

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        for w in self._writers:
            w(data)
        self._on_bytes(len(data))
        return len(data)
