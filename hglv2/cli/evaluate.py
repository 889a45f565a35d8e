"""``hglv2 evaluate``: retrieval metrics from embedding/label files, GLDv2 submission files, or an
embedded example.

* ``hglv2 evaluate -e emb.npy -l labels.npy [--gallery-embeddings G.npy --gallery-labels GL.npy]``
  (without a gallery the query set is the gallery and each query is excluded from its own
  ranking). Embeddings: ``.npy`` (N, D) float or Parquet with an ``embedding`` list column.
  Labels: ``.npy`` (N,) or (N, L) int, or Parquet with ``level0, level1, ...`` columns (or
  ``--label-columns``; nulls = unknown). A Parquet embeddings file may hold the labels too.
* ``hglv2 evaluate --solution retrieval_solution_v2.1.csv --submission sub.csv``: official GLDv2
  mAP@100 (retrieval) or GAP (recognition), Public and Private.
* ``hglv2 evaluate --example``: a small deterministic hierarchical case, two embedding models.
* ``hglv2 evaluate --checkpoint RUN_OR_FILE --data DIR [--query S --gallery S]``, ``--protocol
  roxford5k|rparis6k`` and ``--landmark-table``: a trained model (:mod:`hglv2.cli._checkpoint`).

Every mode prints a table; ``--json PATH`` also writes the numbers (NaN -> null).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
import numpy as np

from hglv2.cli._checkpoint import checkpoint_options, run_checkpoint
from hglv2.cli._options import Output, json_option
from hglv2.errors import InputError
from hglv2.metrics.io import RetrievalFiles, load_retrieval_files

EXAMPLE_SHAPE = (2, 4, 5, 6)  # top classes x clusters x landmarks x images per landmark
MAX_K = 10**9  # --recall-at values above any gallery size


# ------------------------------------------------------------------------------------------------
# the embedded example
# ------------------------------------------------------------------------------------------------
def example_case(seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A deterministic 3-level toy hierarchy (2 x 4 x 5 landmarks, 6 images each) and two embedding
    models: ``hierarchical`` (coarse classes are close in embedding space) and ``flat`` (only the
    landmark is encoded). Returns labels (240, 3) and {model: (240, 16) unit-norm embeddings}."""
    n_top, n_clu, n_lm, n_img = EXAMPLE_SHAPE
    rng = np.random.default_rng(seed)
    dim = 16
    top = rng.normal(size=(n_top, dim))
    clu = rng.normal(size=(n_top, n_clu, dim))
    lm = rng.normal(size=(n_top, n_clu, n_lm, dim))
    labels, hier, flat = [], [], []
    noise = rng.normal(size=(n_top * n_clu * n_lm * n_img, dim))
    i = 0
    for t in range(n_top):
        for c in range(n_clu):
            for m in range(n_lm):
                for _ in range(n_img):
                    landmark = (t * n_clu + c) * n_lm + m
                    labels.append((landmark, t * n_clu + c, t))
                    hier.append(1.2 * top[t] + 1.0 * clu[t, c] + 0.9 * lm[t, c, m] + 0.8 * noise[i])
                    flat.append(1.6 * lm[t, c, m] + 0.8 * noise[i])
                    i += 1
    models = {}
    for name, e in (("hierarchical", np.array(hier)), ("flat", np.array(flat))):
        models[name] = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
    return np.array(labels, dtype=np.int64), models


# ------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "   nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def format_table(res: dict[str, Any], n_levels: int, recall_at: tuple[int, ...]) -> str:
    """The per-level metric table and the hierarchical metrics, as text."""
    rows = ["AP", "mAP@R", "mAP@100"] + [f"R@{k}" for k in recall_at] + [f"P@{k}" for k in recall_at]
    rows = [name for name in rows if f"{name}_level0" in res]  # top-k mode reports a subset
    width = 10
    head = "metric".ljust(12) + "".join(f"level{lev}".rjust(width) for lev in range(n_levels))
    lines = [head, "-" * len(head)]
    for name in rows:
        lines.append(
            name.ljust(12) + "".join(_fmt(res[f"{name}_level{lev}"]).rjust(width) for lev in range(n_levels))
        )
    lines.append(
        "queries".ljust(12)
        + "".join(str(res[f"n_queries_level{lev}"]).rjust(width) for lev in range(n_levels))
    )
    lines.append(
        "skipped".ljust(12)
        + "".join(str(res[f"n_skipped_level{lev}"]).rjust(width) for lev in range(n_levels))
    )
    if "top_k" in res:
        lines.append(
            "truncated".ljust(12)
            + "".join(str(res[f"n_truncated_level{lev}"]).rjust(width) for lev in range(n_levels))
        )
        lines.append(
            f"top-k mode (k = {res['top_k']}): mAP@R leaves out the 'truncated' queries (R > k); "
            "AP, H-AP, NDCG, ASI need the full ranking"
        )
        return "\n".join(lines)
    multi = "   ".join(
        f"{k} {_fmt(res[k])}" for k in res if k in ("H-AP", "NDCG", "ASI") or k.startswith("NDCG@")
    )
    lines.append("")
    lines.append(f"{multi}   (queries {res['n_queries_multilevel']}, skipped {res['n_skipped_multilevel']})")
    return "\n".join(lines)


def format_gldv2(res: dict[str, Any]) -> str:
    lines = [
        f"GLDv2 {res['task']}: {res['n_public']} Public, {res['n_private']} Private, "
        f"{res['n_ignored']} Ignored queries"
    ]
    keys = list(res["public"])
    lines.append("metric".ljust(16) + "Public".rjust(10) + "Private".rjust(10))
    for k in keys:
        lines.append(k.ljust(16) + _fmt(res["public"][k]).rjust(10) + _fmt(res["private"][k]).rjust(10))
    return "\n".join(lines)


def _parse_ks(text: str) -> tuple[int, ...]:
    from hglv2.cli._options import parse_int_list

    return tuple(parse_int_list(text, "--recall-at", minimum=1, maximum=MAX_K))


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------
@click.command("evaluate")
@checkpoint_options
@click.option(
    "-e", "--embeddings", type=click.Path(path_type=Path), help="Query embeddings (.npy or Parquet)."
)
@click.option("-l", "--labels", type=click.Path(path_type=Path), help="Query labels (.npy or Parquet).")
@click.option(
    "--gallery-embeddings", type=click.Path(path_type=Path), help="Gallery embeddings (default: queries)."
)
@click.option("--gallery-labels", type=click.Path(path_type=Path), help="Gallery labels.")
@click.option("--label-columns", help="Comma-separated Parquet label columns, finest first.")
@click.option(
    "--recall-at",
    default="1,10,100",
    show_default=True,
    help="k values for R@k and P@k (with --checkpoint, default: the run's train.recall_at).",
)
@click.option(
    "--relevance", type=click.Choice(["pop", "map"]), default="pop", show_default=True, help="H-AP relevance."
)
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Level weight exponent.")
@click.option(
    "--hap-convention",
    type=click.Choice(["hglv2", "reference"]),
    default="hglv2",
    show_default=True,
    help="reference: the SupRank authors' evaluation (H-AP counts the query itself; queries without "
    "positives score 0). See hglv2.metrics.conventions.",
)
@click.option("--ndcg-at", type=click.IntRange(min=1), help="Also report NDCG@k.")
@click.option(
    "--normalize/--no-normalize",
    default=False,
    show_default=True,
    help="L2-normalise embeddings (cosine similarity).",
)
@click.option(
    "--memory-mb", type=click.IntRange(min=1), default=1024, show_default=True, help="Working-memory budget."
)
@click.option(
    "--top-k",
    type=click.IntRange(min=1),
    help="Top-k mode: rank only the first K items per query (k-NN) and report R@k, P@k (k <= K), "
    "mAP@100 (K >= 100) and mAP@R (NaN where R > K, counted as 'truncated'); no AP, H-AP, NDCG, ASI.",
)
@click.option(
    "--device",
    help="Run the matmul and the ranking on this torch device (e.g. cuda, cuda:1; default: the CPU engine).",
)
@click.option("--solution", type=click.Path(path_type=Path), help="GLDv2 solution CSV.")
@click.option("--submission", type=click.Path(path_type=Path), help="GLDv2 submission CSV.")
@click.option("--task", type=click.Choice(["retrieval", "recognition"]), help="GLDv2 task (default: detect).")
@click.option("--example", is_flag=True, help="Evaluate the embedded example case.")
@json_option(help="Write the results as JSON.", announce=True)
def evaluate(
    embeddings,
    labels,
    gallery_embeddings,
    gallery_labels,
    label_columns,
    recall_at,
    relevance,
    alpha,
    hap_convention,
    ndcg_at,
    normalize,
    memory_mb,
    top_k,
    device,
    solution,
    submission,
    task,
    example,
    **checkpoint,
) -> Output:
    """Compute retrieval metrics (AP, mAP@R, mAP@100, R@k, P@k per level; H-AP, NDCG, ASI)."""
    modes = [
        checkpoint["checkpoint"] is not None or checkpoint["landmark_table"],
        example,
        solution is not None or submission is not None,
        embeddings is not None or labels is not None,
    ]
    if sum(modes) != 1:
        raise InputError(
            "give exactly one of: --embeddings/--labels, --solution/--submission, --example, --checkpoint"
        )
    ks = _parse_ks(recall_at)
    columns = [c.strip() for c in label_columns.split(",")] if label_columns else None
    options = {"recall_at": ks, "relevance": relevance, "alpha": alpha, "ndcg_at": ndcg_at}
    if modes[0]:
        out, lines = _checkpoint_mode(checkpoint, options, hap_convention)
    elif example:
        out, lines = _example_mode(options, hap_convention, top_k=top_k, device=device)
    elif modes[2]:
        out, lines = _gldv2_mode(solution, submission, task)
    else:
        if embeddings is None:
            raise InputError("--labels needs --embeddings")
        files = load_retrieval_files(
            embeddings, labels, gallery_embeddings, gallery_labels, columns, normalize
        )
        options.update(memory_mb=memory_mb, top_k=top_k, device=device)
        out, lines = _files_mode(files, embeddings, gallery_embeddings, options, hap_convention, normalize)
    return Output(data=out, lines=lines)


def _metrics(*args: Any, hap_convention: str, **kwargs: Any) -> dict[str, Any]:
    """:func:`~hglv2.metrics.conventions.evaluate_convention`; a refused input is an InputError."""
    from hglv2.metrics.conventions import evaluate_convention

    try:
        return evaluate_convention(*args, hap_convention=hap_convention, **kwargs)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _checkpoint_mode(checkpoint: dict[str, Any], options: dict[str, Any], hap_convention: str):
    if checkpoint["checkpoint"] is None:
        raise InputError("--landmark-table needs --checkpoint")
    # without --recall-at, the k values of the run's own evaluations (train.recall_at)
    given = click.get_current_context().get_parameter_source("recall_at")
    run_ks = None if given is click.core.ParameterSource.DEFAULT else options["recall_at"]
    metric_options = {**options, "recall_at": run_ks, "hap_convention": hap_convention}
    lines: list[str] = []
    out = run_checkpoint(checkpoint, metric_options, lines.append)
    if out["mode"] == "checkpoint" and "mean" not in out["results"]:
        res = out["results"]
        n_levels = sum(1 for k in res if k.startswith("n_queries_level"))
        lines.append(format_table(res, n_levels, tuple(out["recall_at"])))
    return out, lines


def _example_mode(options: dict[str, Any], hap_convention: str, **engine: Any):
    lab, models = example_case()
    out: dict[str, Any] = {"mode": "example", "results": {}}
    lines: list[str] = []
    for name, emb in models.items():
        res = _metrics(emb, lab, hap_convention=hap_convention, **options, **engine)
        out["results"][name] = res
        lines.append(
            f"== example, {name} embeddings: {res['n_queries']} queries, gallery of "
            f"{res['n_gallery']} (query excluded), {lab.shape[1]} levels, relevance {options['relevance']}"
        )
        lines.append(format_table(res, lab.shape[1], options["recall_at"]))
        lines.append("")
    return out, lines


def _gldv2_mode(solution: Path | None, submission: Path | None, task: str | None):
    if solution is None or submission is None:
        raise InputError("--solution and --submission go together")
    from hglv2.metrics.gldv2 import evaluate_files

    res = evaluate_files(solution, submission, task)
    out = {"mode": "gldv2", "solution": str(solution), "submission": str(submission), "results": res}
    return out, [format_gldv2(res)]


def _files_mode(
    files: RetrievalFiles,
    embeddings: Path,
    gallery_embeddings: Path | None,
    options: dict[str, Any],
    hap_convention: str,
    normalize: bool,
):
    res = _metrics(
        files.query_embeddings,
        files.query_labels,
        files.gallery_embeddings,
        files.gallery_labels,
        hap_convention=hap_convention,
        **options,
    )
    no_gallery = files.gallery_embeddings is None
    n_levels = files.query_labels.shape[1]
    gallery_text = "the queries, self excluded" if no_gallery else str(gallery_embeddings)
    lines = [
        f"{res['n_queries']} queries, gallery of {res['n_gallery']} ({gallery_text}), "
        f"{n_levels} levels, relevance {options['relevance']} (alpha {options['alpha']})",
        format_table(res, n_levels, options["recall_at"]),
    ]
    out = {
        "mode": "embeddings",
        "embeddings": str(embeddings),
        "labels": str(files.labels_path),
        "gallery_embeddings": None if no_gallery else str(gallery_embeddings),
        "gallery_labels": None if no_gallery else str(files.gallery_labels_path),
        "config": {
            "recall_at": list(options["recall_at"]),
            "relevance": options["relevance"],
            "alpha": options["alpha"],
            "hap_convention": hap_convention,
            "ndcg_at": options["ndcg_at"],
            "normalize": normalize,
            "top_k": options["top_k"],
        },
        "results": res,
    }
    return out, lines
