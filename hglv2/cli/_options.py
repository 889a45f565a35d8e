"""Click parameter types and options shared by every command: output paths checked before any
work, URLs, comma-separated integer lists, and the ``--json`` option with the :class:`Output` a
command returns.

A bad value is a click ``BadParameter``; :func:`hglv2.cli.main` prints it as one ``Error:`` line
(with the ``--help`` hint on the next line) and exits with code 2, before the command runs, so a
command never computes for minutes and then fails to write its result.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click


def output_problem(path: str | os.PathLike[str], directory: bool = False) -> str | None:
    """Why ``path`` cannot be written as an output file (``directory=False``) or folder, or None.

    Checks, without creating anything: the path is not empty; it is not an existing folder (for
    a file) or an existing file (for a folder); the nearest existing ancestor is a folder (not a
    file) in which this process may create entries (not read-only, not permission-denied).
    """
    text = os.fspath(path)
    if not text:
        return "empty path"
    p = Path(text)
    if directory:
        if p.exists() and not p.is_dir():
            return f"{p} exists and is not a folder"
        base = p
    else:
        if p.is_dir():
            return f"{p} is a folder (give a file name)"
        base = p.parent
    while not base.exists() and not base.is_symlink():
        if base == base.parent:
            break
        base = base.parent
    if base.exists() and not base.is_dir():
        return f"{base} is a file, not a folder"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"cannot write into {base} (read-only or permission denied)"
    return None


class OutputPath(click.ParamType):
    """An output file or folder, checked for writability when the command line is parsed."""

    name = "path"

    def __init__(self, directory: bool = False, path_type: type = str) -> None:
        self.directory = directory
        self.path_type = path_type

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        problem = output_problem(value, self.directory)
        if problem:
            self.fail(problem, param, ctx)
        return self.path_type(os.fspath(value))


OUTPUT_FILE = OutputPath()
OUTPUT_DIR = OutputPath(directory=True)
OUTPUT_FILE_PATH = OutputPath(path_type=Path)
OUTPUT_DIR_PATH = OutputPath(directory=True, path_type=Path)


class HttpUrl(click.ParamType):
    """An ``http://`` or ``https://`` URL with a host."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        try:
            parts = urlsplit(text)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and " " not in text
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            ok = False
        if not ok:
            self.fail(f"{text!r} is not an http(s):// URL with a host", param, ctx)
        return text


HTTP_URL = HttpUrl()


def parse_int_list(
    text: str, option: str, minimum: int | None = None, maximum: int | None = None, unique: bool = False
) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; a ``click.BadParameter`` naming ``option`` for anything else."""
    items = [s.strip() for s in text.split(",")]
    if not any(items):
        raise click.BadParameter(f"{text!r}: expected integers separated by commas", param_hint=option)
    out = []
    for s in items:
        if not s:
            raise click.BadParameter(f"{text!r}: empty item between commas", param_hint=option)
        try:
            v = int(s)
        except ValueError:
            raise click.BadParameter(f"{text!r}: {s!r} is not an integer", param_hint=option) from None
        if minimum is not None and v < minimum:
            raise click.BadParameter(f"{text!r}: {v} is below {minimum}", param_hint=option)
        if maximum is not None and v > maximum:
            raise click.BadParameter(f"{text!r}: {v} is above {maximum}", param_hint=option)
        if unique and v in out:
            raise click.BadParameter(f"{text!r}: {v} is repeated", param_hint=option)
        out.append(v)
    return out


JSON_META_KEY = "hglv2.json_path"


@dataclass
class Output:
    """What a command returns: ``data`` for ``--json`` and the ``lines`` it prints.

    :class:`hglv2.cli._LazyGroup` writes ``data`` to the ``--json`` path first (non-finite floats
    as ``null``, atomically; :func:`write_json_output`), then prints ``lines`` (and ``wrote PATH``
    for a command whose :func:`json_option` announces its file): a closed stdout (``| head``)
    cannot lose the file. ``exit_code`` is the command's exit status. ``error``: the command failed
    after computing ``data``; it ends, after the file and the lines, with this ``Error:`` line
    (exit code 2).
    """

    data: Any = None
    lines: list[str] = field(default_factory=list)
    exit_code: int = 0
    error: str | None = None


@dataclass(frozen=True)
class _JsonTarget:
    """Where ``--json`` writes, and whether the command then prints ``wrote PATH``."""

    path: Path
    announce: bool


def json_option(help: str = "Also write the results as JSON.", announce: bool = False) -> Callable:
    """The ``--json PATH`` option; the path is kept for the group, which writes the command's
    :class:`Output` data there (:func:`write_json_output`). ``announce``: after the command's
    lines, print ``wrote PATH`` when the file was written."""

    def decorator(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args: Any, json_path: Path | None = None, **kwargs: Any) -> Any:
            target = None if json_path is None else _JsonTarget(json_path, announce)
            click.get_current_context().meta[JSON_META_KEY] = target
            return f(*args, **kwargs)

        return click.option("--json", "json_path", type=OUTPUT_FILE_PATH, default=None, help=help)(wrapper)

    return decorator


def write_json_output(ctx: click.Context, out: Output) -> list[str]:
    """Write ``out.data`` to the command's ``--json`` path, if one was given and there is data
    (non-finite floats as ``null``, atomically); returns the lines to print after the command's
    own: ``wrote PATH`` where its :func:`json_option` announces the file, else none."""
    target = ctx.meta.get(JSON_META_KEY)
    if target is None or out.data is None:
        return []
    from hglv2.fileio import finite_or_none, write_json  # pyarrow: not for --help

    write_json(target.path, finite_or_none(out.data))
    return [f"wrote {target.path}"] if target.announce else []


#: The image splits of the GLDv2 release (each a folder of tar shards).
IMAGE_SPLIT = click.Choice(["train", "index", "test"])


def progress_option(f: Callable) -> Callable:
    """``--progress/--no-progress``: a progress bar on stderr."""
    return click.option("--progress/--no-progress", default=True, show_default=True)(f)


@dataclass(frozen=True)
class Network:
    """The network options of a download command: the User-Agent ``contact``, the ``retries``
    policy (:class:`hglv2.http.Retries`: timeout and tries) and whether to show ``progress``."""

    contact: str
    retries: Any
    progress: bool


def network_options(timeout_help: str | None = None) -> Callable:
    """The options of every download, in this order: ``--contact`` (the User-Agent contact),
    ``--max-tries`` (tries of each request), ``--timeout`` and ``--progress/--no-progress``; the
    command receives them as one ``network`` argument (:class:`Network`)."""

    def decorator(command: Callable) -> Callable:
        @functools.wraps(command)
        def f(*args: Any, contact: str, max_tries: int, timeout: float, progress: bool, **kwargs: Any) -> Any:
            from hglv2.http import Retries

            network = Network(contact, Retries(timeout=timeout, max_tries=max_tries), progress)
            return command(*args, network=network, **kwargs)

        f = progress_option(f)
        f = click.option(
            "--timeout", type=click.FloatRange(0.1, None), default=60.0, show_default=True, help=timeout_help
        )(f)
        f = click.option("--max-tries", type=click.IntRange(1, 100), default=8, show_default=True)(f)
        return click.option(
            "--contact",
            envvar="HGLV2_CONTACT",
            default="anonymous",
            show_default=True,
            help="E-mail or URL sent in the User-Agent (env HGLV2_CONTACT).",
        )(f)

    return decorator


def download_target_options(dest_help: str, server_holds: str) -> Callable:
    """``--dest`` (the download folder, default ``data/gldv2``) and ``--base-url`` (the server
    holding ``server_holds``; default the official one) of a GLDv2 download."""

    def decorator(f: Callable) -> Callable:
        f = click.option(
            "--base-url",
            type=HTTP_URL,
            default=None,
            help=f"Server holding {server_holds} (default: https://s3.amazonaws.com/google-landmark).",
        )(f)
        return click.option(
            "--dest", type=OUTPUT_DIR, default="data/gldv2", show_default=True, help=dest_help
        )(f)

    return decorator
