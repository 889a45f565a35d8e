"""What the opt-in topped-up groups (``sampler.top_up: true``) change in an M-per-class epoch.

On class sizes shaped like H-GLDv2's training split (46,593 landmarks, 970,981 images; a
log-normal spread of sizes with that mean, at least 2 images per landmark), with the h-gldv2
recipe's sampler (batch 256, m = 4, at most 8 images per class and epoch), for the authors'
epoch (whole groups of m only, the default) and the topped-up one:

- batches per epoch, distinct images and classes drawn per epoch (mean over epochs);
- seconds to build one epoch (the authors' epoch is a Python loop over batches; the topped-up
  one is vectorised).

Run (not part of CI)::

    python benchmarks/sampler_epochs.py --epochs 3

``--quick`` (``make bench``): a tenth of the classes and images, one epoch.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hglv2.samplers import MPerClassBatchSampler


def class_sizes(n_classes: int, n_images: int, seed: int = 0) -> np.ndarray:
    """Log-normal class sizes (sigma 1, at least 2) scaled to about ``n_images`` in total."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(0.0, 1.0, n_classes)
    return np.maximum(2, np.round(raw * (n_images - 2 * n_classes) / raw.sum()) + 2).astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=46_593)
    ap.add_argument("--images", type=int, default=970_981)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--max-per-class", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a tenth of the classes and images, one epoch")
    args = ap.parse_args()
    if args.quick:
        args.classes, args.images, args.epochs = args.classes // 10, args.images // 10, 1
    sizes = class_sizes(args.classes, args.images)
    labels = np.repeat(np.arange(args.classes), sizes)
    print(
        f"{len(labels):,d} images, {args.classes:,d} classes (sizes {sizes.min()}-{sizes.max()}, "
        f"{int((sizes < args.m).sum()):,d} below m); batch {args.batch_size}, m {args.m}, "
        f"max_per_class {args.max_per_class}"
    )
    print(f"{'epoch':>10} {'batches':>8} {'images':>9} {'classes':>8} {'build s':>8}")
    for top_up in (False, True):
        s = MPerClassBatchSampler(
            labels, m=args.m, batch_size=args.batch_size, max_per_class=args.max_per_class, top_up=top_up
        )
        rows = []
        for epoch in range(args.epochs):
            s.set_epoch(epoch)
            t0 = time.perf_counter()
            batches = np.array(s.global_batches())
            seconds = time.perf_counter() - t0
            rows.append((len(batches), len(np.unique(batches)), len(np.unique(labels[batches])), seconds))
        b, i, c, t = (float(np.mean(v)) for v in zip(*rows, strict=True))
        name = "top_up" if top_up else "authors'"
        print(f"{name:>10} {b:8.0f} {i:9,.0f} {c:8,.0f} {t:8.2f}")


if __name__ == "__main__":
    main()
