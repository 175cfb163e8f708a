"""`forge sync --from gpu1 --via direct`: gpu1 sends to the targets itself, over SSH, with a
transfer key per target; the client only steers (forge/images/direct.py, hostlink.py).

The lab's hosts share this machine's file system, so every host's ~/.ssh/authorized_keys is
the same file and every host's /var/tmp the same directory: one look sees what was placed on any.
The bytes through the client are counted on the lab's bridge (the client's only way into the
lab); host-to-host traffic is bridged between ports and never crosses it.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from forge import inventory
from forge.images import linkscripts
from forge.lab.netns import nsenter
from forge.progress import NoProgress
from tests.lab.envkit import forge_from_a_terminal
from tests.lab.imagekit import SOURCE, Images, sync

pytestmark = pytest.mark.lab


# --------------------------------------------------------------------------- helpers


def _authorized_keys(lab: Any) -> Path:
    return Path(pwd.getpwnam(lab.user).pw_dir) / ".ssh" / "authorized_keys"


def _placed(lab: Any) -> tuple[list[str], list[Path]]:
    """Transfer keys in the user's authorized_keys, transfer directories in /var/tmp."""
    keys = _authorized_keys(lab)
    lines = [ln for ln in keys.read_text().splitlines() if "forge-link-" in ln] if keys.exists() else []
    return lines, sorted(Path("/var/tmp").glob("forge-link.*"))


def _client_bytes(lab: Any) -> int:
    """Bytes in and out of the lab's bridge in the root namespace: the client's traffic."""
    stats = Path("/sys/class/net") / lab.lab.config.bridge / "statistics"
    return int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())


@contextmanager
def shaped(lab: Any, host: str, rate: str = "24mbit") -> Iterator[None]:
    """Traffic into ``host`` limited to ``rate`` (tbf on its veth's bridge end)."""
    veth = lab.lab.config.host(host).veth
    subprocess.run(
        ["tc", "qdisc", "replace", "dev", veth, "root", "tbf", "rate", rate, "burst", "32kb", "latency", "400ms"],
        check=True,
    )
    try:
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", veth, "root"], check=False)


@contextmanager
def shaped_out(lab: Any, host: str, rate: str) -> Iterator[None]:
    """Traffic out of ``host`` limited to ``rate`` (tbf on its own end of the link): its uplink."""
    ns = nsenter(lab.lab.config.host(host).netns)
    tbf = ["tbf", "rate", rate, "burst", "32kb", "latency", "400ms"]
    subprocess.run([*ns, "tc", "qdisc", "replace", "dev", "eth0", "root", *tbf], check=True)
    try:
        yield
    finally:
        subprocess.run([*ns, "tc", "qdisc", "del", "dev", "eth0", "root"], check=False)


@contextmanager
def unreachable(lab: Any, src: str, dst: str) -> Iterator[None]:
    """``src`` cannot open connections to ``dst``'s SSH port (a firewall between them)."""
    rule = ["OUTPUT", "-d", lab.lab.address(dst), "-p", "tcp", "--dport", "22", "-j", "REJECT"]
    ns = nsenter(lab.lab.config.host(src).netns)
    subprocess.run([*ns, "iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run([*ns, "iptables", "-D", *rule], check=False)


class OnFirstBytes(NoProgress):
    """Runs ``action`` once, when the first bytes of a transfer are counted."""

    def __init__(self, action: Any) -> None:
        self.action, self.done = action, False
        self.result: Any = None

    def advance(self, key: str, nbytes: int) -> None:
        if not self.done:
            self.done = True
            try:
                self.result = self.action()
            except Exception as e:  # the transfer's reader thread would swallow it: say it in the test
                self.result = e

    def check(self) -> Any:
        assert self.done, "the transfer never counted a byte"
        assert self.result and not isinstance(self.result, Exception), self.result
        return self.result


def _kill_source_transfer() -> int:
    """SIGKILL every process of the source's transfer (its process group, as the transfer
    recorded it), as a crash of the source would end them. Returns the group."""
    (pgid_file,) = Path("/var/tmp").glob("forge-link.*/pgid")
    pgid = int(pgid_file.read_text())
    os.killpg(pgid, signal.SIGKILL)
    return pgid


# --------------------------------------------------------------------------- the cases


def test_direct_sends_nothing_of_the_image_through_the_client_and_takes_back_its_keys(
    lab: Any, inv: inventory.Inventory, images: Images
) -> None:
    ref = images.on_top(images.base(size=4 << 20), "v1", os.urandom(6 << 20))
    seen: dict[str, Any] = {}

    def look() -> bool:  # mid-transfer: what was placed, and what its keys allow
        seen["lines"], seen["dirs"] = _placed(lab)
        d = seen["dirs"][0]
        ssh = [
            *nsenter(lab.lab.config.host(SOURCE).netns),
            "ssh", "-F", "none", "-i", str(d / "key0"), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={d}/known_hosts", "-o", "HostKeyAlias=forge-link-0", "-l", lab.user,
        ]  # fmt: skip
        for name, extra in (("command", ["echo", "ran-my-command"]), ("forward", ["-W", "127.0.0.1:22"])):
            where = [lab.lab.address("gpu2")]
            argv = [*ssh, *(extra if name == "forward" else []), *where, *(extra if name == "command" else [])]
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
            seen[name] = r.stdout + r.stderr
        return True

    before = _client_bytes(lab)
    looker = OnFirstBytes(look)
    report = sync(inv, ref, ["gpu2", "gpu3"], via="direct", progress=looker)
    looker.check()
    through_client = _client_bytes(lab) - before
    for h in ("gpu2", "gpu3"):
        r = report.results[h]
        assert r.ok, r.reason
        assert r.value.via == "direct" and r.value.action == "send" and r.value.note == ""
        assert r.value.codec == "zstd" and 0 < r.value.wire_bytes < r.value.tar_bytes
        assert images.same(h, ref)
    assert through_client < 1 << 20, through_client  # 10 MB went to each target
    # While it ran: one restricted, expiring, forced-command key per target, and a directory.
    assert len(seen["lines"]) == 2, seen["lines"]
    for line in seen["lines"]:
        assert line.startswith('restrict,command="') and 'expiry-time="' in line and " ssh-ed25519 " in line
    assert len(seen["dirs"]) == 1
    # The key ran its forced command (a load, of nothing), not ours; no forwarding.
    assert "ran-my-command" not in seen["command"] and "zstd" in seen["command"], seen["command"]  # the load ran
    assert "prohibited" in seen["forward"], seen["forward"]
    assert _placed(lab) == ([], [])
    again = sync(inv, ref, ["gpu2"], via="direct").results["gpu2"]
    assert again.ok and again.value.action == "current"


def test_targets_taking_different_compressions_leave_no_directory_on_the_source(
    lab: Any, inv: inventory.Inventory, images: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target without zstd (here: the second one asked, as if it lacked it) is sent to in a
    group of its own; each group's transfer directory on the source (its spool, the private
    keys) is taken back, the first one too."""
    import dataclasses

    from forge.images import codec, direct

    candidates = direct.Transfer._candidates

    def second_without_zstd(self: direct.Transfer) -> list[Any]:
        hops = candidates(self)
        return [hops[0], *(dataclasses.replace(h, codec=codec.CODECS["none"]) for h in hops[1:])]

    monkeypatch.setattr(direct.Transfer, "_candidates", second_without_zstd)
    ref = images.on_top(images.base(), "v1", os.urandom(200_000))
    report = sync(inv, ref, ["gpu2", "gpu3"], via="direct")
    got = {h: report.results[h] for h in ("gpu2", "gpu3")}
    for h, r in got.items():
        assert r.ok, r.reason
        assert r.value.via == "direct" and images.same(h, ref)
    assert (got["gpu2"].value.codec, got["gpu3"].value.codec) == ("zstd", "none")
    assert _placed(lab) == ([], [])


def test_a_target_the_source_cannot_reach_is_served_through_the_client(
    lab: Any, inv: inventory.Inventory, images: Images
) -> None:
    ref = images.on_top(images.base(), "v1", os.urandom(100_000))
    with unreachable(lab, SOURCE, "gpu3"):
        report = sync(inv, ref, ["gpu2", "gpu3"], via="auto")
    two, three = report.results["gpu2"], report.results["gpu3"]
    assert two.ok and two.value.via == "direct", two.reason
    assert three.ok and three.value.via == "client", three.reason
    assert "gpu1 cannot reach it over SSH" in three.value.note, three.value.note
    assert images.same("gpu2", ref) and images.same("gpu3", ref)
    assert _placed(lab) == ([], [])


def test_a_host_key_other_than_the_one_forge_verified_is_refused(
    lab: Any, inv: inventory.Inventory, images: Images
) -> None:
    """The source checks the target against the key forge verified, not against what answers:
    gpu3's inventory address made to lead to gpu4 (a man in the middle, as the source sees it)."""
    ref = images.base()
    ns = nsenter(lab.lab.config.host(SOURCE).netns)
    rule = ["OUTPUT", "-t", "nat", "-d", lab.lab.address("gpu3"), "-p", "tcp", "--dport", "22"]
    to = ["-j", "DNAT", "--to-destination", f"{lab.lab.address('gpu4')}:22"]
    subprocess.run([*ns, "iptables", "-t", "nat", "-I", *rule[:1], *rule[3:], *to], check=True)
    try:
        report = sync(inv, ref, ["gpu3"], via="auto")
    finally:
        subprocess.run([*ns, "iptables", "-t", "nat", "-D", *rule[:1], *rule[3:], *to], check=False)
    r = report.results["gpu3"]
    assert r.ok and r.value.via == "client", r.reason
    assert "Host key verification failed" in r.value.note or "HOST IDENTIFICATION" in r.value.note, r.value.note
    assert _placed(lab) == ([], [])


def test_a_slow_target_holds_up_no_other_target_of_a_direct_transfer(
    lab: Any, inv: inventory.Inventory, images: Images
) -> None:
    """Each target follows the source's spool at its own pace: gpu2 and gpu4 have loaded the
    whole image while gpu3, behind a trickle of a link, has received less than half of it
    (with one pipe feeding all three, they could be at most the pipes' and the sockets'
    buffers ahead of it)."""
    ref = images.on_top(images.base(), "v1", os.urandom(32 << 20))
    image = images.image_id(SOURCE, ref)
    assert image is not None
    done: dict[str, Any] = {}

    def send() -> None:
        done["report"] = sync(inv, ref, ["gpu2", "gpu3", "gpu4"], via="direct")

    with shaped(lab, "gpu3", "8mbit"):
        before = _received_by(lab, "gpu3")
        worker = threading.Thread(target=send)
        worker.start()
        deadline = time.monotonic() + 120
        while not all(images.image_id(h, image) for h in ("gpu2", "gpu4")):
            assert worker.is_alive() and time.monotonic() < deadline, "gpu2 and gpu4 never loaded it on their own"
            time.sleep(0.2)
        slow_got = _received_by(lab, "gpu3") - before
        worker.join(300)
    report = done["report"]
    for h in ("gpu2", "gpu3", "gpu4"):
        assert report.results[h].ok and report.results[h].value.via == "direct", report.results[h].reason
        assert images.same(h, ref)
    wire = report.results["gpu3"].value.wire_bytes
    assert wire > 32 << 20
    assert slow_got < wire / 2, (slow_got, wire)
    assert _placed(lab) == ([], [])


def test_a_source_killed_mid_stream_leaves_no_image_no_key_and_a_rerun_completes(
    lab: Any, inv: inventory.Inventory, images: Images
) -> None:
    ref = images.on_top(images.base(), "v1", os.urandom(16 << 20))
    killer = OnFirstBytes(_kill_source_transfer)
    with shaped(lab, "gpu2", "16mbit"), shaped(lab, "gpu3", "16mbit"):  # seconds to send
        report = sync(inv, ref, ["gpu2", "gpu3"], via="direct", progress=killer)
    killer.check()
    for h in ("gpu2", "gpu3"):
        r = report.results[h]
        assert not r.ok and "the source's transfer ended" in r.reason, r.reason
        assert images.image_id(h, ref) is None
        assert images.leftovers(h) == []
    assert _placed(lab) == ([], [])
    again = sync(inv, ref, ["gpu2", "gpu3"], via="direct")
    assert all(r.ok and r.value.via == "direct" for r in again.results), [r.reason for r in again.results]
    assert images.same("gpu2", ref) and images.same("gpu3", ref)


def test_ctrl_c_mid_transfer_stops_the_source_and_takes_back_its_keys(lab: Any, images: Images, tmp_path: Path) -> None:
    ref = images.on_top(images.base(), "v1", os.urandom(16 << 20))
    env = {"FORGE_LOCK_DIR": str(tmp_path), "FORGE_INVENTORY": str(lab.inventory_path)}
    args = ("sync", ref, "--from", SOURCE, "--to", "gpu4", "--via", "direct", "--quiet")
    with shaped(lab, "gpu4"):
        run = forge_from_a_terminal(*args, env=env)
        deadline = time.monotonic() + 60
        while (
            run.poll() is None and not list(Path("/var/tmp").glob("forge-link.*/spool")) and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        time.sleep(1.0)  # in the transfer
        os.killpg(run.pid, signal.SIGINT)
        _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "Traceback" not in err, err
    assert _placed(lab) == ([], [])
    assert images.image_id("gpu4", ref) is None
    assert images.leftovers("gpu4") == []
    left = subprocess.run(["pgrep", "-f", "forge-link"], capture_output=True, text=True)
    assert left.stdout == "", left.stdout  # no transfer process left on the source


# --------------------------------------------------------------------------- the relay


def _received_by(lab: Any, host: str) -> int:
    """Bytes the lab's bridge has sent into ``host`` (its veth's bridge end transmits them)."""
    veth = lab.lab.config.host(host).veth
    return int((Path("/sys/class/net") / veth / "statistics" / "tx_bytes").read_text())


def _sent_by(lab: Any, host: str) -> int:
    """Bytes ``host`` has sent into the lab's bridge (its veth's bridge end receives them)."""
    veth = lab.lab.config.host(host).veth
    return int((Path("/sys/class/net") / veth / "statistics" / "rx_bytes").read_text())


def test_a_relay_sends_one_copy_from_the_source_and_every_target_gets_it(
    lab: Any, inv: inventory.Inventory, images: Images
) -> None:
    ref = images.on_top(images.base(), "v1", os.urandom(6 << 20))
    before, client_before = _sent_by(lab, SOURCE), _client_bytes(lab)
    report = sync(inv, ref, ["gpu2", "gpu3", "gpu4"], via="relay")
    sent, through_client = _sent_by(lab, SOURCE) - before, _client_bytes(lab) - client_before
    for h in ("gpu2", "gpu3", "gpu4"):
        r = report.results[h]
        assert r.ok, r.reason
        assert r.value.via == "relay" and r.value.action == "send", r.value
        assert images.same(h, ref)
    wire = report.results["gpu2"].value.wire_bytes
    assert wire > 6 << 20
    assert sent < 1.2 * wire, (sent, wire)  # one copy left the source, not three
    assert through_client < 1 << 20, through_client
    assert _placed(lab) == ([], [])


def _relay_dir_of(index: int) -> Path:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for d in Path("/var/tmp").glob("forge-link.*"):
            relay = d / "relay"
            if relay.exists() and f'echo "forge-link host {index} $rc"' in relay.read_text():
                return d
        time.sleep(0.05)
    raise AssertionError(f"no relay directory of hop {index}")


def test_a_target_killed_mid_relay_is_cut_out_and_the_rest_are_served_after(
    lab: Any, inv: inventory.Inventory, images: Images
) -> None:
    ref = images.on_top(images.base(), "v1", os.urandom(16 << 20))

    def kill_middle() -> int:  # gpu3, the second hop: every process of its relay
        hop = _relay_dir_of(1)
        deadline = time.monotonic() + 20  # each hop connects to the next as it starts: not all at once
        while not (files := [f for f in hop.glob("run.*/pgid") if f.read_text().strip()]):
            assert time.monotonic() < deadline, "the second hop never started"
            time.sleep(0.05)
        pgid = int(files[0].read_text())
        os.killpg(pgid, signal.SIGKILL)
        return pgid

    killer = OnFirstBytes(kill_middle)
    with shaped_out(lab, SOURCE, "16mbit"):  # seconds to pass (the source's uplink: no hop is slow)
        report = sync(inv, ref, ["gpu2", "gpu3", "gpu4"], via="relay", progress=killer)
    killer.check()
    two, three, four = (report.results[h] for h in ("gpu2", "gpu3", "gpu4"))
    assert two.ok and two.value.via == "relay", two.reason  # before the cut: not held up by it
    for r in (three, four):  # the cut one and the one after it: sent to again, straight from gpu1
        assert r.ok and r.value.via == "direct", r.reason
    for h in ("gpu2", "gpu3", "gpu4"):
        assert images.same(h, ref)
        assert images.leftovers(h) == []
    assert _placed(lab) == ([], [])


@pytest.mark.parametrize("slow", ["gpu3", "gpu2"], ids=["middle hop", "first hop"])
def test_a_slow_hop_is_cut_out_of_the_chain_and_the_hops_after_it_are_sent_to_around_it(
    lab: Any, inv: inventory.Inventory, images: Images, monkeypatch: pytest.MonkeyPatch, slow: str
) -> None:
    """A hop behind a trickle of a link. The middle one (gpu3): gpu2 falls behind sending to
    it, cuts it out and sends to gpu4 itself. The first one (gpu2): the source's trial stream
    to gpu3, its spare, goes more than twice as fast, so the source cuts gpu2 out and feeds gpu3
    itself. Either way the slow hop goes on loading alone."""
    monkeypatch.setattr(linkscripts, "LAG_BYTES", 6 << 20)
    ref = images.on_top(images.base(), "v1", os.urandom(24 << 20))
    with shaped(lab, slow, "8mbit"):
        slow_before = _sent_by(lab, slow)
        report = sync(inv, ref, ["gpu2", "gpu3", "gpu4"], via="relay")
        slow_sent = _sent_by(lab, slow) - slow_before
    for h in ("gpu2", "gpu3", "gpu4"):
        r = report.results[h]
        assert r.ok and r.value.via == "relay", (h, r.reason)
        assert images.same(h, ref) and images.leftovers(h) == []
    wire = report.results["gpu4"].value.wire_bytes
    assert wire > 20 << 20
    cut = report.results[slow].value
    assert cut.note.startswith("cut out of the chain (") and "MiB behind" in cut.note, cut
    assert [h for h in ("gpu2", "gpu3", "gpu4") if report.results[h].value.note] == [slow]
    assert slow_sent < wire / 2, (slow_sent, wire)  # the hops after it were not fed through it
    assert _placed(lab) == ([], [])


def test_a_source_whose_own_uplink_is_the_limit_cuts_no_hop_out(
    lab: Any, inv: inventory.Inventory, images: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpu1's uplink is the narrow part: its first hop takes the stream slower than gpu1 makes
    it, but the trial to the spare gets no more (the two share the uplink): no cut, one copy
    (and the trial's few seconds) out of gpu1."""
    monkeypatch.setattr(linkscripts, "LAG_BYTES", 6 << 20)
    ref = images.on_top(images.base(), "v1", os.urandom(24 << 20))
    with shaped_out(lab, SOURCE, "16mbit"):
        before = _sent_by(lab, SOURCE)
        report = sync(inv, ref, ["gpu2", "gpu3", "gpu4"], via="relay")
        sent = _sent_by(lab, SOURCE) - before
    for h in ("gpu2", "gpu3", "gpu4"):
        r = report.results[h]
        assert r.ok and r.value.via == "relay", (h, r.reason)
        assert r.value.note == "", (h, r.value.note)
        assert images.same(h, ref) and images.leftovers(h) == []
    wire = report.results["gpu4"].value.wire_bytes
    assert wire > 20 << 20
    assert sent < 1.4 * wire, (sent, wire)  # one copy, and the trial: not two copies
    assert _placed(lab) == ([], [])


def test_a_slow_hop_whose_way_around_is_blocked_stays_in_the_chain_and_every_target_is_served(
    lab: Any, inv: inventory.Inventory, images: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpu2 cuts gpu3 out but cannot reach gpu4 (its spare): the chain stays as it was."""
    monkeypatch.setattr(linkscripts, "LAG_BYTES", 6 << 20)
    ref = images.on_top(images.base(), "v1", os.urandom(16 << 20))
    with shaped(lab, "gpu3", "8mbit"), unreachable(lab, "gpu2", "gpu4"):
        report = sync(inv, ref, ["gpu2", "gpu3", "gpu4"], via="relay")
    for h in ("gpu2", "gpu3", "gpu4"):
        r = report.results[h]
        assert r.ok and r.value.via == "relay", (h, r.reason)
        assert images.same(h, ref) and images.leftovers(h) == []
    notes = {h: report.results[h].value.note for h in ("gpu2", "gpu3", "gpu4")}
    assert notes["gpu3"].startswith("slow (") and "the way around it did not answer" in notes["gpu3"], notes
    assert notes["gpu2"] == notes["gpu4"] == "", notes
    assert _placed(lab) == ([], [])


def test_a_relay_from_this_machine_or_through_it_when_it_cannot_reach_the_hosts(
    lab: Any, inv: inventory.Inventory, images: Images
) -> None:
    """Source: this machine, reading gpu1's daemon. Behind the bastion this machine cannot
    reach the hosts' SSH ports itself: the chain is not made, forge says why and sends as
    always."""
    from forge.inventory import Host

    here = Host(name="here", address="localhost", local=True, docker_host=lab.lab.config.docker_host(SOURCE))
    ref = images.on_top(images.base(), "v1", os.urandom(2 << 20))
    report = sync(inv, ref, ["gpu2", "gpu3"], source=here, via="relay")
    for h in ("gpu2", "gpu3"):
        r = report.results[h]
        assert r.ok, r.reason
        if lab.lab.bastion:
            assert r.value.via == "client" and "cannot reach it over SSH" in r.value.note, r.value
        else:
            assert r.value.via == "relay", r.value
        assert images.same(h, ref)
    assert _placed(lab) == ([], [])


def test_auto_sends_straight_to_a_fresh_host_and_only_the_missing_layer_to_one_that_has_the_rest(
    lab: Any, inv: inventory.Inventory, images: Images
) -> None:
    v1 = images.on_top(images.base(size=4 << 20), "v1", os.urandom(100_000))
    assert sync(inv, v1, ["gpu2"], via="client").results["gpu2"].ok
    v2 = images.on_top(v1, "v2", os.urandom(200_000))
    report = sync(inv, v2, ["gpu2", "gpu3"], via="auto")
    has_some, fresh = report.results["gpu2"], report.results["gpu3"]
    assert has_some.ok and has_some.value.via == "client" and has_some.value.layers_sent == 1, has_some.value
    assert fresh.ok and fresh.value.via == "direct" and fresh.value.layers_sent == 3, fresh.value
    assert images.same("gpu2", v2) and images.same("gpu3", v2)
