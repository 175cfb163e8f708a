"""What a direct transfer runs on its hosts, and what they print back.

- :func:`source_script`: the source's side (``docker save | dd | compress | tee -p`` into one
  ``ssh`` per target, or into the first hop of a chain);
- :func:`relay_script`: a chain's hop, run as its transfer key's forced command;
- :func:`parse_report`: their ``forge-link ...`` lines, read as untrusted text; :class:`Lines`
  collects them from the source's stdout with ``dd``'s byte counts for the progress bar.

The ssh each runs is :func:`forge.images.hostlink.ssh_argv`'s; every command is rendered by
:mod:`forge.shell`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from forge import shell
from forge.images import codec as codecs
from forge.images import hostlink
from forge.images.hostlink import Peer

_LOADED = re.compile(r"^Loaded image ID: (sha256:[0-9a-f]{64})$")
_PROGRESS = re.compile(rb"^(\d+) bytes")
_LINE = re.compile(r"^forge-link (?:(save|wire) (\d+)|(host|link|out|err|probe) (\d+) ?(.*))$")
_KEEP_LINES = 400


@dataclass
class Report:
    """The source script's lines, parsed."""

    save_status: int | None = None
    wire: int = 0
    status: dict[int, int] = field(default_factory=dict)
    out: dict[int, list[str]] = field(default_factory=dict)
    err: dict[int, list[str]] = field(default_factory=dict)
    probe: dict[int, str] = field(default_factory=dict)
    link: dict[int, int] = field(default_factory=dict)  # a chain: the exit of the ssh to a hop
    tar: int = 0  # archive bytes read from docker save (dd's count)


def parse_report(lines: Sequence[str]) -> Report:
    """Pure: the ``forge-link ...`` lines the source scripts print (untrusted: only printable
    text is kept, numbers are checked)."""
    r = Report()
    for line in lines:
        m = _LINE.match(line)
        if m is None:
            continue
        if m.group(1) == "save":
            r.save_status = int(m.group(2))
            continue
        if m.group(1) == "wire":
            r.wire = int(m.group(2))
            continue
        kind, i, rest = m.group(3), int(m.group(4)), printable(m.group(5))
        if kind in ("host", "link") and rest.isdigit():
            (r.status if kind == "host" else r.link)[i] = int(rest)
        elif kind in ("out", "err"):
            (r.out if kind == "out" else r.err).setdefault(i, []).append(rest)
        elif kind == "probe":
            r.probe[i] = rest
    return r


def printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:300]


def loaded_id(out: Sequence[str]) -> str | None:
    """The ID ``docker load -q`` printed for an archive without tags."""
    for line in out:
        m = _LOADED.match(line.strip())
        if m:
            return m.group(1)
    return None


class Lines(io.RawIOBase):
    """The source script's stdout: ``dd``'s progress counts to a callback, ``forge-link``
    lines kept (a bounded number)."""

    def __init__(self, on_bytes: Callable[[int], None]) -> None:
        self._on_bytes = on_bytes
        self._buf = b""
        self.total = 0
        self.lines: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._buf += bytes(data)
        *whole, self._buf = re.split(rb"[\r\n]", self._buf)
        if len(self._buf) > 4096:
            self._buf = b""
        for piece in whole:
            m = _PROGRESS.match(piece)
            if m:
                n = int(m.group(1))
                if n > self.total:
                    self._on_bytes(n - self.total)
                    self.total = n
            elif piece.startswith(b"forge-link ") and len(self.lines) < _KEEP_LINES:
                self.lines.append(piece.decode("utf-8", "replace"))
        return len(data)


def source_script(
    directory: str, save: Sequence[str], codec: codecs.Codec, peers: Sequence[Peer], *, relay: bool
) -> shell.Script:
    """The source's side: ``docker save`` through ``dd`` (byte counts for the progress bar) and
    the compressor into one ``ssh`` per peer (a chain: only the first). Prints the save's
    status, the compressed size, and per peer its status and last lines (a chain: the relay's
    own report, which holds every later hop's)."""
    lines = [
        f"cd -- {shell.quote(directory)} || exit 1",
        "cut -d' ' -f5 /proc/$$/stat > pgid",
        "mkfifo " + " ".join(f"f{p.index}" for p in peers) + " || exit 1",
    ]
    for p in peers:
        ssh = shell.render(hostlink.ssh_argv(directory, p, "forge-load"))
        lines.append(f"{ssh} < f{p.index} > out{p.index} 2> err{p.index} & p{p.index}=$!")
    stages = [shell.render(save), "dd bs=1M status=progress 2>&3"]
    if codec.compress:
        stages.append(shell.render(codec.compress))
    stages += ["tee -p " + " ".join(f"f{p.index}" for p in peers), "wc -c > wire"]
    lines += ["exec 3>&1", " | ".join(stages), 'echo "forge-link save ${PIPESTATUS[0]}"']
    lines.append('echo "forge-link wire $(cat wire)"')
    for p in peers:
        i = p.index
        if relay:
            lines += [f'wait "$p{i}"; echo "forge-link link {i} $?"', f"cat out{i}"]
        else:
            lines += [
                f'wait "$p{i}"; echo "forge-link host {i} $?"',
                f"head -n 5 out{i} | sed 's/^/forge-link out {i} /'",
            ]
        lines.append(f"tail -n 5 err{i} | sed 's/^/forge-link err {i} /'")
    lines.append("rm -f pgid")
    return shell.render(["bash", "-c", "\n".join(lines)])


def relay_script(directory: str, index: int, nxt: Peer | None, load: shell.Script) -> str:
    """A hop of a chain (run as its key's forced command): its stdin into its own load and, at
    once, to the next hop (``tee -p``: a next hop that fails is dropped, the load goes on; a
    load that fails, the passing on goes on). Prints its own status and last lines, then the
    next hop's report."""
    lines = [
        "set -o pipefail",
        f"cd -- {shell.quote(directory)} || exit 1",
        "cut -d' ' -f5 /proc/$$/stat > pgid",
    ]
    feed = "cat"
    if nxt is not None:
        ssh = shell.render(hostlink.ssh_argv(directory, nxt, "forge-load"))
        lines += ["mkfifo next || exit 1", f"{ssh} < next > out 2> err & p=$!"]
        feed = "tee -p next"
    lines += [
        f"{feed} | {load} > load.out 2> load.err",
        "rc=$?",
        f'echo "forge-link host {index} $rc"',
        f"head -n 5 load.out | sed 's/^/forge-link out {index} /'",
        f"tail -n 5 load.err | sed 's/^/forge-link err {index} /'",
    ]
    if nxt is not None:
        i = nxt.index
        lines += [
            f'wait "$p"; echo "forge-link link {i} $?"',
            f"tail -n 5 err | sed 's/^/forge-link err {i} /'",
            "cat out",
        ]
    lines += ["rm -f pgid", 'exit "$rc"']
    return "\n".join(lines) + "\n"
