"""``forge sync --from HOST --via direct``: the source sends to its targets itself.

The client only steers: it places a transfer key per target (:mod:`forge.images.hostlink`),
has the source probe each target through it, then runs one script on the source per group of
targets that take the same compression::

    docker save ID | dd status=progress | COMPRESS > spool
    tail -f spool | ssh <target 0's key, pinned host key>   (target: forced decompress | docker load)
    tail -f spool | ssh <target 1's key, pinned host key>
    ...

Each target follows the spool (in the source's private directory) at its own pace: a slow one
holds up no other, and one whose connection ended leaves the others be. What comes
back to the client is a few lines: ``dd``'s byte counts (the progress bar), each target's exit
status and the last lines of its output. The client then checks on each target, over its own
connection, that the image arrived whole with the expected ID, and only then tags it; a target
whose load failed is cleaned as after any failed load (:func:`forge.images.wave.cleanup`).

With ``relay`` the same links make a chain: the source sends one copy to the first target,
whose transfer key is forced to run a relay script in its own private directory::

    stdin > spool;  tail -f spool | decompress | docker load;  tail -f spool | ssh <next>

so each target loads and passes the bytes on at once, and one copy crosses each link; neither
its load nor the next hop holds up what it receives. Each holder (the source, each target) also
has a spare key to the hop after next, used when the next one falls behind
(:data:`forge.images.linkscripts.LAG_BYTES`; the source first checks, with a short trial
stream to the spare, that the limit is not its own uplink): the slow hop is cut out of the
chain (it goes on loading alone) and the chain goes on around it. A hop that dies ends the chain after it (the
hops before it go on); the targets the chain did not serve are the caller's to send to after.
Each hop prints its own status and last lines, then the next hop's report, so the source's
output holds the whole chain's.

Targets the source cannot reach (no route, a firewall, an sshd that does not read
``~/.ssh/authorized_keys``, a host key that differs from the one forge verified) are returned
with the reason, for the caller to serve through the client. Every target gets the whole image
(``docker save`` cannot leave out layers the source cannot name before the stream ends).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, cast

from forge import fleet, shell
from forge.errors import ForgeError, why
from forge.fleet import HostResult
from forge.images import codec as codecs
from forge.images import hostlink, linkscripts, memo
from forge.images.hostlink import LinkError, Peer
from forge.images.inspect import CLASSIC
from forge.images.job import Job
from forge.images.plan import HostPlan
from forge.images.source import Source
from forge.images.wave import HostSync, SyncFailed, cleanup, tag, verify
from forge.session import HostSession


@dataclass
class Outcome:
    """What the direct transfer did: results for the targets it served, and the targets it
    could not serve, each with why (to be sent through the client)."""

    results: list[HostResult[HostSync]] = field(default_factory=list)
    fallback: list[tuple[HostPlan, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- the transfer


@dataclass
class _Hop:
    """One target of the transfer: its plan, how the source (or the hop before it) reaches it,
    the compression it takes."""

    plan: HostPlan
    peer: Peer
    codec: codecs.Codec

    @property
    def name(self) -> str:
        return self.plan.host.name


@dataclass
class _Holder:
    """A host that holds transfer keys: the source, or (in a chain) a target, ``own``. In a
    chain it holds two: the next hop's and the spare's (the hop after it), ``keys`` their
    public halves."""

    session: HostSession
    held: list[_Hop]
    own: _Hop | None = None
    chain: bool = False
    keys: list[str] = field(default_factory=list)

    @property
    def probed(self) -> list[_Hop]:
        """The links that must answer: a chain's spare is only used if it does."""
        return self.held[:1] if self.chain else self.held


class Transfer:
    """One transfer from the source: flat (the source sends to every target) or, with
    ``relay``, a chain (the source sends to the first target, which loads and passes the same
    bytes on to the next, and so on: one copy per link)."""

    def __init__(self, job: Job, plans: Sequence[HostPlan], *, relay: bool = False) -> None:
        self.src, self.tags, self.pool, self.progress = job.src, job.tags, job.pool, job.progress
        self.timeout_s, self.compress, self.relay = job.timeout_s, job.compress, relay
        self.plans = list(plans)
        self.source = job.pool.get(job.src.host)
        self.token = hostlink.new_token()
        self.dirs: dict[str, str] = {}  # holder (source or target) -> its transfer directory
        self.placed: list[HostPlan] = []  # targets whose authorized_keys got a line
        self.in_flight: list[HostPlan] = []  # targets of the transfer under way
        self.outcome = Outcome()

    def run(self) -> Outcome:
        try:
            for codec, group in _by_codec(self._candidates()).items():
                linked = self._link(group)
                if linked:
                    self._transfer(codec, linked)
                self._remove()  # this group's keys and directories (the source has one per group)
        except BaseException:
            self._remove()  # stops the source's transfer first: the targets' loads end
            for p in self.in_flight:
                _quiet_cleanup(self.pool.get(p.host), p, self.src)
            raise
        return self.outcome

    # ------------------------------------------------------------------ placing

    def _candidates(self) -> list[_Hop]:
        """Every target with the host key forge verified and a codec both ends have."""
        tools = self._source_tools()
        hops: list[_Hop] = []
        for p in self.plans:
            s = self.pool.get(p.host)
            key = _host_key(s)
            if key is None:
                self._fall_back(p, "forge has no SSH host key of it to give the source")
                continue
            try:
                codec = codecs.choose(self.compress, p.have.tools, tools)
            except ForgeError as e:
                self._fall_back(p, f"{why(e)} (on {self.src.host.name})")
                continue
            where = _target_hop(s)
            hops.append(_Hop(p, Peer(len(hops), p.host.name, *where, key[0], key[1]), codec))
        return hops

    def _holders(self, group: list[_Hop]) -> list[_Holder]:
        """Who holds the keys to which hops: the source all of them, or in a chain the source
        the first hop's and each target the next two (the next, and a spare around it), and
        its relay script."""
        if not self.relay:
            return [_Holder(self.source, group)]
        # The source's spare is only used after a trial showed its uplink is not the limit
        # (forge.images.linkscripts.TRIAL_S).
        chain = [_Holder(self.source, group[:2], chain=True)]
        for i, hop in enumerate(group):
            chain.append(_Holder(self.pool.get(hop.plan.host), group[i + 1 : i + 3], hop, chain=True))
        return chain

    def _link(self, group: list[_Hop]) -> list[_Hop]:
        """Keys on their holders, a line in each target's authorized_keys, a probe of every
        link. Returns the hops to send to; the others fall back (for a chain: all of them)."""
        holders = self._holders(group)
        what = "a chain of" if self.relay else "transfer keys for"
        self.progress.note(f"{self.src.host.name}: {what} {len(group)} target(s): placing keys")
        failures = dict(self._each(holders, self._prepare))
        if failures:
            return self._give_up(group, failures, "cannot set up the transfer (keys, room for the stream)")
        keys: dict[str, list[str]] = {}
        codec_of = {h.name: h.codec for h in group}
        for holder in holders:
            for h, pub in zip(holder.held, holder.keys, strict=True):
                keys.setdefault(h.name, []).append(pub)
        self.placed += [h.plan for h in group]  # before: an interrupt may come while lines go in
        added = fleet.run(
            [h.plan.host for h in group], lambda s: self._add_keys(s, keys[s.name], codec_of[s.name]), pool=self.pool
        )
        failed = {r.host.name: why(r.error or ForgeError("failed")) for r in added.failed}
        if failed and self.relay:
            return self._give_up(group, failed, "cannot place the transfer key there")
        for h in group:
            if h.name in failed:
                self._fall_back(h.plan, f"cannot place the transfer key there: {failed[h.name]}")
        group = [h for h in group if h.name not in failed]
        self.progress.note(f"{self.src.host.name}: checking that each link answers")
        unreachable = dict(self._each(holders, self._probe))
        if unreachable and self.relay:
            return self._give_up(group, unreachable, "a link of the chain is down")
        for h in group:
            if h.name in unreachable:
                self._fall_back(h.plan, unreachable[h.name])
        return [h for h in group if h.name not in unreachable]

    def _each(self, holders: list[_Holder], fn: Callable[[_Holder], dict[str, str]]) -> list[tuple[str, str]]:
        """``fn`` on every holder at once; the problems they report, by host."""
        found: list[tuple[str, str]] = []
        by_name = {h.session.name: h for h in holders}
        results = fleet.run([h.session.host for h in holders], lambda s: fn(by_name[s.name]), pool=self.pool)
        for r in results:
            if r.value is None:
                found.append((r.host.name, why(r.error or ForgeError("failed"))))
            else:
                found += r.value.items()
        return found

    def _give_up(self, group: list[_Hop], problems: dict[str, str], what: str) -> list[_Hop]:
        for h in group:
            why = problems.get(h.name) or "; ".join(f"{n}: {w}" for n, w in problems.items())
            self._fall_back(h.plan, f"{what}: {why}" if h.name in problems else f"{what} ({why})")
        return []

    def _source_tools(self) -> frozenset[str]:
        body = 'for t in zstd bzip2 gzip; do command -v "$t" >/dev/null && echo "$t"; done; exit 0'
        r = self.source.run(shell.script(body), timeout=60)
        return frozenset(r.stdout.split()) if r.ok else frozenset()

    def _prepare(self, holder: _Holder) -> dict[str, str]:
        """On one holder: a private directory with the keys to the hops it holds and their host
        keys; for a target of a chain, its relay script."""
        s, held = holder.session, holder.held
        indexes = [h.peer.index for h in held]
        known = hostlink.known_hosts([h.peer for h in held]).encode()
        spool = self.src.image.size_bytes  # the source and a chain's hops keep the stream there
        r = s.run(hostlink.make_keys(self.token, indexes, spool_bytes=spool), stdin=known, timeout=120)
        if not r.ok:
            raise LinkError(s.name, _tail(r.stderr) or f"status {r.exit_status}")
        try:
            directory, pubs = hostlink.parse_keys(r.stdout, self.token, indexes)
        except ValueError as e:
            made = hostlink.directory_in(r.stdout)  # made, but its keys not understood
            if made is not None:
                s.run(hostlink.remove_dir(made), timeout=60)
            raise LinkError(s.name, str(e)) from None
        self.dirs[s.name] = directory
        holder.keys = pubs
        own = holder.own
        if own is not None:
            nxt, spare = (held + [None, None])[:2]
            script = linkscripts.relay_script(
                directory,
                own.peer.index,
                nxt.peer if nxt else None,
                spare.peer if spare else None,
                _load_command(s, own.codec),
            )
            if not s.run(hostlink.write_relay(directory), stdin=script.encode(), timeout=60).ok:
                raise LinkError(s.name, "cannot write the relay script")
        return {}

    def _add_keys(self, s: HostSession, public_keys: list[str], codec: codecs.Codec) -> None:
        """The lines of the keys that reach ``s`` (a chain's hop: the hop before's, and the
        spare key of the one before that)."""
        if self.relay:
            command = hostlink.relay_command(self.dirs[s.name])
        else:
            command = _load_command(s, codec)
        seconds = int(self.timeout_s) + hostlink.EXPIRY_MARGIN_S
        for pub in public_keys:
            r = s.run(hostlink.add_key(hostlink.key_options(command), pub, seconds), timeout=60)
            if not r.ok:
                raise LinkError(s.name, _tail(r.stderr) or f"status {r.exit_status}")

    def _remove(self) -> None:
        """Take back what was placed: every target's line, every holder's directory (a
        transfer still running there is stopped first)."""
        if self.placed:
            names = {p.host.name for p in self.placed}
            fleet.run(
                [p.host for p in self.plans if p.host.name in names],
                lambda s: s.run(hostlink.remove_keys(self.token), timeout=60),
                pool=self.pool,
            )
            self.placed = []
        hosts = {p.host.name: p.host for p in self.plans} | {self.src.host.name: self.src.host}
        dirs, self.dirs = dict(self.dirs), {}
        if dirs:
            fleet.run(
                [hosts[name] for name in dirs],
                lambda s: s.run(hostlink.remove_dir(dirs[s.name]), timeout=60),
                pool=self.pool,
            )  # a holder that is gone keeps its private directory; the targets' lines do not

    # ------------------------------------------------------------------ probing

    def _probe(self, holder: _Holder) -> dict[str, str]:
        """The holder opens a connection to each hop it holds; the hops that did not answer."""
        s, held = holder.session, holder.probed
        if not held:
            return {}
        directory = self.dirs[s.name]
        lines = []
        for h in held:
            ssh = shell.render(hostlink.ssh_argv(directory, h.peer, hostlink.PROBE))
            i = h.peer.index
            lines.append(f"( {ssh} </dev/null 2>&1 | tail -n 3 | tr '\\r\\n' '  '; echo ) > probe{i} &")
        body = "\n".join([f"cd -- {shell.quote(directory)} || exit 1", *lines, "wait"])
        body += "\n" + "\n".join(
            f"printf 'forge-link probe {h.peer.index} %s\\n' \"$(cat probe{h.peer.index})\"" for h in held
        )
        r = s.run(shell.render(["sh", "-c", body]), timeout=hostlink.CONNECT_TIMEOUT_S * 3 + 30)
        report = linkscripts.parse_report(r.stdout.split("\n"))
        problems = {}
        for h in held:
            answer = report.probe.get(h.peer.index, "").strip()
            if answer != hostlink.PROBE_OK:
                problems[h.name] = f"{s.name} cannot reach it over SSH: {answer or _tail(r.stderr) or 'no answer'}"
        return problems

    # ------------------------------------------------------------------ sending

    def _transfer(self, codec: codecs.Codec, group: list[_Hop]) -> None:
        self.in_flight = [h.plan for h in group]
        self.progress.note(f"{self.src.host.name}: sending")
        for h in group:
            self.progress.start(h.name, self.src.image.size_bytes)
        started = time.monotonic()

        def advance(n: int) -> None:
            for h in group:
                self.progress.advance(h.name, n)

        out = linkscripts.Lines(advance)
        failure: str | None = None
        directory, save = self.dirs[self.source.name], self.source.docker("save", self.src.image.id)
        if self.relay:
            spare = group[1].peer if len(group) > 1 else None
            script = linkscripts.chain_source_script(directory, save, codec, group[0].peer, spare)
        else:
            script = linkscripts.source_script(directory, save, codec, [h.peer for h in group])
        try:
            r = self.source.stream(script, sink=cast(IO[bytes], out), timeout=self.timeout_s)
            if not r.ok:
                failure = f"the source's transfer ended with status {r.exit_status}: {_tail(r.stderr)}"
        except ForgeError as e:
            failure = f"the source's transfer failed: {why(e)}"
        report = linkscripts.parse_report(out.lines)
        if report.save_status not in (None, 0):
            failure = f"docker save on {self.src.host.name} failed with status {report.save_status}"
        elif report.save_status is None and failure is None:
            failure = "the source's transfer ended early"
        report.tar = out.total
        # What still runs for the transfer (after a failure: a relay hop still loading, the
        # source before its timeout) stops before the targets are checked and cleaned, so
        # no load finishes after its target was cleaned.
        self._remove()
        by_name = {h.name: h for h in group}
        results = fleet.run(
            [h.plan.host for h in group],
            lambda s: self._finish(s, by_name[s.name], report, failure, started),
            pool=self.pool,
        )
        self.in_flight = []
        for res in results:
            self.progress.finish(res.host.name, res.ok)
            seconds = res.value.seconds if res.value is not None else time.monotonic() - started
            self.outcome.results.append(replace(res, duration_s=seconds))

    def _finish(
        self, s: HostSession, hop: _Hop, report: linkscripts.Report, failure: str | None, started: float
    ) -> HostSync:
        p, i = hop.plan, hop.peer.index
        status = report.status.get(i)
        if p.have.store == CLASSIC:
            expected: str | None = self.src.config
        else:  # the manifest a containerd store makes of a docker save archive: as it says
            expected = linkscripts.loaded_id(report.out.get(i, [])) or p.image_id or self.src.expected_id(p.have.store)
        if failure is None and status != 0:
            tail = " ".join(report.err.get(i, [])[-2:]) or f"status {report.link.get(i, status)}"
            cut = status is None or (not self.relay and status == 255)  # the link, not the load
            via = "the relay" if self.relay else f"the transfer from {self.src.host.name}"
            failure = f"{via} was cut: {tail}" if cut else f"load failed: {tail}"
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
        note = ""
        if i in report.cut:
            behind = f"{report.cut[i] >> 20} MiB behind"
            note = f"cut out of the chain ({behind}): loaded on its own, the hops after it sent to around it"
        elif i in report.slow:
            behind = f"{report.slow[i] >> 20} MiB behind"
            note = f"slow ({behind}) but the way around it did not answer: the hops after it waited for it"
        return HostSync(
            s.name,
            "send",
            codec=hop.codec.name,
            layers_total=len(image.layers),
            layers_sent=len(image.layers),
            tar_bytes=report.tar,
            wire_bytes=report.wire,
            seconds=time.monotonic() - started,
            image_id=expected,
            via="relay" if self.relay else "direct",
            note=note,
        )

    def _fall_back(self, p: HostPlan, why: str) -> None:
        self.outcome.fallback.append((p, why))


def _by_codec(hops: list[_Hop]) -> dict[codecs.Codec, list[_Hop]]:
    groups: dict[codecs.Codec, list[_Hop]] = {}
    for h in hops:
        groups.setdefault(h.codec, []).append(h)
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
    return linkscripts.printable(" ".join(text.strip().splitlines()[-2:]))


def send(job: Job, plans: Sequence[HostPlan], *, relay: bool = False) -> Outcome:
    """Send the image from the job's source straight to each planned target, or along a chain
    of them (``relay``; see the module's doc)."""
    return Transfer(job, plans, relay=relay).run()


__all__ = ["Outcome", "send"]
