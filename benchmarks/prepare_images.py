"""Speed of ``hglv2 prepare-images`` and what it buys the training data loader (not run in CI).

1. Preparation, images/s per core: generated official-shaped tar shards (``images_NNN.tar``,
   members ``a/b/c/<id>.jpg``; default 800x600 JPEGs of ~100-150 KB, the GLDv2 average being
   ~120 KB) re-encoded to ``--max-side`` by ``hglv2.reencode.prepare_images`` with one worker,
   beside a plain PIL loop doing the same per image without draft mode (full decode, bicubic
   resize, same JPEG settings; Pillow's default allocator settings), alternating ``--repeat``
   times in the same process; the per-image function ``resize_image`` against the same plain
   steps on the same in-memory bytes; then with ``--jobs`` workers for the scaling. The results
   file (:mod:`_results`) keeps min / median / max and the per-round ratios.
2. Training data-loader throughput before/after: ``HGLDv2Dataset`` over the official-sized shards
   and over the prepared shards, with the training transform of ``hglv2.train``
   (RandomResizedCrop 224 scale (0.5, 1), horizontal flip, ToTensor, Normalize), batch 64,
   ``--workers`` DataLoader workers (default 0: the loader's cost per core), best of 3 interleaved
   rounds; the ratio prepared / official is the speed-up.

Usage: ``python benchmarks/prepare_images.py [--images 400] [--size 800x600] [--max-side 512]
[--jobs 2] [--workers 0] [--workdir DIR]``.
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

import _results
import numpy as np

# --quick: sizes that run in seconds to a minute on 2 cores (what `make bench` runs)
QUICK = {"images": 40, "per_shard": 20, "repeat": 1}


def _photo_like(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A colour image with smooth structure and fine texture (compresses like a photo)."""
    from PIL import Image

    coarse = rng.integers(0, 256, size=(max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    mid = rng.integers(-40, 40, size=(max(2, h // 6), max(2, w // 6), 3), dtype=np.int16)
    mid = np.asarray(Image.fromarray((mid + 128).astype(np.uint8)).resize((w, h)), dtype=np.int16) - 128
    fine = rng.integers(-10, 11, size=(h, w, 3), dtype=np.int16)
    return np.clip(base + mid + fine, 0, 255).astype(np.uint8)


def generate(
    folder: Path, n: int, size: tuple[int, int], per_shard: int, seed: int = 0
) -> tuple[list[str], int]:
    """Official-shaped shards of ``n`` JPEGs; returns (ids, total bytes)."""
    from PIL import Image

    from hglv2.schema import image_relpath

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    ids = [f"{int(v):016x}" for v in rng.integers(0, 2**63, size=n)]
    total = 0
    for s in range(0, n, per_shard):
        with tarfile.open(folder / f"images_{s // per_shard:03d}.tar", "w") as tf:
            for i in ids[s : s + per_shard]:
                buf = io.BytesIO()
                Image.fromarray(_photo_like(rng, *size)).save(buf, format="JPEG", quality=90)
                data = buf.getvalue()
                total += len(data)
                info = tarfile.TarInfo(image_relpath(i))
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return ids, total


def pillow_defaults() -> None:
    """Pillow's default allocator settings (no freed image blocks kept), as a user's own loop has
    them: :func:`hglv2.reencode.resize_image` raises the setting for its process."""
    from PIL import Image

    Image.core.set_blocks_max(0)


def bare_steps(data: bytes, max_side: int, quality: int) -> None:
    """The peer's work on one image: full decode, bicubic resize, the same JPEG settings."""
    from PIL import Image

    from hglv2.reencode import target_size

    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    w, h = target_size(*rgb.size, max_side)
    if (w, h) != rgb.size:
        rgb = rgb.resize((w, h), Image.Resampling.BICUBIC)
    rgb.save(io.BytesIO(), format="JPEG", quality=quality, subsampling=2, optimize=True)


def plain_pil_loop(source: Path, max_side: int, quality: int) -> tuple[int, float]:
    """The peer: :func:`bare_steps` per tar member, one process, Pillow's defaults; returns
    (images, seconds)."""
    pillow_defaults()
    count, t0 = 0, time.perf_counter()
    for shard in sorted(source.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf:
                if not m.isreg():
                    continue
                bare_steps(tf.extractfile(m).read(), max_side, quality)
                count += 1
    return count, time.perf_counter() - t0


def per_image(source: Path, args, out: _results.Results, n_max: int = 200) -> dict:
    """The per-image function (:func:`hglv2.reencode.resize_image`) against :func:`bare_steps`
    on the same in-memory bytes (no tar reading on either side), alternating ``args.repeat``
    times; the bare steps run with Pillow's defaults."""
    from hglv2.reencode import PrepareSettings, resize_image

    datas = []
    for shard in sorted(source.glob("*.tar")):
        with tarfile.open(shard) as tf:
            datas += [tf.extractfile(m).read() for m in tf if m.isreg()]
    datas = datas[:n_max]
    settings = PrepareSettings(max_side=args.max_side, quality=args.quality)

    def bare() -> None:
        pillow_defaults()
        for d in datas:
            bare_steps(d, args.max_side, args.quality)

    def ours() -> None:
        for d in datas:
            resize_image(d, settings)

    times, _ = _results.interleaved({"bare": bare, "ours": ours}, args.repeat)
    out.timing("bare_loop", times["bare"], images=len(datas))
    out.timing("per_image", times["ours"], images=len(datas))
    return out.ratio("per_image.ratio", times["bare"], times["ours"])


def draft_effect(size: tuple[int, int], max_side: int, quality: int, n: int = 20) -> tuple[float, float]:
    """images/s of a full decode + resize vs :func:`hglv2.reencode.resize_image` on 2x-sized JPEGs."""
    from PIL import Image

    from hglv2.reencode import PrepareSettings, resize_image, target_size

    rng = np.random.default_rng(1)
    datas = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(_photo_like(rng, 2 * size[0], 2 * size[1])).save(buf, format="JPEG", quality=90)
        datas.append(buf.getvalue())
    settings = PrepareSettings(max_side=max_side, quality=quality)

    def full(data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
        rgb = rgb.resize(target_size(*rgb.size, max_side), Image.Resampling.BICUBIC)
        rgb.save(io.BytesIO(), format="JPEG", quality=quality, subsampling=2, optimize=True)

    best = [0.0, 0.0]
    for _ in range(3):
        for k, fn in enumerate((full, lambda d: resize_image(d, settings))):
            t0 = time.perf_counter()
            for d in datas:
                fn(d)
            best[k] = max(best[k], n / (time.perf_counter() - t0))
    return best[0], best[1]


def loader_throughput(split: Path, roots: dict[str, Path], workers: int, rounds: int = 3) -> dict[str, float]:
    import torch
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    from hglv2.dataset import HGLDv2Dataset

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tf = T.Compose(
        [
            T.RandomResizedCrop(224, scale=(0.5, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    torch.set_num_threads(1)
    sets = {name: HGLDv2Dataset(split, root, transform=tf) for name, root in roots.items()}
    best = dict.fromkeys(sets, 0.0)
    for _ in range(rounds):  # interleaved: the machine's load changes under us
        for name, ds in sets.items():
            loader = DataLoader(ds, batch_size=64, num_workers=workers, shuffle=False)
            t0, count = time.perf_counter(), 0
            for b in loader:
                count += len(b["id"])
            best[name] = max(best[name], count / (time.perf_counter() - t0))
    return best


def _section_prepare(args, work: Path, ids: list[str], nbytes: int, size: tuple[int, ...], out) -> None:
    """1. prepare-images with one worker against the plain PIL loop, then with ``--jobs`` workers."""
    from hglv2.reencode import prepare_images

    print(f"1. preparation to max side {args.max_side} (quality {args.quality}), {args.repeat} rounds")
    prepare_images(  # warm-up: imports and first-use costs are not the steady state
        work / "train", work / "warm", max_side=args.max_side, shards=["images_000.tar"], progress=False
    )
    n_img = len(ids)
    peer_s, loop_s, calls = [], [], []
    for r in range(args.repeat):  # interleaved: the machine's load changes under us
        count, secs = plain_pil_loop(work / "train", args.max_side, args.quality)
        assert count == n_img
        peer_s.append(secs)
        res = prepare_images(
            work / "train",
            work / f"p1_{r}",
            max_side=args.max_side,
            quality=args.quality,
            jobs=1,
            progress=False,
        )
        loop_s.append(res["worker_seconds"])  # inside the shard loop: no start-up, no summary files
        calls.append(res)
    one = min(calls, key=lambda x: x["worker_seconds"])
    out.timing("bare_loop_tar", peer_s, images=n_img)
    out.timing("shard_loop", loop_s, images=n_img)
    loop_ratio = out.ratio("shard_loop.ratio", peer_s, loop_s)
    item_ratio = per_image(work / "train", args, out)
    os.replace(work / "p1_0", work / "p1")
    par = prepare_images(
        work / "train",
        work / "pj",
        max_side=args.max_side,
        quality=args.quality,
        jobs=args.jobs,
        progress=False,
    )
    same = all(
        (work / "p1" / p.name).read_bytes() == p.read_bytes() for p in sorted((work / "pj").glob("*.tar"))
    )
    per_core = n_img / min(loop_s)
    peer = n_img / min(peer_s)
    out.value("projection_core_hours", 4_132_914 / per_core / 3600)
    out.value("jobs", {"jobs": args.jobs, "images_per_s": par["images_per_s"], "identical": same})
    out.value("jobs1_images_per_s", one["images_per_s"])
    out.value(
        "output", {"kb_per_image": one["bytes_out"] / len(ids) / 1e3, "of_source": one["bytes_out"] / nbytes}
    )
    print(f"  plain PIL loop, no draft (peer)    {peer:8.1f} images/s per core (best round)")
    print(
        f"  hglv2 prepare-images --jobs 1      {per_core:8.1f} images/s per core in the shard loop; "
        f"shard loop / plain loop per round: min {loop_ratio['min']:.2f}, median {loop_ratio['median']:.2f}x"
    )
    print(
        f"  resize_image / the plain steps on the same bytes (no tar reading): "
        f"min {item_ratio['min']:.2f}, median {item_ratio['median']:.2f}x"
    )
    print(
        f"  hglv2 prepare-images --jobs {args.jobs}      {par['images_per_s']:8.1f} images/s, whole "
        f"call (x{par['images_per_s'] / one['images_per_s']:.2f}; worker start-up included); "
        f"bytes identical to --jobs 1: {same}"
    )
    print(
        f"  output {one['bytes_out'] / len(ids) / 1e3:.0f} KB/image (tar), "
        f"{one['bytes_out'] / nbytes:.2f} of the source bytes; projected for 4,132,914 train images: "
        f"{4_132_914 / per_core / 3600:.1f} core-hours"
    )
    d_peer, d_ours = draft_effect(size, args.max_side, args.quality)
    out.value("draft", {"size": f"{2 * size[0]}x{2 * size[1]}", "full_decode": d_peer, "ours": d_ours})
    print(
        f"  draft mode on {2 * size[0]}x{2 * size[1]} sources (libjpeg decodes at 1/2): resize_image "
        f"{d_ours:.1f} vs full decode {d_peer:.1f} images/s per core, ratio {d_ours / d_peer:.2f}x"
    )


def _section_loader(args, work: Path, ids: list[str], size: tuple[int, ...], out) -> None:
    """2. the training data loader over the official-sized shards and over the prepared ones."""
    import pyarrow as pa

    from hglv2.fileio import write_parquet
    from hglv2.schema import image_relpath

    n = len(ids)
    write_parquet(
        pa.table(
            {
                "id": ids,
                "path": [image_relpath(i) for i in ids],
                "level0": pa.array(np.arange(n) % 50),
                "level1": pa.array(np.arange(n) % 5),
                "level2": pa.array(np.arange(n) % 2),
            }
        ),
        work / "split.parquet",
    )
    print(f"2. training data loader (RandomResizedCrop 224, batch 64, {args.workers} workers, best of 3)")
    best = loader_throughput(
        work / "split.parquet", {"official": work / "train", "prepared": work / "p1"}, args.workers
    )
    out.value("loader", {**best, "workers": args.workers, "size": f"{size[0]}x{size[1]}"})
    print(f"  official-sized shards ({size[0]}x{size[1]})    {best['official']:8.1f} images/s")
    print(
        f"  prepared shards (max side {args.max_side})   {best['prepared']:8.1f} images/s   "
        f"ratio {best['prepared'] / best['official']:.2f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--size", default="800x600", help="WxH of the generated official-sized JPEGs")
    ap.add_argument("--per-shard", type=int, default=100)
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--jobs", type=int, default=2, help="workers for the scaling run")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--repeat", type=int, default=3, help="alternating rounds of each comparison")
    ap.add_argument("--skip-loader", action="store_true", help="only the preparation (section 1)")
    ap.add_argument("--quick", action="store_true", help=f"small sizes (seconds to a minute): {QUICK}")
    _results.add_results_option(ap)
    args = ap.parse_args()
    if args.quick:
        ap.set_defaults(**QUICK)
        args = ap.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        ids, nbytes = generate(work / "train", args.images, size, args.per_shard)
        print(
            f"generated {len(ids)} JPEGs {size[0]}x{size[1]} in {len(list((work / 'train').glob('*.tar')))} "
            f"shards, mean {nbytes / len(ids) / 1e3:.0f} KB"
        )
        out = _results.Results(__file__, args, threads=1)
        _section_prepare(args, work, ids, nbytes, size, out)
        if not args.skip_loader:
            _section_loader(args, work, ids, size, out)
        out.write(args.results or _results.default_path(__file__, "", args.quick))
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
