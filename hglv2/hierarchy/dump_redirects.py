"""Item redirects for the dump route, which the JSON dump does not hold.

Three forms, told apart by the file name:

- a list of QID pairs ``old,new`` (``.csv``; commas or tabs, an optional header ``from,to``);
- Wikimedia's ``redirect`` table dump (``wikidatawiki-YYYYMMDD-redirect.sql[.gz]``): MySQL
  ``INSERT INTO `redirect` VALUES (rd_from,rd_namespace,'rd_title',rd_interwiki,rd_fragment),...``
  statements. ``rd_from`` is a page id, so the ``page`` table dump beside it (the same name with
  ``page`` for ``redirect``) maps page ids to titles (``page_id, page_namespace, page_title, ...``);
- the same two tables as TSV (``...-redirect.tsv[.gz]`` and ``...-page.tsv[.gz]``, one row a line,
  columns in the tables' order, an optional header line naming them).

Both are read as streams, without a database server; only namespace 0 (items) is kept, and only
redirects from ``Q`` titles to ``Q`` titles.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from pathlib import Path

from hglv2.errors import InputError
from hglv2.hierarchy.wikidata import is_qid

_TABLE_NAME = re.compile(r"redirect(?=\.(?:sql|tsv)(?:\.gz)?$)")
# one value of a row: a quoted string (backslash escapes), NULL, or a number
_VALUE = r"'(?:[^'\\]|\\.)*'|NULL|-?[0-9.eE+-]+"
# one row: the first three values captured, the others skipped
_ROW = re.compile(
    rf"\((-?[0-9]+),(-?[0-9]+),('(?:[^'\\]|\\.)*')((?:,(?:{_VALUE}))*)\)",
    re.S,
)
_INSERT = re.compile(r"INSERT INTO `?(\w+)`? (?:\([^)]*\) )?VALUES ")
_ESCAPES = {"0": "\0", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a", "b": "\b"}


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text[1:-1])


def _open_text(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rt", encoding="utf-8", errors="strict", newline="\n")


def sql_rows(path: Path, table: str) -> Iterator[tuple[int, int, str]]:
    """``(first column, namespace, title)`` of every row of the ``INSERT INTO `table``` statements."""
    with _open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            m = _INSERT.match(line)
            if not m:
                continue
            if m.group(1) != table:
                raise InputError(f"{path}:{n}: an INSERT into `{m.group(1)}`, expected `{table}`")
            pos = m.end()
            body = line.rstrip("\n").rstrip()
            while True:
                row = _ROW.match(body, pos)
                if row is None:
                    raise InputError(f"{path}:{n}: not a row of the `{table}` table at column {pos + 1}")
                yield int(row.group(1)), int(row.group(2)), _unquote(row.group(3))
                pos = row.end()
                if body.startswith(",", pos):
                    pos += 1
                    continue
                if body[pos:] != ";":
                    raise InputError(f"{path}:{n}: expected ',' or ';' after a row at column {pos + 1}")
                break


def tsv_rows(path: Path, table: str) -> Iterator[tuple[int, int, str]]:
    """``(first column, namespace, title)`` of a table in TSV form (header line optional)."""
    with _open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split("\t")
            if n == 1 and parts[0] in ("rd_from", "page_id"):
                continue
            if len(parts) < 3 or not parts[0].isdigit() or not parts[1].lstrip("-").isdigit():
                raise InputError(
                    f"{path}:{n}: expected a `{table}` row (id, namespace, title), got {line[:60]!r}"
                )
            yield int(parts[0]), int(parts[1]), parts[2]


def read_qid_pairs(path: Path) -> dict[str, str]:
    """``old -> new`` QIDs from a two-column file (``from,to``; commas or tabs)."""
    out: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the redirect list ({exc.strerror or exc})") from None
    for n, line in enumerate(lines, 1):
        parts = [p.strip() for p in re.split(r"[,\t]", line.strip())] if line.strip() else []
        if not parts or (n == 1 and parts[0].lower() in ("from", "old", "rd_from")):
            continue
        if len(parts) != 2 or not is_qid(parts[0]) or not is_qid(parts[1]):
            raise InputError(f"{path}:{n}: expected two QIDs 'old,new', got {line.strip()[:60]!r}")
        out[parts[0]] = parts[1]
    return out


def page_table(redirect: Path) -> Path:
    """The page table dump beside the redirect table dump ``redirect`` (same name, ``page``)."""
    return redirect.with_name(_TABLE_NAME.sub("page", redirect.name))


def read_table_dumps(redirect: Path) -> dict[str, str]:
    """``old -> new`` QIDs from the ``redirect`` table dump and the ``page`` table dump beside it."""
    page = page_table(redirect)
    if not page.is_file():
        raise InputError(
            f"{redirect}: the page table dump {page.name} must lie beside it (page ids -> titles)"
        )
    rows = sql_rows if ".sql" in redirect.suffixes else tsv_rows
    targets: dict[int, str] = {}
    for rd_from, ns, title in rows(redirect, "redirect"):
        if ns == 0 and is_qid(title):
            targets[rd_from] = title
    out: dict[str, str] = {}
    for page_id, ns, title in rows(page, "page"):
        if ns == 0 and page_id in targets and is_qid(title):
            out[title] = targets[page_id]
    return out


def _files_key(paths: list[Path]) -> dict[str, str]:
    """Size, modification time and sha256 of the first MiB of each file (what a cache is keyed by)."""
    import hashlib

    key = {}
    for k, path in enumerate(paths):
        st = path.stat()
        with open(path, "rb") as fh:
            head = hashlib.sha256(fh.read(1 << 20)).hexdigest()
        key[f"file{k}"] = f"{path.name} {st.st_size} {st.st_mtime_ns} {head}"
    return key


def cached_redirects(path: str | os.PathLike[str], cache: str | os.PathLike[str]) -> dict[str, str]:
    """:func:`read_redirects`; the pairs read from table dumps are kept in ``cache`` (Parquet,
    keyed by both files) so that later stages do not parse the page table again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hglv2.fileio import atomic_path

    path, cache = Path(path), Path(cache)
    if not _TABLE_NAME.search(path.name):
        return read_redirects(path)
    key = _files_key([path, page_table(path)]) if page_table(path).is_file() else None
    if key is not None and cache.is_file():
        try:
            stored = {k.decode(): v.decode() for k, v in (pq.read_schema(cache).metadata or {}).items()}
            if all(stored.get(k) == v for k, v in key.items()):
                t = pq.read_table(cache)
                return dict(zip(t.column("from").to_pylist(), t.column("to").to_pylist(), strict=True))
        except (OSError, pa.ArrowInvalid):
            pass
    pairs = read_redirects(path)  # checks that the page table is there
    table = pa.table({"from": list(pairs), "to": list(pairs.values())})
    with atomic_path(cache) as tmp:
        pq.write_table(
            table.replace_schema_metadata(_files_key([path, page_table(path)])), tmp, compression="zstd"
        )
    return pairs


def read_redirects(path: str | os.PathLike[str]) -> dict[str, str]:
    """``old -> new`` QIDs from any of the forms in the module doc (told apart by the name)."""
    path = Path(path)
    try:
        if _TABLE_NAME.search(path.name):
            return read_table_dumps(path)
        return read_qid_pairs(path)
    except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, OSError) as exc:
        raise InputError(f"{path}: cannot read the redirects ({exc})") from None
