"""Everyday tasks of the forge repository, run with invoke: `invoke --list`, `invoke deploy`.

Every command is an argv list rendered by forge.shell (the one place commands become
strings) and run with the Python this file is loaded by, so the tasks use the same virtual
environment as `invoke` itself.
"""

from __future__ import annotations

import sys

from invoke import Context, task

from forge import shell

PY = sys.executable


def _run(c: Context, *argv: str, env: dict[str, str] | None = None) -> None:
    c.run(shell.render(list(argv), env=env), echo=True, pty=False)


def _forge(inventory: str | None, *args: str) -> list[str]:
    return [PY, "-m", "forge", *(["-i", inventory] if inventory else []), *args]


@task(
    help={
        "inventory": "hosts.toml to use (default: forge's usual search)",
        "tag": "image to build and run (default: [environment] image, else forge/dev:latest)",
        "build_host": "build on this host and sync from it (default: this machine)",
        "base": "base image (default: the Dockerfile's PyTorch CUDA devel image)",
        "toolchain": "image with a C compiler for the uid helper (default: the base)",
        "no_packages": "install no packages (the base has sshd, xauth, sudo)",
        "env": "environment name (default: [environment] name)",
        "gpus": "GPUs to claim (default: [environment] gpus)",
        "ssh_config": "keep a block in ~/.ssh/config so `ssh ENV` works (default: on)",
    }
)
def deploy(
    c: Context,
    inventory: str | None = None,
    tag: str | None = None,
    build_host: str | None = None,
    base: str | None = None,
    toolchain: str | None = None,
    no_packages: bool = False,
    env: str | None = None,
    gpus: int = 0,
    ssh_config: bool = True,
) -> None:
    """Build the dev image, sync it to every host, and start the environment on an idle GPU."""
    build = ["build", "--quiet"]
    for flag, value in (("--host", build_host), ("--tag", tag), ("--base", base), ("--toolchain", toolchain)):
        if value:
            build += [flag, value]
    if no_packages:
        build.append("--no-packages")
    _run(c, *_forge(inventory, *build))
    sync = ["sync", "--quiet", *(["--from", build_host] if build_host else []), *([tag] if tag else [])]
    _run(c, *_forge(inventory, *sync))
    migrate = ["migrate", "--to", "idle", "--ssh-config" if ssh_config else "--no-ssh-config"]
    for flag, value in (("--image", tag), ("--env", env), ("--gpus", str(gpus) if gpus else None)):
        if value:
            migrate += [flag, value]
    if build_host:
        migrate += ["--image-from", build_host]
    _run(c, *_forge(inventory, *migrate))


@task(
    help={
        "inventory": "hosts.toml to use",
        "source": "read the images from this host (default: this machine)",
        "check": "only report stale or missing images",
    }
)
def sync(c: Context, inventory: str | None = None, source: str | None = None, check: bool = False) -> None:
    """Ship the inventory's environment images to every host (only the missing layers)."""
    args = ["sync", *(["--from", source] if source else []), *(["--check"] if check else [])]
    _run(c, *_forge(inventory, *args))


@task(
    help={
        "unit": "unit tests only (no lab)",
        "bastion": "lab tests only, with the lab's hosts behind a jump host",
        "k": "only tests matching this expression",
    }
)
def test(c: Context, unit: bool = False, bastion: bool = False, k: str | None = None) -> None:
    """Run the tests (the lab tests need root; they bring the lab up themselves)."""
    argv = [PY, "-m", "pytest", "-q", "-ra"]
    if unit and bastion:
        raise SystemExit("--unit and --bastion exclude each other (the bastion pass runs lab tests only)")
    if unit:
        argv += ["-m", "not lab"]
    if bastion:
        argv += ["-m", "lab"]
    if k:
        argv += ["-k", k]
    _run(c, *argv, env={"FORGE_LAB_BASTION": "1"} if bastion else None)


@task
def lint(c: Context) -> None:
    """Check style and types: ruff (lint and format), then mypy."""
    _run(c, PY, "-m", "ruff", "check", ".")
    _run(c, PY, "-m", "ruff", "format", "--check", ".")
    _run(c, PY, "-m", "mypy")


#: The benchmarks, as docs/benchmarks.md reports them. ``all`` runs them one after the other
#: in one go, so that every figure comes from the same machine state and regressions show.
BENCHES = {
    "sync": ["bench/bench_sync.py"],
    "topology": ["bench/bench_topology.py", "--rate", "20mbit", "--size-mb", "100", "--random-mb", "30"],
    "gpus": ["bench/bench_gpus.py", "--hosts", "64", "--repeat", "3", "--latency", "10"],
    "startup": ["bench/bench_gpus.py", "--hosts", "2", "--repeat", "9", "--startup"],
}


@task(
    help={
        "which": "sync (forge sync vs bzip2, ~9 min), topology (direct, relay, registry on shaped links, slow hops, "
        "~18 min), gpus (64 hosts 10 ms away, its own lab), startup (forge --version, one-host forge gpus), "
        "or all of them in that order; sync and topology need `forge lab up --hosts 9`"
    }
)
def bench(c: Context, which: str = "sync") -> None:
    """Run a benchmark against a lab (as root); results go in docs/benchmarks.md."""
    if which != "all" and which not in BENCHES:
        raise SystemExit(f"unknown benchmark {which!r}: choose from {', '.join(BENCHES)} or all")
    for name in BENCHES if which == "all" else [which]:
        print(f"\n## {name}: {' '.join(BENCHES[name])}", flush=True)
        _run(c, PY, *BENCHES[name])


@task(help={"images": "also load the base and compiler images the dev image builds from (default: on)"})
def lab_up(c: Context, images: bool = True) -> None:
    """Bring the test fleet up on this machine (root): 4 GPU hosts and a data host."""
    _run(c, PY, "-m", "forge", "lab", "up")
    if images:
        _run(c, PY, "-c", "from forge.lab.toolchain import load_lab_images; load_lab_images()")


@task
def lab_down(c: Context) -> None:
    """Take the test fleet down and remove everything it created (not its image cache)."""
    _run(c, PY, "-m", "forge", "lab", "down")
