"""The training data path: ImageTransform vs torchvision, JPEG draft decoding, per-item seeding,
batch normalisation on the device, epochs chained in one loader."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader

from hglv2.dataset import HGLDv2Dataset
from hglv2.errors import InputError
from hglv2.fileio import write_parquet
from hglv2.schema import image_relpath
from hglv2.train.data import BatchList, EpochBatches, SeededItems, build_train_loader, hash_seed
from hglv2.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, to_model_input


def _smooth(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like image: low-frequency colour fields plus mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    chans = []
    for _ in range(3):
        a, b, c = rng.uniform(-6, 6, size=3)
        chans.append(127 + 90 * np.sin(a * x + b * y + c) + rng.normal(0, 4, size=x.shape))
    return Image.fromarray(np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8))


def _jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize("size", [(64, 64), (640, 480), (333, 500), (1000, 10), (10, 1000), (5, 7), (3, 300)])
def test_crop_params_equal_torchvision_under_the_same_seed(size):
    tf = ImageTransform(32, augment=True)
    img = Image.new("RGB", size)
    ref = T.RandomResizedCrop(32, scale=(0.5, 1.0))
    for seed in range(200):
        torch.manual_seed(seed)
        expected = ref.get_params(img, ref.scale, ref.ratio)
        assert tf.crop_params(*size, torch.Generator().manual_seed(seed)) == expected


@pytest.mark.parametrize("size", [(64, 64), (50, 70), (90, 40)])
def test_augmented_images_equal_torchvision_bit_for_bit_without_draft(size):
    """Images too small for a reduced-scale decode: the exact torchvision pipeline."""
    data = _jpeg_bytes(_smooth(*size, seed=1))
    tf = ImageTransform(64, augment=True)
    ref = T.Compose([T.RandomResizedCrop(64, scale=(0.5, 1.0)), T.RandomHorizontalFlip(), T.PILToTensor()])
    ref_float = T.Compose(
        [
            T.RandomResizedCrop(64, scale=(0.5, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    ours, theirs, theirs_float = [], [], []
    for seed in range(40):
        out = tf(_open(data), torch.Generator().manual_seed(seed))
        assert out.dtype == torch.uint8 and out.shape == (3, 64, 64) and out.is_contiguous()
        ours.append(out)
        torch.manual_seed(seed)
        theirs.append(ref(_open(data).convert("RGB")))
        torch.manual_seed(seed)
        theirs_float.append(ref_float(_open(data).convert("RGB")))
    assert torch.equal(torch.stack(ours), torch.stack(theirs))
    # the batch conversion on the device gives ToTensor + Normalize's values exactly
    assert torch.equal(to_model_input(torch.stack(ours), "cpu"), torch.stack(theirs_float))


def test_eval_transform_equals_resize_and_center_crop():
    ref = T.Compose([T.Resize(40), T.CenterCrop(32), T.PILToTensor()])
    for size in [(64, 48), (48, 64), (41, 90), (20, 25)]:
        data = _jpeg_bytes(_smooth(*size, seed=2))
        out = ImageTransform(32, resize=40)(_open(data))
        assert torch.equal(out, ref(_open(data).convert("RGB")))
    # a decoded (not lazily opened) PIL image works too
    img = _smooth(64, 48, seed=3)
    assert torch.equal(ImageTransform(32, resize=40)(img), ref(img))


def test_jpeg_draft_decodes_at_reduced_scale_close_to_a_full_decode():
    data = _jpeg_bytes(_smooth(640, 480, seed=4), quality=95)
    tf = ImageTransform(64, resize=64)
    img, k = tf._decode(_open(data), (480, 480), 64)
    assert k == 4 and img.size == (160, 120)  # 480 / 4 = 120 >= 64 > 480 / 8
    img, k = tf._decode(_open(data), (100, 100), 64)  # region too small for 1/2: full decode
    assert k == 1 and img.size == (640, 480)
    full = ImageTransform(64, resize=64, draft=False)
    a = tf(_open(data)).float()
    b = full(_open(data)).float()
    assert a.shape == b.shape == (3, 64, 64)
    assert (a - b).abs().mean() < 1.0 and (a - b).abs().max() < 8
    # training crops: same crop geometry with and without draft, values close
    tr, tr_full = ImageTransform(64, augment=True), ImageTransform(64, augment=True, draft=False)
    diffs = []
    for seed in range(20):
        a = tr(_open(data), torch.Generator().manual_seed(seed)).float()
        b = tr_full(_open(data), torch.Generator().manual_seed(seed)).float()
        diffs.append(float((a - b).abs().mean()))
    assert max(diffs) < 1.0
    # a PNG (no draft) is decoded in full, same result as draft=False
    buf = io.BytesIO()
    _smooth(300, 200, seed=5).save(buf, format="PNG")
    png = buf.getvalue()
    assert torch.equal(
        tr(_open(png), torch.Generator().manual_seed(1)),
        tr_full(_open(png), torch.Generator().manual_seed(1)),
    )


def test_grayscale_and_cmyk_jpegs_give_three_channels():
    for mode in ("L", "CMYK"):
        img = _smooth(200, 150, seed=6).convert(mode)
        out = ImageTransform(32, augment=True)(_open(_jpeg_bytes(img)), torch.Generator().manual_seed(0))
        assert out.shape == (3, 32, 32)


def test_to_model_input():
    x = torch.randint(0, 256, (2, 3, 5, 4), dtype=torch.uint8)
    y = to_model_input(x, "cpu", channels_last=True)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(y, (x.float() / 255 - mean) / std)
    f = torch.randn(2, 3, 5, 4)
    assert torch.equal(to_model_input(f, "cpu"), f)


# ---------------------------------------------------------------------------------------------
# datasets and loaders


def _split(tmp_path, sizes):
    n = len(sizes)
    ids = [f"{k:016x}" for k in range(0xABC000, 0xABC000 + n)]
    lm = [k % 3 for k in range(n)]
    table = pa.table(
        {
            "id": ids,
            "path": [image_relpath(i) for i in ids],
            "level0": pa.array(lm, pa.int64()),
            "level1": pa.array([x % 2 for x in lm], pa.int64()),
            "level2": pa.array([0] * n, pa.int64()),
        }
    )
    write_parquet(table, tmp_path / "train.parquet")
    root = tmp_path / "images"
    for k, (i, size) in enumerate(zip(ids, sizes, strict=True)):
        p = root / image_relpath(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_jpeg_bytes(_smooth(*size, seed=10 + k)))
    return tmp_path / "train.parquet", root, ids


def _keys(n_items, epoch):
    order = np.random.default_rng(epoch).permutation(n_items)
    return [
        [(int(i), hash_seed(7, epoch, b, j)) for j, i in enumerate(order[b : b + 4])]
        for b in range(0, n_items - 3, 4)
    ]


def test_seeded_items_same_batches_whatever_the_number_of_workers(tmp_path):
    sizes = [(64, 64), (300, 200), (120, 90), (80, 100)] * 3
    split, root, _ = _split(tmp_path, sizes)
    ds = HGLDv2Dataset(split, root, transform=ImageTransform(48, augment=True))
    items = SeededItems(ds)
    keys = _keys(len(ds), 0)
    runs = []
    for workers in (0, 1, 2):
        state = torch.get_rng_state()
        batches = list(build_train_loader(items, BatchList(keys), workers, torch.device("cpu")))
        assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not touched
        runs.append(batches)
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a["image"], b["image"]) and a["id"] == b["id"]
            assert torch.equal(a["labels"], b["labels"])
    assert runs[0][0]["image"].dtype == torch.uint8 and runs[0][0]["image"].shape == (4, 3, 48, 48)
    # the same key gives the same item; another seed another crop
    k = keys[0][0]
    assert torch.equal(items[k]["image"], items[k]["image"])
    assert not torch.equal(items[k]["image"], items[(k[0], k[1] + 1)]["image"])


def test_seeded_items_fast_path_equals_the_global_seed_path(tmp_path):
    """The generator path gives what a global-RNG transform gives under manual_seed(seed)."""
    split, root, _ = _split(tmp_path, [(64, 64), (60, 50), (50, 60)])
    fast = SeededItems(HGLDv2Dataset(split, root, transform=ImageTransform(64, augment=True)))
    tv = T.Compose([T.RandomResizedCrop(64, scale=(0.5, 1.0)), T.RandomHorizontalFlip(), T.PILToTensor()])
    slow = SeededItems(HGLDv2Dataset(split, root, transform=tv))
    assert fast._load is not None and slow._load is None
    state = torch.get_rng_state()
    for i in range(3):
        for seed in (0, 1, 2**62 + 5):
            assert torch.equal(fast[(i, seed)]["image"], slow[(i, seed)]["image"])
    assert torch.equal(torch.get_rng_state(), state)


def test_lazy_decode_errors_follow_on_error(tmp_path):
    split, root, ids = _split(tmp_path, [(64, 64)] * 4)
    good = (root / image_relpath(ids[1])).read_bytes()
    (root / image_relpath(ids[1])).write_bytes(good[: len(good) // 2])  # truncated JPEG
    (root / image_relpath(ids[2])).write_bytes(b"not an image")
    (root / image_relpath(ids[3])).unlink()
    tf = ImageTransform(32, augment=True)
    ds = HGLDv2Dataset(split, root, transform=tf)
    assert ds[0]["image"].shape == (3, 32, 32)
    with pytest.raises(InputError, match=f"image {ids[1]} is unreadable"):
        ds.load(1, torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match=f"image {ids[2]} is unreadable"):
        ds[2]
    with pytest.raises(InputError, match=f"image {ids[3]} is missing"):
        ds[3]
    skip = HGLDv2Dataset(split, root, transform=tf, on_error="skip")
    assert [skip[i] is None for i in range(4)] == [False, True, True, True] and skip.skipped == 3


def test_epoch_batches_chain_epochs_and_resume_mid_epoch():
    calls = []

    def epoch_batches(epoch, start):
        calls.append((epoch, start))
        n = 3 + epoch % 2  # epochs of 3 and 4 batches
        return n, [[(epoch, b)] for b in range(start, n)]

    def take(sampler, k):
        it = iter(sampler)
        return [next(it) for _ in range(k)]

    full = EpochBatches(epoch_batches)
    seq = take(full, 12)
    assert seq[:4] == [[(0, 0)], [(0, 1)], [(0, 2)], [(1, 0)]] and seq[-1] == [(3, 1)]
    assert full.lengths == {0: 3, 1: 4, 2: 3, 3: 4}
    resumed = EpochBatches(epoch_batches, epoch=1, start=2)
    assert take(resumed, 7) == seq[5:12]

    def empty(epoch, start):
        return 0, []

    with pytest.raises(InputError, match="no batch"):
        take(EpochBatches(empty), 1)


def test_one_loader_serves_many_epochs(tmp_path):
    split, root, _ = _split(tmp_path, [(40, 40)] * 8)
    items = SeededItems(HGLDv2Dataset(split, root, transform=ImageTransform(32, augment=True)))
    sampler = EpochBatches(lambda e, s: (2, _keys(8, e)[s:]))
    loader = build_train_loader(items, sampler, 1, torch.device("cpu"))
    ids = []
    for k, batch in enumerate(loader):
        ids.append(batch["id"])
        if k == 6:
            break
    per_epoch = [[items.dataset.ids[i] for i, _ in b] for e in range(4) for b in _keys(8, e)]
    assert ids == per_epoch[:7]
    assert isinstance(loader, DataLoader)
