"""``forge sync --from HOST --via direct``: the source sends to its targets itself.

The client only steers: it places a transfer key per target (:mod:`forge.images.hostlink`),
has the source probe each target through it, then runs one script on the source per group of
targets that take the same compression::

    docker save ID | dd status=progress | COMPRESS | tee -p fifo0 fifo1 ... | wc -c
    ssh <target 0's key, pinned host key> < fifo0      (target: forced decompress | docker load)
    ssh <target 1's key, pinned host key> < fifo1
    ...

``tee -p`` drops a target whose connection ended and goes on feeding the others. What comes
back to the client is a few lines: ``dd``'s byte counts (the progress bar), each target's exit
status and the last lines of its output. The client then checks on each target, over its own
connection, that the image arrived whole with the expected ID, and only then tags it; a target
whose load failed is cleaned as after any failed load (:func:`forge.images.wave.cleanup`).

Targets the source cannot reach (no route, a firewall, an sshd that does not read
``~/.ssh/authorized_keys``, a host key that differs from the one forge verified) are returned
with the reason, for the caller to serve through the client. Every target gets the whole image
(``docker save`` cannot leave out layers the source cannot name before the stream ends).
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, cast

from forge import fleet, shell
from forge.errors import ForgeError, HostError
from forge.fleet import HostResult, Pool
from forge.images import codec as codecs
from forge.images import hostlink, memo
from forge.images.hostlink import LinkError, Peer
from forge.images.inspect import CLASSIC
from forge.images.plan import HostPlan
from forge.images.source import Source
from forge.images.wave import HostSync, SyncFailed, cleanup, tag, verify
from forge.progress import Progress
from forge.session import HostSession

_LOADED = re.compile(r"^Loaded image ID: (sha256:[0-9a-f]{64})$")
_PROGRESS = re.compile(rb"^(\d+) bytes")
_LINE = re.compile(r"^forge-link (?:(save|wire) (\d+)|(host|out|err|probe) (\d+) ?(.*))$")
_KEEP_LINES = 400


@dataclass
class Outcome:
    """What the direct transfer did: results for the targets it served, and the targets it
    could not serve, each with why (to be sent through the client)."""

    results: list[HostResult[HostSync]] = field(default_factory=list)
    fallback: list[tuple[HostPlan, str]] = field(default_factory=list)


@dataclass
class _Report:
    """The source script's lines, parsed."""

    save_status: int | None = None
    wire: int = 0
    status: dict[int, int] = field(default_factory=dict)
    out: dict[int, list[str]] = field(default_factory=dict)
    err: dict[int, list[str]] = field(default_factory=dict)
    probe: dict[int, str] = field(default_factory=dict)
    tar: int = 0  # archive bytes read from docker save (dd's count)


def parse_report(lines: Sequence[str]) -> _Report:
    """Pure: the ``forge-link ...`` lines the source scripts print (untrusted: only printable
    text is kept, numbers are checked)."""
    r = _Report()
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
        kind, i, rest = m.group(3), int(m.group(4)), _printable(m.group(5))
        if kind == "host" and rest.isdigit():
            r.status[i] = int(rest)
        elif kind in ("out", "err"):
            (r.out if kind == "out" else r.err).setdefault(i, []).append(rest)
        elif kind == "probe":
            r.probe[i] = rest
    return r


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:300]


def loaded_id(out: Sequence[str]) -> str | None:
    """The ID ``docker load -q`` printed for an archive without tags."""
    for line in out:
        m = _LOADED.match(line.strip())
        if m:
            return m.group(1)
    return None


class _Lines(io.RawIOBase):
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


# --------------------------------------------------------------------------- the transfer


class Direct:
    def __init__(
        self,
        src: Source,
        tags: tuple[str, ...],
        plans: Sequence[HostPlan],
        pool: Pool,
        progress: Progress,
        timeout_s: float,
        compress: str,
    ) -> None:
        self.src, self.tags, self.pool, self.progress = src, tags, pool, progress
        self.timeout_s, self.compress = timeout_s, compress
        self.plans = list(plans)
        self.source = pool.get(src.host)
        self.token = hostlink.new_token()
        self.directory: str | None = None
        self.placed: list[HostPlan] = []  # targets whose authorized_keys got a line
        self.in_flight: list[HostPlan] = []  # targets of the transfer under way
        self.outcome = Outcome()

    def run(self) -> Outcome:
        try:
            peers = self._place()
            if peers:
                reachable = self._probe(peers)
                for codec, group in _by_codec(reachable).items():
                    self._transfer(codec, group)
        except BaseException:
            self._remove()  # stops the source's transfer first: the targets' loads end
            for p in self.in_flight:
                _quiet_cleanup(self.pool.get(p.host), p, self.src)
            raise
        self._remove()
        return self.outcome

    # ------------------------------------------------------------------ placing

    def _place(self) -> list[tuple[HostPlan, Peer, codecs.Codec]]:
        """Keys on the source, a line in each target's authorized_keys; the targets that
        could not get theirs fall back."""
        candidates: list[tuple[HostPlan, tuple[str, str]]] = []
        for p in self.plans:
            key = _host_key(self.pool.get(p.host))
            if key is None:
                self._fall_back(p, "forge has no SSH host key of it to give the source")
            else:
                candidates.append((p, key))
        if not candidates:
            return []
        tools = self._source_tools()
        try:
            pubs = self._make_keys(len(candidates))
        except ForgeError as e:
            for p, _ in candidates:
                self._fall_back(p, f"{self.src.host.name} cannot hold a transfer key: {_reason(e)}")
            return []
        peers: list[tuple[HostPlan, Peer, codecs.Codec]] = []
        for i, (p, (ktype, kb64)) in enumerate(candidates):
            hop = _target_hop(self.pool.get(p.host))
            try:
                codec = codecs.choose(self.compress, p.have.tools, tools)
            except ForgeError as e:
                self._fall_back(p, f"{_reason(e)} (on {self.src.host.name})")
                continue
            peers.append((p, Peer(i, p.host.name, hop[0], hop[1], hop[2], ktype, kb64), codec))
        self._write_known_hosts([peer for _, peer, _ in peers])
        added = fleet.run(
            [p.host for p, _, _ in peers],
            lambda s: self._add_key(s, next(x for x in peers if x[0].host.name == s.name), pubs),
            pool=self.pool,
        )
        failed = {r.host.name: r.error or ForgeError("failed") for r in added.failed}
        self.placed = [p for p, _, _ in peers]
        kept = []
        for p, peer, codec in peers:
            if p.host.name in failed:
                self._fall_back(p, f"cannot place the transfer key there: {_reason(failed[p.host.name])}")
            else:
                kept.append((p, peer, codec))
        return kept

    def _source_tools(self) -> frozenset[str]:
        body = 'for t in zstd bzip2 gzip; do command -v "$t" >/dev/null && echo "$t"; done; exit 0'
        r = self.source.run(shell.script(body), timeout=60)
        return frozenset(r.stdout.split()) if r.ok else frozenset()

    def _make_keys(self, count: int) -> list[str]:
        r = self.source.run(hostlink.make_keys(self.token, count), timeout=120)
        if not r.ok:
            raise LinkError(self.src.host.name, _tail(r.stderr) or f"status {r.exit_status}")
        try:
            self.directory, pubs = hostlink.parse_keys(r.stdout, self.token, count)
        except ValueError as e:
            raise LinkError(self.src.host.name, str(e)) from None
        return pubs

    def _write_known_hosts(self, peers: Sequence[Peer]) -> None:
        assert self.directory is not None
        text = hostlink.known_hosts(peers).encode()
        r = self.source.run(hostlink.write_known_hosts(self.directory), stdin=text, timeout=60)
        if not r.ok:
            raise LinkError(self.src.host.name, f"cannot write the targets' host keys: {_tail(r.stderr)}")

    def _add_key(self, s: HostSession, entry: tuple[HostPlan, Peer, codecs.Codec], pubs: list[str]) -> None:
        p, peer, codec = entry
        load = _load_command(s, codec)
        seconds = int(self.timeout_s) + hostlink.EXPIRY_MARGIN_S
        r = s.run(hostlink.add_key(hostlink.key_options(load), pubs[peer.index], seconds), timeout=60)
        if not r.ok:
            raise LinkError(s.name, _tail(r.stderr) or f"status {r.exit_status}")

    def _remove(self) -> None:
        """Take back what was placed: every target's line, the source's directory."""
        if self.placed:
            fleet.run(
                [p.host for p in self.placed],
                lambda s: s.run(hostlink.remove_keys(self.token), timeout=60),
                pool=self.pool,
            )
            self.placed = []
        if self.directory is not None:
            try:
                self.source.run(hostlink.remove_dir(self.directory), timeout=60)
            except ForgeError:
                pass  # the source is gone: its private directory stays, the targets' lines do not
            self.directory = None

    # ------------------------------------------------------------------ probing

    def _probe(self, peers: list[tuple[HostPlan, Peer, codecs.Codec]]) -> list[tuple[HostPlan, Peer, codecs.Codec]]:
        assert self.directory is not None
        lines = []
        for _, peer, _ in peers:
            ssh = shell.render(hostlink.ssh_argv(self.directory, peer, hostlink.PROBE))
            lines.append(f"( {ssh} </dev/null 2>&1 | tail -n 3 | tr '\\r\\n' '  '; echo ) > probe{peer.index} &")
        body = "\n".join([f"cd -- {shell.quote(self.directory)} || exit 1", *lines, "wait"])
        body += "\n" + "\n".join(
            f"printf 'forge-link probe {peer.index} %s\\n' \"$(cat probe{peer.index})\"" for _, peer, _ in peers
        )
        r = self.source.run(shell.render(["sh", "-c", body]), timeout=hostlink.CONNECT_TIMEOUT_S * 3 + 30)
        report = parse_report(r.stdout.split("\n"))
        reachable = []
        for p, peer, codec in peers:
            answer = report.probe.get(peer.index, "").strip()
            if answer == hostlink.PROBE_OK:
                reachable.append((p, peer, codec))
            else:
                why = answer or _tail(r.stderr) or "no answer"
                self._fall_back(p, f"{self.src.host.name} cannot reach it over SSH: {why}")
        return reachable

    # ------------------------------------------------------------------ sending

    def _transfer(self, codec: codecs.Codec, group: list[tuple[HostPlan, Peer]]) -> None:
        self.in_flight = [p for p, _ in group]
        for p, _ in group:
            self.progress.start(p.host.name, self.src.image.size_bytes)
        started = time.monotonic()

        def advance(n: int) -> None:
            for p, _ in group:
                self.progress.advance(p.host.name, n)

        out = _Lines(advance)
        failure: str | None = None
        try:
            r = self.source.stream(self._script(codec, group), sink=cast(IO[bytes], out), timeout=self.timeout_s)
            if not r.ok:
                failure = f"the source's transfer ended with status {r.exit_status}: {_tail(r.stderr)}"
        except ForgeError as e:
            failure = f"the source's transfer failed: {_reason(e)}"
        report = parse_report(out.lines)
        if report.save_status not in (None, 0):
            failure = f"docker save on {self.src.host.name} failed with status {report.save_status}"
        elif report.save_status is None and failure is None:
            failure = "the source's transfer ended early"
        report.tar = out.total
        by_name = {p.host.name: (p, peer) for p, peer in group}
        results = fleet.run(
            [p.host for p, _ in group],
            lambda s: self._finish(s, by_name[s.name], codec, report, failure, started),
            pool=self.pool,
        )
        self.in_flight = []
        for res in results:
            self.progress.finish(res.host.name, res.ok)
            seconds = res.value.seconds if res.value is not None else time.monotonic() - started
            self.outcome.results.append(replace(res, duration_s=seconds))

    def _script(self, codec: codecs.Codec, group: list[tuple[HostPlan, Peer]]) -> shell.Script:
        assert self.directory is not None
        lines = [
            f"cd -- {shell.quote(self.directory)} || exit 1",
            "cut -d' ' -f5 /proc/$$/stat > pgid",
            "mkfifo " + " ".join(f"f{peer.index}" for _, peer in group) + " || exit 1",
        ]
        for _, peer in group:
            ssh = shell.render(hostlink.ssh_argv(self.directory, peer, "forge-load"))
            i = peer.index
            lines.append(f"{ssh} < f{i} > out{i} 2> err{i} & p{i}=$!")
        stages = [shell.render(self.source.docker("save", self.src.image.id)), "dd bs=1M status=progress 2>&3"]
        if codec.compress:
            stages.append(shell.render(codec.compress))
        stages += ["tee -p " + " ".join(f"f{peer.index}" for _, peer in group), "wc -c > wire"]
        lines += [
            "exec 3>&1",
            " | ".join(stages),
            'echo "forge-link save ${PIPESTATUS[0]}"',
            'echo "forge-link wire $(cat wire)"',
        ]
        for _, peer in group:
            i = peer.index
            lines += [
                f'wait "$p{i}"; echo "forge-link host {i} $?"',
                f"head -n 5 out{i} | sed 's/^/forge-link out {i} /'",
                f"tail -n 5 err{i} | sed 's/^/forge-link err {i} /'",
            ]
        lines.append("rm -f pgid")
        return shell.render(["bash", "-c", "\n".join(lines)])

    def _finish(
        self,
        s: HostSession,
        entry: tuple[HostPlan, Peer],
        codec: codecs.Codec,
        report: _Report,
        failure: str | None,
        started: float,
    ) -> HostSync:
        p, peer = entry
        status = report.status.get(peer.index)
        expected = p.image_id or (self.src.config if p.have.store == CLASSIC else None)
        expected = expected or loaded_id(report.out.get(peer.index, [])) or self.src.expected_id(p.have.store)
        if failure is None and status != 0:
            tail = " ".join(report.err.get(peer.index, [])[-2:]) or f"status {status}"
            cut = status in (None, 255)  # ssh's own failure, or no status at all
            failure = f"the transfer from {self.src.host.name} was cut: {tail}" if cut else f"load failed: {tail}"
        if failure is not None:
            removed = cleanup(p, s, self.src.image, expected)
            if removed is not None:
                note = f" (removed {len(removed)} leftover image(s))" if removed else ""
                raise SyncFailed(s.name, failure + note)
        if expected is None:
            raise SyncFailed(s.name, "docker load did not say which image it loaded; nothing was tagged")
        listed = verify(s, self.src.image, expected, store=p.have.store)
        if not listed:
            raise SyncFailed(s.name, f"the loaded image {expected[:19]} is not listed by the daemon; not tagged")
        if p.have.store != CLASSIC:
            memo.remember(self.src.config, expected)
        tag(s, expected, self.tags)
        image = self.src.image
        return HostSync(
            s.name,
            "send",
            codec=codec.name,
            layers_total=len(image.layers),
            layers_sent=len(image.layers),
            tar_bytes=report.tar,
            wire_bytes=report.wire,
            seconds=time.monotonic() - started,
            image_id=expected,
            via="direct",
        )

    def _fall_back(self, p: HostPlan, why: str) -> None:
        self.outcome.fallback.append((p, why))


def _by_codec(
    peers: list[tuple[HostPlan, Peer, codecs.Codec]],
) -> dict[codecs.Codec, list[tuple[HostPlan, Peer]]]:
    groups: dict[codecs.Codec, list[tuple[HostPlan, Peer]]] = {}
    for p, peer, codec in peers:
        groups.setdefault(codec, []).append((p, peer))
    return groups


def _load_command(s: HostSession, codec: codecs.Codec) -> shell.Script:
    stages: list[list[str]] = [list(codec.decompress)] if codec.decompress else []
    stages.append(s.docker("load", "-q"))
    return shell.pipeline(*stages)


def _host_key(s: HostSession) -> tuple[str, str] | None:
    try:
        return s.host_key()
    except ForgeError:
        return None


def _target_hop(s: HostSession) -> tuple[str, int, str]:
    """Where the source connects to reach a target: its own SSH address, port and user (jump
    hosts are the client's way in, not the source's)."""
    route = getattr(s.transport, "route", None)
    if route is not None:
        hop = route.target
        return hop.hostname, hop.port, hop.user
    return s.host.address, s.host.port or 22, s.me


def _quiet_cleanup(s: HostSession, p: HostPlan, src: Source) -> None:
    try:
        cleanup(p, s, src.image, p.image_id or (src.config if p.have.store == CLASSIC else None))
    except BaseException:
        pass


def _tail(text: str) -> str:
    return _printable(" ".join(text.strip().splitlines()[-2:]))


def _reason(e: BaseException) -> str:
    if isinstance(e, HostError):
        return e.reason
    return str(e) or type(e).__name__


def send(
    src: Source,
    tags: tuple[str, ...],
    plans: Sequence[HostPlan],
    pool: Pool,
    progress: Progress,
    timeout_s: float,
    compress: str,
) -> Outcome:
    """Send the image from ``src`` straight to each planned target (see the module's doc)."""
    return Direct(src, tags, plans, pool, progress, timeout_s, compress).run()


__all__ = ["Outcome", "loaded_id", "parse_report", "send"]
