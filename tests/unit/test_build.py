"""forge build: settings, the build context, the docker argv, and the build over a transport."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from forge import shell
from forge.build import (
    DEFAULT_CONTEXT,
    BuildError,
    BuildSpec,
    build,
    build_args,
    context_tar,
)
from forge.errors import CommandFailed, HostError
from forge.inventory import Host
from forge.session import HostSession
from tests.unit.fakes import FakeTransport, session

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDq3Gm6bV5wDk0 alice@laptop"
RSA = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 alice@old"
HOST = Host(name="gpu1", address="10.0.0.1", docker_host="unix:///run/user/1000/docker.sock")


def spec(**kw: object) -> BuildSpec:
    base: dict[str, object] = {"tag": "lab/dev:1", "user": "alice", "uid": 1000, "gid": 100, "public_keys": (KEY,)}
    base.update(kw)
    return BuildSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"uid": 0}, "not root"),
        ({"gid": 0}, "not root"),
        ({"user": "Alice Smith"}, "plain Unix user name"),
        ({"user": "x;rm"}, "plain Unix user name"),
        ({"public_keys": ()}, "no public keys"),
        ({"apt_mirror": "mirror.example.edu; rm -rf /"}, "apt mirror"),
        ({"install_packages": False, "extra_packages": ("vim",)}, "extra packages"),
    ],
)
def test_spec_refuses_bad_settings(kw: dict[str, object], match: str) -> None:
    with pytest.raises(BuildError, match=match):
        spec(**kw)


def test_build_args_carry_only_what_is_set() -> None:
    assert spec().build_args() == {"DEV_USER": "alice", "DEV_UID": "1000", "DEV_GID": "100", "INSTALL_PACKAGES": "1"}
    full = spec(
        base="forge-lab/debian:bookworm",
        toolchain="forge-lab/debian-gcc:bookworm",
        install_packages=True,
        extra_packages=("vim", "git"),
        apt_mirror="mirrors.example.edu",
        pip_index_url="https://p/simple",
    )
    assert full.build_args() == {
        "DEV_USER": "alice",
        "DEV_UID": "1000",
        "DEV_GID": "100",
        "INSTALL_PACKAGES": "1",
        "BASE_IMAGE": "forge-lab/debian:bookworm",
        "TOOLCHAIN_IMAGE": "forge-lab/debian-gcc:bookworm",
        "EXTRA_PACKAGES": "vim git",
        "APT_MIRROR": "mirrors.example.edu",
        "PIP_INDEX_URL": "https://p/simple",
    }
    assert spec(install_packages=False).build_args()["INSTALL_PACKAGES"] == "0"


def test_build_argv_reads_the_context_from_stdin_and_uses_the_hosts_daemon() -> None:
    argv = session(HOST).docker(*build_args(spec(base="img:1", no_cache=True)))
    assert argv[:5] == ["docker", "-H", "unix:///run/user/1000/docker.sock", "build", "-t"]
    assert argv[-1] == "-"
    assert "--no-cache" in argv
    i = argv.index("BASE_IMAGE=img:1")
    assert argv[i - 1] == "--build-arg"
    # Through a real shell, every argument arrives as one word.
    out = subprocess.run(["sh", "-c", shell.render(["printf", "%s\\n", *argv])], capture_output=True, text=True)
    assert out.stdout.splitlines() == argv


def test_context_tar_has_the_image_files_and_the_keys_with_fixed_metadata() -> None:
    data = context_tar(spec(public_keys=(KEY, RSA)))
    assert data == context_tar(spec(public_keys=(KEY, RSA)))  # same input, same bytes
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        expected = {p.name for p in DEFAULT_CONTEXT.iterdir() if p.is_file()} | {"authorized_keys"}
        assert set(members) == expected
        assert {"Dockerfile", "fixuid.c", "entrypoint.sh", "sshd_config"} <= set(members)
        keys = tar.extractfile("authorized_keys")
        assert keys is not None and keys.read().decode() == f"{KEY}\n{RSA}\n"
        assert all(m.uid == 0 and m.mtime == 0 for m in members.values())
        assert members["entrypoint.sh"].mode == 0o755
        assert members["Dockerfile"].mode == 0o644


def test_context_tar_without_a_dockerfile(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="no Dockerfile"):
        context_tar(spec(context_dir=tmp_path))


IMAGE_ID = "sha256:" + "ab" * 32
BUILD_LOG = b"Step 1/28 : ARG BASE_IMAGE\n" * 1000 + b"Step 9/28 : RUN cc fixuid.c\nboom\n"


def builder(*, build_status: int = 0, image_id: str = IMAGE_ID, host: Host = HOST) -> tuple[HostSession, FakeTransport]:
    """A host that answers `docker build` (with a long log) and `docker image inspect`."""
    fake = FakeTransport(host.name)
    err = "The command '/bin/sh -c cc' returned a non-zero code: 1" if build_status else ""
    fake.on(" build ", status=build_status, sink=BUILD_LOG, stderr=err).on(" image inspect ", stdout=image_id + "\n")
    return session(host, fake), fake


def test_build_streams_the_context_and_returns_the_image_id() -> None:
    s, fake = builder()
    log = io.BytesIO()
    result = build(s, spec(), log=log)
    assert result.tag == "lab/dev:1" and result.image_id == IMAGE_ID and result.host == "gpu1"
    assert fake.scripts[0] == shell.render(s.docker(*build_args(spec())))
    assert fake.scripts[0].startswith("docker -H unix:///run/user/1000/docker.sock build -t lab/dev:1")
    assert fake.scripts[1] == shell.render(
        ["docker", "-H", "unix:///run/user/1000/docker.sock", "image", "inspect", "-f", "{{.Id}}", "lab/dev:1"]
    )
    assert fake.stdin == context_tar(spec())
    assert log.getvalue().endswith(b"boom\n")


def test_a_failed_build_shows_the_last_output() -> None:
    with pytest.raises(CommandFailed) as e:
        build(builder(build_status=1)[0], spec())
    assert e.value.exit_status == 1
    assert "returned a non-zero code" in str(e.value)
    assert "boom" in e.value.stderr and len(e.value.stderr) < 10_000


def test_no_image_id_after_build_is_an_error() -> None:
    with pytest.raises(HostError, match="no image ID"):
        build(builder(image_id="")[0], spec())


def no_daemon(host: Host, status: int, stderr: str) -> HostSession:
    """docker build where no daemon runs (this machine in the lab), or no docker at all."""
    return session(host, FakeTransport(host.name).on(" build ", status=status, stderr=stderr))


def test_no_docker_daemon_here_says_so_and_where_to_build() -> None:
    stderr = (
        "DEPRECATED: The legacy builder is deprecated and will be removed in a future release.\n"
        "            Install the buildx component to build images with BuildKit:\n"
        "            https://docs.docker.com/go/buildx/\n\n"
        "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n"
    )
    local = Host(name="local", address="localhost", local=True)
    with pytest.raises(BuildError) as e:
        build(no_daemon(local, 1, stderr), spec())
    assert str(e.value) == (
        "no Docker daemon answers on this machine: Cannot connect to the Docker daemon at "
        "unix:///var/run/docker.sock. Is the docker daemon running? "
        "(build on a host that runs Docker: forge build --host HOST)"
    )
    with pytest.raises(BuildError, match="^gpu1 has no docker command"):
        build(no_daemon(HOST, 127, "sh: 1: docker: not found\n"), spec())
