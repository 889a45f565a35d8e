"""The *resolve* stage: the Commons category URL of each landmark -> its Wikidata item.

:func:`resolve_categories` does the lookups (sitelinks, then P373 through SPARQL, then P301 main
topics and redirects); :func:`resolve_file` is the stage as ``hglv2 hierarchy resolve`` runs it:
read ``*_label_to_category.csv``, resolve, write the resolved table (Parquet, columns
:data:`RESOLVED_COLUMNS`) and return its summary.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from hglv2.errors import InputError
from hglv2.fileio import write_parquet
from hglv2.hierarchy.wikidata import (
    MAX_BATCH,
    ItemInfo,
    WikidataClient,
    batched,
    fetch_items,
    is_qid,
    parse_item,
    qid_number,
    run_batches,
)

RESOLVED_COLUMNS = (
    "landmark_id",
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
    """Read a GLDv2 ``*_label_to_category.csv`` (``landmark_id,category``) as sorted pairs."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a valid CSV file ({exc})") from None
    for col in ("landmark_id", "category"):
        if col not in df.columns:
            raise InputError(f"{path}: missing column {col}")
    seen: set[int] = set()
    out = []
    for row, (lid, cat) in enumerate(zip(df["landmark_id"], df["category"], strict=True), 2):
        lid = lid.strip()
        if not lid.lstrip("-").isdigit():
            raise InputError(f"{path}:{row}: landmark_id {lid!r} is not an integer")
        n = int(lid)
        if n in seen:
            raise InputError(f"{path}:{row}: duplicate landmark_id {n}")
        seen.add(n)
        out.append((n, cat.strip()))
    return sorted(out)


def _sparql_p373_query(names: Sequence[str]) -> str:
    def lit(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    values = " ".join(lit(n) for n in names)
    return (
        "SELECT ?item ?commonscat WHERE { VALUES ?commonscat { "
        + values
        + " } ?item wdt:P373 ?commonscat . }"
    )


def _p373_lookup(client: WikidataClient, names: Sequence[str], batch: int) -> dict[str, str]:
    """Commons category name -> QID through SPARQL (``VALUES`` batches); the smallest QID wins."""
    found: dict[str, list[str]] = {}

    def call(chunk: list[str]) -> Callable[[], None]:
        def run() -> None:
            for b in client.sparql(_sparql_p373_query(chunk)):
                try:
                    name, uri = b["commonscat"]["value"], b["item"]["value"]
                except (KeyError, TypeError):
                    continue
                qid = uri.rsplit("/", 1)[-1]
                if is_qid(qid) and name in chunk:
                    found.setdefault(name, []).append(qid)

        return run

    run_batches(call(c) for c in batched(sorted(names), batch))
    return {name: min(qids, key=qid_number) for name, qids in found.items()}


def resolve_categories(
    client: WikidataClient, categories: Sequence[tuple[int, str]], sparql_batch: int = 100, max_hops: int = 3
) -> list[dict[str, Any]]:
    """Resolve ``(landmark_id, category URL)`` pairs to Wikidata items.

    1. titles (normalised, unique, sorted) -> ``wbgetentities&sites=commonswiki``, 50 per call;
    2. titles without a sitelink -> P373 (Commons category) through SPARQL, ``sparql_batch`` names
       per ``VALUES`` query;
    3. a category item (P31 Q4167836) is replaced by its P301 main topic (at most ``max_hops``
       times), items are fetched by id 50 per call, following redirects.

    Returns one dict per landmark (keys :data:`RESOLVED_COLUMNS`); ``resolution`` records the path
    taken, e.g. ``sitelink>p301>redirect``, or why it failed (``missing``, ``invalid-category``,
    ``category-without-main-topic``, ``target-missing``).
    """
    from hglv2.hierarchy.commons import category_name, category_title, normalize_title

    titles: dict[int, str | None] = {}
    for lid, url in categories:
        try:
            titles[lid] = category_title(url)
        except ValueError:
            titles[lid] = None
    uniq = sorted({t for t in titles.values() if t is not None})

    by_title: dict[str, ItemInfo] = {}

    def title_call(chunk: list[str]) -> Callable[[], None]:
        def run() -> None:
            wanted = set(chunk)
            for ent in client.wbgetentities(titles=chunk).values():
                if not isinstance(ent, dict) or "missing" in ent or "id" not in ent:
                    continue
                ent.setdefault("type", "item")
                info = parse_item(ent)
                if info.commons_title is None:
                    continue
                t = normalize_title(info.commons_title)
                if t in wanted:
                    by_title[t] = info

        return run

    run_batches(title_call(c) for c in batched(uniq, MAX_BATCH))
    unmatched = [t for t in uniq if t not in by_title]
    by_name = _p373_lookup(client, [category_name(t) for t in unmatched], sparql_batch) if unmatched else {}

    items: dict[str, ItemInfo | None] = {}

    def chain(title: str) -> tuple[ItemInfo | None, list[str], set[str]]:
        info = by_title.get(title)
        steps = ["sitelink"]
        if info is None:
            qid = by_name.get(category_name(title))
            if qid is None:
                return None, ["missing"], set()
            if qid not in items:
                return None, ["p373"], {qid}
            info, steps = items[qid], ["p373"]
            if info is None:
                return None, ["p373", "target-missing"], set()
            if info.redirected_from:
                steps.append("redirect")
        hops = 0
        while info.is_category_item:
            if not info.p301 or hops == max_hops:
                return None, [*steps, "category-without-main-topic"], set()
            target = min(info.p301, key=qid_number)
            if target not in items:
                return None, steps, {target}
            steps.append("p301")
            info = items[target]
            hops += 1
            if info is None:
                return None, [*steps, "target-missing"], set()
            if info.redirected_from:
                steps.append("redirect")
        return info, steps, set()

    for _ in range(2 * max_hops + 2):
        needs: set[str] = set()
        for t in uniq:
            needs |= chain(t)[2]
        needs -= items.keys()
        if not needs:
            break
        items.update(fetch_items(client, needs))

    out = []
    for lid, url in categories:
        title = titles[lid]
        row: dict[str, Any] = dict.fromkeys(RESOLVED_COLUMNS)
        row.update(landmark_id=lid, category=url or None, title=title)
        if title is None:
            row["resolution"] = "invalid-category"
        else:
            info, steps, _ = chain(title)
            row["resolution"] = ">".join(steps)
            if info is not None:
                row.update(
                    qid=info.qid,
                    label=info.label,
                    revision=info.revision,
                    p31="|".join(info.p31) or None,
                    p31_ranks="|".join(f"{q}:{r}" for q, r in info.p31_ranks) or None,
                )
        out.append(row)
    return out


def resolved_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """The rows of :func:`resolve_categories` as a table: ``landmark_id`` and ``revision`` int64, the rest
    strings."""
    types = {"landmark_id": pa.int64(), "revision": pa.int64()}
    return pa.table({c: pa.array([r[c] for r in rows], types.get(c, pa.string())) for c in RESOLVED_COLUMNS})


def resolve_summary(rows: Sequence[dict[str, Any]], requests: dict[str, int]) -> dict[str, Any]:
    """Landmarks, how many got an item, the count per ``resolution`` path and the requests made."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["resolution"]] = counts.get(r["resolution"], 0) + 1
    return {
        "landmarks": len(rows),
        "resolved": sum(1 for r in rows if r["qid"]),
        "resolution": dict(sorted(counts.items())),
        "requests": dict(sorted(requests.items())),
    }


def resolve_file(
    client: WikidataClient, categories: str | os.PathLike[str], out: str | os.PathLike[str]
) -> dict[str, Any]:
    """The resolve stage: read ``categories``, resolve every landmark, write the table to ``out``.

    Returns :func:`resolve_summary` (its ``requests`` are the client's counts so far).
    """
    rows = resolve_categories(client, read_categories(categories))
    write_parquet(resolved_table(rows), out)
    return resolve_summary(rows, client.stats)
