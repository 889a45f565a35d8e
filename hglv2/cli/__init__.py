"""The ``hglv2`` command line: a click group whose subcommands live in small modules.

The CLI only parses arguments, calls library functions and prints. Bad input raised as
:class:`hglv2.errors.InputError` ends with one line ``Error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from hglv2 import __version__
from hglv2.errors import InputError, NetworkError

# subcommand name -> "module:attribute"; each stage owns its module.
_COMMANDS = {
    "download": "hglv2.cli.data:download",
    "export": "hglv2.cli.data:export",
    "convert": "hglv2.cli.convert:convert",
    "hierarchy": "hglv2.cli.hierarchy:hierarchy",
    "evaluate": "hglv2.cli.evaluate:evaluate",
    "train": "hglv2.cli.train:train",
    "benchmark": "hglv2.cli.train:benchmark",
    "synthesize": "hglv2.cli.train:synthesize",
}


def _available() -> list[str]:
    names = []
    for name, target in _COMMANDS.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


class _LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs (keeps --help fast)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_available())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None or cmd_name not in _available():
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):  # noqa: D401 - click API
        try:
            return super().invoke(ctx)
        except (InputError, NetworkError) as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hglv2")
def main() -> None:
    """hglv2: build Hierarchical GLDv2 and benchmark rank losses with hierarchical metrics."""
