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

from hglv2.cli._options import HTTP_URL, OUTPUT_DIR_PATH, OUTPUT_FILE_PATH
from hglv2.errors import InputError

DEFAULT_OUT = Path("out/hierarchy")


def _client_options(f):
    opts = [
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
            "--max-retries",
            type=click.IntRange(0, 100),
            default=8,
            show_default=True,
            help="Retries of a failing request (0: try once).",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _file_option(name: str, default: Path, output: bool = False, **kwargs: Any):
    """A ``--name FILE`` option (a Path) whose default is shown in --help; ``output``: checked for
    writability when the command line is parsed."""
    kind = OUTPUT_FILE_PATH if output else click.Path(dir_okay=False, path_type=Path)
    return click.option(name, type=kind, default=default, show_default=True, **kwargs)


def _json_option(f):
    return click.option(
        "--json",
        "json_path",
        type=OUTPUT_FILE_PATH,
        default=None,
        help="Also write the results as JSON here.",
    )(f)


def _check_client_options(cache_path: Path, offline: bool) -> None:
    if not offline and cache_path.suffix == ".jsonl":
        raise InputError(f"{cache_path}: a .jsonl recording is read-only; use it with --offline")
    if offline and not cache_path.exists():
        raise InputError(f"{cache_path}: no such cache (needed with --offline)")
    if not offline:
        from hglv2.cli._options import output_problem

        problem = output_problem(cache_path)
        if problem:
            raise InputError(f"--cache: {problem}")


def _make_client(
    cache_path: Path,
    offline: bool,
    api_url: str | None,
    sparql_url: str | None,
    contact: str | None,
    timeout: float,
    max_retries: int,
):
    from hglv2.hierarchy.wikidata import DEFAULT_API_URL, DEFAULT_SPARQL_URL, ResponseCache, WikidataClient

    _check_client_options(cache_path, offline)
    return WikidataClient(
        ResponseCache(cache_path),
        api_url=api_url or DEFAULT_API_URL,
        sparql_url=sparql_url or DEFAULT_SPARQL_URL,
        offline=offline,
        contact=contact,
        timeout=timeout,
        max_retries=max_retries,
    )


class _LazyClient:
    """The Wikidata client, made on first use: a command whose inputs are bad stops before the
    response cache (a file) is created."""

    def __init__(self, make) -> None:
        self._make = make
        self._client = None

    def __getattr__(self, name: str):
        if self._client is None:
            self._client = self._make()
        return getattr(self._client, name)

    def close(self) -> None:
        if self._client is not None:
            self._client.cache.close()


def _with_client(f):
    @_client_options
    @functools.wraps(f)
    def wrapper(cache_path, offline, api_url, sparql_url, contact, timeout, max_retries, **kw):
        if kw.get("dump") is not None:  # the dump route: the command builds its own client
            return f(client=None, **kw)
        args = (cache_path, offline, api_url, sparql_url, contact, timeout, max_retries)
        _check_client_options(*args[:2])  # fail before any work
        client = _LazyClient(functools.partial(_make_client, *args))
        try:
            return f(client=client, **kw)
        finally:
            client.close()

    return wrapper


_STAGE_COLUMNS = {  # stage -> (module, constant naming the columns of its Parquet output)
    "resolve": ("hglv2.hierarchy.resolve", "RESOLVED_REQUIRED"),
    "propose": ("hglv2.hierarchy.clusters", "PROPOSAL_REQUIRED"),
}


def _read_stage_output(path: Path, stage: str):
    """The Parquet output of an earlier stage, checked (file, format, columns) -> pyarrow Table."""
    import importlib

    from hglv2.fileio import read_parquet_checked

    module, name = _STAGE_COLUMNS[stage]
    columns = getattr(importlib.import_module(module), name)
    return read_parquet_checked(path, columns, f"run `hglv2 hierarchy {stage}` first")


def _dump_options(f):
    """``--dump`` (answer from a Wikidata JSON dump instead of the API) and ``--redirects``."""
    f = click.option(
        "--redirects",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        default=None,
        help="With --dump: old,new QID pairs (the JSON dump holds no redirects).",
    )(f)
    return click.option(
        "--dump",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        default=None,
        help="Answer from a Wikidata JSON dump (latest-all.json.bz2|.gz) instead of the API; "
        "the cache and network options are then unused.",
    )(f)


def _require_stage_output(path: Path, stage: str) -> None:
    """Stop with an Error line when the output of an earlier stage is missing."""
    if not path.exists():
        raise InputError(f"{path}: no such file (run `hglv2 hierarchy {stage}` first)")


def _write_json(path: Path | None, obj: Any) -> None:
    if path is not None:
        from hglv2.fileio import write_json

        write_json(path, obj)


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
@_json_option
@_dump_options
@_with_client
def resolve(
    client,
    categories: tuple[str, ...],
    out: Path,
    json_path: Path | None,
    dump: Path | None,
    redirects: Path | None,
) -> None:
    """Commons category URL of each landmark -> Wikidata item (QID, P31, label, revision)."""
    from hglv2.hierarchy.resolve import category_files, read_categories, resolve_file

    if dump is not None:
        from hglv2.hierarchy.dump import client_for_resolve

        pairs = [pair for p in category_files(categories).values() for pair in read_categories(p)]
        client = client_for_resolve(dump, pairs, redirects)
    res = resolve_file(client, categories, out)
    if dump is not None:
        res["source"] = client.index.provenance()
    _write_json(json_path, res)  # files first: a closed stdout (| head) must not lose them
    click.echo(f"resolved {res['resolved']}/{res['landmarks']} landmarks -> {out}")
    for k, v in res["resolution"].items():
        click.echo(f"  {k:40s} {v}")
    for n, part in res["by_numbering"].items():
        click.echo(f"  {n} numbering: resolved {part['resolved']}/{part['landmarks']}")


@hierarchy.command()
@_file_option("--resolved", DEFAULT_OUT / "resolved.parquet")
@click.option("--out-dir", type=OUTPUT_DIR_PATH, default=DEFAULT_OUT, show_default=True)
@click.option(
    "--depth",
    type=click.IntRange(0, 100),
    default=None,
    help="Levels of P279 ancestors to fetch [default: 12].",
)
@_json_option
@_dump_options
@_with_client
def graph(
    client,
    resolved: Path,
    out_dir: Path,
    depth: int | None,
    json_path: Path | None,
    dump: Path | None,
    redirects: Path | None,
) -> None:
    """Fetch P279 ancestors breadth-first; write the class graph (Parquet, GraphML) and its cycles."""
    from hglv2.hierarchy.graph import DEFAULT_DEPTH, fetch_graph, write_graph

    rows = _read_stage_output(resolved, "resolve").to_pylist()
    if dump is not None:
        from hglv2.hierarchy.dump import client_for_graph

        client = client_for_graph(dump, rows, redirects)
    summary = write_graph(fetch_graph(client, rows, DEFAULT_DEPTH if depth is None else depth), out_dir)
    summary["requests"] = dict(sorted(client.stats.items()))
    if dump is not None:
        summary["source"] = client.index.provenance()
    _write_json(json_path, summary)
    click.echo(
        f"class graph: {summary['nodes']} classes, {summary['edges']} P279 edges, "
        f"{summary['redirects']} redirects, {len(summary['cycles'])} cycle(s) -> {out_dir}"
    )
    for cyc in summary["cycles"]:
        click.echo("  cycle among: " + ", ".join(f"{c['qid']} ({c['label']})" for c in cyc))


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
@_json_option
def propose(
    resolved: Path,
    graph_dir: Path,
    clusters: Path,
    images: tuple[Path, ...],
    out: Path,
    pending: Path,
    json_path: Path | None,
) -> None:
    """Propose supercategory, cluster and top per landmark; write the pending review list."""
    from hglv2.hierarchy.clusters import propose_files

    _require_stage_output(resolved, "resolve")
    res = propose_files(resolved, graph_dir, clusters, list(images) or None, out, pending)
    _write_json(json_path, res)
    click.echo(
        f"proposed: {res['status'].get('rule', 0)} by rule, {res['status'].get('pending', 0)} pending "
        f"({res['pending_rows']} review rows) -> {out}, {pending}"
    )


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

    _require_stage_output(proposals, "propose")
    props, table, warnings = apply_files(proposals, clusters, decisions, overrides)
    for w in warnings:
        click.echo(f"Warning: {w}", err=True)
    return props, table, warnings


def _print_coverage(cov: dict) -> None:
    click.echo(f"coverage over {cov['landmarks']} landmarks ({cov['images']} images):")
    for col in ("qid", "supercategory", "hierarchical_label", "natural_or_human_made"):
        c = cov[col]
        img = f", {c['image_fraction']:.1%} of images" if "image_fraction" in c else ""
        click.echo(f"  {col:24s} {c['landmarks']:6d}  {c['fraction']:.1%}{img}")
    for n, part in cov.get("by_numbering", {}).items():
        click.echo(
            f"  {n} numbering: {part['landmarks']} landmarks, complete {part['complete']['landmarks']} "
            f"({part['complete']['fraction']:.1%})"
        )


@hierarchy.command()
@_review_inputs
@click.option("--top", "n_top", type=int, default=15, show_default=True, help="Pending rows to print.")
@_json_option
def review(
    proposals: Path, clusters: Path, decisions: Path, overrides: Path, n_top: int, json_path: Path | None
) -> None:
    """Print what is still pending after the decisions/overrides, and the coverage per level."""
    from hglv2.hierarchy.clusters import coverage, open_groups, proposal_image_counts

    props, table, warnings = _apply(proposals, clusters, decisions, overrides)
    cov = coverage(table, proposal_image_counts(props))
    open_, groups = open_groups(props, table)
    _write_json(
        json_path,
        {
            "coverage": cov,
            "warnings": warnings,
            "open": groups.astype(object).where(groups.notna(), None).to_dict("records"),
        },
    )
    click.echo(f"{len(open_)} landmark(s) without a cluster, in {len(groups)} group(s); largest first:")
    for r in groups.head(n_top).itertuples(index=False):
        click.echo(
            f"  {r.key:16s} {str(r.label or ''):36.36s} {str(r.reason):28s} "
            f"{r.n_landmarks:4d} lm {r.n_images:6d} img"
        )
    _print_coverage(cov)


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
@_json_option
def apply_cmd(
    proposals: Path,
    clusters: Path,
    decisions: Path,
    overrides: Path,
    out: Path,
    csv_out: Path | None,
    json_path: Path | None,
) -> None:
    """Validate the review CSVs and write the hierarchy table (with provenance)."""
    from hglv2.fileio import commit_together
    from hglv2.hierarchy.clusters import coverage, proposal_image_counts
    from hglv2.hierarchy.labels import write_hierarchy_table

    props, table, warnings = _apply(proposals, clusters, decisions, overrides)
    with commit_together():  # the table and its CSV copy: both new or both old
        write_hierarchy_table(table, out)
        if csv_out is not None:
            write_hierarchy_table(table, csv_out)
    cov = coverage(table, proposal_image_counts(props))
    _write_json(json_path, {"coverage": cov, "warnings": warnings})
    click.echo(f"hierarchy table: {len(table)} landmarks -> {out}")
    _print_coverage(cov)


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
@_json_option
def diff(
    a: Path,
    b: tuple[Path, ...],
    out_csv: Path | None,
    seed_decisions: Path | None,
    confusion_csv: Path | None,
    json_path: Path | None,
) -> None:
    """Compare hierarchy table A with B (ours: .parquet/.csv; published *_label_to_hierarchical.csv).

    B may be several tables (the published train_ and index_label_to_hierarchical.csv): each
    numbering of A is compared with its own table, and the figures are printed per numbering too.
    """
    from hglv2.gldv2.specs import numbering_of_file
    from hglv2.hierarchy.labels import confusion_pairs, diff_files, diff_summary

    res = diff_files(a, b, out_csv=out_csv, seed_decisions_csv=seed_decisions, confusion_csv=confusion_csv)
    _write_json(json_path, diff_summary(res))  # files first: a closed stdout (| head) must not lose them
    parts = [("all", res)] + (list(res["by_numbering"].items()) if len(res["by_numbering"]) > 1 else [])
    for name, r in parts:
        lm = r["landmarks"]
        where = "" if name == "all" else f"[{name} numbering] "
        shown = b if name == "all" else [p for p in b if numbering_of_file(p) == name] or b
        click.echo(
            f"{where}A={a} ({lm['a']} landmarks)  B={' '.join(map(str, shown))} ({lm['b']})  common "
            f"{lm['common']}, only in A {lm['only_in_a']}, only in B {lm['only_in_b']}"
        )
        click.echo(
            f"  {'level':24s} {'both':>6s} {'agree':>6s} {'agreement':>9s} {'only A':>7s} {'only B':>7s}"
        )
        for lev, s in r["levels"].items():
            agr = "-" if s["agreement"] is None else f"{s['agreement']:.1%}"
            click.echo(
                f"  {lev:24s} {s['both']:6d} {s['agree']:6d} {agr:>9s} {s['only_a']:7d} {s['only_b']:7d}"
            )
    off = confusion_pairs(res["confusion"])
    if off:
        click.echo("  largest cluster confusions (A -> B: landmarks):")
        for ra, cb, n in off[:10]:
            click.echo(f"    {ra} -> {cb}: {n}")


@hierarchy.command("validate-anchors")
@_file_option("--clusters", Path("data/review/clusters.csv"))
@_json_option
@_dump_options
@_with_client
def validate_anchors_cmd(
    client, clusters: Path, json_path: Path | None, dump: Path | None, redirects: Path | None
) -> None:
    """Check that every QID in clusters.csv has the English label written beside it."""
    from hglv2.hierarchy.clusters import load_clusters, validate_anchors

    table = load_clusters(clusters)
    if dump is not None:
        from hglv2.hierarchy.dump import client_for_ids

        client = client_for_ids(dump, [a.qid for a in table.anchors], redirects)
    problems = validate_anchors(client, table)
    _write_json(json_path, {"anchors": len(table.anchors), "problems": problems})
    for p in problems:
        click.echo(
            f"{clusters}:{p['row']}: {p['qid']} {p['problem']}: written {p['written']!r}, "
            f"Wikidata {p['wikidata']!r}",
            err=True,
        )
    if problems:
        n = len(table.anchors)
        raise InputError(f"{clusters}: {len(problems)} of {n} anchor(s) do not match Wikidata")
    click.echo(f"{len(table.anchors)} anchors match their Wikidata English labels")
