"""What forge learnt of an image's manifest: its config digest -> the manifest digest it was
loaded with on a containerd-store daemon (the image's ID there).

A classic-store source read with ``docker save`` says its manifest only at the end of the
stream, so before sending, forge cannot know the ID an image will have on a containerd-store
target, nor see that one already has it. After each transfer forge remembers the pair here;
the next plan looks it up. The pair is a fact about content (the manifest digest commits to
the config digest and every layer), and a plan only ever compares it with the ID a target
reports, so a stale or foreign entry can make forge send again, never skip a send it needs.
The manifest depends on the archive: forge's own load archive (through this machine) and a
``docker save`` archive (``--via direct`` or ``relay``) give a containerd store different ones;
the last transfer's is kept.

Kept in ``$XDG_CACHE_HOME/forge/manifests.json`` (``~/.cache/forge``); replaced atomically; a
file that cannot be read is treated as empty.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from pathlib import Path

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_LIMIT = 4096  # entries kept (the newest)
_lock = threading.Lock()


def path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "forge" / "manifests.json"


def _read(p: Path) -> dict[str, str]:
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str) and _DIGEST.match(k) and _DIGEST.match(v)}


def manifest_for(config: str) -> str | None:
    """The manifest digest an image of this config was loaded with before, if known."""
    return _read(path()).get(config)


def remember(config: str, manifest: str) -> None:
    """Record the pair (best effort: a cache that cannot be written is no error)."""
    if not (_DIGEST.match(config) and _DIGEST.match(manifest)):
        return
    p = path()
    with _lock:
        entries = _read(p)
        if entries.get(config) == manifest:
            return
        entries.pop(config, None)
        entries[config] = manifest
        kept = dict(list(entries.items())[-_LIMIT:])
        try:
            p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".manifests-")
            with os.fdopen(fd, "w") as f:
                json.dump(kept, f)
            os.replace(tmp, p)
        except OSError:
            pass
