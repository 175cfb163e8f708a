"""The public keys a dev environment lets in: one rule for ``forge build`` (the image's
``authorized_keys``) and ``forge migrate`` (the container's ``FORGE_AUTHORIZED_KEYS``).

By default: the ``.pub`` of the inventory's ``identity_file`` (the key forge itself logs in
with) when it exists, else every ``~/.ssh/id_*.pub`` (the keys ssh offers by default). Public
keys only: a private key given by mistake is refused, never copied anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from forge.errors import ForgeError

KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


class PublicKeyError(ForgeError):
    """A public key file that cannot be used, or none at all."""


def default_files(identity_file: str | None = None, home: Path | None = None) -> list[Path]:
    """The default public key files (see the module's docstring)."""
    if identity_file:
        pub = Path(identity_file + ".pub").expanduser()
        if pub.is_file():
            return [pub]
    return sorted(((home or Path.home()) / ".ssh").glob("id_*.pub"))


def parse(text: str, *, source: str) -> list[str]:
    """The OpenSSH public key lines of a file's text; refuses private keys and junk."""
    if "PRIVATE KEY" in text:
        raise PublicKeyError(f"{source} is a private key", hint="give the .pub file")
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        kind = line.split()[0]
        if kind not in KEY_TYPES or len(line.split()) < 2:
            raise PublicKeyError(f"{source}, line {n}: not an OpenSSH public key (starts with {kind[:30]!r})")
        keys.append(line)
    return keys


def read(paths: Iterable[str | os.PathLike[str]]) -> tuple[str, ...]:
    """The keys of these files, each once, in order."""
    keys: list[str] = []
    for p in paths:
        path = Path(p).expanduser()
        try:
            text = path.read_text()
        except OSError as e:
            raise PublicKeyError(f"cannot read public key {path}: {e.strerror}") from e
        keys.extend(k for k in parse(text, source=str(path)) if k not in keys)
    return tuple(keys)


def default_keys(identity_file: str | None = None) -> tuple[str, ...]:
    """The keys of :func:`default_files`; an error naming what to do when there are none."""
    files = default_files(identity_file)
    keys = read(files)
    if not keys:
        raise PublicKeyError(
            "no public key to let into the environment (looked for "
            + (f"{identity_file}.pub and " if identity_file else "")
            + "~/.ssh/id_*.pub)",
            hint="create one with ssh-keygen, or pass --authorized-keys FILE",
        )
    return keys
