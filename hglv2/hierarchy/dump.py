"""The Wikidata dump route: answer the pipeline's Wikidata questions from the official JSON dump.

Resolving ~300k titles through the API takes hours and cannot be pinned to a date; the weekly
JSON dump (``latest-all.json.bz2|.gz``) can. The dump is read **once**
(:mod:`hglv2.hierarchy.dump_read`) into a facts table (Parquet, :data:`FACTS_SCHEMA`): one row per
item with what any stage reads of it (QID, ``lastrevid``, the English and ``mul`` labels, the
``enwiki`` and ``commonswiki`` sitelinks, the P31/P279/P301/P373 statements with their ranks).
The table is written atomically beside the dump (``<dump>.facts.parquet``) or where the caller
says, and carries the dump's key (size, modification time, sha256 of its first MiB): a later
stage on the same dump reuses it, so ``resolve``, ``graph`` and ``validate-anchors`` together read
the dump once, whatever the depth of a P301 chain or the size of the class graph.

:class:`DumpClient` answers the entity lookups (by Commons title or by id, redirects followed)
and the P373 SPARQL lookups from the table exactly as the API client answers them: each row is
turned back into an entity whose statements keep their ranks, and
:func:`hglv2.hierarchy.wikidata.parse_item` (qwikidata's truthy claims: preferred wins,
deprecated skipped) reads it as it reads the API's answer, so
:func:`hglv2.hierarchy.resolve.resolve_categories` and :func:`hglv2.hierarchy.graph.fetch_graph`
give the same tables as the API route on the same data.

**Redirects** are not in the JSON dump; :mod:`hglv2.hierarchy.dump_redirects` reads them from a
QID pair list or Wikimedia's ``redirect`` + ``page`` table dumps. Without them a P301 or P279
value that points at a redirected id is reported missing. The dump's date (``YYYYMMDD`` in its
file name, else its modification date) is recorded as provenance.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hglv2.errors import InputError
from hglv2.hierarchy import dump_read
from hglv2.hierarchy.dump_read import CLAIM_PROPS, FACTS_SCHEMA, RANKS
from hglv2.hierarchy.wikidata import MAX_BATCH, follow_redirects, is_qid, qid_number

#: version of the facts table's layout; a table of another version is rebuilt
FACTS_VERSION = "1"
HEAD_BYTES = 1 << 20
#: rows per row group of the facts table (a lookup by id reads the row groups that hold the ids)
ROW_GROUP = 1 << 17
_DATE = re.compile(r"(?<![0-9])(20[0-9]{6})(?![0-9])")
_VALUES = re.compile(r"VALUES\s+\?commonscat\s*\{(.*?)\}", re.S)
_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"')


def dump_date(path: str | os.PathLike[str]) -> str:
    """``YYYY-MM-DD`` of a dump: from ``YYYYMMDD`` in its name, else its modification date."""
    m = _DATE.search(Path(path).name)
    if m:
        d = m.group(1)
        return f"{d[:4]}-{d[4:6]}-{d[6:]}"
    return dt.datetime.fromtimestamp(Path(path).stat().st_mtime, dt.UTC).strftime("%Y-%m-%d")


def dump_key(path: str | os.PathLike[str]) -> dict[str, str]:
    """What identifies a dump's content for its facts table: size, mtime, date, hash of its head."""
    st = os.stat(path)
    with open(path, "rb") as fh:
        head = hashlib.sha256(fh.read(HEAD_BYTES)).hexdigest()
    return {
        "facts_version": FACTS_VERSION,
        "dump_size": str(st.st_size),
        "dump_mtime_ns": str(st.st_mtime_ns),
        "dump_date": dump_date(path),
        "dump_head_sha256": head,
    }


def default_facts_path(dump: str | os.PathLike[str]) -> Path:
    """Where the facts table of ``dump`` goes unless told: beside it, ``<dump>.facts.parquet``."""
    return Path(f"{os.fspath(dump)}.facts.parquet")


def _stored_key(path: Path) -> dict[str, str] | None:
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    return {
        k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"facts_") or k.startswith(b"dump_")
    }


def build_facts(
    dump: str | os.PathLike[str], out: Path, *, threads: int = 2, workers: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Read ``dump`` once and write its facts table to ``out`` (atomically: nothing is left
    behind when the dump is damaged); returns the counts of the pass."""
    from tqdm.auto import tqdm

    from hglv2.fileio import atomic_path

    key = dump_key(dump)
    schema = FACTS_SCHEMA.with_metadata(key)
    stats = {"lines": 0, "entities": 0}
    t0 = time.perf_counter()
    bar = tqdm(desc="reading the dump", unit=" entities", disable=None if progress else True)
    pending: list[pa.RecordBatch] = []
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for batch, lines in dump_read.read_facts(dump, threads=threads, workers=workers):
            stats["lines"] += lines
            stats["entities"] += batch.num_rows
            bar.update(lines)
            pending.append(batch)
            if sum(b.num_rows for b in pending) >= ROW_GROUP:
                writer.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size=ROW_GROUP)
                pending = []
        if pending:
            writer.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size=ROW_GROUP)
    bar.close()
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    return stats


def open_facts(
    dump: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    threads: int = 2,
    workers: int = 0,
    progress: bool = True,
) -> DumpFacts:
    """The facts table of ``dump`` at ``out`` (default :func:`default_facts_path`): reused when
    its key matches the dump's, else built by one pass over the dump."""
    path = os.fspath(dump)
    dump_read.check_dump_path(path)
    out = default_facts_path(path) if out is None else Path(out)
    passes = 0
    if _stored_key(out) != dump_key(path):
        made = [p for p in out.parents if not p.exists()]
        try:
            build_facts(path, out, threads=threads, workers=workers, progress=progress)
        except BaseException:
            for folder in made:  # deepest first: a failed read leaves no folder behind either
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        passes = 1
    return DumpFacts(path, out, passes)


def _claim(qid: str, prop: str, k: int, value: str | None, rank: int) -> dict[str, Any]:
    """A statement as the API gives it, as far as :func:`parse_item` reads it."""
    snak: dict[str, Any] = {"snaktype": "novalue", "property": prop}
    if value is not None:
        is_string = prop == "P373"
        snak.update(
            snaktype="value",
            datatype="string" if is_string else "wikibase-item",
            datavalue={
                "value": value if is_string else {"entity-type": "item", "id": value},
                "type": "string" if is_string else "wikibase-entityid",
            },
        )
    return {"mainsnak": snak, "type": "statement", "id": f"{qid}${k}", "rank": RANKS[rank]}


def entity_of(row: dict[str, Any]) -> dict[str, Any]:
    """A facts row -> the entity JSON the API would give (id, lastrevid, labels, claims, sitelinks)."""
    qid = f"Q{row['qid']}"
    ent: dict[str, Any] = {"type": "item", "id": qid}
    if row["lastrevid"] is not None:
        ent["lastrevid"] = row["lastrevid"]
    ent["labels"] = {
        lang: {"language": lang, "value": row[f"label_{lang}"]}
        for lang in ("en", "mul")
        if row[f"label_{lang}"] is not None
    }
    claims = {}
    for prop in CLAIM_PROPS:
        if row[prop]:
            claims[prop] = [_claim(qid, prop, k, c["value"], c["rank"]) for k, c in enumerate(row[prop])]
    ent["claims"] = claims
    ent["sitelinks"] = {
        site: {"site": site, "title": row[site]}
        for site in ("enwiki", "commonswiki")
        if row[site] is not None
    }
    return ent


def _truthy_values(claims: Sequence[dict[str, Any]]) -> list[str]:
    """The values of the truthy statements (preferred, else normal; never deprecated)."""
    best = max((c["rank"] for c in claims if c["rank"] > 0), default=None)
    return [c["value"] for c in claims if c["rank"] == best and c["value"] is not None]


class DumpFacts:
    """The facts table of a dump and the lookups the stages make on it (vectorised over the table).

    ``passes``: how many times the dump was read to open it (1 when built, 0 when reused).
    """

    def __init__(self, dump: str, path: Path, passes: int) -> None:
        self.dump = dump
        self.path = path
        self.passes = passes
        self.date = dump_date(dump)
        self._file = pq.ParquetFile(path, memory_map=True)
        self._columns: dict[str, pa.ChunkedArray] = {}
        sizes = [self._file.metadata.row_group(i).num_rows for i in range(self._file.num_row_groups)]
        self._starts = list(itertools.accumulate(sizes, initial=0))[:-1]
        self.entities = self._file.metadata.num_rows

    def _column(self, name: str) -> pa.ChunkedArray:
        if name not in self._columns:
            self._columns[name] = self._file.read(columns=[name]).column(name)
        return self._columns[name]

    def _rows(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        """The rows at ``indices`` (reading only the row groups that hold them)."""
        by_group: dict[int, list[int]] = {}
        for i in sorted(set(indices)):
            g = bisect.bisect_right(self._starts, i) - 1
            by_group.setdefault(g, []).append(i - self._starts[g])
        rows = []
        for g, local in by_group.items():
            rows += self._file.read_row_group(g).take(pa.array(local)).to_pylist()
        return rows

    def _match(self, column: str, values: Iterable[Any]) -> list[int]:
        col = self._column(column)
        mask = pc.is_in(col, value_set=pa.array(list(values), col.type))
        return pc.indices_nonzero(mask).to_pylist()

    def by_ids(self, qids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``{qid: entity}`` of the ``qids`` in the dump."""
        numbers = {qid_number(q) for q in qids if is_qid(q)}
        if not numbers:
            return {}
        rows = self._rows(self._match("qid", numbers))
        return {f"Q{r['qid']}": entity_of(r) for r in rows}

    def by_titles(self, titles: Iterable[str]) -> dict[str, str]:
        """``{commonswiki title: qid}`` of the items sitelinked to ``titles``."""
        titles = set(titles)
        if not titles:
            return {}
        qids, sites = self._column("qid"), self._column("commonswiki")
        return {sites[i].as_py(): f"Q{qids[i].as_py()}" for i in self._match("commonswiki", titles)}

    def by_p373(self, names: Iterable[str]) -> dict[str, list[str]]:
        """``{name: qids}`` of the items whose truthy P373 is ``name``."""
        names = set(names)
        if not names:
            return {}
        col = self._column("P373")
        flat = pc.list_flatten(col)
        parents = pc.list_parent_indices(col)
        hits = pc.indices_nonzero(pc.is_in(pc.struct_field(flat, [0]), value_set=pa.array(sorted(names))))
        rows = sorted({parents[i].as_py() for i in hits.to_pylist()})
        qids = self._column("qid")
        out: dict[str, list[str]] = {}
        for i in rows:
            for name in set(_truthy_values(col[i].as_py())) & names:
                out.setdefault(name, []).append(f"Q{qids[i].as_py()}")
        return out


class _NoCache:
    """Stands in for the response cache: the dump route stores nothing."""

    def close(self) -> None:
        pass


class DumpClient:
    """Answers the pipeline's Wikidata questions from a :class:`DumpFacts` (no network).

    Mirrors :class:`hglv2.hierarchy.wikidata.WikidataClient`'s ``entities``, ``p373`` and ``sparql``
    (same answers as the API on the same data), ``stats`` (``dump_lookups``) and ``cache``.
    """

    def __init__(self, facts: DumpFacts, redirects: dict[str, str] | None = None):
        self.facts = facts
        self.redirects = dict(redirects or {})
        self.stats: dict[str, int] = {}
        self.cache = _NoCache()
        self.offline = True
        self.not_in_dump: set[str] = set()

    def _count(self) -> None:
        self.stats["dump_lookups"] = self.stats.get("dump_lookups", 0) + 1

    def _by_id(self, chunk: list[str], found: dict[str, dict[str, Any]], props: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for qid in chunk:
            target = follow_redirects(self.redirects, qid)
            ent = found.get(target)
            if ent is None:
                self.not_in_dump.add(qid)
                out[qid] = {"id": qid, "missing": ""}
                continue
            ent = json.loads(json.dumps(ent))
            if "sitelinks" not in props:
                ent.pop("sitelinks", None)
            if target != qid:
                ent["redirects"] = {"from": qid, "to": target}
            out[qid] = ent
        return out

    def entities(
        self,
        *,
        ids: Iterable[str] = (),
        titles: Iterable[str] = (),
        site: str = "commonswiki",
        props: str = "info|claims|labels|sitelinks",
    ) -> dict[str, dict[str, Any] | None]:
        """:meth:`WikidataClient.entities` on the dump: ``{id or (NFC) title: entity or None}``,
        counted :data:`MAX_BATCH` lookups at a time as the API client asks."""
        from hglv2.hierarchy.wikidata import batched, requested_keys, split_entities

        by_title, wanted = requested_keys(ids, titles)
        if by_title:
            qid_of = self.facts.by_titles(wanted) if site == "commonswiki" else {}
            found = self.facts.by_ids(qid_of.values())
        else:
            found = self.facts.by_ids(follow_redirects(self.redirects, q) for q in wanted)
        out: dict[str, dict[str, Any] | None] = {}
        for chunk in batched(wanted, MAX_BATCH):
            self._count()
            if by_title:
                answer = {qid_of[t]: found[qid_of[t]] for t in chunk if t in qid_of}
            else:
                answer = self._by_id(chunk, found, props)
            out.update(split_entities(answer, chunk, by_title, site))
        return out

    def p373(self, names: Iterable[str], batch: int = 100) -> dict[str, list[str]]:
        """:meth:`WikidataClient.p373` on the dump: ``{name: QIDs}`` for every name."""
        from hglv2.hierarchy.wikidata import batched, p373_matches, sparql_p373_query

        found: dict[str, list[str]] = {}
        for chunk in batched(sorted(set(names)), batch):
            found.update(p373_matches(self.sparql(sparql_p373_query(chunk)), chunk))
        return found

    def sparql(self, query: str) -> list[dict[str, Any]]:
        """The P373 lookup the resolve stage sends (``VALUES ?commonscat {...} ?item wdt:P373``)."""
        self._count()
        m = _VALUES.search(query)
        if not m or "wdt:P373" not in query:
            raise InputError("the dump route answers only the P373 lookups of the resolve stage")
        names = [
            re.sub(r"\\(.)", lambda x: {"n": "\n"}.get(x.group(1), x.group(1)), lit)
            for lit in _LITERAL.findall(m.group(1))
        ]
        found = self.facts.by_p373(names)
        return [
            {
                "item": {"type": "uri", "value": f"http://www.wikidata.org/entity/{qid}"},
                "commonscat": {"type": "literal", "value": name},
            }
            for name in names
            for qid in sorted(found.get(name, []), key=qid_number)
        ]

    def provenance(self) -> dict[str, Any]:
        return {
            "dump": Path(self.facts.dump).name,
            "dump_date": self.facts.date,
            "passes": self.facts.passes,
            "entities_in_dump": self.facts.entities,
            "redirects": len(self.redirects),
            "references_not_in_dump": len(self.not_in_dump),
        }
