"""known_hosts files, read the way OpenSSH reads them. Pure, but for reading and appending.

A line is ``[@marker] PATTERNS KEYTYPE BASE64KEY [comment]``. PATTERNS is a comma list of
host names, ``[host]:port`` names, wildcards (``*``, ``?``), negations (``!pattern``) or a
hashed name (``|1|salt|hmac``, what ``HashKnownHosts`` writes). Markers:

- ``@revoked``: this key must never be accepted for the hosts it names, even when another
  line lists it;
- ``@cert-authority``: a CA for host certificates. forge's SSH library verifies plain host
  keys only, so these lines never make a host known; they are named in the error when they
  are all a host has.

Lines that cannot be parsed are skipped, as OpenSSH skips them.
"""

from __future__ import annotations

import base64
import binascii
import enum
import fnmatch
import hashlib
import hmac
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_MARKERS = {"@revoked": "revoked", "@cert-authority": "cert-authority"}
_append_lock = threading.Lock()


@dataclass(frozen=True)
class Entry:
    """One usable line of a known_hosts file."""

    patterns: tuple[str, ...]
    key_type: str
    key: str  # base64, as in the file
    marker: str | None = None  # None, "revoked" or "cert-authority"
    source: str = ""  # file:line, for messages

    def matches(self, name: str) -> bool:
        """Whether this line's host patterns cover ``name`` (a host or ``[host]:port``)."""
        hit = False
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            pattern = pattern[1:] if negated else pattern
            if _pattern_matches(pattern, name):
                if negated:
                    return False
                hit = True
        return hit


def _pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):
        try:
            _, _, salt64, digest64 = pattern.split("|")
            salt = base64.b64decode(salt64, validate=True)
            digest = base64.b64decode(digest64, validate=True)
        except (ValueError, binascii.Error):
            return False
        mac = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(mac, digest)
    # Host names are case-insensitive; wildcards are OpenSSH's * and ? (no character classes).
    pattern, name = pattern.lower(), name.lower()
    if "*" in pattern or "?" in pattern:
        escaped = pattern.replace("[", "[[]")
        return fnmatch.fnmatchcase(name, escaped)
    return pattern == name


def parse(text: str, source: str = "") -> list[Entry]:
    """Every usable line of a known_hosts file's text."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        marker = None
        if words[0].startswith("@"):
            marker = _MARKERS.get(words[0])
            if marker is None:
                continue  # an unknown marker: OpenSSH skips the line
            words = words[1:]
        if len(words) < 3:
            continue
        patterns, key_type, key = words[0], words[1], words[2]
        try:
            base64.b64decode(key, validate=True)
        except (ValueError, binascii.Error):
            continue
        entries.append(Entry(tuple(p for p in patterns.split(",") if p), key_type, key, marker, f"{source}:{number}"))
    return entries


class _File:
    """One file's text, its lines parsed, and what they say of each name asked so far."""

    def __init__(self, text: str, entries: list[Entry]) -> None:
        self.text, self.entries = text, entries
        self._names: dict[str, tuple[tuple[Entry, ...], frozenset[str]]] = {}
        self._lock = threading.Lock()

    def lines_for(self, name: str) -> tuple[tuple[Entry, ...], frozenset[str]]:
        """(the plain lines naming ``name``, the keys revoked for it): every line matched once
        per name, not once per connection (a hashed line costs an HMAC to match)."""
        with self._lock:
            found = self._names.get(name)
        if found is None:
            found = _lines_for(self.entries, name)
            with self._lock:
                if len(self._names) >= _NAMES_KEPT:
                    self._names.clear()
                self._names[name] = found
        return found


_NAMES_KEPT = 4096  # names looked up per file before the answers kept are dropped
_parsed: dict[str, _File] = {}
_parsed_lock = threading.Lock()


@dataclass(frozen=True)
class Known:
    """The known_hosts files of a hop as read for one connection."""

    files: tuple[_File, ...]

    @property
    def entries(self) -> list[Entry]:
        """Every usable line, file after file."""
        return [e for f in self.files for e in f.entries]

    def trusted(self, name: str) -> list[Entry]:
        """:func:`trusted` of :attr:`entries`, from what each file keeps per name."""
        return _unrevoked([f.lines_for(name) for f in self.files])


def read(files: Iterable[Path]) -> Known:
    """Every readable file (a missing one holds nothing). A file whose text is the one read last
    time is neither parsed nor matched again: every connection of a fleet operation reads the
    same file, which lists the whole fleet (hashed, on Debian's default ``HashKnownHosts``)."""
    out: list[_File] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            continue
        with _parsed_lock:
            seen = _parsed.get(str(f))
        if seen is None or seen.text != text:
            seen = _File(text, parse(text, str(f)))
            with _parsed_lock:
                _parsed[str(f)] = seen
        out.append(seen)
    return Known(tuple(out))


def lookup_name(hostname: str, port: int, alias: str | None = None) -> str:
    """The name OpenSSH looks a host up by: ``HostKeyAlias`` as is, else the host name, with
    ``[host]:port`` for a port other than 22."""
    if alias:
        return alias
    return hostname if port == 22 else f"[{hostname}]:{port}"


class Verdict(enum.Enum):
    KNOWN = "known"  # a plain line has this key for this host
    UNKNOWN = "unknown"  # no plain line names this host
    CHANGED = "changed"  # plain lines name this host, none with this key
    REVOKED = "revoked"  # a @revoked line names this key for this host


@dataclass(frozen=True)
class Check:
    verdict: Verdict
    known: tuple[Entry, ...] = ()  # the host's plain lines
    authorities: tuple[Entry, ...] = ()  # @cert-authority lines for the host


def check(entries: Sequence[Entry], name: str, key_type: str, key: str) -> Check:
    """What the files say of ``key`` offered by ``name``. Revocation wins over everything."""
    mine = [e for e in entries if e.matches(name)]
    if any(e.marker == "revoked" and e.key == key for e in mine):
        return Check(Verdict.REVOKED)
    plain = tuple(e for e in mine if e.marker is None)
    cas = tuple(e for e in mine if e.marker == "cert-authority")
    if any(e.key == key and e.key_type == key_type for e in plain):
        return Check(Verdict.KNOWN, plain, cas)
    return Check(Verdict.CHANGED if plain else Verdict.UNKNOWN, plain, cas)


def trusted(entries: Sequence[Entry], name: str) -> list[Entry]:
    """The plain, unrevoked lines for ``name``: the keys a connection may accept."""
    return _unrevoked([_lines_for(entries, name)])


def _lines_for(entries: Sequence[Entry], name: str) -> tuple[tuple[Entry, ...], frozenset[str]]:
    """(the plain lines naming ``name``, the keys revoked for it) among ``entries``."""
    mine = [e for e in entries if e.matches(name)]
    return tuple(e for e in mine if e.marker is None), frozenset(e.key for e in mine if e.marker == "revoked")


def _unrevoked(found: Sequence[tuple[tuple[Entry, ...], frozenset[str]]]) -> list[Entry]:
    """The plain lines of every file whose key no file revokes."""
    revoked = frozenset().union(*(keys for _, keys in found))
    return [e for plain, _ in found for e in plain if e.key not in revoked]


def append(path: Path, name: str, key_type: str, key: str) -> None:
    """Record a key (``accept-new``): one line appended, the file created 0600 if missing.
    A symlinked file (dotfiles) is appended to where it points."""
    line = f"{name} {key_type} {key}\n"
    with _append_lock:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(line)
