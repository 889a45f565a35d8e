"""The review page: one self-contained HTML file showing the hierarchy as the reviewer works on it.

:func:`build_report` renders top level -> clusters -> supercategories -> landmarks as nested
``<details>`` blocks, each with its landmark and image counts; per landmark its numbering and id,
Wikidata and Commons links, the provenance of its label (rule, decision, override, vote with its
share and runner-up, aligned, published), its disagreements with the published hierarchy and with
the other numbering, and a few thumbnails (small JPEGs as ``data:`` URIs) when images are given;
clusters show thumbnails of their first landmarks. A "needs review" switch hides every landmark
that needs nothing (a landmark needs review when it has no cluster, a pending vote, or a
disagreement). CSS and JavaScript are inline; the page loads nothing from the network and opens
from disk. Everything shown is also in the ``data-*`` attributes, which the browser test reads.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

NONE = "(none)"
THUMB_SIDE = 72
LEVELS = ("natural_or_human_made", "hierarchical_label", "supercategory")


@dataclass
class ReportInputs:
    """What the page shows: the hierarchy table and the optional evidence beside it.

    ``votes``: :data:`hglv2.hierarchy.vote.VOTE_COLUMNS`; ``disagreements``: rows of
    :func:`hglv2.hierarchy.labels.diff_tables` (ours vs published); ``numberings``: rows of
    :func:`hglv2.hierarchy.consistency.compare_numberings`; ``image_counts`` and ``thumbnails``
    are keyed by (numbering, landmark_id), thumbnails holding encoded images (bytes).
    """

    table: pd.DataFrame
    votes: pd.DataFrame | None = None
    disagreements: pd.DataFrame | None = None
    numberings: pd.DataFrame | None = None
    image_counts: Mapping[tuple[str, int], int] = field(default_factory=dict)
    thumbnails: Mapping[tuple[str, int], Sequence[bytes]] = field(default_factory=dict)
    title: str = "H-GLDv2 hierarchy review"


def _s(v: Any) -> str | None:
    return None if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)


def thumbnail_uri(data: Any, side: int = THUMB_SIDE) -> str | None:
    """A small JPEG ``data:`` URI of an image (encoded bytes or a PIL image; None if it cannot be
    decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) if isinstance(data, bytes) else contextlib.nullcontext(data) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=70, optimize=True)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _notes(inp: ReportInputs) -> dict[tuple[str, int], dict[str, list[str]]]:
    """Per landmark: ``vote`` (the vote line), ``published`` and ``numbering`` disagreements."""
    notes: dict[tuple[str, int], dict[str, list[str]]] = {}

    def add(key: tuple[str, int], kind: str, text: str) -> None:
        notes.setdefault(key, {}).setdefault(kind, []).append(text)

    if inp.votes is not None:
        for r in inp.votes.itertuples(index=False):
            run = f", runner-up {r.runner_up} {r.runner_up_share:.0%}" if _s(r.runner_up) else ""
            add((str(r.numbering), int(r.landmark_id)), "vote",
                f"vote {r.cluster} {r.share:.0%} of {r.images} images{run} ({r.status})")  # fmt: skip
    if inp.disagreements is not None:
        for r in inp.disagreements.itertuples(index=False):
            add((str(r.numbering), int(r.landmark_id)), "published",
                f"{r.level}: ours {r.value_a}, published {r.value_b}")  # fmt: skip
    if inp.numberings is not None:
        bad = inp.numberings[inp.numberings["status"].isin(["cluster differs", "top differs"])]
        for r in bad.itertuples(index=False):
            text = (f"train {r.train_landmark_id}: {r.train_cluster} ({r.train_top}) / "
                    f"index {r.index_landmark_id}: {r.index_cluster} ({r.index_top})")  # fmt: skip
            add(("train", int(r.train_landmark_id)), "numbering", text)
            add(("index", int(r.index_landmark_id)), "numbering", text)
    return notes


def landmark_rows(inp: ReportInputs) -> pd.DataFrame:
    """One row per landmark with what the page shows, and ``needs_review``."""
    t = inp.table
    notes = _notes(inp)
    pending = set()
    if inp.votes is not None:
        p = inp.votes[inp.votes["status"] == "pending"]
        pending = {(str(n), int(i)) for n, i in zip(p["numbering"], p["landmark_id"], strict=True)}
    rows = []
    for r in t.to_dict("records"):
        key = (str(r["numbering"]), int(r["landmark_id"]))
        n = notes.get(key, {})
        cluster = _s(r["hierarchical_label"])
        needs = cluster is None or key in pending or bool(n.get("published")) or bool(n.get("numbering"))
        rows.append(
            {
                "numbering": key[0],
                "landmark_id": key[1],
                "top": _s(r["natural_or_human_made"]) or NONE,
                "cluster": cluster or NONE,
                "supercategory": _s(r["supercategory"]) or NONE,
                "supercategory_qid": _s(r["supercategory_qid"]),
                "qid": _s(r["qid"]),
                "category": _s(r["category"]),
                "provenance": _s(r["provenance"]) or "open",
                "images": int(inp.image_counts.get(key, 0)),
                "notes": n,
                "needs_review": needs,
            }
        )
    return pd.DataFrame(rows, dtype=object).astype(
        {"landmark_id": "int64", "images": "int64", "needs_review": bool}
    )


def report_counts(rows: pd.DataFrame) -> dict[str, Any]:
    """The counts the page shows: landmarks and images in total, per top level and per cluster."""

    def count(df: pd.DataFrame) -> dict[str, int]:
        return {
            "landmarks": len(df),
            "images": int(df["images"].sum()),
            "review": int(df["needs_review"].sum()),
        }

    return {
        "total": count(rows),
        "provenance": {str(k): int(v) for k, v in rows["provenance"].value_counts().items()},
        "tops": {k: count(g) for k, g in rows.groupby("top", sort=True)},
        "clusters": {f"{a}/{b}": count(g) for (a, b), g in rows.groupby(["top", "cluster"], sort=True)},
    }


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _links(r: Mapping[str, Any]) -> str:
    qid, category, sup = _s(r["qid"]), _s(r["category"]), _s(r["supercategory_qid"])
    parts = []
    if qid:
        parts.append(f'<a href="https://www.wikidata.org/wiki/{_e(qid)}">{_e(qid)}</a>')
    if category:
        parts.append(f'<a href="{_e(category)}">Commons</a>')
    if sup:
        parts.append(f'class <a href="https://www.wikidata.org/wiki/{_e(sup)}">{_e(sup)}</a>')
    return " · ".join(parts)


def _thumbs(datas: Sequence[bytes], limit: int) -> str:
    uris = [u for u in (thumbnail_uri(d) for d in list(datas)[:limit]) if u]
    return "".join(f'<img class="th" alt="" src="{u}">' for u in uris)


def _landmark_html(r: Mapping[str, Any], thumbs: Sequence[bytes]) -> str:
    key = f"{r['numbering']}:{r['landmark_id']}"
    notes = "".join(
        f'<div class="note {kind}">{_e(text)}</div>'
        for kind, texts in sorted(r["notes"].items())
        for text in texts
    )
    prov = _e(r["provenance"])
    return (
        f'<div class="lm" data-key="{_e(key)}" data-images="{r["images"]}" '
        f'data-review="{int(r["needs_review"])}" data-provenance="{prov}">'
        f'<span class="id">{_e(key)}</span> <span class="prov p-{prov}">{prov}</span> '
        f'<span class="n">{r["images"]} img</span> {_links(r)}{notes}'
        f'<div class="ths">{_thumbs(thumbs, 3)}</div></div>'
    )


def _group_html(level: str, name: str, rows: pd.DataFrame, inner: str, thumbs: str = "") -> str:
    n, img, rev = len(rows), int(rows["images"].sum()), int(rows["needs_review"].sum())
    opened = " open" if level == "top" else ""
    return (
        f'<details class="g {level}"{opened} data-name="{_e(name)}" data-landmarks="{n}" data-images="{img}" '
        f'data-review="{rev}"><summary><b>{_e(name)}</b> <span class="count">'
        f'<span class="c-lm">{n}</span> landmarks, <span class="c-img">{img}</span> images, '
        f'<span class="c-rev">{rev}</span> to review</span></summary>'
        f'<div class="ths">{thumbs}</div>{inner}</details>'
    )


def _tree_html(rows: pd.DataFrame, thumbnails: Mapping[tuple[str, int], Sequence[bytes]]) -> str:
    out = []
    for top, tg in rows.groupby("top", sort=True):
        clusters = []
        for cluster, cg in tg.groupby("cluster", sort=True):
            sups, cthumbs = [], []
            for sup, sg in cg.groupby("supercategory", sort=True):
                lms = []
                for r in sg.sort_values(["numbering", "landmark_id"]).to_dict("records"):
                    th = thumbnails.get((r["numbering"], r["landmark_id"]), ())
                    cthumbs += list(th[:1])
                    lms.append(_landmark_html(r, th))
                sups.append(_group_html("sup", sup, sg, "".join(lms)))
            clusters.append(_group_html("cluster", cluster, cg, "".join(sups), _thumbs(cthumbs, 6)))
        out.append(_group_html("top", top, tg, "".join(clusters)))
    return "".join(out)


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} .bar{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ddd}
details{margin:.2em 0 .2em 1.2em} summary{cursor:pointer} .count{color:#666;font-size:.9em}
.lm{margin:.3em 0 .3em 1.6em;padding:.2em .4em;border-left:3px solid #ccc}
.lm[data-review="1"]{border-left-color:#d9534f;background:#fff6f5}
.prov{font-size:.8em;padding:0 .4em;border-radius:.6em;background:#eee}
.p-vote{background:#fde9b6} .p-open{background:#f5c6c4} .p-override{background:#d6e4ff}
.p-decision{background:#d8f0d8} .p-aligned{background:#e6d8f5}
.note{font-size:.85em;color:#8a3b00} .note.vote{color:#5a4a00} .n{color:#666;font-size:.85em}
.th{width:48px;height:48px;object-fit:cover;margin:2px;border-radius:3px}
.hidden{display:none} table.sum td{padding:0 .8em 0 0}
"""

JS = """
(function(){
  var box=document.getElementById('only-review');
  function update(){
    var only=box.checked, shown=0;
    document.querySelectorAll('.lm').forEach(function(el){
      var hide=only && el.getAttribute('data-review')!=='1';
      el.classList.toggle('hidden',hide); if(!hide){shown++;}
    });
    document.querySelectorAll('details.g').forEach(function(d){
      var any=d.querySelector('.lm:not(.hidden)')!==null;
      d.classList.toggle('hidden',!any); if(only&&any){d.open=true;}
    });
    document.getElementById('shown').textContent=String(shown);
  }
  box.addEventListener('change',update); update();
})();
"""


def _summary_html(counts: dict[str, Any], inp: ReportInputs) -> str:
    t = counts["total"]
    lines = [
        f'<tr><td>landmarks</td><td id="total-landmarks">{t["landmarks"]}</td></tr>',
        f'<tr><td>images</td><td id="total-images">{t["images"]}</td></tr>',
        f'<tr><td>need review</td><td id="total-review">{t["review"]}</td></tr>',
    ]
    prov = ", ".join(f"{k} {v}" for k, v in sorted(counts["provenance"].items()))
    lines.append(f'<tr><td>labels by</td><td id="provenance">{_e(prov)}</td></tr>')
    if inp.votes is not None:
        lines.append(f'<tr><td>votes</td><td id="total-votes">{len(inp.votes)}</td></tr>')
    if inp.numberings is not None:
        bad = inp.numberings["status"].isin(["cluster differs", "top differs"]).sum()
        lines.append(f'<tr><td>numbering disagreements</td><td id="total-numbering">{int(bad)}</td></tr>')
    if inp.disagreements is not None:
        lines.append(
            f'<tr><td>published disagreements</td><td id="total-published">{len(inp.disagreements)}</td></tr>'
        )
    return '<table class="sum">' + "".join(lines) + "</table>"


def build_report(inp: ReportInputs) -> str:
    """The page as a string (deterministic for the same inputs)."""
    rows = landmark_rows(inp)
    counts = report_counts(rows)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(inp.title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{_e(inp.title)}</h1>{_summary_html(counts, inp)}"
        '<div class="bar"><label><input type="checkbox" id="only-review"> needs review only</label> '
        '— showing <span id="shown"></span> landmarks</div>'
        f'<main id="tree">{_tree_html(rows, inp.thumbnails)}</main>'
        f"<script>{JS}</script></body></html>\n"
    )


def write_report(path: str | os.PathLike[str], page: str) -> None:
    """Write the page atomically."""
    from hglv2.fileio import atomic_open

    with atomic_open(path, encoding="utf-8") as fh:
        fh.write(page)


def report_files(
    hierarchy: str | os.PathLike[str],
    *,
    proposals: str | os.PathLike[str] | None = None,
    votes: str | os.PathLike[str] | None = None,
    published: Sequence[str | os.PathLike[str]] = (),
    metadata: str | os.PathLike[str] | None = None,
    load_images: Callable[[list[str]], Mapping[str, Any]] | None = None,
    per_landmark: int = 3,
) -> tuple[str, dict[str, Any]]:
    """The page for the files of a pipeline run, and its counts.

    ``hierarchy``: the table of ``hglv2 hierarchy apply``; ``proposals`` give the image counts;
    ``votes`` the vote lines; ``published`` tables the disagreements (:func:`diff_files`);
    ``metadata`` (a GLDv2 folder) the cross-numbering check and, with ``load_images`` (image ids ->
    images), the thumbnails: the first ``per_landmark`` images of each landmark.
    """
    from hglv2.hierarchy.consistency import consistency_files
    from hglv2.hierarchy.labels import diff_files, load_hierarchy_table

    inp = ReportInputs(load_hierarchy_table(hierarchy))
    if proposals is not None:
        from hglv2.fileio import read_parquet_checked
        from hglv2.hierarchy.clusters import PROPOSAL_COLUMNS, proposal_image_counts

        props = read_parquet_checked(proposals, PROPOSAL_COLUMNS, "run `hglv2 hierarchy propose` first")
        inp.image_counts = proposal_image_counts(props.to_pandas())
    if votes is not None:
        from hglv2.hierarchy.vote import read_votes

        inp.votes = read_votes(votes)
    if published:
        inp.disagreements = diff_files(hierarchy, list(published))["disagreements"]
    if metadata is not None:
        found = consistency_files(inp.table, metadata)
        inp.numberings = None if found is None else found[0]
        if load_images is not None:
            inp.thumbnails = _thumbnails(inp.table, metadata, load_images, per_landmark)
    rows = landmark_rows(inp)
    summary = report_counts(rows)
    summary["thumbnails"] = sum(len(v) for v in inp.thumbnails.values())
    return build_report(inp), summary


def _thumbnails(table, metadata, load_images, per_landmark: int) -> dict[tuple[str, int], list[Any]]:
    from hglv2.gldv2.readers import metadata_files
    from hglv2.hierarchy.vote import voting_images

    images = voting_images(metadata_files(metadata), table)
    images = (
        images[images["source"] != "query"]
        .groupby(["numbering", "landmark_id"], sort=False)
        .head(per_landmark)
    )
    loaded = load_images(images["id"].tolist())
    out: dict[tuple[str, int], list[Any]] = {}
    for i, n, lid in zip(images["id"], images["numbering"], images["landmark_id"], strict=True):
        if i in loaded:
            out.setdefault((str(n), int(lid)), []).append(loaded[i])
    return out
