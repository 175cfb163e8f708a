"""Building the dev environment image (forge/devimage/) for one user, on this machine or a host.

The build context (the files of forge/devimage/ plus an ``authorized_keys`` made from the user's
public keys) is packed as a tar in memory and streamed over the host's transport into
``docker build -``, which reads a tar context from stdin: the host needs nothing but Docker.
The user's uid, gid and name go in as build arguments, so the image's user is the user who
logs in (docs/image.md).
"""

from __future__ import annotations

import io
import re
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from forge.errors import CommandFailed, ForgeError, HostError
from forge.session import HostSession

#: The image's files in a checkout of forge.
DEFAULT_CONTEXT = Path(__file__).resolve().parent / "devimage"  # shipped with the package
DEFAULT_TAG = "forge/dev:latest"
DEFAULT_TIMEOUT_S = 3600.0

_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_MIRROR = re.compile(r"^[A-Za-z0-9._:/-]+$")


_NO_DAEMON = "Cannot connect to the Docker daemon"
_ELSEWHERE = "build on a host that runs Docker: forge build --host HOST"


def _last_line(text: str, containing: str) -> str:
    return next(line.strip() for line in reversed(text.splitlines()) if containing in line)


class BuildError(ForgeError):
    """The build could not start (bad settings, no keys) or docker build failed."""


@dataclass(frozen=True)
class BuildSpec:
    """What to build. None for base/toolchain: the Dockerfile's defaults."""

    tag: str
    user: str
    uid: int
    gid: int
    public_keys: tuple[str, ...]
    base: str | None = None
    toolchain: str | None = None
    install_packages: bool = True
    extra_packages: tuple[str, ...] = ()
    apt_mirror: str | None = None
    pip_index_url: str | None = None
    context_dir: Path = DEFAULT_CONTEXT
    no_cache: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _USER.match(self.user):
            raise BuildError(f"user name {self.user!r} is not a plain Unix user name")
        if self.uid <= 0 or self.gid <= 0:
            raise BuildError(
                f"uid {self.uid} and gid {self.gid}: the dev user is not root",
                hint="run as the user who will log in, or give --uid and --gid",
            )
        if not self.public_keys:
            raise BuildError(
                "no public keys: the image's sshd lets you in by key only",
                hint="give --public-key FILE, or create a key with ssh-keygen",
            )
        if self.apt_mirror is not None and not _MIRROR.match(self.apt_mirror):
            raise BuildError(f"apt mirror {self.apt_mirror!r} has characters a host name does not")
        if self.extra_packages and not self.install_packages:
            raise BuildError("extra packages need package installation (drop --no-packages)")

    def build_args(self) -> dict[str, str]:
        args = {
            "DEV_USER": self.user,
            "DEV_UID": str(self.uid),
            "DEV_GID": str(self.gid),
            "INSTALL_PACKAGES": "1" if self.install_packages else "0",
        }
        if self.base:
            args["BASE_IMAGE"] = self.base
        if self.toolchain:
            args["TOOLCHAIN_IMAGE"] = self.toolchain
        if self.extra_packages:
            args["EXTRA_PACKAGES"] = " ".join(self.extra_packages)
        if self.apt_mirror:
            args["APT_MIRROR"] = self.apt_mirror
        if self.pip_index_url:
            args["PIP_INDEX_URL"] = self.pip_index_url
        return args


@dataclass(frozen=True)
class BuildResult:
    host: str
    tag: str
    image_id: str
    duration_s: float


# --------------------------------------------------------------------------- context and argv


def context_tar(spec: BuildSpec) -> bytes:
    """The build context: forge/devimage/'s regular files plus ``authorized_keys``.

    Owner, group and times are fixed, so the same files give the same tar (and the
    builder's cache is reused).
    """
    if not (spec.context_dir / "Dockerfile").is_file():
        raise BuildError(
            f"no Dockerfile in {spec.context_dir}", hint="give --context DIR (a directory like forge/devimage)"
        )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(spec.context_dir.iterdir()):
            if not path.is_file() or path.name == "authorized_keys":
                continue
            # Scripts by name, not by the installed file's mode (which an install may not keep).
            _add(tar, path.name, path.read_bytes(), 0o755 if path.suffix == ".sh" else 0o644)
        _add(tar, "authorized_keys", "".join(k + "\n" for k in spec.public_keys).encode(), 0o644)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))


def build_args(spec: BuildSpec) -> list[str]:
    """``docker`` arguments of a build reading its context as a tar from stdin."""
    argv = ["build", "-t", spec.tag]
    if spec.no_cache:
        argv.append("--no-cache")
    for name, value in spec.build_args().items():
        argv += ["--build-arg", f"{name}={value}"]
    for name, value in spec.labels.items():
        argv += ["--label", f"{name}={value}"]
    argv.append("-")
    return argv


# --------------------------------------------------------------------------- building


class _Tail(io.BytesIO):
    """A sink that keeps only the last bytes written and passes everything on to ``echo``."""

    def __init__(self, echo: IO[bytes] | None, keep: int = 8192) -> None:
        super().__init__()
        self.echo = echo
        self.keep = keep
        self.data = b""

    def write(self, b: bytes) -> int:  # type: ignore[override]
        if self.echo is not None:
            self.echo.write(b)
            self.echo.flush()
        self.data = (self.data + bytes(b))[-self.keep :]
        return len(b)


def build(
    s: HostSession,
    spec: BuildSpec,
    *,
    log: IO[bytes] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> BuildResult:
    """Build ``spec`` with the docker CLI on the host; docker's output goes to ``log``."""
    started = time.monotonic()
    context = context_tar(spec)
    tail = _Tail(log)
    result = s.stream(s.docker(*build_args(spec)), source=io.BytesIO(context), sink=tail, timeout=timeout_s)
    host = s.host
    if not result.ok:
        output = tail.data.decode("utf-8", "replace") + result.stderr
        where = "this machine" if host.local else host.name
        if result.exit_status == 127:
            raise BuildError(f"{where} has no docker command", hint=_ELSEWHERE)
        if _NO_DAEMON in output:
            raise BuildError(f"no Docker daemon answers on {where}: {_last_line(output, _NO_DAEMON)}", hint=_ELSEWHERE)
        raise CommandFailed(host.name, result.command, result.exit_status, output)
    inspect = s.run(s.docker("image", "inspect", "-f", "{{.Id}}", spec.tag), check=True)
    image_id = inspect.stdout.strip()
    if not image_id.startswith("sha256:"):
        raise HostError(host.name, f"docker built {spec.tag} but reports no image ID for it")
    return BuildResult(host=host.name, tag=spec.tag, image_id=image_id, duration_s=time.monotonic() - started)
