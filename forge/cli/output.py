"""How the CLI shows results: tables for people, JSON for scripts, progress on stderr."""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Sequence
from typing import Any

import click

from forge.cli.signals import SignalFlag
from forge.progress import NoProgress

# What a terminal would act on instead of showing: C0 and C1 controls (escape sequences that
# move the cursor, retitle the window, or worse), DEL, and the bidirectional overrides that
# make text read differently than it is. Every value read from a host (labels, names, command
# output, error messages) can hold them: anyone may run docker there.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: str, *, one_line: bool = False) -> str:
    """``text`` safe to print on a terminal: controls shown as ``\\xNN`` (or ``\\uNNNN``);
    with ``one_line``, line breaks and tabs too (a table cell)."""

    def shown(m: re.Match[str]) -> str:
        c = ord(m.group())
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"

    text = _CONTROL.sub(shown, text)
    if one_line:
        text = text.replace("\n", "\\n").replace("\t", " ")
    return text


class CleanWriter:
    """A binary sink for remote output streamed to the terminal (a build log): decoded as
    UTF-8 as it comes and cleaned like :func:`clean` before it reaches ``out``."""

    def __init__(self, out: Any) -> None:
        import codecs

        self.out = out
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data: bytes) -> int:
        text = clean(self._decoder.decode(data))
        self.out.write(text.encode())
        self.out.flush()
        return len(data)

    def flush(self) -> None:
        self.out.flush()


def echo(text: str = "", *, err: bool = False, one_line: bool = False) -> None:
    """Print a line for a person (controls shown, not acted on); ``one_line``: a record that
    must stay one line whatever a host put in it (an error, a log line for cron)."""
    click.echo(clean(text, one_line=one_line), err=err)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], *, cleaned: bool = False) -> str:
    """A plain table; every cell cleaned, unless the caller did (``cleaned``: cells already
    cleaned and perhaps coloured by forge, whose codes tabulate does not count as width)."""
    from tabulate import tabulate  # imported here: JSON output and scripts don't pay for it

    cells = [[str(c) if cleaned else clean(str(c), one_line=True) for c in row] for row in rows]
    return tabulate(cells, headers=headers, tablefmt="simple", disable_numparse=True)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def is_terminal() -> bool:
    return sys.stdout.isatty()


def progress(message: str) -> None:
    """A progress line on stderr, only when stderr is a terminal."""
    if sys.stderr.isatty():
        echo(message, err=True)


class Notes(NoProgress):
    """Progress as lines on stderr, only when stderr is a terminal."""

    def note(self, message: str) -> None:
        progress(message)


class StatusLine:
    """One line of status on stderr (``waiting for 2 free GPU(s) ...``), redrawn in place and
    erased at the end, only when stderr is a terminal."""

    def __init__(self, *, live: bool = True) -> None:
        self.live = live and sys.stderr.isatty()

    def show(self, text: str) -> None:
        if self.live:  # cut to the terminal's width: a wrapped line would not redraw in place
            import shutil

            width = shutil.get_terminal_size((80, 24)).columns - 1
            sys.stderr.write("\r\x1b[K" + clean(text, one_line=True)[:width])
            sys.stderr.flush()

    def __enter__(self) -> StatusLine:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


class HostCounter(NoProgress):
    """``probing 3/16 hosts (last: gpu7)`` redrawn in place on stderr, only on a terminal, and
    erased when done, so the table that follows stands alone. Safe to call from threads."""

    def __init__(self, verb: str, total: int) -> None:
        self.verb, self.total, self.done = verb, total, 0
        self.line = StatusLine(live=total > 0)
        self._lock = threading.Lock()

    def finish(self, key: str, ok: bool, note: str = "") -> None:
        with self._lock:
            self.done += 1
            self.line.show(f"{self.verb} {self.done}/{self.total} hosts (last: {key})")

    def __enter__(self) -> HostCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.line.__exit__(*exc)


class Interrupt:
    """Ctrl-C for a loop that redraws (``--watch``): the first one sets a flag the loop checks
    (and has ``on_first`` run in a thread, e.g. to cut the work in flight short); a second one
    interrupts at once. Without it, a KeyboardInterrupt raised in the middle of the thread
    pool's own lock handling ended in "RuntimeError: release unlocked lock". The handler takes
    no lock (see forge/cli/signals.py): the thread that runs ``on_first`` is started beforehand
    and waits for the flag."""

    def __init__(self, on_first: Any = None) -> None:
        self.event = SignalFlag()
        self.on_first = on_first
        self._old: Any = None
        self._leaving = False
        self._runner: threading.Thread | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        import signal

        signal.signal(signal.SIGINT, self._old)  # the next Ctrl-C interrupts at once
        self.event.set()

    def _run_on_first(self) -> None:
        while not self.event.wait() and not self._leaving:
            pass
        if self.event.is_set() and self.on_first is not None:
            self.on_first()

    def __enter__(self) -> SignalFlag:
        import signal

        if self.on_first is not None:
            self._runner = threading.Thread(target=self._run_on_first, name="forge-interrupt", daemon=True)
            self._runner.start()
        self._old = signal.signal(signal.SIGINT, self._handler)
        return self.event

    def __exit__(self, *exc: object) -> None:
        import signal

        if signal.getsignal(signal.SIGINT) == self._handler:
            signal.signal(signal.SIGINT, self._old)
        self._leaving = True
        self.event.wake()
        if self._runner is not None and not self.event.is_set():
            self._runner.join()  # it returns at once; after a Ctrl-C it may still be in on_first
        if not self.event.is_set():
            self.event.close()  # after a Ctrl-C the process ends: the runner may still hold it
