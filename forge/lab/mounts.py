"""Mounts under a lab root (overlay layers, netns files, sshfs/FUSE volumes)."""

from __future__ import annotations

from pathlib import Path

from forge.lab.proc import run


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(root: Path) -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount at or below ``root``, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = _unescape(fields[4])
        fstype = fields[fields.index("-") + 1]
        if point == prefix.rstrip("/") or point.startswith(prefix):
            found.append((point, fstype))
    return sorted(set(found), key=lambda m: m[0].count("/"), reverse=True)


def unmount_all(root: Path) -> list[str]:
    """Unmount everything below ``root``; return what is still mounted (should be nothing)."""
    for _ in range(3):
        left = mounts_under(root)
        if not left:
            return []
        for point, _fstype in left:
            if not run(["umount", point], check=False, timeout=30).ok:
                run(["umount", "-l", point], check=False, timeout=30)
    return [point for point, _ in mounts_under(root)]


def is_shared_mount(path: Path) -> bool:
    """Whether ``path`` is a mount point whose mounts propagate to its peers and slaves."""
    target = str(path).rstrip("/") or "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        optional = fields[6 : fields.index("-")]
        if _unescape(fields[4]) == target and any(f.startswith("shared:") for f in optional):
            return True
    return False


def ensure_shared(path: Path) -> None:
    """Make ``path`` a shared mount (a recursive bind onto itself, which keeps what is already
    mounted below it), so that mounts made below it later reach the mount namespaces that
    are its slaves: a chrooted dockerd sees a user's sshfs mount."""
    if is_shared_mount(path):
        return
    if str(path) not in {point for point, _ in mounts_under(path)}:
        run(["mount", "--rbind", str(path), str(path)])
    run(["mount", "--make-shared", str(path)])
