"""What the opt-in JPEG draft decoding (``data.decode: draft``) gains and changes, per image.

For each photo size, a set of JPEG photos (made here: smooth shapes plus texture, quality 90) goes
through a recipe's image transform twice, once with the default full decode (the authors'
``Image.open(path).convert('RGB')``) and once with draft decoding (libjpeg DCT scaling, 1/2 to
1/8 when the region to resize allows), in one thread of the main process:

- images/s of the training transform (random resized crop + flip, seeded per image) and of the
  evaluation transform, full vs draft, and their ratio;
- how far the draft pixels are from the full decode on the same crops: mean and maximum absolute
  difference in grey levels (uint8), over all images.

Run (not part of CI)::

    python benchmarks/decode_speed.py --recipe h-gldv2 --sizes 640x480,800x600,1024x768 --n 40

``--quick`` (``make bench``): one size, 6 photos, one pass.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from hglv2.config import load_config
from hglv2.transforms import build_transform


def photo(width: int, height: int, seed: int) -> bytes:
    """A JPEG (quality 90) with sharp edges and texture, as a photo has."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 90 * np.sin(xx / rng.uniform(20, 60) + yy / rng.uniform(20, 60)),
            128 + 80 * np.cos(yy / rng.uniform(15, 50)),
            255 * (xx + yy) / (width + height),
        ],
        -1,
    )
    img = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(30):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(10, width // 3)), int(rng.integers(10, height // 3))
        draw.rectangle((x, y, x + w, y + h), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    img = img.filter(ImageFilter.DETAIL)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def run(tf, files: list[bytes], seeds: list[int | None]) -> tuple[float, list[np.ndarray]]:
    outs = []
    t0 = time.perf_counter()
    for data, seed in zip(files, seeds, strict=True):
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        with Image.open(io.BytesIO(data)) as img:
            outs.append(tf(img, gen).numpy())
    return len(files) / (time.perf_counter() - t0), outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="h-gldv2")
    ap.add_argument("--sizes", default="640x480,800x600,1024x768")
    ap.add_argument("--n", type=int, default=40, help="photos per size")
    ap.add_argument("--rounds", type=int, default=3, help="best of this many passes")
    ap.add_argument("--quick", action="store_true", help="one size, 6 photos, one pass")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.n, args.rounds = "800x600", 6, 1
    torch.set_num_threads(1)
    cfg = load_config(args.recipe)
    print(f"recipe {args.recipe}: one thread; images/s, best of {args.rounds} passes")
    header = f"{'size':>10} {'transform':>9} {'full':>8} {'draft':>8} {'gain':>6}"
    print(header + f" {'mean |d|':>9} {'max |d|':>8}")
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        files = [photo(w, h, seed) for seed in range(args.n)]
        for mode in ("train", "eval"):
            seeds = list(range(args.n)) if mode == "train" else [None] * args.n
            speed, outs = {}, {}
            for decode in ("full", "draft"):
                cfg["data"]["decode"] = decode
                tf = build_transform(cfg, train=mode == "train")
                run(tf, files[:1], seeds[:1])  # warm-up (imports, first allocations): not timed
                best = 0.0
                for _ in range(args.rounds):
                    rate, outs[decode] = run(tf, files, seeds)
                    best = max(best, rate)
                speed[decode] = best
            diff = np.abs(np.stack(outs["draft"]).astype(np.int16) - np.stack(outs["full"]))
            print(
                f"{size:>10} {mode:>9} {speed['full']:8.1f} {speed['draft']:8.1f} "
                f"{speed['draft'] / speed['full']:5.2f}x {diff.mean():9.2f} {int(diff.max()):8d}"
            )


if __name__ == "__main__":
    main()
