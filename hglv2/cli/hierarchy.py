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


def _existing(name: str, *, help: str, folder: bool = False, multiple: bool = False):
    """An optional ``--name`` option naming an existing file (or, with ``folder``, a folder)."""
    kind = click.Path(dir_okay=folder, file_okay=not folder, exists=True, path_type=Path)
    return click.option(name, type=kind, default=() if multiple else None, multiple=multiple, help=help)


# The options of a Wikidata source, in --help order: the dump route, then the API with its cache.
_SOURCE_OPTIONS = [
    _existing(
        "--dump",
        help="Answer from a Wikidata JSON dump (latest-all.json.bz2|.gz) instead of the API; "
        "the cache and network options are then unused.",
    ),
    _existing(
        "--redirects",
        help="With --dump: old,new QID pairs, or the redirect table dump "
        "(wikidatawiki-*-redirect.sql.gz or .tsv, the page table dump beside it).",
    ),
    click.option(
        "--dump-facts",
        type=OUTPUT_FILE_PATH,
        default=None,
        help="With --dump: the dump's facts table (read once, reused by later stages) "
        "[default: DUMP.facts.parquet].",
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


def _source_options(f):
    """The options of a Wikidata source (:func:`hglv2.hierarchy.sources.open_source`): the API with
    its cache, or ``--dump`` (with ``--redirects``); the command gets ``source``, opened and closed."""

    @functools.wraps(f)
    def wrapper(dump, redirects, dump_facts, cache_path, **kw):
        from hglv2.hierarchy.sources import open_source

        api = {k: kw.pop(k) for k in ("offline", "api_url", "sparql_url", "contact", "timeout", "max_tries")}
        with open_source(
            dump=dump, redirects=redirects, dump_facts=dump_facts, cache_path=cache_path, **api
        ) as source:
            if dump is None and not api["offline"]:
                problem = output_problem(cache_path)
                if problem:
                    raise InputError(f"--cache: {problem}")
            return f(source=source, **kw)

    for o in reversed(_SOURCE_OPTIONS):
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
    """The hierarchy pipeline: resolve, graph, propose, vote, review, apply, diff, report,
    validate-anchors."""


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
@click.option(
    "--votes",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Votes of `hglv2 hierarchy vote`: accepted ones fill the clusters still open (provenance vote).",
)
@click.option(
    "--vote-decisions",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A reviewer's accept/reject per vote (numbering,landmark_id,cluster,decision,reason).",
)
@click.option(
    "--align",
    type=click.Choice(["index-to-query", "query-to-index"]),
    default=None,
    help="Make the two ids of a place agree: index-to-query (the authors' rule: the index landmark "
    "takes its queries' train landmark labels) or query-to-index.",
)
@click.option(
    "--metadata",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="GLDv2 metadata folder whose solution files link the numberings (for --align).",
)
@_json
def apply_cmd(
    proposals: Path,
    clusters: Path,
    decisions: Path,
    overrides: Path,
    out: Path,
    csv_out: Path | None,
    votes: Path | None,
    vote_decisions: Path | None,
    align: str | None,
    metadata: Path | None,
) -> Output:
    """Validate the review CSVs and write the hierarchy table (with provenance)."""
    from hglv2.hierarchy.clusters import coverage, proposal_image_counts
    from hglv2.hierarchy.labels import write_hierarchy_tables

    if vote_decisions is not None and votes is None:
        raise InputError("--vote-decisions needs --votes (the votes they decide on)")
    if align is not None and metadata is None:
        raise InputError("--align needs --metadata DIR (its solution files link the numberings)")
    props, table, warnings = _apply(proposals, clusters, decisions, overrides)
    counts = proposal_image_counts(props)
    data: dict[str, Any] = {}
    extra: list[str] = []
    if votes is not None:
        from hglv2.hierarchy.vote import apply_vote_files

        data["coverage_before_votes"] = coverage(table, counts)
        table, data["votes"], vote_warnings = apply_vote_files(table, votes, vote_decisions)
        for w in vote_warnings:
            click.echo(f"Warning: {w}", err=True)
        warnings = warnings + vote_warnings
        extra += _vote_apply_lines(data["votes"], data["coverage_before_votes"])
    if align is not None:
        from hglv2.hierarchy.consistency import align_files

        table, data["align"] = align_files(table, metadata, align)
        a = data["align"]
        extra.append(
            f"align {align}: {a['changed']} landmark(s) changed, {a['unchanged']} unchanged, "
            f"{a['ambiguous']} ambiguous (linked to places that disagree)"
        )
    write_hierarchy_tables(table, out, csv_out)
    cov = coverage(table, counts)
    lines = [f"hierarchy table: {len(table)} landmarks -> {out}", *extra, *_coverage_lines(cov)]
    return Output({"coverage": cov, "warnings": warnings, **data}, lines)


def _vote_apply_lines(v: dict, before: dict) -> list[str]:
    complete = ", ".join(
        f"{n} {p['complete']['landmarks']}/{p['landmarks']} ({p['complete']['fraction']:.1%})"
        for n, p in before.get("by_numbering", {}).items()
    )
    return [
        f"votes: {v['votes']} ({v['moot']} moot: labelled by a review), accepted {v['accepted']} "
        f"({v['auto_accepted']} automatically), rejected {v['rejected']}, pending {v['pending']}; "
        f"{v['applied']} label(s) set by votes",
        f"  complete before votes: {complete}",
    ]


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
@click.option(
    "--metadata",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="GLDv2 metadata folder: also compare A's two numberings of each place the queries link.",
)
@_json
def diff(
    a: Path,
    b: tuple[Path, ...],
    out_csv: Path | None,
    seed_decisions: Path | None,
    confusion_csv: Path | None,
    metadata: Path | None,
) -> Output:
    """Compare hierarchy table A with B (ours: .parquet/.csv; published *_label_to_hierarchical.csv).

    B may be several tables (the published train_ and index_label_to_hierarchical.csv): each
    numbering of A is compared with its own table, and the figures are printed per numbering too.
    """
    from hglv2.hierarchy.labels import diff_files, diff_summary

    res = diff_files(a, b, out_csv=out_csv, seed_decisions_csv=seed_decisions, confusion_csv=confusion_csv)
    data, lines = diff_summary(res), _diff_lines(res, a, b)
    if metadata is not None:
        from hglv2.hierarchy.consistency import consistency_files, summary_lines
        from hglv2.hierarchy.labels import load_hierarchy_table

        found = consistency_files(load_hierarchy_table(a), metadata)
        data["numberings"] = None if found is None else found[1]
        lines += (
            ["cross-numbering: skipped (no solution files in --metadata)"]
            if found is None
            else summary_lines(found[1])
        )
    return Output(data, lines)


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


def _vote_lines(res: dict, out: Path, review_csv: Path | None) -> list[str]:
    emb = res["embedding"]
    rate = "-" if emb["images_per_s"] is None else f"{emb['images_per_s']:.1f}"
    st = res["status"]
    share = res["share"]
    lines = [
        f"vote: {res['votes']} of {res['open_landmarks']} landmarks without a cluster voted "
        f"({', '.join(f'{n} {c}' for n, c in res['open_by_numbering'].items())} open) from "
        f"{res['images']} image votes -> {out}",
        f"  embedded {emb['images'] - emb['skipped']} images ({emb['skipped']} skipped, "
        f"{emb['shards_cached']}/{emb['shards']} shards from the cache) at {rate} images/s; "
        f"{res['prompts']} prompts for {res['clusters_prompted']} clusters",
    ]
    if share is not None:
        lines.append(
            f"  share of the winning cluster: mean {share['mean']:.2f}, median {share['median']:.2f}, "
            f"min {share['min']:.2f}"
        )
    if res["accept_above"] is not None:
        lines.append(f"  accepted automatically (share >= {res['accept_above']:g}): {st['accepted']}")
    lines.append(
        f"  pending review: {st['pending']}" + (f" (rows to decide: {review_csv})" if review_csv else "")
    )
    return lines


@hierarchy.command()
@_file_option("--proposals", DEFAULT_OUT / "proposals.parquet")
@_file_option("--clusters", Path("data/review/clusters.csv"))
@click.option(
    "--metadata",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="GLDv2 metadata folder: train.csv and index_image_to_landmark.csv list each landmark's "
    "images; with the solution files, query images vote for their landmarks too.",
)
@click.option(
    "--images",
    "roots",
    type=click.Path(exists=True, path_type=Path),
    multiple=True,
    required=True,
    help="A folder of tar shards (official, or prepared by `hglv2 images prepare`) or an image folder "
    "(a/b/c/<id>.jpg); repeatable.",
)
@_file_option("--out", DEFAULT_OUT / "votes.parquet", output=True)
@_file_option("--review-csv", DEFAULT_OUT / "votes_review.csv", output=True)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT / "vote_cache",
    show_default=True,
    help="Image features per shard (a rerun embeds only the shards not done).",
)
@click.option("--model", default=None, help="open_clip architecture [default: ViT-L-14].")
@click.option("--pretrained", default=None, help="open_clip pretrained tag [default: laion2b_s32b_b82k].")
@click.option(
    "--model-config",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Register an open_clip model config (JSON); the model takes the file's name.",
)
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Model weights file [default: the pretrained tag in open_clip's cache].",
)
@click.option("--download", is_flag=True, help="Download the pretrained weights if they are not cached.")
@click.option(
    "--random-weights",
    type=int,
    default=None,
    metavar="SEED",
    help="Untrained weights from SEED (tests and demos only: such votes mean nothing).",
)
@click.option(
    "--prompt", default=None, help="Text prompt; {} is the supercategory [default: 'A picture of a {}']."
)
@click.option("--method", type=click.Choice(["argmax", "knn"]), default="argmax", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N (AMP on CUDA).")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option(
    "--workers", type=click.IntRange(0), default=0, show_default=True, help="Image-decoding processes."
)
@click.option(
    "--accept-above",
    type=click.FloatRange(0, 1),
    default=None,
    metavar="SHARE",
    help="Accept votes whose winning share reaches SHARE (with a strict majority) without review.",
)
@_json
def vote(
    proposals: Path,
    clusters: Path,
    metadata: Path,
    roots: tuple[Path, ...],
    out: Path,
    review_csv: Path,
    cache_dir: Path,
    model: str | None,
    pretrained: str | None,
    model_config: Path | None,
    weights: Path | None,
    download: bool,
    random_weights: int | None,
    prompt: str | None,
    method: str,
    device: str,
    batch_size: int,
    workers: int,
    accept_above: float | None,
) -> Output:
    """Propose clusters for the landmarks still without one: an open_clip image model votes.

    Each image of such a landmark takes the cluster of the most similar prompt "A picture of a
    {supercategory}" (the clustered supercategory names); the landmark takes the majority. Votes
    are proposals: accept or reject them in data/review/vote_decisions.csv (apply --votes).
    """
    from hglv2.evaluation.zeroshot import (
        DEFAULT_MODEL,
        DEFAULT_PRETRAINED,
        ModelSettings,
        register_config,
        vote_features,
    )
    from hglv2.hierarchy.vote import PROMPT, finish_vote, plan_vote

    if prompt is not None and "{}" not in prompt:
        raise click.BadParameter(f"{prompt!r} has no {{}} for the supercategory", param_hint="--prompt")
    if model_config is not None:
        model = model or register_config(model_config)
    settings = ModelSettings(
        model=model or DEFAULT_MODEL,
        pretrained=pretrained or DEFAULT_PRETRAINED,
        weights=None if weights is None else str(weights),
        download=download,
        random_seed=random_weights,
        device=device,
        batch_size=batch_size,
        workers=workers,
    )
    plan = plan_vote(proposals, clusters, metadata)
    feats = vote_features(plan.prompts.texts(prompt or PROMPT), plan.image_ids, roots, cache_dir, settings)
    res = finish_vote(plan, feats.ids, feats.images, feats.text, out, review_csv, method=method,
                      accept_above=accept_above)  # fmt: skip
    res.update(embedding=feats.counts, model={**feats.model, "prompt": prompt or PROMPT})
    return Output(res, _vote_lines(res, out, review_csv))


@hierarchy.command()
@_file_option("--hierarchy", DEFAULT_OUT / "hierarchy.parquet")
@_existing("--proposals", help="The proposals table (image counts per landmark).")
@_existing("--votes", help="The votes table of `hglv2 hierarchy vote`.")
@_existing(
    "--published",
    multiple=True,
    help="Published *_label_to_hierarchical.csv to show disagreements with; repeatable.",
)
@_existing(
    "--metadata",
    folder=True,
    help="GLDv2 metadata folder: the cross-numbering check, and each landmark's images (thumbnails).",
)
@click.option(
    "--images",
    "roots",
    type=click.Path(exists=True, path_type=Path),
    multiple=True,
    help="Tar shards or an image folder for thumbnails (with --metadata); repeatable.",
)
@_file_option("--out", Path("review.html"), output=True)
@_json
def report(
    hierarchy: Path,
    proposals: Path | None,
    votes: Path | None,
    published: tuple[Path, ...],
    metadata: Path | None,
    roots: tuple[Path, ...],
    out: Path,
) -> Output:
    """Write the review page: one self-contained HTML file (top level -> clusters ->
    supercategories -> landmarks, with counts, provenance, disagreements and thumbnails)."""
    from hglv2.hierarchy.report import report_files, write_report

    load = None
    if roots:
        from hglv2.evaluation.zeroshot import read_images

        load = functools.partial(read_images, roots=list(roots))
    page, res = report_files(
        hierarchy, proposals=proposals, votes=votes, published=published, metadata=metadata, load_images=load
    )
    write_report(out, page)
    t = res["total"]
    line = (
        f"review page: {t['landmarks']} landmarks, {t['images']} images, {t['review']} to review, "
        f"{res['thumbnails']} thumbnails -> {out}"
    )
    return Output(res, [line])


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
