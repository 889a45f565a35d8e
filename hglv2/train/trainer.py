"""The training loop: :class:`Trainer` (built from a resolved config) and :func:`train`.

See :mod:`hglv2.train` for the step (global batch over W processes), the checkpoints (exact
resume) and the files written under the run folder.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

from hglv2.config import config_digest, load_config
from hglv2.errors import InputError
from hglv2.evaluation.embed import embed_images
from hglv2.evaluation.protocols import copies_in_gallery, per_query_with_copies, split_paths
from hglv2.fileio import atomic_open, atomic_path, claim_folder, finite_or_none, jsonl_line, write_json
from hglv2.losses.registry import build_loss
from hglv2.models import autocast, build_model, resolve_device
from hglv2.train.data import (
    EpochBatches,
    SeededItems,
    build_batch_sampler,
    build_dataset,
    build_train_loader,
    hash_seed,
    prepare_data,
)
from hglv2.train.gradcache import grad_cache_backward
from hglv2.train.memory import build_memory_bank
from hglv2.train.optim import (
    build_scheduler,
    criterion_optimizer,
    decomposability_optimizer,
    model_optimizer,
    steps_per_epoch_end,
)
from hglv2.transforms import to_model_input

__all__ = ["Trainer", "batch_gap", "seed_everything", "train"]


def _gather_global_batch(emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch (rank order) via :func:`hglv2.losses.gather_batch`.

    Its backward sums every rank's gradient with respect to the gathered tensor and keeps the local
    slice; every rank computes the same global loss, so the local gradient is W times the global
    one and DDP's average over the W ranks gives exactly the single-process gradient.
    """
    from hglv2.losses import gather_batch

    return gather_batch(emb, labels)


# ----------------------------------------------------------------------------------------------
# evaluation


def batch_gap(
    embeddings: np.ndarray,
    labels: np.ndarray,
    batches: list[np.ndarray],
    keys: tuple[str, ...] = ("AP_level0", "H-AP"),
) -> dict[str, dict[str, float]]:
    """Mean over ``batches`` (row-index arrays) of each metric computed within the batch, the metric
    on all the rows, and their difference (the decomposability gap), per metric in ``keys``.

    Each metric is :func:`hglv2.metrics.evaluate`'s with the set ranked against itself (a query's
    own row excluded); a batch's value is the mean over its queries that have positives.
    """
    from hglv2.metrics import evaluate

    whole = evaluate(embeddings, labels, recall_at=(1,))
    per_batch = [evaluate(embeddings[b], labels[b], recall_at=(1,)) for b in batches]
    out = {}
    for key in keys:
        mean = float(np.mean([r[key] for r in per_batch]))
        out[key] = {"batch": mean, "whole": float(whole[key]), "gap": mean - float(whole[key])}
    return out


# ----------------------------------------------------------------------------------------------
# random state


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python": [int(v) for v in random.getstate()[1]],
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """Builds everything from a resolved config and runs :meth:`fit`.

    Args:
        cfg: a config from :func:`load_config`.
        out_dir: run folder (log, checkpoints, final model, metrics).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...; under torchrun with CUDA each rank
            uses ``cuda:LOCAL_RANK``.
        resume: continue from ``out_dir/checkpoints/last.pt`` when it exists.
        progress: show a tqdm bar (rank 0 only).
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        out_dir: str | os.PathLike[str],
        device: str | None = None,
        resume: bool = True,
        progress: bool = True,
        max_steps: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self._setup_processes(device)
        self.progress = progress and self.rank == 0
        self.resume = resume
        self.max_steps = max_steps  # stop early (tests of resume); the schedule still uses total
        self.amp = bool(cfg["train"]["amp"]) and self.device.type == "cuda"
        s = cfg["sampler"]
        if s["batch_size"] % self.world:
            raise InputError(
                f"sampler.batch_size {s['batch_size']} is not divisible by the {self.world} processes"
            )

        seed_everything(cfg["seed"])
        labels = self._build_data()
        t = cfg["train"]
        self.total_steps = t["steps"] if t["steps"] is not None else t["epochs"] * self.batches_per_epoch
        # model and optimisers (same init on every rank: seeded, then DDP broadcasts rank 0's)
        self._build_model()
        self._build_losses(labels)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.last_eval: dict[str, Any] | None = None
        # the last evaluation's per-query values: test set name (None: the query split) -> metric
        # -> (Q,) float64 array; the benchmark's per_query.parquet
        self.last_per_query: dict[str | None, dict[str, np.ndarray]] | None = None
        self._gap_set = None  # the training split with the evaluation transform (gap measurement)
        self._copies: dict[tuple[str, str], np.ndarray] = {}  # test set -> query copies in its gallery

    def _setup_processes(self, device: str | None) -> None:
        """Rank, world size and device (under torchrun with CUDA, ``cuda:LOCAL_RANK``)."""
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.distributed and self.device.index is None:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def _build_data(self) -> np.ndarray:
        """The data folder (rank 0 prepares it), the training set and its batch sampler; checks
        the evaluation splits exist. Returns the training labels (N, L)."""
        cfg = self.cfg
        self.root = prepare_data(cfg, progress=self.progress) if self.rank == 0 else Path(cfg["data"]["root"])
        if self.distributed:
            dist.barrier()
        for ts in self.test_sets():  # before training: a missing evaluation split fails now, not after
            for split in (ts["query"], ts["index"]):
                if split and not (self.root / f"{split}.parquet").is_file():
                    raise InputError(f"data.test_sets: {self.root / (split + '.parquet')} does not exist")
        self.train_set = build_dataset(cfg, self.root, cfg["data"]["train_split"], train=True)
        labels = np.asarray(self.train_set.labels)
        self.sampler = build_batch_sampler(cfg, labels, seed=cfg["seed"])
        self.batches_per_epoch = len(self.sampler)
        return labels

    def _build_model(self) -> None:
        """The model on the device (NHWC on CUDA), wrapped in DDP when distributed."""
        cfg = self.cfg
        self.model = build_model(**cfg["model"]).to(self.device)
        self.channels_last = self.device.type == "cuda"  # NHWC convolutions (tensor cores, AMP)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_model: nn.Module = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _build_losses(self, labels: np.ndarray) -> None:
        """The criterion (proxies only for the landmarks the sampler trains on, rows with a complete
        hierarchy), the optimizers and schedules of the model and of the loss's own parameters
        (proxies of ArcFace / ProxyNCA; the head's schedule), the memory bank (XBM) and the
        decomposability loss."""
        cfg, lc = self.cfg, self.cfg["loss"]
        self.class_ids = np.unique(labels[self.sampler.rows, 0])
        self.criterion = build_loss(
            lc["name"],
            lc["kwargs"],
            num_classes=len(self.class_ids),
            embedding_dim=cfg["model"]["embedding_dim"],
            class_ids=self.class_ids,
        ).to(self.device)
        self.optimizer = model_optimizer(cfg, self.model)
        self.scheduler = self._scheduler(self.optimizer)
        self.freeze_epochs = cfg["train"]["freeze_backbone_epochs"]
        self.backbone_params = (
            list(self.model.backbone_parameters()) if hasattr(self.model, "backbone_parameters") else []
        )
        self._backbone_requires_grad = [p.requires_grad for p in self.backbone_params]
        self._backbone_frozen = False
        self.crit_optimizer = criterion_optimizer(cfg, self.criterion)
        self.crit_scheduler = None if self.crit_optimizer is None else self._scheduler(self.crit_optimizer)
        self.memory = build_memory_bank(
            lc["memory"], self.criterion, cfg["model"]["embedding_dim"], labels.shape[1]
        )
        if self.memory is not None:
            self.memory.to(self.device)
        self.dec = None
        self.dec_optimizer = self.dec_scheduler = None
        dc = lc["decomposability"]
        if dc is not None:
            self.dec = build_loss(
                dc["name"],
                dc.get("kwargs") or {},
                num_classes=len(self.class_ids),
                embedding_dim=cfg["model"]["embedding_dim"],
            ).to(self.device)
            self.dec_optimizer = decomposability_optimizer(cfg, self.dec)
            if self.dec_optimizer is not None:
                self.dec_scheduler = self._scheduler(self.dec_optimizer, dc.get("min_lr"))

    def _scheduler(self, optimizer: torch.optim.Optimizer, min_lr: float | None = None):
        """The run's learning-rate schedule for ``optimizer`` (over ``total_steps``)."""
        return build_scheduler(self.cfg, optimizer, self.total_steps, self.batches_per_epoch, min_lr)

    # -- checkpoints ---------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": 1,
            "config_digest": config_digest(self.cfg),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "model": self.model.state_dict(),
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
        }
        if self.dec is not None:
            state["decomposability"] = self.dec.state_dict()
        if self.dec_optimizer is not None:
            state["dec_optimizer"] = self.dec_optimizer.state_dict()
            state["dec_scheduler"] = self.dec_scheduler.state_dict()
        if self.crit_optimizer is not None:
            state["crit_optimizer"] = self.crit_optimizer.state_dict()
            state["crit_scheduler"] = self.crit_scheduler.state_dict()
        if self.memory is not None:
            state["memory"] = self.memory.state_dict()
        return state

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(self.state_dict(), tmp)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
        if state.get("config_digest") != config_digest(self.cfg):
            raise InputError(f"{path}: checkpoint was made with a different config; use another --out")
        self.model.load_state_dict(state["model"])
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.dec is not None:
            self.dec.load_state_dict(state["decomposability"])
        if self.dec_optimizer is not None:
            self.dec_optimizer.load_state_dict(state["dec_optimizer"])
            self.dec_scheduler.load_state_dict(state["dec_scheduler"])
        if self.crit_optimizer is not None:
            self.crit_optimizer.load_state_dict(state["crit_optimizer"])
            self.crit_scheduler.load_state_dict(state["crit_scheduler"])
        if self.memory is not None:
            self.memory.load_state_dict(state["memory"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        rng = state["rng"]
        rng["torch"] = rng["torch"].cpu()
        if "cuda" in rng:
            rng["cuda"] = [r.cpu() for r in rng["cuda"]]
        _set_rng_state(rng)

    # -- logging -------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.out / "log.jsonl"

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.rank == 0:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(jsonl_line(record))  # an undefined metric (NaN) is written as null

    def _truncate_log(self) -> None:
        """On resume, drop log records written after the checkpoint's step."""
        if self.rank != 0 or not self.log_path.is_file():
            return
        keep = []
        for line in self.log_path.read_text("utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("step", 0) <= self.step:
                keep.append(rec)
        with atomic_open(self.log_path) as fh:
            for rec in keep:
                fh.write(jsonl_line(rec))
        self.history = keep

    # -- the loop --------------------------------------------------------------------------------

    def _epoch_batches(self, epoch: int, start: int) -> tuple[int, list[list[tuple[int, int]]]]:
        """(number of batches in the epoch, this rank's shards of its batches from ``start`` on).

        Items are (index, augmentation seed). A global batch of n images is cut into W contiguous
        shards of n // W (a last batch whose size W does not divide loses its last n % W images).
        """
        self.sampler.set_epoch(epoch)
        batches = self.sampler.global_batches()
        out = []
        for k in range(start, len(batches)):
            batch = batches[k]
            b = len(batch) // self.world
            keys = [(int(i), hash_seed(self.cfg["seed"], epoch, k, j)) for j, i in enumerate(batch)]
            out.append(keys[self.rank * b : (self.rank + 1) * b])
        return len(batches), out

    def _loss(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The step's loss from this rank's embeddings (float32) and labels, and its log values."""
        emb = emb.float()
        if self.distributed:
            all_emb, all_lab = _gather_global_batch(emb, labels)
        else:
            all_emb, all_lab = emb, labels
        lc = self.cfg["loss"]
        out: dict[str, float] = {}
        # every rank computes the same global-batch loss (see _gather_global_batch)
        if self.memory is not None:
            rank_loss, mem_logs = self.memory.loss(self.criterion, all_emb, all_lab, self.epoch, self.step)
            out.update(mem_logs)
        else:
            rank_loss = self.criterion(all_emb, all_lab)
        loss = lc["weight"] * rank_loss
        out["rank_loss"] = float(rank_loss.detach())
        if self.dec is not None:
            # per-sample proxy loss on the local shard (a mean; DDP's average makes it global)
            dense = np.searchsorted(self.class_ids, labels[:, 0].cpu().numpy())
            dec_loss = self.dec(emb, torch.as_tensor(dense, device=self.device))
            loss = loss + lc["decomposability"].get("weight", 0.1) * dec_loss
            out["dec_loss"] = float(dec_loss.detach())
        out["loss"] = float(loss.detach())
        return loss, out

    def _freeze_backbone(self, frozen: bool) -> None:
        """Backbone-freeze warm-up: its parameters stop requiring gradients, so autograd skips the
        backbone's backward pass (and gradient caching its graph) instead of computing gradients
        that the step then drops. Under DDP, which expects the same parameters to receive gradients
        at every step, and for a model whose other parameters are all frozen, the gradients are
        still computed and dropped (:meth:`train_step`); the update is the same either way."""
        if self.distributed or frozen == self._backbone_frozen:
            return
        backbone = {id(p) for p in self.backbone_params}
        if frozen and not any(p.requires_grad and id(p) not in backbone for p in self.model.parameters()):
            return
        for p, trainable in zip(self.backbone_params, self._backbone_requires_grad, strict=True):
            p.requires_grad_(trainable and not frozen)
        self._backbone_frozen = frozen

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One optimisation step on this rank's shard of the global batch (with gradient caching
        in sub-batches of ``train.grad_cache_chunk`` images when it is > 0)."""
        self.train_model.train()
        self._freeze_backbone(self.epoch < self.freeze_epochs)
        # uint8 -> normalised float on the device (channels-last on CUDA) before any sub-batching
        images = to_model_input(images, self.device, channels_last=self.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        for opt in (self.optimizer, self.dec_optimizer, self.crit_optimizer):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        chunk = self.cfg["train"]["grad_cache_chunk"]
        if chunk:
            _, out = grad_cache_backward(
                self.train_model,
                images,
                lambda emb: self._loss(emb, labels),
                chunk,
                device=self.device,
                backward=lambda loss: self.scaler.scale(loss).backward(),
                autocast=lambda: autocast(self.device, self.amp),
            )
        else:
            with autocast(self.device, self.amp):
                emb = self.train_model(images)
            loss, out = self._loss(emb, labels)
            self.scaler.scale(loss).backward()
        if self.distributed and self.dec is not None:
            for p in self.dec.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        if self.epoch < self.freeze_epochs:
            # backbone-freeze warm-up: only the head and the proxies learn (the authors skip the
            # backbone optimizer's step, so its moments and weight decay wait too)
            for p in self.backbone_params:
                p.grad = None
        clip = self.cfg["train"]["clip_grad_norm"]
        if clip is not None:
            self.scaler.unscale_(self.optimizer)
            out["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        self.scaler.step(self.optimizer)
        if self.dec_optimizer is not None:
            self.scaler.step(self.dec_optimizer)
        if self.crit_optimizer is not None:
            self.scaler.step(self.crit_optimizer)
        self.scaler.update()
        if self.cfg["schedule"]["interval"] == "step":
            self._step_schedulers()
        return out

    def _step_schedulers(self) -> None:
        for sch in (self.scheduler, self.dec_scheduler, self.crit_scheduler):
            if sch is not None:
                sch.step()

    def test_sets(self) -> list[dict[str, Any]]:
        """The evaluation sets: ``data.test_sets``, else one (``query_split``, ``index_split``)."""
        d = self.cfg["data"]
        if d["test_sets"]:
            return [
                {
                    "name": ts.get("name") or ts["query"],
                    "query": ts["query"],
                    "index": ts.get("index"),
                    "levels": ts.get("levels"),
                }
                for ts in d["test_sets"]
            ]
        return [{"name": None, "query": d["query_split"], "index": d["index_split"], "levels": None}]

    def _gallery_copies(self, ts: dict[str, Any]) -> np.ndarray:
        """Index of each query's own copy (same file content) in the test set's gallery, -1 if
        none (:func:`hglv2.evaluation.protocols.copies_in_gallery`; hashed once per run)."""
        key = (ts["query"], ts["index"])
        cache = self._copies
        if key not in cache:
            ds = build_dataset(
                self.cfg, self.root, ts["query"], train=False, levels=ts["levels"] or ["level0"]
            )
            if ds.shards or ds.image_root is None:  # tar shards: no per-image files to compare
                cache[key] = np.full(len(ds), -1, dtype=np.int64)
            else:
                paths = {s: split_paths(self.root, s) for s in key}
                cache[key] = copies_in_gallery(ds.image_root, paths[key[0]], paths[key[1]])
        return cache[key]

    def _embed(self, dataset: torch.utils.data.Dataset, num_workers: int) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and labels of ``dataset`` with the model being trained
        (:func:`~hglv2.evaluation.embed.embed_images`: NHWC on CUDA, no finite check)."""
        return embed_images(
            self.model,
            dataset,
            batch_size=self.cfg["train"]["eval_batch_size"],
            device=self.device,
            num_workers=num_workers,
            amp=self.amp,
            progress=False,
            channels_last=self.device.type == "cuda",
            check_finite=False,
            with_labels=True,
        )

    def _evaluate_set(self, ts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """One test set's metrics and per-query values.

        The per-query values are :func:`hglv2.metrics.evaluate`'s with ``reduce=False`` (a (Q,)
        float64 array per metric, NaN where undefined for that query); the metrics are their
        :func:`~hglv2.metrics.evaluate.reduce_per_query` means with ``n_queries`` and ``n_gallery``,
        i.e. :func:`~hglv2.metrics.evaluate` reduced. For ``data.test_sets`` with a gallery, each
        query's own copy in the gallery (DyML) is left out of its ranking, exactly as ``hglv2
        evaluate --checkpoint`` (:func:`hglv2.evaluation.protocols.per_query_with_copies`).
        """
        from hglv2.metrics import evaluate
        from hglv2.metrics.evaluate import reduce_per_query

        d, t = self.cfg["data"], self.cfg["train"]

        def run(split: str) -> tuple[np.ndarray, np.ndarray]:
            ds = build_dataset(self.cfg, self.root, split, train=False, levels=ts["levels"])
            return self._embed(ds, d["num_workers"])

        recall_at = tuple(t["recall_at"])
        qe, ql = run(ts["query"])
        if not ts["index"]:
            per, n_gallery = evaluate(qe, ql, recall_at=recall_at, reduce=False), len(qe) - 1
        else:
            ge, gl = run(ts["index"])
            copy = self._gallery_copies(ts) if d["test_sets"] else np.full(len(qe), -1)
            per, n_gallery = per_query_with_copies(qe, ql, ge, gl, copy, recall_at=recall_at)
        res = {"n_queries": len(qe), "n_gallery": n_gallery, **reduce_per_query(per)}
        metrics = {
            k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
            for k, v in res.items()
            if np.ndim(v) == 0
        }
        return metrics, {k: np.asarray(v, np.float64) for k, v in per.items() if not k.startswith("n_")}

    def evaluate(self) -> dict[str, Any]:
        """Metrics of :func:`hglv2.metrics.evaluate` on the query (vs index) split.

        With several ``data.test_sets`` (DyML's fine / middle / coarse sets) each set's metrics are
        kept as ``<name>/<metric>`` and the plain names hold their mean over the sets (counts
        ``n_*``: their sum), as the authors' overall accuracy averages the three test sets; a set
        evaluated with a single level gives the binary ASI of DyML.
        """
        return self._evaluate_sets()[0]

    def _evaluate_sets(self) -> tuple[dict[str, Any], dict[str | None, dict[str, np.ndarray]]]:
        """:meth:`evaluate`'s metrics, and each test set's per-query values by set name (None for
        the single query split; see :meth:`_evaluate_set`)."""
        sets = self.test_sets()
        done = {ts["name"]: self._evaluate_set(ts) for ts in sets}
        per_query = {name: values for name, (_, values) in done.items()}
        if len(sets) == 1:
            return done[sets[0]["name"]][0], per_query
        per = {name: res for name, (res, _) in done.items()}
        out: dict[str, Any] = {}
        common = set.intersection(*(set(r) for r in per.values()))
        for key in sorted(common):
            values = [r[key] for r in per.values()]
            out[key] = float(np.sum(values)) if key.startswith("n_") else float(np.mean(values))
        for name, res in per.items():
            out.update({f"{name}/{k}": v for k, v in res.items()})
        return out, per_query

    def decomposability_gap(self, epoch: int) -> dict[str, Any]:
        r"""The decomposability gap on the first ``train.gap_batches`` batches of ``epoch``.

        .. math:: \mathrm{DG} = \frac{1}{K} \sum_{k=1}^{K} \mathrm{mAP}(B_k)
                  - \mathrm{mAP}\Big(\bigcup_k B_k\Big)

        where mAP(S) ranks S against itself (each query's own index excluded), for AP at level 0
        and H-AP, on the training images with the evaluation transform (the model in eval mode).
        The K batches are the sampler's batches, so every query has positives in its batch; the
        union is a subset of the training set (K x batch_size images) because the whole set would
        cost one more pass over the training data per epoch. Runs under its own RNG state, so it
        does not change the run's results.
        """
        k = self.cfg["train"]["gap_batches"]
        self.sampler.set_epoch(epoch)
        batches = [np.asarray(b) for b in self.sampler.global_batches()[:k]]
        rows = np.unique(np.concatenate(batches))
        if self._gap_set is None:
            self._gap_set = build_dataset(self.cfg, self.root, self.cfg["data"]["train_split"], train=False)
        with torch.random.fork_rng(devices=[]):
            emb, lab = self._embed(torch.utils.data.Subset(self._gap_set, rows.tolist()), 0)
        gap = batch_gap(emb, lab, [np.searchsorted(rows, b) for b in batches])
        return {"batches": len(batches), "images": int(len(rows)), **gap}

    def _logged_on_rank0(self, key: str, seconds_key: str, compute: Callable[[], Any]) -> None:
        """Rank 0 computes ``compute()`` and logs it as ``key`` with its duration as
        ``seconds_key``; every rank then waits for it (distributed)."""
        if self.rank == 0:
            t0 = time.perf_counter()
            value = compute()
            self._log(
                {
                    "step": self.step,
                    "epoch": self.epoch,
                    key: value,
                    seconds_key: round(time.perf_counter() - t0, 3),
                }
            )
        if self.distributed:
            dist.barrier()

    def _maybe_gap(self, epoch: int) -> None:
        if self.cfg["train"]["gap_batches"]:
            self._logged_on_rank0("decomposability_gap", "gap_s", lambda: self.decomposability_gap(epoch))

    def _evaluate_and_keep(self) -> dict[str, Any]:
        self.last_eval, self.last_per_query = self._evaluate_sets()
        return self.last_eval

    def _maybe_eval(self, final: bool = False) -> None:
        every = self.cfg["train"]["eval_every"]
        if final or (every != 0 and self.step % every == 0):
            self._logged_on_rank0("eval", "eval_s", self._evaluate_and_keep)

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps`` (resuming if a checkpoint exists); returns the final metrics."""
        self._start_run()
        if self.step == 0 and self.cfg["train"]["eval_every"]:
            self._maybe_eval(final=True)  # the untrained model: first point of the learning curve
        stop = self.total_steps if self.max_steps is None else min(self.total_steps, self.max_steps)
        bar = self._progress_bar()
        t_start = time.perf_counter()
        try:
            images_seen = self._train_until(stop, bar, t_start) if self.step < stop else 0
        finally:
            self._freeze_backbone(False)  # the model leaves fit() trainable, as it came
        if bar is not None:
            bar.close()
        self.train_seconds = time.perf_counter() - t_start
        self.images_per_s = images_seen / max(self.train_seconds, 1e-9)
        self.save_checkpoint()
        if self.step >= self.total_steps:
            self._finish_run()
        if self.distributed:
            dist.barrier()
        return self.last_eval or {}

    def _start_run(self) -> None:
        """Write ``config.yaml``; resume from the checkpoint (its log cut to its step), or start a
        new log."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            with atomic_open(self.out / "config.yaml") as fh:
                yaml.safe_dump(self.cfg, fh, sort_keys=True)
        if self.resume and self.checkpoint_path.is_file():
            self.load_checkpoint(self.checkpoint_path)
            self._truncate_log()
        elif self.rank == 0 and self.log_path.exists():
            self.log_path.unlink()

    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=self.cfg["name"],
            unit="step",
            dynamic_ncols=True,
            disable=None,  # off when stderr is not a terminal (logs, CI)
        )

    def _train_until(self, stop: int, bar: Any, t_start: float) -> int:
        """Train steps until ``stop`` (logging, checkpoints, gap and evaluations on their
        schedules); returns the number of images seen by all processes."""
        t = self.cfg["train"]
        images_seen = 0
        # one loader for the whole run: its workers keep loading across epoch boundaries
        batches = EpochBatches(self._epoch_batches, self.epoch, self.batch_in_epoch)
        loader = build_train_loader(
            SeededItems(self.train_set), batches, self.cfg["data"]["num_workers"], self.device
        )
        for batch in loader:
            out = self.train_step(batch["image"], batch["labels"])
            self.step += 1
            self.batch_in_epoch += 1
            images_seen += len(batch["image"]) * self.world
            epoch_done = self.batch_in_epoch >= batches.lengths[self.epoch]
            if epoch_done:
                self.epoch += 1
                self.batch_in_epoch = 0
                if steps_per_epoch_end(self.cfg, self.epoch):
                    self._step_schedulers()
            if t["log_every"] and (self.step % t["log_every"] == 0 or self.step == stop):
                elapsed = time.perf_counter() - t_start
                rec = {
                    "step": self.step,
                    "epoch": self.epoch,
                    "lr": self.scheduler.get_last_lr()[0],
                    "images_per_s": round(images_seen / max(elapsed, 1e-9), 2),
                    **out,
                }
                self._log(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{out['loss']:.4f}")
            if t["checkpoint_every"] and self.step % t["checkpoint_every"] == 0:
                self.save_checkpoint()
            if epoch_done:
                self._maybe_gap(self.epoch - 1)
            if self.step < self.total_steps:
                self._maybe_eval()
            if self.step >= stop:
                break
        return images_seen

    def _finish_run(self) -> None:
        """The final evaluation, then (rank 0) ``model.pt`` and ``metrics.json`` (an undefined
        metric, NaN, as ``null``)."""
        self._maybe_eval(final=True)
        if self.rank == 0:
            with atomic_path(self.out / "model.pt") as tmp:
                torch.save(self.model.state_dict(), tmp)
            write_json(
                self.out / "metrics.json",
                {
                    "step": self.step,
                    "metrics": finite_or_none(self.last_eval),
                    "config_digest": config_digest(self.cfg),
                },
            )


def train(
    cfg: dict[str, Any] | str,
    out_dir: str | os.PathLike[str],
    device: str | None = None,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train with ``cfg`` (a dict or a config name/path) into ``out_dir``; returns final metrics.

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is initialised
    here (nccl on CUDA, gloo otherwise) and destroyed at the end.
    """
    if not isinstance(cfg, dict):
        cfg = load_config(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        claim_folder(out_dir, "train")  # never train into another command's folder
    started = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dev = resolve_device(device)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        started = True
    try:
        return Trainer(cfg, out_dir, device=device, resume=resume, progress=progress).fit()
    finally:
        if started:
            dist.destroy_process_group()
