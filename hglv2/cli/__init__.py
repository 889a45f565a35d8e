"""The ``hglv2`` command line: a click group whose subcommands live in small modules.

The CLI only parses arguments, calls library functions and prints. :meth:`_LazyGroup.main` is the
one place that turns every failure into an exit status, for every command:

* bad input (:class:`hglv2.errors.InputError`, a server that keeps failing
  (:class:`hglv2.errors.NetworkError`), a click usage error, an output path that cannot be
  written, an argument that is not valid UTF-8): one line ``Error: ...`` on stderr, exit code 2,
  no traceback. Usage errors add one hint line (``Try 'hglv2 CMD --help' for help.``).
* a closed stdout (``hglv2 ... | head -1``): the rest of the output is dropped quietly and the
  exit code is 141 (128 + SIGPIPE, what ``yes | head`` gives); commands write their files
  before they print, so the files are complete.
* Ctrl-C (SIGINT): exit code 130; SIGTERM: 143; SIGHUP: 129. They unwind the command (temporary
  files removed, worker processes of ``hglv2 benchmark`` stopped) before exiting.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import os
import signal
import sys
from typing import Any

import click

from hglv2 import __version__
from hglv2.cli._options import Output, write_json_output
from hglv2.errors import InputError, NetworkError

# subcommand name -> "module:attribute"; each stage owns its module.
_COMMANDS = {
    "download": "hglv2.cli.download:download",
    "export": "hglv2.cli.data:export",
    "prepare-images": "hglv2.cli.images:prepare_images",
    "convert": "hglv2.cli.convert:convert",
    "hierarchy": "hglv2.cli.hierarchy:hierarchy",
    "evaluate": "hglv2.cli.evaluate:evaluate",
    "train": "hglv2.cli.train:train",
    "benchmark": "hglv2.cli.train:benchmark",
    "synthesize": "hglv2.cli.train:synthesize",
}

EXIT_INPUT = 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130

# errno values of an OSError that is the user's path at fault (reported as an Error line)
_PATH_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENOENT,
    errno.EEXIST,
    errno.ENOSPC,
    errno.ENAMETOOLONG,
    errno.ELOOP,
}


def _available() -> list[str]:
    names = []
    for name, target in _COMMANDS.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            names.append(name)
    return names


def _printable(text: str) -> str:
    """``text`` safe to print on any terminal (undecodable bytes shown as ``\\xNN``)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _error(message: str, hint: str | None = None) -> None:
    lines = " ".join(str(message).splitlines()) or "unknown error"
    try:
        click.echo(f"Error: {_printable(lines)}", err=True)
        if hint:
            click.echo(hint, err=True)
    except (OSError, ValueError):  # stderr closed too
        pass


def _non_utf8_argument(args: list[str]) -> str | None:
    for i, arg in enumerate(args, 1):
        text = os.fspath(arg) if isinstance(arg, os.PathLike) else str(arg)
        if isinstance(text, bytes):
            text = os.fsdecode(text)
        if any("\udc80" <= ch <= "\udcff" for ch in text):
            shown = text.encode("utf-8", "surrogateescape")
            return f"argument {i} ({shown!r}) is not valid UTF-8; hglv2 takes UTF-8 paths and values"
    return None


class _Signalled(SystemExit):
    """Raised by the SIGTERM/SIGHUP handler so the command unwinds (finally blocks run)."""


def _install_signal_handlers() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise _Signalled(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(sig, handler)
        except (ValueError, OSError):  # not the main thread (embedded use)
            pass


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (CliRunner)
        pass


class _BrokenPipe(Exception):
    """stdout was closed by the reader; raised past click, which would exit 1 itself."""


def _emit(ctx: click.Context, out: Output) -> int:
    """Write a command's ``--json`` file (first: a closed stdout must not lose it), then print."""
    after = write_json_output(ctx, out)
    for line in [*out.lines, *after]:
        click.echo(line)
    if out.error is not None:
        raise InputError(out.error)
    return out.exit_code


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
            rv = super().invoke(ctx)
            if isinstance(rv, Output):
                return _emit(ctx, rv)
            return rv
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise _BrokenPipe() from None
            raise

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: D401
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        if args is None:
            args = sys.argv[1:]
        args = list(args)
        code = self._run(args, prog_name, complete_var, **extra)
        sys.exit(code)

    def _run(self, args: list[str], prog_name, complete_var, **extra) -> int:
        bad = _non_utf8_argument(args)
        if bad:
            _error(bad)
            return EXIT_INPUT
        _install_signal_handlers()
        try:
            try:
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
                sys.stdout.flush()
                return rv if isinstance(rv, int) else 0
            except click.Abort as exc:  # click turns KeyboardInterrupt into Abort
                if isinstance(exc.__context__, EOFError):
                    _error("input ended")
                    return EXIT_INPUT
                _error_quiet("Interrupted.")
                return EXIT_INTERRUPTED
            except KeyboardInterrupt:
                _error_quiet("Interrupted.")
                return EXIT_INTERRUPTED
            except click.UsageError as exc:
                hint = None
                if exc.ctx is not None:
                    opt = max(exc.ctx.help_option_names or ["--help"], key=len)
                    hint = f"Try '{exc.ctx.command_path} {opt}' for help."
                _error(exc.format_message(), hint)
                return EXIT_INPUT
            except click.ClickException as exc:
                _error(exc.format_message())
                return exc.exit_code if exc.exit_code in (0, EXIT_INPUT) else EXIT_INPUT
            except (InputError, NetworkError) as exc:
                _error(str(exc))
                return EXIT_INPUT
        except (_BrokenPipe, BrokenPipeError):
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                _silence_stdout()
                return EXIT_BROKEN_PIPE
            if exc.errno in _PATH_ERRNOS and exc.filename is not None:
                name = os.fsdecode(exc.filename)
                _error(f"{name}: {exc.strerror or exc}")
                return EXIT_INPUT
            raise


def _error_quiet(message: str) -> None:
    try:
        click.echo(message, err=True)
    except (OSError, ValueError):
        pass


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hglv2")
def main() -> None:
    """hglv2: build Hierarchical GLDv2 and benchmark rank losses with hierarchical metrics."""
