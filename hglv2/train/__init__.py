"""Training: YAML config -> model trained with a rank loss, evaluated with :mod:`hglv2.metrics`.

One step: the batch sampler (:mod:`hglv2.samplers`, M images per class, or hierarchical) gives a
*global* batch of ``batch_size`` images; each of the W processes (``torchrun``; gloo on CPU, nccl
on GPU) embeds its contiguous ``batch_size / W`` slice, the embeddings are all-gathered with
gradients flowing back to their shard, and the rank loss (found by name in the registry of
:mod:`hglv2.losses`) is computed on the global batch, so W processes compute what one process
computes on the whole batch. The decomposability loss (its proxies have their own optimizer and
schedule) is added with its weight. Learning rates per group (backbone, head, proxies), Adam/AdamW
or SGD (Nesterov), linear warm-up then cosine decay (or multistep), backbone-freeze warm-up,
gradient clipping, AMP (float16 + GradScaler) on CUDA; optionally the decomposability gap logged
per epoch. The shipped paper configs follow the authors' recipes value by value.

Modules:

- :mod:`hglv2.train.data`: data preparation, datasets, seeded augmentation, samplers, loaders;
- :mod:`hglv2.train.optim`: optimizers and the learning-rate schedule;
- :mod:`hglv2.train.trainer`: :class:`Trainer` (loop, checkpoints, logging, evaluation through
  :mod:`hglv2.evaluation`) and :func:`train`.

The config (defaults, ``--set`` overrides, validation, digests) is :mod:`hglv2.config`; the image
transforms are :mod:`hglv2.transforms`.

Checkpoints (``<out>/checkpoints/last.pt``, written atomically, read with
``torch.load(weights_only=True)``) hold the model, both optimizers and schedulers, the AMP scaler,
the position in the sampler (epoch, batch) and the RNG states, so a resumed run continues exactly
where the interrupted one stopped (bit-identical parameters on the same machine). Random
augmentation cannot break this: each image's transform runs under a seed derived from (run seed,
epoch, position in the epoch), whatever the number of data-loader workers.

Outputs under ``<out>``: ``config.yaml`` (resolved), ``log.jsonl`` (one JSON object per logged
step / evaluation), ``checkpoints/last.pt``, ``model.pt`` (final weights) and ``metrics.json``.
"""

from hglv2.train.data import SeededItems, build_batch_sampler, build_dataset, hash_seed, prepare_data
from hglv2.train.optim import build_optimizer, build_scheduler, lr_factor
from hglv2.train.trainer import Trainer, batch_gap, seed_everything, train

__all__ = [
    "SeededItems",
    "Trainer",
    "batch_gap",
    "build_batch_sampler",
    "build_dataset",
    "build_optimizer",
    "build_scheduler",
    "hash_seed",
    "lr_factor",
    "prepare_data",
    "seed_everything",
    "train",
]
