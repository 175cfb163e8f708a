"""A command run over and over on a kept connection (a probe under ``--watch``), served by a
loop on the host instead of a new SSH channel each time.

A channel per command costs about a dozen SSH messages each way to open, run, report the exit
status and close, and paramiko handles each in Python: most of forge's CPU for a probe on a
connection already open. The loop (:data:`LOOP`, run once per connection and command) reads
one request line, runs the command (``sh -c``, its script as a positional argument: quoted in
one place, :mod:`forge.shell`), and answers with a header and the two outputs::

    NONCE STATUS STDOUT_BYTES STDERR_BYTES\\n<stdout><stderr>

The request is a fresh random nonce; the loop refuses anything but lower-case hex. The outputs
are written to files first, so what the command prints can never pass for a header: the client
reads the header, checks that it names the nonce it sent, then exactly that many bytes.
Everything in a reply is untrusted (:func:`parse_header` checks each field).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from forge import shell

#: $1: the command's script. The files live in a private directory, removed when the loop ends
#: (the channel closed: ``read`` sees the end of its input; or a hang-up). The reply goes out
#: in one write (one SSH message where it fits), not the header apart.
LOOP = r"""
d=$(mktemp -d) || exit 1
trap 'rm -rf "$d"' EXIT
trap 'exit 1' HUP INT TERM
while IFS= read -r n; do
  case "$n" in ''|*[!0-9a-f]*) exit 0 ;; esac
  sh -c "$1" > "$d/o" 2> "$d/e" < /dev/null
  s=$?
  printf '%s %s %s %s\n' "$n" "$s" "$(wc -c < "$d/o")" "$(wc -c < "$d/e")" > "$d/r"
  cat "$d/o" "$d/e" >> "$d/r"
  cat "$d/r"
done
""".strip()

_HEADER = re.compile(rb"([0-9a-f]{16}) ([0-9]{1,3}) ([0-9]{1,12}) ([0-9]{1,12})")
#: A header is short; more than this without a line break is not one.
MAX_HEADER = 128


class KeptReplyError(Exception):
    """The loop's reply was not what it prints: the loop is dropped, the command run anew."""


@dataclass(frozen=True)
class Header:
    status: int
    stdout_bytes: int
    stderr_bytes: int


def loop_command(script: shell.Script) -> shell.Script:
    """The loop that serves ``script``."""
    return shell.render(["sh", "-c", LOOP, "forge-kept", script])


def new_nonce() -> str:
    return secrets.token_hex(8)


def request(nonce: str) -> bytes:
    return nonce.encode() + b"\n"


def parse_header(line: bytes, nonce: str, *, limit: int) -> Header:
    """Pure: the header line (without its line break) of the reply to ``nonce``; the outputs'
    sizes bounded by ``limit`` bytes together."""
    m = _HEADER.fullmatch(line.strip())
    if m is None:
        raise KeptReplyError(f"not a reply header: {line[:MAX_HEADER]!r}")
    if m.group(1).decode() != nonce:
        raise KeptReplyError("a reply to another request")
    status, out, err = int(m.group(2)), int(m.group(3)), int(m.group(4))
    if status > 255:
        raise KeptReplyError(f"exit status {status} out of range")
    if out + err > limit:
        raise KeptReplyError(f"a reply of {out + err} bytes, more than the {limit} forge reads")
    return Header(status, out, err)


class Channel(Protocol):
    """What the loop talks over (a paramiko channel)."""

    def settimeout(self, timeout: float | None) -> None: ...

    def sendall(self, data: bytes) -> None: ...

    def recv(self, nbytes: int) -> bytes: ...

    def close(self) -> None: ...


class KeptLoop:
    """The client's end of one loop: a request at a time (``lock``: a caller that finds it
    busy runs its command the usual way)."""

    def __init__(self, host: str, channel: Channel) -> None:
        self.host = host
        self.channel = channel
        self.lock = threading.Lock()
        self._buf = bytearray()

    def call(self, deadline: float | None, *, limit: int) -> tuple[int, bytes, bytes]:
        """One run of the command: its exit status, stdout and stderr. ``TimeoutError`` past
        ``deadline``; :class:`KeptReplyError` or the channel's own errors when the loop is
        broken."""
        nonce = new_nonce()
        self.channel.settimeout(_remaining(deadline))
        self.channel.sendall(request(nonce))
        header = parse_header(self._line(deadline), nonce, limit=limit)
        body = self._exactly(header.stdout_bytes + header.stderr_bytes, deadline)
        return header.status, body[: header.stdout_bytes], body[header.stdout_bytes :]

    def close(self) -> None:
        self.channel.close()

    def _fill(self, deadline: float | None) -> None:
        self.channel.settimeout(_remaining(deadline))
        data = self.channel.recv(1 << 16)  # TimeoutError past the deadline
        if not data:
            raise KeptReplyError("the loop ended")
        self._buf += data

    def _line(self, deadline: float | None) -> bytes:
        while (end := self._buf.find(b"\n")) < 0:
            if len(self._buf) > MAX_HEADER:
                raise KeptReplyError("no reply header")
            self._fill(deadline)
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line

    def _exactly(self, n: int, deadline: float | None) -> bytes:
        while len(self._buf) < n:
            self._fill(deadline)
        body = bytes(self._buf[:n])
        del self._buf[:n]
        return body


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.001, deadline - time.monotonic())
