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

The official ground truth files (``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``: ``{'imlist': [...],
'qimlist': [...], 'gnd': [{'easy', 'hard', 'junk', 'bbx'}, ...]}``) are Python pickles. They are
read by :func:`load_gnd_pickle` with a restricted unpickler that builds only dicts, lists, tuples,
numbers, strings, bytes and numpy arrays of numbers or strings (the globals a numpy array pickle
names, listed in :data:`PICKLE_GLOBALS`, each mapped to a checked stand-in); any other global
(``os.system``, ``builtins.eval``, ...) is refused with an :class:`~hglv2.errors.InputError` before
it is looked up. :func:`gnd_to_json` writes the same content as JSON once, for :func:`load_gnd_json`.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hglv2.errors import InputError
from hglv2.metrics.evaluate import query_mean
from hglv2.metrics.ranking import order_keys

SETUPS = {
    "easy": (("easy",), ("junk", "hard")),
    "medium": (("easy", "hard"), ("junk",)),
    "hard": (("hard",), ("junk", "easy")),
}


def _safe_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.kind not in "biufUS":
        raise pickle.UnpicklingError(f"numpy dtype {dt} is not allowed (numbers and strings only)")
    return dt


def _safe_encode(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: str -> latin-1 bytes only."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is allowed only for latin-1 text")
    return text.encode("latin-1")


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy arrays are allowed")
    return _RECONSTRUCT(subtype, shape, _safe_dtype(dtype))


def _safe_scalar(dtype: Any, *args: Any) -> Any:
    return _SCALAR(_safe_dtype(dtype), *args)


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    return _FROMBUFFER(buf, _safe_dtype(dtype), shape, order)


# numpy's own reconstructors, found from numpy itself (their module moved in numpy 2)
_RECONSTRUCT = np.arange(1).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_FROMBUFFER = np.arange(1).__reduce_ex__(5)[0]

#: (module, name) -> stand-in: the globals numpy array and scalar pickles name (numpy 1 and 2
#: module paths, protocols 0-5), plus bytes as protocol <= 2 writes them
PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _safe_reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _safe_scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _safe_frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _safe_encode,
    ("builtins", "bytes"): bytes,
    ("__builtin__", "bytes"): bytes,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def _int_list(value: Any, where: str) -> list[int]:
    arr = np.asarray(value)
    if arr.size == 0:
        return []
    if arr.ndim != 1 or arr.dtype.kind not in "iub":
        raise InputError(f"{where} must be a list of integers")
    return [int(v) for v in arr]


def load_gnd_pickle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an official ``gnd_*.pkl`` with the restricted unpickler and validate it.

    Returns ``{"imlist": [str], "qimlist": [str], "gnd": [{"easy", "hard", "junk": [int], "bbx":
    [x0, y0, x1, y1] or None}]}`` (plain Python, JSON-ready).
    """
    try:
        with open(path, "rb") as fh:
            data = _RestrictedUnpickler(fh).load()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise InputError(f"{path}: not an accepted ground-truth pickle ({exc})") from None
    return _check_gnd(data, str(path))


def _check_gnd(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a dict with imlist, qimlist and gnd")
    out: dict[str, Any] = {}
    for key in ("imlist", "qimlist"):
        names = data.get(key)
        if not isinstance(names, (list, tuple, np.ndarray)) or not all(isinstance(n, str) for n in names):
            raise InputError(f"{where}: {key} must be a list of image names")
        out[key] = [str(n) for n in names]
    gnd = data.get("gnd")
    if not isinstance(gnd, (list, tuple)) or len(gnd) != len(out["qimlist"]):
        raise InputError(f"{where}: gnd must be a list with one entry per query ({len(out['qimlist'])})")
    n_gallery = len(out["imlist"])
    entries = []
    for i, q in enumerate(gnd):
        if not isinstance(q, dict):
            raise InputError(f"{where}: gnd[{i}] is not a dict")
        entry: dict[str, Any] = {}
        for key in ("easy", "hard", "junk"):
            vals = _int_list(q.get(key, []), f"{where}: gnd[{i}].{key}")
            if any(v < 0 or v >= n_gallery for v in vals):
                raise InputError(f"{where}: gnd[{i}].{key} has an index outside imlist ({n_gallery} images)")
            entry[key] = vals
        bbx = q.get("bbx")
        if bbx is not None:
            box = np.asarray(bbx, dtype=object).ravel()
            try:
                box = [float(v) for v in box]
            except (TypeError, ValueError):
                raise InputError(f"{where}: gnd[{i}].bbx must be 4 numbers") from None
            if len(box) != 4 or not all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
                raise InputError(f"{where}: gnd[{i}].bbx must be 4 finite numbers x0 < x1, y0 < y1")
            bbx = box
        entry["bbx"] = bbx
        entries.append(entry)
    out["gnd"] = entries
    return out


def gnd_to_json(pkl: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Convert an official ground-truth pickle once to JSON (readable by :func:`load_gnd_json`)."""
    from hglv2.fileio import write_json

    data = load_gnd_pickle(pkl)
    write_json(out, data)
    return data


def _read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON content of ``path``; a missing or malformed file is an :class:`InputError`."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


def load_gnd(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ground truth from ``gnd_*.pkl`` (restricted unpickler) or its JSON conversion (with
    ``imlist``/``qimlist``)."""
    if str(path).endswith(".json"):
        return _check_gnd(_read_json(path), str(path))
    return load_gnd_pickle(path)


def load_gnd_json(path: str | os.PathLike[str], n_gallery: int | None = None) -> list[dict[str, list[int]]]:
    """Read and validate a ground-truth JSON file (module docstring)."""
    data = _read_json(path)
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
    """(Q, N) scores -> (Q, N) gallery indices in ranked order (decreasing score, ties by index).

    Scores are ranked in their own precision: float64 scores (numpy float64 arrays, float64
    tensors, Python floats) with a stable sort of the float64 values, so two scores tie only
    when their float64 values are equal, as in the official code (``np.argsort(-sim)``, which
    orders ties arbitrarily; here by index); NaN scores come last. Float32 (or lower) scores are
    ranked as float32 through the fused sort keys of :func:`hglv2.metrics.ranking.order_keys`.
    """
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    arr = np.asarray(scores)
    if arr.ndim != 2:
        raise ValueError(f"scores must be (Q, N), got {arr.shape}")
    if arr.dtype == np.float64 or arr.dtype.kind in "iu":
        return np.argsort(-arr.astype(np.float64), axis=1, kind="stable")
    s = torch.as_tensor(arr.astype(np.float32, copy=False))
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
        scores: (Q, N) query-gallery similarities (higher = more similar); float64 scores are
            ranked in float64, float32 scores in float32 (:func:`ranking_from_scores`).
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
        out[key] = query_mean(vals)
    for setup in SETUPS:
        out[f"n_skipped_{setup}"] = int(np.isnan(per[f"mAP_{setup}"]).sum())
    return out
