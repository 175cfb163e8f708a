"""Entry point of the ``forge`` command and its one error boundary.

Commands declare options, call the library and render what it returns. Every expected error
is a :class:`forge.errors.ForgeError`; here it becomes one line on stderr and its documented
exit code. Anything else is a bug: a one-line message, with the traceback under ``--debug``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass, field

import click

from forge import __version__, inventory
from forge.cli import output
from forge.errors import ExitCode, ForgeError
from forge.fleet import Pool


@dataclass
class State:
    """What every command gets: the inventory (loaded on first use) and the connections."""

    inventory_path: str | None = None
    debug: bool = False
    pool: Pool = field(default_factory=Pool)
    _inventory: inventory.Inventory | None = None

    @property
    def inventory(self) -> inventory.Inventory:
        if self._inventory is None:
            self._inventory = inventory.load(self.inventory_path)
        return self._inventory


pass_state = click.make_pass_decorator(State)


class Duration(click.ParamType):
    """A duration as people write it (``90s``, ``2h``, ``7d``), given to the command in seconds."""

    name = "duration"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        from forge.durations import parse_duration

        try:
            return parse_duration(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


DURATION = Duration()

#: Subcommands, imported only when run (or listed by --help): `forge gpus` does not pay for
#: importing the lab or the image code, and forge starts faster in scripts and cron.
COMMANDS = {
    "build": "forge.cli.build:build_cmd",
    "gpus": "forge.cli.gpus:gpus",
    "hosts": "forge.cli.hosts:hosts",
    "lab": "forge.cli.lab:lab",
    "migrate": "forge.cli.env:migrate",
    "ps": "forge.cli.env:ps",
    "reclaim": "forge.cli.reclaim:reclaim",
    "record": "forge.cli.history:record",
    "report": "forge.cli.history:report",
    "serve": "forge.cli.serve:serve",
    "ssh": "forge.cli.env:ssh",
    "stop": "forge.cli.env:stop",
    "sync": "forge.cli.sync:sync",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "-i",
    "--inventory",
    "inventory_path",
    metavar="PATH",
    help="Inventory file. Default: $FORGE_INVENTORY, ./hosts.toml, ~/.config/forge/hosts.toml; "
    "with none, forge manages this machine only.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and SSH/Docker debug logs.")
@click.version_option(__version__, "-V", "--version", prog_name="forge")
@click.pass_context
def cli(ctx: click.Context, inventory_path: str | None, debug: bool) -> None:
    """forge runs a lab's fleet of GPU servers over SSH.

    \b
    Exit codes:
      0  success          3  inventory invalid     5  no host reachable
      1  an error         4  some hosts failed     6  another run holds the lock
      2  bad usage        7  a wait timed out    130  interrupted
    """
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(message)s")
    state = State(inventory_path=inventory_path, debug=debug)
    ctx.obj = state
    ctx.call_on_close(state.pool.close)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; the one place that turns exceptions into messages and exit codes."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        rc = cli.main(args=argv, prog_name="forge", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        sys.exit(ExitCode.USAGE if isinstance(e, click.UsageError) else e.exit_code)
    except click.Abort:
        output.echo("forge: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except KeyboardInterrupt:
        output.echo("forge: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except ForgeError as e:
        if debug:
            _traceback()
        else:
            output.echo(f"forge: error: {e}", err=True, one_line=True)
        sys.exit(e.exit_code)
    except Exception as e:
        if debug:
            _traceback()
        else:
            message = f"{type(e).__name__}: {e} (run with --debug for the traceback)"
            output.echo(f"forge: internal error: {message}", err=True, one_line=True)
        sys.exit(ExitCode.ERROR)
    # With standalone_mode off, click returns ctx.exit()'s code (or the command's value).
    sys.exit(rc if isinstance(rc, int) else ExitCode.OK)


def _traceback() -> None:
    """``--debug``: the exception being handled, with its traceback, on stderr, cleaned (its
    message may hold what a host said: Python's own printing would send it raw)."""
    import traceback

    output.echo(traceback.format_exc().rstrip("\n"), err=True)


__all__ = ["cli", "main", "output"]
