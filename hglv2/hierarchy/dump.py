"""The Wikidata dump route: answer the pipeline's Wikidata questions from the official JSON dump.

Resolving ~300k titles through the API takes hours and cannot be pinned to a date; the weekly
JSON dump (``latest-all.json.bz2|.gz``, one entity per line inside a JSON array) can. This module
streams it with qwikidata's dump reader (:class:`qwikidata.json_dump.WikidataJsonDump`) and keeps
only what a stage needs, in a :class:`DumpIndex`:

- the items whose ``commonswiki`` sitelink is a wanted Commons title (resolve);
- the items whose truthy P373 (Commons category) is a wanted category name (resolve's fallback,
  what the API route asks SPARQL ``wdt:P373``);
- with ``classes=True``, every item with a P279 (subclass of) statement (graph);
- the items these point at (truthy P301 main topics, P31 classes, P279 parents) and the
  explicitly ``wanted`` ids, fetched by further passes until nothing new is referenced (at most
  ``max_passes`` passes; the count left unresolved is reported).

Each kept entity is reduced to what :func:`hglv2.hierarchy.wikidata.parse_item` reads (id,
``lastrevid``, English label, the P31/P279/P301/P373 statements with their ranks, the
``commonswiki`` sitelink) and stored as compact JSON text, so memory is bounded by the kept items.
Lines are screened with substring tests before they are parsed, so most of the dump is never
decoded as JSON.

:class:`DumpClient` answers the entity lookups (by title or by id, redirects followed) and the
P373 SPARQL lookups from the index exactly as the API client answers them, so
:func:`hglv2.hierarchy.resolve.resolve_categories` and :func:`hglv2.hierarchy.graph.fetch_graph`
run unchanged on it and give the same tables as the API route on the same data.

**Redirects** are not in the JSON dump (it holds entities only). A redirect list (``old,new``
QID pairs, one per line; a header line ``from,to`` is allowed) can be given with ``redirects``;
without it, a P301 or P279 value that points at a redirected id is reported missing. The dump's
date (``YYYYMMDD`` in its file name, else its modification date) is recorded as provenance.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hglv2.errors import InputError
from hglv2.hierarchy.wikidata import CATEGORY_ITEM, MAX_BATCH, follow_redirects, is_qid, qid_number

with warnings.catch_warnings():  # qwikidata's typedefs use a deprecated mypy_extensions.TypedDict
    warnings.simplefilter("ignore", DeprecationWarning)
    from qwikidata.json_dump import WikidataJsonDump

KEEP_PROPS = ("P31", "P279", "P301", "P373")
_ID = re.compile(r'"id"\s*:\s*"(Q[0-9]+)"')
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


def _truthy(claims: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Statements of the best rank present (preferred, else normal); deprecated never."""
    live = [c for c in claims if c.get("rank") != "deprecated"]
    best = [c for c in live if c.get("rank") == "preferred"]
    return best or live


def _values(ent: dict[str, Any], prop: str) -> list[str]:
    out = []
    for c in _truthy(ent.get("claims", {}).get(prop, [])):
        snak = c.get("mainsnak", {})
        if snak.get("snaktype") != "value":
            continue
        v = snak.get("datavalue", {}).get("value")
        v = v.get("id") if isinstance(v, dict) else v
        if isinstance(v, str):
            out.append(v)
    return out


def minimal_entity(ent: dict[str, Any]) -> dict[str, Any]:
    """What the pipeline reads of an entity: id, revision, English label, P31/P279/P301/P373, commonswiki."""
    out: dict[str, Any] = {"type": ent.get("type", "item"), "id": ent["id"]}
    for k in ("lastrevid", "modified"):
        if k in ent:
            out[k] = ent[k]
    en = ent.get("labels", {}).get("en")
    out["labels"] = {"en": en} if en else {}
    claims = ent.get("claims", {})
    out["claims"] = {p: claims[p] for p in KEEP_PROPS if claims.get(p)}
    site = ent.get("sitelinks", {}).get("commonswiki")
    out["sitelinks"] = {"commonswiki": site} if site else {}
    return out


def read_redirects(path: str | os.PathLike[str]) -> dict[str, str]:
    """``old -> new`` QIDs from a two-column file (``from,to``; commas or tabs)."""
    out: dict[str, str] = {}
    path = Path(path)
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


@dataclass
class DumpIndex:
    """The kept entities of a dump (compact JSON by QID) and the lookups built from them."""

    dump: str
    date: str
    entities: dict[str, str] = field(default_factory=dict)
    by_title: dict[str, str] = field(default_factory=dict)
    by_p373: dict[str, list[str]] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    passes: int = 0
    lines: int = 0
    parsed: int = 0
    unresolved: int = 0

    def add(self, ent: dict[str, Any]) -> None:
        mini = minimal_entity(ent)
        qid = mini["id"]
        self.entities[qid] = json.dumps(mini, ensure_ascii=False, separators=(",", ":"))
        site = mini["sitelinks"].get("commonswiki")
        if site and isinstance(site.get("title"), str):
            self.by_title[site["title"]] = qid
        for name in _values(mini, "P373"):
            lst = self.by_p373.setdefault(name, [])
            if qid not in lst:
                lst.append(qid)

    def get(self, qid: str) -> dict[str, Any] | None:
        text = self.entities.get(qid)
        return None if text is None else json.loads(text)

    def target(self, qid: str) -> str:
        return follow_redirects(self.redirects, qid)

    def provenance(self) -> dict[str, Any]:
        return {
            "dump": Path(self.dump).name,
            "dump_date": self.date,
            "passes": self.passes,
            "entities_kept": len(self.entities),
            "redirects": len(self.redirects),
            "references_not_in_dump": self.unresolved,
        }


def _lines(path: str) -> Iterator[str]:
    dump = WikidataJsonDump(path)
    for line in dump.iter_lines():
        line = line.rstrip(",\n").rstrip(",")
        if line in ("[", "]", ""):
            continue
        yield line


def build_index(
    dump: str | os.PathLike[str],
    *,
    titles: Iterable[str] = (),
    names: Iterable[str] = (),
    wanted: Iterable[str] = (),
    classes: bool = False,
    follow: Iterable[str] = ("P301",),
    redirects: dict[str, str] | None = None,
    max_passes: int = 4,
    progress: bool = True,
) -> DumpIndex:
    """Stream ``dump`` (``.json``, ``.json.gz`` or ``.json.bz2``) and keep what a stage needs.

    Args:
        titles: Commons titles (``Category:...``) whose sitelinked items are kept.
        names: Commons category names whose truthy-P373 items are kept.
        wanted: QIDs kept in any case.
        classes: keep every item with a P279 statement.
        follow: properties whose (truthy) values are fetched by further passes.
        redirects: ``old -> new`` QIDs (the JSON dump has none).
    """
    path = os.fspath(dump)
    if not Path(path).is_file():
        raise InputError(f"{path}: no such dump file")
    if not path.endswith((".json", ".json.gz", ".json.bz2")):
        raise InputError(f"{path}: a Wikidata JSON dump ends in .json, .json.gz or .json.bz2")
    index = DumpIndex(path, dump_date(path), redirects=dict(redirects or {}))
    screen = _Screen(set(titles), set(names), classes)
    want = {index.target(q) for q in wanted}
    searched: set[str] = set()
    while True:
        index.passes += 1
        _scan(index, want, screen if index.passes == 1 else None, progress)
        searched |= want
        want = _references(index, tuple(follow)) - index.entities.keys() - searched
        if not want or index.passes == max_passes:
            break
    index.unresolved = len((searched | want) - index.entities.keys())
    return index


@dataclass(frozen=True)
class _Screen:
    """What the first pass keeps besides the wanted ids."""

    titles: set[str]
    names: set[str]
    classes: bool

    def may_keep(self, line: str) -> bool:
        """The substring test on a raw line: False when the entity cannot be kept."""
        return (
            (self.classes and '"P279"' in line)
            or (bool(self.titles) and '"commonswiki"' in line)
            or (bool(self.names) and '"P373"' in line)
        )

    def keeps(self, ent: dict[str, Any]) -> bool:
        return bool(
            (self.classes and ent.get("claims", {}).get("P279"))
            or ent.get("sitelinks", {}).get("commonswiki", {}).get("title") in self.titles
            or (self.names and set(_values(ent, "P373")) & self.names)
        )


def _scan(index: DumpIndex, want: set[str], screen: _Screen | None, progress: bool) -> None:
    """One pass over the dump: keep the entities ``want`` names and, on the first pass
    (``screen`` given), those the screen keeps."""
    from tqdm.auto import tqdm

    first = screen is not None
    bar = tqdm(desc=f"dump pass {index.passes}", unit=" entities", disable=None if progress else True)
    for line in _lines(index.dump):
        if first:
            index.lines += 1
        bar.update(1)
        m = _ID.search(line, 0, 200)
        wanted_here = m is not None and m.group(1) in want
        if not (wanted_here or (first and screen.may_keep(line))):
            continue
        try:
            ent = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{index.dump}: entity line {index.lines} is not JSON ({exc})") from None
        index.parsed += 1
        if not isinstance(ent, dict) or not is_qid(str(ent.get("id", ""))):
            continue
        if wanted_here or (first and screen.keeps(ent)):
            index.add(ent)
    bar.close()


def _references(index: DumpIndex, follow: tuple[str, ...]) -> set[str]:
    """The ids the kept entities point at through ``follow`` (redirects followed)."""
    refs: set[str] = set()
    for text in index.entities.values():
        ent = json.loads(text)
        for prop in follow:
            if prop == "P301" and CATEGORY_ITEM not in _values(ent, "P31"):
                continue  # the resolve stage follows P301 of category items only
            refs.update(index.target(v) for v in _values(ent, prop) if is_qid(v))
    return refs


class _NoCache:
    """Stands in for the response cache: the dump route stores nothing."""

    def close(self) -> None:
        pass


class DumpClient:
    """Answers the pipeline's Wikidata questions from a :class:`DumpIndex` (no network).

    Mirrors :class:`hglv2.hierarchy.wikidata.WikidataClient`'s ``entities``, ``p373`` and ``sparql``
    (same answers as the API on the same data), ``stats`` (``dump_lookups``) and ``cache``.
    """

    def __init__(self, index: DumpIndex):
        self.index = index
        self.stats: dict[str, int] = {}
        self.cache = _NoCache()
        self.offline = True

    def _count(self) -> None:
        self.stats["dump_lookups"] = self.stats.get("dump_lookups", 0) + 1

    def _answer(self, chunk: list[str], by_title: bool, site: str, props: str) -> dict[str, Any]:
        """What ``wbgetentities`` answers for the ids or titles ``chunk`` (one lookup)."""
        self._count()
        out: dict[str, Any] = {}
        if not by_title:
            for qid in chunk:
                target = self.index.target(qid)
                ent = self.index.get(target)
                if ent is None:
                    out[qid] = {"id": qid, "missing": ""}
                    continue
                if "sitelinks" not in props:
                    ent.pop("sitelinks", None)
                if target != qid:
                    ent["redirects"] = {"from": qid, "to": target}
                out[qid] = ent
            return out
        n_missing = 0
        for title in chunk:
            qid = self.index.by_title.get(title) if site == "commonswiki" else None
            if qid is None:
                n_missing += 1
                out[str(-n_missing)] = {"site": site, "title": title, "missing": ""}
            else:
                out[qid] = self.index.get(qid)
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
        looked up :data:`MAX_BATCH` at a time as the API client asks."""
        from hglv2.hierarchy.wikidata import batched, requested_keys, split_entities

        by_title, wanted = requested_keys(ids, titles)
        out: dict[str, dict[str, Any] | None] = {}
        for chunk in batched(wanted, MAX_BATCH):
            out.update(split_entities(self._answer(chunk, by_title, site, props), chunk, by_title, site))
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
        out = []
        for lit in _LITERAL.findall(m.group(1)):
            name = re.sub(r"\\(.)", lambda x: {"n": "\n"}.get(x.group(1), x.group(1)), lit)
            for qid in sorted(self.index.by_p373.get(name, []), key=qid_number):
                out.append(
                    {
                        "item": {"type": "uri", "value": f"http://www.wikidata.org/entity/{qid}"},
                        "commonscat": {"type": "literal", "value": name},
                    }
                )
        return out


def _client(
    dump: str | os.PathLike[str], redirects: str | os.PathLike[str] | None, progress: bool, **keep: Any
) -> DumpClient:
    """A :class:`DumpClient` over :func:`build_index` of ``dump`` with the redirect list and ``keep``."""
    index = build_index(
        dump, redirects=read_redirects(redirects) if redirects else None, progress=progress, **keep
    )
    return DumpClient(index)


def client_for_resolve(
    dump: str | os.PathLike[str],
    categories: Iterable[tuple[int, str]],
    redirects: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> DumpClient:
    """A :class:`DumpClient` holding what the resolve stage asks about ``categories``.

    One pass keeps the items sitelinked to the landmarks' Commons titles and those whose P373 is
    one of their category names; a second pass fetches the P301 main topics of category items.
    """
    from hglv2.hierarchy.commons import category_name, category_title

    titles = set()
    for _, url in categories:
        try:
            titles.add(category_title(url))
        except ValueError:
            continue
    names = {category_name(t) for t in titles}
    return _client(dump, redirects, progress, titles=titles, names=names, follow=("P301",))


def client_for_graph(
    dump: str | os.PathLike[str],
    resolved: Iterable[dict[str, Any]],
    redirects: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> DumpClient:
    """A :class:`DumpClient` holding the landmarks' P31 classes and every class with a P279 statement.

    One pass keeps them; a second fetches P279 parents that have no P279 of their own.
    """
    from hglv2.hierarchy.graph import classes_of

    return _client(
        dump, redirects, progress, wanted=classes_of(list(resolved)), classes=True, follow=("P279",)
    )


def client_for_ids(
    dump: str | os.PathLike[str],
    ids: Iterable[str],
    redirects: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> DumpClient:
    """A :class:`DumpClient` holding the items ``ids`` (one pass; e.g. the anchors of clusters.csv)."""
    return _client(dump, redirects, progress, wanted=ids, follow=())
