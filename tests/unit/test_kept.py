"""The loop that serves a command run over and over (forge/transport/kept.py), run here by a
real ``sh`` over pipes in place of an SSH channel."""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path

import pytest

from forge import shell
from forge.transport import kept


class PipeChannel:
    """A channel over a local process's stdin and stdout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc, self.stdin, self.stdout = proc, proc.stdin, proc.stdout
        self.timeout: float | None = None

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def sendall(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def recv(self, nbytes: int) -> bytes:
        if not select.select([self.stdout], [], [], self.timeout)[0]:
            raise TimeoutError
        return os.read(self.stdout.fileno(), nbytes)

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(10)


def serve(script: shell.Script, tmp: Path) -> tuple[kept.KeptLoop, PipeChannel]:
    argv = ["sh", "-c", kept.LOOP, "forge-kept", script]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp)})
    chan = PipeChannel(proc)
    return kept.KeptLoop("gpu1", chan), chan


def test_each_request_runs_the_command_and_gets_its_status_and_both_outputs(tmp_path: Path) -> None:
    # The command prints what looks like a header: it is read as output, by length.
    script = shell.script('echo "0123456789abcdef 0 5 0"; printf "warn\\n" >&2; exit 3')
    loop, chan = serve(script, tmp_path)
    try:
        for _ in range(3):
            status, out, err = loop.call(time.monotonic() + 30, limit=1 << 20)
            assert (status, out, err) == (3, b"0123456789abcdef 0 5 0\n", b"warn\n")
        assert len(list(tmp_path.iterdir())) == 1  # the loop's private directory
    finally:
        chan.close()
    assert list(tmp_path.iterdir()) == []  # removed once the loop's input ended


def test_a_request_that_is_not_a_nonce_ends_the_loop(tmp_path: Path) -> None:
    loop, chan = serve(shell.script("echo hi"), tmp_path)
    chan.sendall(b"; rm -rf /\n")
    assert chan.proc.wait(10) == 0
    assert list(tmp_path.iterdir()) == []
    with pytest.raises((kept.KeptReplyError, BrokenPipeError)):
        loop.call(time.monotonic() + 5, limit=1 << 20)


def test_a_command_past_its_deadline_is_a_timeout(tmp_path: Path) -> None:
    loop, chan = serve(shell.script("sleep 5"), tmp_path)
    try:
        with pytest.raises(TimeoutError):
            loop.call(time.monotonic() + 0.3, limit=1 << 20)
    finally:
        chan.proc.kill()
        chan.proc.wait(10)


def test_the_header_is_checked_field_by_field() -> None:
    nonce = "0123456789abcdef"
    assert kept.parse_header(b"0123456789abcdef 0 12 3", nonce, limit=100) == kept.Header(0, 12, 3)
    for line, why in [
        (b"fedcba9876543210 0 12 3", "another request"),
        (b"0123456789abcdef 0 60 50", "more than the 100"),
        (b"0123456789abcdef 300 1 1", "out of range"),
        (b"0123456789abcdef 0 -1 3", "not a reply header"),
        (b"\x1b]0;owned\x07 0 1 1", "not a reply header"),
        (b"", "not a reply header"),
    ]:
        with pytest.raises(kept.KeptReplyError, match=why):
            kept.parse_header(line, nonce, limit=100)


def test_the_loop_is_one_quoted_command() -> None:
    script = shell.script("echo 'a b' \"$HOME\"; exit 1")
    rendered = kept.loop_command(script)
    argv = ["sh", "-c", kept.LOOP, "forge-kept", script]
    assert rendered == shell.render(argv)
    assert subprocess.run(["sh", "-n", "-c", kept.LOOP]).returncode == 0
    nonces = {kept.new_nonce() for _ in range(100)}
    assert len(nonces) == 100 and all(len(n) == 16 and int(n, 16) >= 0 for n in nonces)
