"""`forge build`: build the dev environment image for you, here or on a host."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, cast

import click

from forge import keys
from forge.build import (
    DEFAULT_CONTEXT,
    DEFAULT_TAG,
    DEFAULT_TIMEOUT_S,
    BuildSpec,
    build,
)
from forge.cli import output
from forge.cli.main import State, pass_state
from forge.env.launch import host_facts


@click.command()
@click.option("--host", "host_name", metavar="HOST", help="Build on this inventory host (default: this machine).")
@click.option("-t", "--tag", metavar="IMAGE", help=f"Image name (default: [environment] image, else {DEFAULT_TAG}).")
@click.option("--base", metavar="IMAGE", help="Base image (default: the Dockerfile's PyTorch CUDA devel image).")
@click.option("--toolchain", metavar="IMAGE", help="Image with a C compiler for the uid helper (default: the base).")
@click.option(
    "--user", "user_name", metavar="NAME", help="User inside (default: [environment] user, else your user on HOST)."
)
@click.option("--uid", type=int, help="The user's uid (default: yours on HOST).")
@click.option("--gid", type=int, help="The user's gid (default: yours on HOST).")
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    metavar="FILE",
    help="Public key(s) allowed to log in (repeatable; default: the inventory key's .pub, else ~/.ssh/id_*.pub).",
)
@click.option("--no-packages", is_flag=True, help="Install no packages: the base already has sshd, xauth and sudo.")
@click.option("--package", "extra_packages", multiple=True, metavar="PKG", help="Another apt package (repeatable).")
@click.option("--apt-mirror", metavar="HOST", help="Package mirror host replacing archive.ubuntu.com / deb.debian.org.")
@click.option("--pip-index-url", metavar="URL", help="PyPI mirror written to /etc/pip.conf.")
@click.option(
    "--context",
    "context_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_CONTEXT,
    show_default=False,
    help="Directory with the Dockerfile (default: forge's own, forge/devimage).",
)
@click.option("--no-cache", is_flag=True, help="Build every step again.")
@click.option(
    "--timeout", "timeout_s", default=DEFAULT_TIMEOUT_S, show_default=True, help="Seconds the build may take."
)
@click.option("-q", "--quiet", is_flag=True, help="Do not show docker build's output.")
@pass_state
def build_cmd(
    state: State,
    host_name: str | None,
    tag: str | None,
    base: str | None,
    toolchain: str | None,
    user_name: str | None,
    uid: int | None,
    gid: int | None,
    public_keys: tuple[str, ...],
    no_packages: bool,
    extra_packages: tuple[str, ...],
    apt_mirror: str | None,
    pip_index_url: str | None,
    context_dir: Path,
    no_cache: bool,
    timeout_s: float,
    quiet: bool,
) -> None:
    """Build the dev environment image (forge/devimage) for your user, uid, gid and SSH keys.

    The build context is streamed to `docker build -` on HOST over SSH (or run here), so the
    host needs only Docker. By default the image's user is the one `forge migrate` runs the
    container as: [environment] user, else your SSH user on HOST, with its uid and gid there.
    Prints the image name and ID when done.
    """
    inv = state.inventory
    env = inv.environment
    host = inv.here(host_name)
    authorized = keys.read(public_keys) if public_keys else keys.default_keys(host.identity_file)
    transport = state.pool.get(host)
    if user_name is None or uid is None or gid is None:
        facts = host_facts(transport)
        user_name = user_name or env.user or facts.user
        uid = facts.uid if uid is None else uid
        gid = facts.gid if gid is None else gid
    spec = BuildSpec(
        tag=tag or env.image or DEFAULT_TAG,
        user=user_name,
        uid=uid,
        gid=gid,
        public_keys=authorized,
        base=base,
        toolchain=toolchain,
        install_packages=not no_packages,
        extra_packages=extra_packages,
        apt_mirror=apt_mirror,
        pip_index_url=pip_index_url,
        context_dir=context_dir,
        no_cache=no_cache,
    )
    log = None if quiet else cast(IO[bytes], output.CleanWriter(sys.stderr.buffer))
    result = build(transport, spec, log=log, timeout_s=timeout_s)
    output.echo(
        f"{result.host}: built {result.tag} ({result.image_id}) for {spec.user} "
        f"{spec.uid}:{spec.gid} in {result.duration_s:.1f} s"
    )
