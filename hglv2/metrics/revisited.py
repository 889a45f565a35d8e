"""The Revisited Oxford / Paris protocol (Radenovic et al., CVPR 2018): mAP and mP@k at the
Easy, Medium and Hard setups, with junk images removed from the ranking.

Ground truth per query: lists of gallery indices ``easy``, ``hard`` and ``junk``. The setups:

========  =====================  ===========================
setup     positives              ignored (removed, "junk")
========  =====================  ===========================
easy      easy                   junk + hard
medium    easy + hard            junk
hard      hard                   junk + easy
========  =====================  ===========================

The gallery is ranked by decreasing score (ties by gallery index), ignored images are deleted from
the ranking, and with ``r_j`` the 0-based position of the j-th positive (j = 0..R-1) after the
deletion, AP uses the trapezoidal rule of the protocol's code (it differs from the step AP of
:mod:`hglv2.metrics.ranking`)::

    AP = (1/R) sum_j ( p0_j + p1_j ) / 2,   p0_j = j / r_j (1 if r_j = 0),   p1_j = (j + 1) / (r_j + 1)

``mP@k`` follows the protocol too: ``k' = min(k, 1 + r_{R-1})`` (the last positive's 1-based
position) and ``P = #{j : r_j < k'} / k'``. Queries without positives in a setup are left out of
its mean and counted (``n_skipped_{setup}``). Values are fractions (the papers print x100).

The original ground-truth files are Python pickles; hglv2 never unpickles user files, so convert
them once to JSON (``{"gnd": [{"easy": [...], "hard": [...], "junk": [...]}, ...]}``) and load
them with :func:`load_gnd_json`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hglv2.errors import InputError
from hglv2.metrics.ranking import order_keys

SETUPS = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}


def load_gnd_json(path: str | os.PathLike[str], n_gallery: int | None = None) -> list[dict[str, list[int]]]:
    """Read and validate a ground-truth JSON file (module docstring)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    gnd = data.get("gnd") if isinstance(data, dict) else data
    if not isinstance(gnd, list):
        raise InputError(f"{path}: expected a list of queries under 'gnd'")
    out = []
    for i, q in enumerate(gnd):
        if not isinstance(q, dict):
            raise InputError(f"{path}: gnd[{i}] is not an object")
        entry = {}
        for key in ("easy", "hard", "junk"):
            vals = q.get(key, [])
            if not isinstance(vals, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in vals
            ):
                raise InputError(f"{path}: gnd[{i}].{key} must be a list of integers")
            if any(v < 0 or (n_gallery is not None and v >= n_gallery) for v in vals):
                raise InputError(f"{path}: gnd[{i}].{key} has an index outside the gallery")
            entry[key] = vals
        out.append(entry)
    return out


def ranking_from_scores(scores) -> np.ndarray:
    """(Q, N) scores -> (Q, N) gallery indices in ranked order (decreasing score, ties by index)."""
    s = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    if s.ndim != 2:
        raise ValueError(f"scores must be (Q, N), got {tuple(s.shape)}")
    keys = torch.sort(order_keys(s), dim=1).values
    return (keys & ((1 << 32) - 1)).numpy()


def _setup_ap(order: np.ndarray, ok: np.ndarray, junk: np.ndarray, kappas: Sequence[int]):
    n = order.shape[0]
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    ok = np.unique(ok)
    junk = np.setdiff1d(np.unique(junk), ok)
    pos = np.sort(position[ok])
    junk_pos = np.sort(position[junk])
    pos = pos - np.searchsorted(junk_pos, pos)  # junk ranked before each positive
    j = np.arange(len(pos), dtype=np.float64)
    r = pos.astype(np.float64)
    p0 = np.where(r == 0, 1.0, j / np.where(r == 0, 1.0, r))
    p1 = (j + 1) / (r + 1)
    ap = float(((p0 + p1) / 2).sum() / len(pos))
    last = int(pos[-1]) + 1
    mp = []
    for k in kappas:
        kq = min(k, last)
        mp.append(float((pos + 1 <= kq).sum() / kq))
    return ap, mp


def revisited_map(
    scores, gnd: Sequence[dict[str, Sequence[int]]], kappas: Sequence[int] = (1, 5, 10), reduce: bool = True
) -> dict[str, Any]:
    """mAP and mP@k for the easy / medium / hard setups.

    Args:
        scores: (Q, N) query-gallery similarities (higher = more similar).
        gnd: per query, a dict with lists of gallery indices ``easy``, ``hard``, ``junk``.
        kappas: the k of mP@k.
        reduce: True -> means + ``n_skipped_{setup}``; False -> per-query arrays (NaN = skipped).

    Returns:
        ``mAP_{setup}``, ``mP@{k}_{setup}`` for setup in easy, medium, hard.
    """
    order = ranking_from_scores(scores)
    n_q, n = order.shape
    if len(gnd) != n_q:
        raise ValueError(f"gnd has {len(gnd)} queries but scores has {n_q} rows")
    per: dict[str, np.ndarray] = {}
    for setup, (pos_keys, junk_keys) in SETUPS.items():
        aps = np.full(n_q, np.nan)
        mps = np.full((n_q, len(kappas)), np.nan)
        for i, q in enumerate(gnd):
            ok = np.concatenate([np.asarray(q.get(k, []), dtype=np.int64) for k in pos_keys])
            junk = np.concatenate([np.asarray(q.get(k, []), dtype=np.int64) for k in junk_keys])
            for arr in (ok, junk):
                if arr.size and (arr.min() < 0 or arr.max() >= n):
                    raise ValueError(f"gnd[{i}]: index outside the gallery (size {n})")
            if ok.size == 0:
                continue
            aps[i], mp = _setup_ap(order[i], ok, junk, kappas)
            mps[i] = mp
        per[f"mAP_{setup}"] = aps
        for j, k in enumerate(kappas):
            per[f"mP@{k}_{setup}"] = mps[:, j]
    if not reduce:
        return per
    out: dict[str, Any] = {}
    for key, vals in per.items():
        ok = ~np.isnan(vals)
        out[key] = float(vals[ok].mean()) if ok.any() else float("nan")
    for setup in SETUPS:
        out[f"n_skipped_{setup}"] = int(np.isnan(per[f"mAP_{setup}"]).sum())
    return out
