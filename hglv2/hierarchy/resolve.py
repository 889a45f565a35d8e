"""The *resolve* stage: the Commons category URL of each landmark -> its Wikidata item.

:func:`resolve_categories` does the lookups (sitelinks, then P373 through SPARQL, then P301 main
topics and redirects); :func:`resolve_file` is the stage as ``hglv2 hierarchy resolve`` runs it:
read ``*_label_to_category.csv``, resolve, write the resolved table (Parquet, columns
:data:`RESOLVED_COLUMNS`) and return its summary.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from hglv2.errors import InputError
from hglv2.fileio import write_parquet
from hglv2.hierarchy.wikidata import (
    ItemInfo,
    WikidataClient,
    fetch_items,
    parse_item,
    qid_number,
    run_batches,
)
from hglv2.schema import NUMBERINGS

if TYPE_CHECKING:
    from hglv2.hierarchy.sources import WikidataSource

RESOLVED_COLUMNS = (
    "landmark_id",
    "numbering",
    "category",
    "title",
    "qid",
    "resolution",
    "label",
    "revision",
    "p31",
    "p31_ranks",
)


def read_categories(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """Read a GLDv2 ``*_label_to_category.csv`` (``landmark_id,category``) as sorted pairs.

    Read by :func:`hglv2.gldv2.readers.read_file` (the one validating reader): a short row, an extra
    field, a non-integer or duplicate landmark_id or an empty category is an error naming its line.
    """
    from hglv2.gldv2.readers import read_file

    t = read_file(path, "label_to_category")
    return sorted(zip(t["landmark_id"].to_pylist(), t["category"].to_pylist(), strict=True))


def category_files(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Path]:
    """Category files by numbering: ``NUMBERING=PATH`` or a path whose name says it
    (``index_label_to_category.csv`` -> index, see :func:`~hglv2.gldv2.specs.numbering_of_file`).
    Each numbering at most once."""
    from hglv2.gldv2.specs import numbering_of_file

    out: dict[str, Path] = {}
    for p in paths:
        text = os.fspath(p)
        head, sep, tail = text.partition("=")
        if sep and head in NUMBERINGS:
            numbering, path = head, Path(tail)
        else:
            numbering, path = numbering_of_file(text), Path(text)
        if numbering in out:
            raise InputError(f"{path}: a second {numbering} category file (first: {out[numbering]})")
        out[numbering] = path
    return {n: out[n] for n in NUMBERINGS if n in out}


def _p373_lookup(client: WikidataClient, names: Sequence[str], batch: int) -> dict[str, str]:
    """Commons category name -> QID through SPARQL (``VALUES`` batches, cached per name by the
    client: :meth:`WikidataClient.p373`); the smallest QID wins."""
    found = client.p373(names, batch)
    return {name: min(qids, key=qid_number) for name, qids in found.items() if qids}


def resolve_categories(
    client: WikidataClient, categories: Sequence[tuple[int, str]], sparql_batch: int = 100, max_hops: int = 3
) -> list[dict[str, Any]]:
    """Resolve ``(landmark_id, category URL)`` pairs to Wikidata items.

    1. titles (normalised and NFC, unique, sorted) -> ``wbgetentities&sites=commonswiki``, 50 per
       call, cached per title (:meth:`WikidataClient.entities`);
    2. titles without a sitelink -> P373 (Commons category) through SPARQL, ``sparql_batch`` names
       per ``VALUES`` query;
    3. a category item (P31 Q4167836) is replaced by its P301 main topic (at most ``max_hops``
       times), items are fetched by id 50 per call, following redirects.

    Returns one dict per landmark (keys :data:`RESOLVED_COLUMNS`); ``resolution`` records the path
    taken, e.g. ``sitelink>p301>redirect``, or why it failed (``missing``, ``invalid-category``,
    ``category-without-main-topic``, ``target-missing``).
    """
    from hglv2.hierarchy.commons import category_name

    titles = [_title_or_none(url) for _, url in categories]
    uniq = sorted({t for t in titles if t is not None})
    by_title = _items_by_title(client, uniq)
    unmatched = [t for t in uniq if t not in by_title]
    by_name = _p373_lookup(client, [category_name(t) for t in unmatched], sparql_batch) if unmatched else {}
    chains = _Chains(by_title, by_name, max_hops)
    for _ in range(2 * max_hops + 2):
        needs: set[str] = set()
        for t in uniq:
            needs |= chains.follow(t)[2]
        needs -= chains.items.keys()
        if not needs:
            break
        chains.items.update(fetch_items(client, needs))
    return [
        _resolved_row(lid, url, title, chains) for (lid, url), title in zip(categories, titles, strict=True)
    ]


def _title_or_none(url: str) -> str | None:
    from hglv2.hierarchy.commons import category_title

    try:
        return category_title(url)
    except ValueError:
        return None


def _items_by_title(client: WikidataClient, titles: Sequence[str]) -> dict[str, ItemInfo]:
    """Commons title -> the item whose ``commonswiki`` sitelink is that title (step 1)."""
    from hglv2.hierarchy.commons import normalize_title

    by_title: dict[str, ItemInfo] = {}

    def title_call() -> None:
        for t, ent in client.entities(titles=titles).items():
            if ent is None:
                continue
            ent = dict(ent)
            ent.setdefault("type", "item")
            info = parse_item(ent)
            if info.commons_title is not None and normalize_title(info.commons_title) == t:
                by_title[t] = info

    if titles:
        run_batches([title_call])
    return by_title


class _Chains:
    """The path from a title to its item (steps 2 and 3) over the items fetched so far."""

    def __init__(self, by_title: dict[str, ItemInfo], by_name: dict[str, str], max_hops: int) -> None:
        self.by_title, self.by_name, self.max_hops = by_title, by_name, max_hops
        self.items: dict[str, ItemInfo | None] = {}

    def follow(self, title: str) -> tuple[ItemInfo | None, list[str], set[str]]:
        """``(item or None, steps taken, ids still to fetch)`` for one title."""
        from hglv2.hierarchy.commons import category_name

        info = self.by_title.get(title)
        steps = ["sitelink"]
        if info is None:
            qid = self.by_name.get(category_name(title))
            if qid is None:
                return None, ["missing"], set()
            if qid not in self.items:
                return None, ["p373"], {qid}
            info, steps = self.items[qid], ["p373"]
            if info is None:
                return None, ["p373", "target-missing"], set()
            if info.redirected_from:
                steps.append("redirect")
        return self._main_topic(info, steps)

    def _main_topic(self, info: ItemInfo, steps: list[str]) -> tuple[ItemInfo | None, list[str], set[str]]:
        """A category item replaced by its P301 main topic, at most ``max_hops`` times."""
        hops = 0
        while info.is_category_item:
            if not info.p301 or hops == self.max_hops:
                return None, [*steps, "category-without-main-topic"], set()
            target = min(info.p301, key=qid_number)
            if target not in self.items:
                return None, steps, {target}
            steps.append("p301")
            info = self.items[target]
            hops += 1
            if info is None:
                return None, [*steps, "target-missing"], set()
            if info.redirected_from:
                steps.append("redirect")
        return info, steps, set()


def _resolved_row(lid: int, url: str, title: str | None, chains: _Chains) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(RESOLVED_COLUMNS)
    row.update(landmark_id=lid, numbering="train", category=url or None, title=title)
    if title is None:
        row["resolution"] = "invalid-category"
        return row
    info, steps, _ = chains.follow(title)
    row["resolution"] = ">".join(steps)
    if info is not None:
        row.update(
            qid=info.qid,
            label=info.label,
            revision=info.revision,
            p31="|".join(info.p31) or None,
            p31_ranks="|".join(f"{q}:{r}" for q, r in info.p31_ranks) or None,
        )
    return row


def resolved_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """The rows of :func:`resolve_categories` as a table: ``landmark_id`` and ``revision`` int64, the rest
    strings."""
    types = {"landmark_id": pa.int64(), "revision": pa.int64()}
    return pa.table({c: pa.array([r[c] for r in rows], types.get(c, pa.string())) for c in RESOLVED_COLUMNS})


def resolve_numbered(
    client: WikidataClient, categories: Mapping[str, Sequence[tuple[int, str]]], **kwargs: Any
) -> list[dict[str, Any]]:
    """:func:`resolve_categories` over several numberings at once (one lookup per distinct title,
    shared by the numberings): ``{numbering: [(landmark_id, url), ...]}`` -> rows with their
    ``numbering``, in (numbering, landmark_id) order."""
    pairs = [(lid, url) for n in NUMBERINGS for lid, url in categories.get(n, ())]
    tags = [n for n in NUMBERINGS for _ in categories.get(n, ())]
    unknown = sorted(set(categories) - set(NUMBERINGS))
    if unknown:
        raise InputError(f"unknown numbering(s) {', '.join(unknown)} (use {', '.join(NUMBERINGS)})")
    rows = resolve_categories(client, pairs, **kwargs)
    for row, n in zip(rows, tags, strict=True):
        row["numbering"] = n
    return rows


def resolve_summary(rows: Sequence[dict[str, Any]], requests: dict[str, int]) -> dict[str, Any]:
    """Landmarks, how many got an item, the count per ``resolution`` path (also per numbering) and
    the requests made."""

    def part(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in rs:
            counts[r["resolution"]] = counts.get(r["resolution"], 0) + 1
        return {
            "landmarks": len(rs),
            "resolved": sum(1 for r in rs if r["qid"]),
            "resolution": dict(sorted(counts.items())),
        }

    out = part(rows)
    out["by_numbering"] = {
        n: part([r for r in rows if r["numbering"] == n])
        for n in NUMBERINGS
        if any(r["numbering"] == n for r in rows)
    }
    out["requests"] = dict(sorted(requests.items()))
    return out


def resolve_file(
    source: WikidataSource,
    categories: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
) -> dict[str, Any]:
    """The resolve stage: read the category file(s), resolve every landmark, write the table to ``out``.

    ``categories`` is one file or several (``train_label_to_category.csv`` and
    ``index_label_to_category.csv``, or ``NUMBERING=PATH``; see :func:`category_files`); all are
    resolved in one run sharing one client from ``source`` (:mod:`hglv2.hierarchy.sources`).
    Returns :func:`resolve_summary` (its ``requests`` are the client's counts so far), with the
    source's provenance as ``source`` when it has one (a dump).
    """
    paths = [categories] if isinstance(categories, (str, os.PathLike)) else list(categories)
    by_numbering = {n: read_categories(p) for n, p in category_files(paths).items()}
    client = source.client()
    rows = resolve_numbered(client, by_numbering)
    write_parquet(resolved_table(rows), out)
    return source.with_provenance(resolve_summary(rows, client.stats))
