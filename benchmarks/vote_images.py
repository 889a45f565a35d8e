"""Images per second of the vote's embedding step (read from a tar shard, decode, preprocess, encode).

Random weights (nothing is downloaded): the time does not depend on the weights' values.
``--quick`` (``make bench``) times the tests' tiny model on 256 generated 64 px images (a second);
the default times ``ViT-B-32`` on 128 images of 256 px (about a minute on one CPU core);
``--model ViT-L-14`` is the authors' model (``--device cuda`` for AMP).

    python benchmarks/vote_images.py [--quick] [--model ViT-L-14] [--images 512] [--device cuda]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _shard(path: Path, n: int, size: int) -> list[str]:
    ids = [f"{k:016x}" for k in range(n)]
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tf:
        for i in ids:
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                buf, "JPEG", quality=90
            )
            info = tarfile.TarInfo(f"{i[0]}/{i[1]}/{i[2]}/{i}.jpg")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the tiny model on small images")
    ap.add_argument(
        "--model", default=None, help="open_clip architecture [default: ViT-B-32; tiny with --quick]"
    )
    ap.add_argument("--images", type=int, default=None, help="[default: 128; 256 with --quick]")
    ap.add_argument("--image-size", type=int, default=None, help="[default: 256; 64 with --quick]")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args(argv)
    args.model = args.model or ("tiny" if args.quick else "ViT-B-32")
    args.images = args.images or (256 if args.quick else 128)
    args.image_size = args.image_size or (64 if args.quick else 256)
    try:
        import open_clip  # noqa: F401
    except ImportError:
        print("vote_images: open_clip is not installed (pip install 'hglv2[vote]'): skipped")
        return 0
    from hglv2.evaluation.zeroshot import image_features, load_clip, register_config

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        name = args.model
        if name == "tiny":
            (tmp / "hglv2-bench-tiny.json").write_text(json.dumps(TINY))
            name = register_config(tmp / "hglv2-bench-tiny.json")
        clip = load_clip(name, random_seed=0, device=args.device)
        ids = _shard(tmp / "images_000.tar", args.images, args.image_size)
        kw = dict(device=args.device, batch_size=args.batch_size, workers=args.workers, progress=False)
        image_features(clip, ids[: args.batch_size], [tmp], tmp / "warm", **kw)  # warm-up
        t0 = time.perf_counter()
        _, feats, counts = image_features(clip, ids, [tmp], tmp / "cache", **kw)
        dt = time.perf_counter() - t0
    rate = (counts["images"] - counts["skipped"]) / dt
    print(
        f"vote_images: {args.model} on {args.device}: {counts['images']} images of {args.image_size} px "
        f"in {dt:.2f} s = {rate:.1f} images/s (features {feats.shape[1]}-d, batch {args.batch_size})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
