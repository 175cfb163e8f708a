"""The Debian mirror this machine's apt uses: the only one reachable offline, from which the
lab's images and engine roots are built."""

from __future__ import annotations

import re
from pathlib import Path

from forge.lab.errors import LabError

#: The suite of this machine, whose apt source names the mirror.
SUITE = "bookworm"
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
SOURCES_LIST = Path("/etc/apt/sources.list")


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (the only one reachable offline)."""
    if SOURCES.exists():
        for block in SOURCES.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", block, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", block, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1)
    if SOURCES_LIST.exists():
        for line in SOURCES_LIST.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1]
    raise LabError(
        f"no apt source for Debian {SUITE} found in {SOURCES} or {SOURCES_LIST}",
        hint="the lab's images are built from the mirror apt uses",
    )
