"""``forge lab``: bring the test fleet up, show it, take it down. A thin adapter over
:mod:`forge.lab`: parse options, call the library, render, map errors to exit codes."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from forge.errors import ForgeError
from forge.lab import Lab, LabConfig
from forge.lab.config import ROOT_ENV, default_root

F = TypeVar("F", bound=Callable[..., Any])


def _progress(message: str) -> None:
    click.echo(f"lab: {message}", err=True)


def _errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ForgeError as e:
            click.echo(f"forge lab: {e}", err=True)
            raise SystemExit(int(e.exit_code)) from e
        except ValueError as e:
            raise click.UsageError(str(e)) from e

    return wrapper  # type: ignore[return-value]


root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Lab directory (default ${ROOT_ENV} or /var/lib/forge-lab).",
)


@click.group()
def lab() -> None:
    """A fleet of GPU hosts on this machine (network namespaces with sshd and dockerd)."""


@lab.command()
@root_option
@click.option(
    "--hosts",
    "n_hosts",
    type=click.IntRange(1, 200),
    default=4,
    show_default=True,
    help="Number of GPU hosts (gpu1..gpuN), besides the data host.",
)
@_errors
def up(root: Path | None, n_hosts: int) -> None:
    """Bring the lab up (idempotent) and write its hosts.toml."""
    started = time.monotonic()
    the_lab = Lab(LabConfig(root=root or default_root(), hosts=n_hosts), _progress)
    the_lab.up()
    click.echo(str(the_lab.inventory_path))
    _progress(f"up in {time.monotonic() - started:.1f} s")


@lab.command()
@root_option
@click.option("--purge", is_flag=True, help="Also delete the cached base image.")
@_errors
def down(root: Path | None, purge: bool) -> None:
    """Remove everything the lab created (works on a half-built lab)."""
    started = time.monotonic()
    Lab.at(root, _progress).down(purge_cache=purge)
    _progress(f"down in {time.monotonic() - started:.1f} s")


@lab.command()
@root_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@_errors
def status(root: Path | None, as_json: bool) -> None:
    """Show what runs: per host its namespace, sshd and dockerd."""
    st = Lab.at(root).status()
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=2))
        return
    if not st.exists:
        click.echo(f"no lab at {st.root}")
        return
    click.echo(f"root {st.root}  bridge {'up' if st.bridge else 'down'}")

    def word(v: bool | None) -> str:
        return "-" if v is None else ("up" if v else "DOWN")

    click.echo(f"{'HOST':6} {'ADDRESS':12} {'NETNS':6} {'SSHD':6} DOCKERD")
    for h in st.hosts:
        click.echo(f"{h.name:6} {h.address:12} {word(h.netns):6} {word(h.sshd):6} {word(h.dockerd)}")


@lab.command()
@root_option
@click.option(
    "--load", "load_on", multiple=True, metavar="HOST", help="Also import it into this GPU host's daemon (repeatable)."
)
@_errors
def image(root: Path | None, load_on: tuple[str, ...]) -> None:
    """Build (once) the base image forge-lab/debian:bookworm and optionally load it."""
    the_lab = Lab.at(root, _progress)
    click.echo(str(the_lab.ensure_base_image()))
    for host in load_on:
        the_lab.load_base_image(host)
