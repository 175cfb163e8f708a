"""Fan-out of one stream to many host feeds: a slow or failed host never hangs the others."""

from __future__ import annotations

import threading

from forge.images.stream import Compressor, Fanout, HostFeed


def _drain(feed: HostFeed, out: list[bytes]) -> threading.Thread:
    def run() -> None:
        while data := feed.read(1000):
            out.append(data)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_every_feed_gets_every_byte_in_order() -> None:
    feeds = [HostFeed("a"), HostFeed("b")]
    outs: list[list[bytes]] = [[], []]
    readers = [_drain(f, o) for f, o in zip(feeds, outs, strict=True)]
    fan = Fanout(feeds)
    payload = bytes(range(256)) * 3000
    for i in range(0, len(payload), 4096):
        fan.write(payload[i : i + 4096])
    fan.close()
    for r in readers:
        r.join(10)
    assert [b"".join(o) for o in outs] == [payload, payload]
    assert feeds[0].bytes_read == len(payload)


def test_an_empty_chunk_is_not_the_end_of_the_stream() -> None:
    feed = HostFeed("a")
    out: list[bytes] = []
    reader = _drain(feed, out)
    fan = Fanout([feed])
    for chunk in (b"header", b"", b"rest"):
        fan.write(chunk)
    fan.close()
    reader.join(10)
    assert b"".join(out) == b"headerrest"


def test_a_host_that_stopped_reading_does_not_block_the_others() -> None:
    dead, live = HostFeed("dead"), HostFeed("live")
    out: list[bytes] = []
    reader = _drain(live, out)
    dead.stop()
    fan = Fanout([dead, live])
    for _ in range(500):  # far more chunks than a feed's queue holds
        fan.write(b"x" * 1000)
    fan.close()
    reader.join(10)
    assert len(b"".join(out)) == 500_000
    assert fan.alive and not dead.put(b"more")


def test_the_compressor_output_decompresses_to_the_input() -> None:
    import subprocess

    feed = HostFeed("h")
    out: list[bytes] = []
    reader = _drain(feed, out)
    comp = Compressor(["gzip", "-c", "-1"], Fanout([feed]))
    payload = b"forge " * 100_000
    comp.write(payload)
    comp.close()
    reader.join(10)
    assert subprocess.run(["gzip", "-d", "-c"], input=b"".join(out), capture_output=True).stdout == payload
