"""``hglv2 hierarchy``: the semi-automatic hierarchy pipeline, one subcommand per stage.

resolve -> graph -> propose -> (people edit data/review/*.csv, helped by ``review``) -> apply;
``diff`` compares two hierarchy tables (ours, or the published CSV); ``validate-anchors`` checks
the QIDs of clusters.csv against Wikidata's English labels. ``pipelines/hierarchy.mk`` chains them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click

from hglv2.cli._options import (
    HTTP_URL,
    OUTPUT_DIR_PATH,
    OUTPUT_FILE_PATH,
    Output,
    json_option,
    output_problem,
)
from hglv2.errors import InputError
from hglv2.hierarchy.sources import DEFAULT_MAX_TRIES

DEFAULT_OUT = Path("out/hierarchy")


def _source_options(f):
    """The options of a Wikidata source (:func:`hglv2.hierarchy.sources.open_source`): the API with
    its cache, or ``--dump`` (with ``--redirects``); the command gets ``source``, opened and closed."""
    opts = [
        click.option(
            "--dump",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            default=None,
            help="Answer from a Wikidata JSON dump (latest-all.json.bz2|.gz) instead of the API; "
            "the cache and network options are then unused.",
        ),
        click.option(
            "--redirects",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            default=None,
            help="With --dump: old,new QID pairs (the JSON dump holds no redirects).",
        ),
        click.option(
            "--cache",
            "cache_path",
            type=click.Path(dir_okay=False, path_type=Path),
            default=DEFAULT_OUT / "wikidata.sqlite",
            show_default=True,
            help="Response cache: .sqlite (read/write) or a .jsonl recording (read-only).",
        ),
        click.option("--offline", is_flag=True, help="Only replay the cache; name what is missing."),
        click.option(
            "--api-url", type=HTTP_URL, default=None, help="Wikidata Action API URL [default: wikidata.org]."
        ),
        click.option(
            "--sparql-url",
            type=HTTP_URL,
            default=None,
            help="SPARQL endpoint URL [default: query.wikidata.org].",
        ),
        click.option(
            "--contact",
            envvar="HGLV2_CONTACT",
            default=None,
            help="Contact (e-mail or URL) added to the User-Agent [env HGLV2_CONTACT].",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=60.0,
            show_default=True,
            help="Seconds per request.",
        ),
        click.option(
            "--max-tries",
            type=click.IntRange(1, 100),
            default=DEFAULT_MAX_TRIES,
            show_default=True,
            help="Tries of a failing request (1: no retry).",
        ),
    ]

    @functools.wraps(f)
    def wrapper(dump, redirects, cache_path, **kw):
        from hglv2.hierarchy.sources import open_source

        api = {k: kw.pop(k) for k in ("offline", "api_url", "sparql_url", "contact", "timeout", "max_tries")}
        with open_source(dump=dump, redirects=redirects, cache_path=cache_path, **api) as source:
            if dump is None and not api["offline"]:
                problem = output_problem(cache_path)
                if problem:
                    raise InputError(f"--cache: {problem}")
            return f(source=source, **kw)

    for o in reversed(opts):
        wrapper = o(wrapper)
    return wrapper


def _file_option(name: str, default: Path, output: bool = False, **kwargs: Any):
    """A ``--name FILE`` option (a Path) whose default is shown in --help; ``output``: checked for
    writability when the command line is parsed."""
    kind = OUTPUT_FILE_PATH if output else click.Path(dir_okay=False, path_type=Path)
    return click.option(name, type=kind, default=default, show_default=True, **kwargs)


def _json(f):
    return json_option(help="Also write the results as JSON here.")(f)


@click.group()
def hierarchy() -> None:
    """The hierarchy pipeline: resolve, graph, propose, review, apply, diff, validate-anchors."""


@hierarchy.command()
@click.option(
    "--categories",
    multiple=True,
    required=True,
    help="GLDv2 train_ and/or index_label_to_category.csv (landmark_id,category); repeatable, all "
    "resolved in one run. The numbering comes from the name (index* -> index, else train), or "
    "write NUMBERING=PATH.",
)
@_file_option("--out", DEFAULT_OUT / "resolved.parquet", output=True)
@_json
@_source_options
def resolve(source, categories: tuple[str, ...], out: Path) -> Output:
    """Commons category URL of each landmark -> Wikidata item (QID, P31, label, revision)."""
    from hglv2.hierarchy.resolve import resolve_file

    res = resolve_file(source, categories, out)
    lines = [f"resolved {res['resolved']}/{res['landmarks']} landmarks -> {out}"]
    lines += [f"  {k:40s} {v}" for k, v in res["resolution"].items()]
    lines += [
        f"  {n} numbering: resolved {part['resolved']}/{part['landmarks']}"
        for n, part in res["by_numbering"].items()
    ]
    return Output(res, lines)


@hierarchy.command()
@_file_option("--resolved", DEFAULT_OUT / "resolved.parquet")
@click.option("--out-dir", type=OUTPUT_DIR_PATH, default=DEFAULT_OUT, show_default=True)
@click.option(
    "--depth",
    type=click.IntRange(0, 100),
    default=None,
    help="Levels of P279 ancestors to fetch [default: 12].",
)
@_json
@_source_options
def graph(source, resolved: Path, out_dir: Path, depth: int | None) -> Output:
    """Fetch P279 ancestors breadth-first; write the class graph (Parquet, GraphML) and its cycles."""
    from hglv2.hierarchy.graph import DEFAULT_DEPTH, graph_file

    summary = graph_file(source, resolved, out_dir, DEFAULT_DEPTH if depth is None else depth)
    lines = [
        f"class graph: {summary['nodes']} classes, {summary['edges']} P279 edges, "
        f"{summary['redirects']} redirects, {len(summary['cycles'])} cycle(s) -> {out_dir}"
    ]
    lines += [
        "  cycle among: " + ", ".join(f"{c['qid']} ({c['label']})" for c in cyc) for cyc in summary["cycles"]
    ]
    return Output(summary, lines)


@hierarchy.command()
@_file_option("--resolved", DEFAULT_OUT / "resolved.parquet")
@click.option(
    "--graph-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True
)
@_file_option("--clusters", Path("data/review/clusters.csv"))
@click.option(
    "--images",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    help="GLDv2 train.csv and/or index_image_to_landmark.csv (count images per landmark, to sort "
    "the review list); repeatable.",
)
@_file_option("--out", DEFAULT_OUT / "proposals.parquet", output=True)
@_file_option("--pending", DEFAULT_OUT / "pending.csv", output=True)
@_json
def propose(
    resolved: Path, graph_dir: Path, clusters: Path, images: tuple[Path, ...], out: Path, pending: Path
) -> Output:
    """Propose supercategory, cluster and top per landmark; write the pending review list."""
    from hglv2.hierarchy.clusters import propose_files

    res = propose_files(resolved, graph_dir, clusters, list(images) or None, out, pending)
    line = (
        f"proposed: {res['status'].get('rule', 0)} by rule, {res['status'].get('pending', 0)} pending "
        f"({res['pending_rows']} review rows) -> {out}, {pending}"
    )
    return Output(res, [line])


def _review_inputs(f):
    for o in reversed(
        [
            _file_option("--proposals", DEFAULT_OUT / "proposals.parquet"),
            _file_option("--clusters", Path("data/review/clusters.csv")),
            _file_option("--decisions", Path("data/review/decisions.csv")),
            _file_option("--overrides", Path("data/review/landmark_overrides.csv")),
        ]
    ):
        f = o(f)
    return f


def _apply(proposals: Path, clusters: Path, decisions: Path, overrides: Path):
    from hglv2.hierarchy.clusters import apply_files

    props, table, warnings = apply_files(proposals, clusters, decisions, overrides)
    for w in warnings:
        click.echo(f"Warning: {w}", err=True)
    return props, table, warnings


def _coverage_lines(cov: dict) -> list[str]:
    lines = [f"coverage over {cov['landmarks']} landmarks ({cov['images']} images):"]
    for col in ("qid", "supercategory", "hierarchical_label", "natural_or_human_made"):
        c = cov[col]
        img = f", {c['image_fraction']:.1%} of images" if "image_fraction" in c else ""
        lines.append(f"  {col:24s} {c['landmarks']:6d}  {c['fraction']:.1%}{img}")
    for n, part in cov.get("by_numbering", {}).items():
        lines.append(
            f"  {n} numbering: {part['landmarks']} landmarks, complete {part['complete']['landmarks']} "
            f"({part['complete']['fraction']:.1%})"
        )
    return lines


@hierarchy.command()
@_review_inputs
@click.option("--top", "n_top", type=int, default=15, show_default=True, help="Pending rows to print.")
@_json
def review(proposals: Path, clusters: Path, decisions: Path, overrides: Path, n_top: int) -> Output:
    """Print what is still pending after the decisions/overrides, and the coverage per level."""
    from hglv2.hierarchy.clusters import coverage, open_groups, proposal_image_counts

    props, table, warnings = _apply(proposals, clusters, decisions, overrides)
    cov = coverage(table, proposal_image_counts(props))
    open_, groups = open_groups(props, table)
    data = {
        "coverage": cov,
        "warnings": warnings,
        "open": groups.astype(object).where(groups.notna(), None).to_dict("records"),
    }
    lines = [f"{len(open_)} landmark(s) without a cluster, in {len(groups)} group(s); largest first:"]
    lines += [
        f"  {r.key:16s} {str(r.label or ''):36.36s} {str(r.reason):28s} "
        f"{r.n_landmarks:4d} lm {r.n_images:6d} img"
        for r in groups.head(n_top).itertuples(index=False)
    ]
    return Output(data, lines + _coverage_lines(cov))


@hierarchy.command("apply")
@_review_inputs
@_file_option("--out", DEFAULT_OUT / "hierarchy.parquet", output=True)
@click.option(
    "--csv",
    "csv_out",
    type=OUTPUT_FILE_PATH,
    default=None,
    help="Also write the table as CSV.",
)
@_json
def apply_cmd(
    proposals: Path, clusters: Path, decisions: Path, overrides: Path, out: Path, csv_out: Path | None
) -> Output:
    """Validate the review CSVs and write the hierarchy table (with provenance)."""
    from hglv2.hierarchy.clusters import coverage, proposal_image_counts
    from hglv2.hierarchy.labels import write_hierarchy_tables

    props, table, warnings = _apply(proposals, clusters, decisions, overrides)
    write_hierarchy_tables(table, out, csv_out)
    cov = coverage(table, proposal_image_counts(props))
    lines = [f"hierarchy table: {len(table)} landmarks -> {out}", *_coverage_lines(cov)]
    return Output({"coverage": cov, "warnings": warnings}, lines)


@hierarchy.command()
@click.argument("a", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("b", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out-csv",
    type=OUTPUT_FILE_PATH,
    default=None,
    help="Write the disagreeing landmarks (one row per landmark and level) here.",
)
@click.option(
    "--seed-decisions",
    type=OUTPUT_FILE_PATH,
    default=None,
    help="Write decisions.csv rows suggested by B: classes where B is unanimous and A disagrees.",
)
@click.option("--confusion-csv", type=OUTPUT_FILE_PATH, default=None)
@_json
def diff(
    a: Path,
    b: tuple[Path, ...],
    out_csv: Path | None,
    seed_decisions: Path | None,
    confusion_csv: Path | None,
) -> Output:
    """Compare hierarchy table A with B (ours: .parquet/.csv; published *_label_to_hierarchical.csv).

    B may be several tables (the published train_ and index_label_to_hierarchical.csv): each
    numbering of A is compared with its own table, and the figures are printed per numbering too.
    """
    from hglv2.hierarchy.labels import diff_files, diff_summary

    res = diff_files(a, b, out_csv=out_csv, seed_decisions_csv=seed_decisions, confusion_csv=confusion_csv)
    return Output(diff_summary(res), _diff_lines(res, a, b))


def _diff_lines(res: dict, a: Path, b: tuple[Path, ...]) -> list[str]:
    from hglv2.gldv2.specs import numbering_of_file
    from hglv2.hierarchy.labels import confusion_pairs

    lines = []
    parts = [("all", res)] + (list(res["by_numbering"].items()) if len(res["by_numbering"]) > 1 else [])
    for name, r in parts:
        lm = r["landmarks"]
        where = "" if name == "all" else f"[{name} numbering] "
        shown = b if name == "all" else [p for p in b if numbering_of_file(p) == name] or b
        lines.append(
            f"{where}A={a} ({lm['a']} landmarks)  B={' '.join(map(str, shown))} ({lm['b']})  common "
            f"{lm['common']}, only in A {lm['only_in_a']}, only in B {lm['only_in_b']}"
        )
        lines.append(
            f"  {'level':24s} {'both':>6s} {'agree':>6s} {'agreement':>9s} {'only A':>7s} {'only B':>7s}"
        )
        for lev, s in r["levels"].items():
            agr = "-" if s["agreement"] is None else f"{s['agreement']:.1%}"
            lines.append(
                f"  {lev:24s} {s['both']:6d} {s['agree']:6d} {agr:>9s} {s['only_a']:7d} {s['only_b']:7d}"
            )
    off = confusion_pairs(res["confusion"])
    if off:
        lines.append("  largest cluster confusions (A -> B: landmarks):")
        lines += [f"    {ra} -> {cb}: {n}" for ra, cb, n in off[:10]]
    return lines


@hierarchy.command("validate-anchors")
@_file_option("--clusters", Path("data/review/clusters.csv"))
@_json
@_source_options
def validate_anchors_cmd(source, clusters: Path) -> Output:
    """Check that every QID in clusters.csv has the English label written beside it."""
    from hglv2.hierarchy.clusters import validate_anchors_file

    res = validate_anchors_file(source, clusters)
    problems = res["problems"]
    if not problems:
        return Output(res, [f"{res['anchors']} anchors match their Wikidata English labels"])
    for p in problems:
        click.echo(
            f"{clusters}:{p['row']}: {p['qid']} {p['problem']}: written {p['written']!r}, "
            f"Wikidata {p['wikidata']!r}",
            err=True,
        )
    message = f"{clusters}: {len(problems)} of {res['anchors']} anchor(s) do not match Wikidata"
    return Output(res, error=message)
