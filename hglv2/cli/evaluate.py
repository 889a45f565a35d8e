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
from hglv2.cli._options import OUTPUT_FILE_PATH
from hglv2.errors import InputError
from hglv2.fileio import write_json

EXAMPLE_SHAPE = (2, 4, 5, 6)  # top classes x clusters x landmarks x images per landmark
MAX_K = 10**9  # --recall-at values above any gallery size
MAX_SCORE = 1e30  # largest |score| bound accepted (float32 max is 3.4e38)


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None


def _read_parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None


def _check_file(path: Path, option: str) -> Path:
    if not path.is_file():
        raise InputError(f"{path}: no such file ({option})")
    if path.suffix.lower() not in (".npy", ".parquet", ".pq"):
        raise InputError(f"{path}: unsupported file type {path.suffix!r} ({option}: use .npy or .parquet)")
    return path


def load_embeddings(path: Path, option: str = "--embeddings") -> np.ndarray:
    """(N, D) float32 embeddings from .npy or a Parquet ``embedding`` list column."""
    import pyarrow as pa

    _check_file(path, option)
    if path.suffix.lower() == ".npy":
        arr = _load_npy(path)
    else:
        table = _read_parquet(path)
        if "embedding" not in table.column_names:
            raise InputError(f"{path}: no 'embedding' column (columns: {', '.join(table.column_names)})")
        col = table.column("embedding").combine_chunks()
        if not (
            pa.types.is_list(col.type)
            or pa.types.is_large_list(col.type)
            or pa.types.is_fixed_size_list(col.type)
        ):
            raise InputError(f"{path}: column 'embedding' must be a list of floats, got {col.type}")
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"{path}: row {row}: embedding is null")
        lengths = np.asarray(col.value_lengths()) if not pa.types.is_fixed_size_list(col.type) else None
        if lengths is not None and len(lengths) and np.any(lengths != lengths[0]):
            row = int(np.flatnonzero(lengths != lengths[0])[0])
            raise InputError(
                f"{path}: row {row}: embedding has {lengths[row]} values, row 0 has {lengths[0]}"
            )
        flat = col.flatten().to_numpy(zero_copy_only=False)
        if lengths is None:
            dim = col.type.list_size
        else:
            dim = int(lengths[0]) if len(lengths) else 0
        arr = flat.reshape(len(col), dim) if len(col) else np.zeros((0, 0))
    if arr.ndim != 2:
        raise InputError(f"{path}: embeddings must be a 2-D (N, D) array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise InputError(f"{path}: embeddings must be numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise InputError(f"{path}: row {int(np.flatnonzero(bad)[0])}: embedding is not finite (NaN or inf)")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{path}: no embeddings (shape {arr.shape})")
    return arr


def load_labels(path: Path, columns: list[str] | None = None, option: str = "--labels") -> np.ndarray:
    """(N, L) int64 labels from .npy or Parquet level columns (nulls become -1 = unknown)."""
    _check_file(path, option)
    if path.suffix.lower() == ".npy":
        arr = _load_npy(path)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise InputError(f"{path}: labels must be (N,) or (N, L), got shape {arr.shape}")
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr) | (arr != np.round(arr))
            if bad.any():
                row = int(np.flatnonzero(bad.any(axis=1))[0])
                raise InputError(f"{path}: row {row}: label is not an integer")
        elif arr.dtype.kind not in "iub":
            raise InputError(f"{path}: labels must be integers, got dtype {arr.dtype}")
        return arr.astype(np.int64)
    table = _read_parquet(path)
    names = table.column_names
    if columns is None:
        columns = []
        while f"level{len(columns)}" in names:
            columns.append(f"level{len(columns)}")
        if not columns:
            raise InputError(f"{path}: no level0, level1, ... columns; name them with --label-columns")
    out = []
    for name in columns:
        if name not in names:
            raise InputError(f"{path}: no column {name!r} (columns: {', '.join(names)})")
        values = table.column(name).to_pandas()
        if (
            values.dtype.kind == "O"
            or values.dtype.kind == "f"
            and not values.dropna().eq(values.dropna().round()).all()
        ):
            raise InputError(f"{path}: column {name!r} must hold integers")
        out.append(values.fillna(-1).to_numpy().astype(np.int64))
    return np.stack(out, 1)


def _same_rows(emb: np.ndarray, lab: np.ndarray, emb_path: Path, lab_path: Path) -> None:
    if emb.shape[0] != lab.shape[0]:
        raise InputError(f"{lab_path}: {lab.shape[0]} rows but {emb_path} has {emb.shape[0]} embeddings")


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


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _parse_ks(text: str) -> tuple[int, ...]:
    from hglv2.cli._options import parse_int_list

    return tuple(parse_int_list(text, "--recall-at", minimum=1, maximum=MAX_K))


def _check_scale(q_emb: np.ndarray, g_emb: np.ndarray | None, q_path: Path, g_path: Path | None) -> None:
    """Refuse embeddings whose float32 dot products can overflow (or lose all precision).

    The scores are float32 dot products; |<q, g>| <= |q| |g|, so norms whose product passes
    ``MAX_SCORE`` could give inf/NaN scores and rankings that change with the scale.
    """
    qn = float(np.linalg.norm(q_emb.astype(np.float64), axis=1).max())
    gn = qn if g_emb is None else float(np.linalg.norm(g_emb.astype(np.float64), axis=1).max())
    if qn * gn > MAX_SCORE:
        where = q_path if g_emb is None or qn >= gn else g_path
        raise InputError(
            f"{where}: embedding norms up to {max(qn, gn):.3g} make float32 similarity scores "
            "overflow; pass --normalize (cosine similarity) or rescale the embeddings"
        )


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
@click.option("--json", "json_path", type=OUTPUT_FILE_PATH, help="Write the results as JSON.")
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
    json_path,
    **checkpoint,
) -> None:
    """Compute retrieval metrics (AP, mAP@R, mAP@100, R@k, P@k per level; H-AP, NDCG, ASI)."""
    from hglv2.metrics.conventions import evaluate_convention

    def run_evaluate(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return evaluate_convention(*args, hap_convention=hap_convention, **kwargs)

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

    lines: list[str] = []
    say = lines.append
    if checkpoint["checkpoint"] is not None or checkpoint["landmark_table"]:
        if checkpoint["checkpoint"] is None:
            raise InputError("--landmark-table needs --checkpoint")
        # without --recall-at, the k values of the run's own evaluations (train.recall_at)
        given = click.get_current_context().get_parameter_source("recall_at")
        run_ks = None if given is click.core.ParameterSource.DEFAULT else ks
        metric_options = {"recall_at": run_ks, "relevance": relevance, "alpha": alpha, "ndcg_at": ndcg_at}
        metric_options["hap_convention"] = hap_convention
        out = run_checkpoint(checkpoint, metric_options, say)
        if out["mode"] == "checkpoint" and "mean" not in out["results"]:
            res = out["results"]
            n_levels = sum(1 for k in res if k.startswith("n_queries_level"))
            say(format_table(res, n_levels, tuple(out["recall_at"])))
    elif example:
        lab, models = example_case()
        out: dict[str, Any] = {"mode": "example", "results": {}}
        for name, emb in models.items():
            try:
                res = run_evaluate(
                    emb,
                    lab,
                    recall_at=ks,
                    relevance=relevance,
                    alpha=alpha,
                    ndcg_at=ndcg_at,
                    top_k=top_k,
                    device=device,
                )
            except ValueError as exc:
                raise InputError(str(exc)) from None
            out["results"][name] = res
            say(
                f"== example, {name} embeddings: {res['n_queries']} queries, gallery of "
                f"{res['n_gallery']} (query excluded), {lab.shape[1]} levels, relevance {relevance}"
            )
            say(format_table(res, lab.shape[1], ks))
            say("")
    elif solution is not None or submission is not None:
        if solution is None or submission is None:
            raise InputError("--solution and --submission go together")
        from hglv2.metrics.gldv2 import evaluate_files

        res = evaluate_files(solution, submission, task)
        out = {"mode": "gldv2", "solution": str(solution), "submission": str(submission), "results": res}
        say(format_gldv2(res))
    else:
        if embeddings is None:
            raise InputError("--labels needs --embeddings")
        q_emb = load_embeddings(embeddings)
        if labels is None:
            if embeddings.suffix.lower() == ".npy":
                raise InputError("--labels is required with a .npy embeddings file")
            labels = embeddings
        q_lab = load_labels(labels, columns)
        _same_rows(q_emb, q_lab, embeddings, labels)
        g_emb = g_lab = None
        if gallery_embeddings is not None or gallery_labels is not None:
            if gallery_embeddings is None:
                raise InputError("--gallery-labels needs --gallery-embeddings")
            g_emb = load_embeddings(gallery_embeddings, "--gallery-embeddings")
            if gallery_labels is None:
                if gallery_embeddings.suffix.lower() == ".npy":
                    raise InputError("--gallery-labels is required with a .npy gallery embeddings file")
                gallery_labels = gallery_embeddings
            g_lab = load_labels(gallery_labels, columns, "--gallery-labels")
            _same_rows(g_emb, g_lab, gallery_embeddings, gallery_labels)
            if g_lab.shape[1] != q_lab.shape[1]:
                raise InputError(
                    f"{gallery_labels}: {g_lab.shape[1]} label columns but {labels} has {q_lab.shape[1]}"
                )
            if g_emb.shape[1] != q_emb.shape[1]:
                raise InputError(
                    f"{gallery_embeddings}: embeddings of size {g_emb.shape[1]} but "
                    f"{embeddings} has {q_emb.shape[1]}"
                )
        if not normalize:
            _check_scale(q_emb, g_emb, embeddings, gallery_embeddings)
        if normalize:
            q_emb = q_emb / np.maximum(np.linalg.norm(q_emb, axis=1, keepdims=True), 1e-12)
            if g_emb is not None:
                g_emb = g_emb / np.maximum(np.linalg.norm(g_emb, axis=1, keepdims=True), 1e-12)
        try:
            res = run_evaluate(
                q_emb,
                q_lab,
                g_emb,
                g_lab,
                recall_at=ks,
                relevance=relevance,
                alpha=alpha,
                ndcg_at=ndcg_at,
                memory_mb=memory_mb,
                top_k=top_k,
                device=device,
            )
        except ValueError as exc:
            raise InputError(str(exc)) from None
        gallery_text = "the queries, self excluded" if g_emb is None else str(gallery_embeddings)
        say(
            f"{res['n_queries']} queries, gallery of {res['n_gallery']} ({gallery_text}), "
            f"{q_lab.shape[1]} levels, relevance {relevance} (alpha {alpha})"
        )
        say(format_table(res, q_lab.shape[1], ks))
        out = {
            "mode": "embeddings",
            "embeddings": str(embeddings),
            "labels": str(labels),
            "gallery_embeddings": None if g_emb is None else str(gallery_embeddings),
            "gallery_labels": None if g_emb is None else str(gallery_labels),
            "config": {
                "recall_at": list(ks),
                "relevance": relevance,
                "alpha": alpha,
                "hap_convention": hap_convention,
                "ndcg_at": ndcg_at,
                "normalize": normalize,
                "top_k": top_k,
            },
            "results": res,
        }
    if json_path is not None:  # files first: a closed stdout (| head) must not lose them
        write_json(json_path, _clean(out))
        say(f"wrote {json_path}")
    for line in lines:
        click.echo(line)
