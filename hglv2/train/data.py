"""Training data: transforms, the datasets of a config, per-image seeded augmentation, loaders.

:func:`prepare_data` makes sure the config's dataset exists (generating the synthetic one when its
parameters changed); :func:`build_dataset` opens a split with the config's
:class:`ImageTransform`; :func:`build_batch_sampler` gives the configured sampler of
:mod:`hglv2.samplers`. Random augmentation is reproducible whatever the number of workers:
:class:`SeededItems` computes item ``(index, seed)`` with a ``torch.Generator`` seeded with
``seed`` (no global RNG involved), and :func:`hash_seed` derives those seeds from (run seed,
epoch, position in the epoch).

The data path is built for throughput: the transform receives the image opened but not decoded,
so with ``data.decode: draft`` (opt-in; the default ``full`` decodes as the authors' PIL
``Image.open(path).convert('RGB')``) a JPEG is decoded at 1/2, 1/4 or 1/8 scale when the crop
allows it (``Image.draft``: faster, other pixels); items are uint8 and :func:`to_model_input`
converts a whole batch on the device (4x less to copy than float32); :class:`EpochBatches`
chains the epochs so one ``DataLoader`` (its workers and its prefetch queue) serves the whole
run, with no pipeline restart at each epoch boundary.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hglv2.dataset import HGLDv2Dataset
from hglv2.errors import InputError
from hglv2.samplers import HierarchicalBatchSampler, MPerClassBatchSampler

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BatchList",
    "EpochBatches",
    "ImageTransform",
    "SeededItems",
    "build_batch_sampler",
    "build_dataset",
    "build_train_loader",
    "build_transform",
    "hash_seed",
    "manifest_image_root",
    "prepare_data",
    "to_model_input",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageTransform:
    """PIL image -> uint8 tensor (3, S, S): the random resized crop + flip of training, or the
    resize + center crop of evaluation, as torchvision's transforms, with the randomness drawn from
    a given ``torch.Generator``.

    - ``augment=True``: a crop of area fraction ``U(scale)`` and aspect ratio ``exp(U(log ratio))``
      (10 tries, then the central crop), resized to S x S (bilinear, antialiased), then flipped
      horizontally with probability 1/2. The random numbers are drawn from ``generator`` in the
      order and with the calls of ``RandomResizedCrop`` + ``RandomHorizontalFlip``, so a generator
      seeded with s gives the crops torchvision gives after ``torch.manual_seed(s)`` (tested).
    - ``augment=False``: resize the shorter side to ``resize`` (default S), or with
      ``square_resize`` both sides to ``resize`` (``Resize((r, r))``), then the central S x S crop
      (``Resize`` + ``CenterCrop``).
    - ``train_resize``: with ``augment``, the image is first resized (shorter side) to it, as
      ``Resize`` before ``RandomResizedCrop``.

    The image may be passed opened but not yet decoded (``PIL.Image.open``; :class:`HGLDv2Dataset
    <hglv2.dataset.HGLDv2Dataset>` does so for transforms with ``lazy_decode``). By default it is
    decoded in full, as the authors' dataset does (``Image.open(path).convert('RGB')``), and the
    output equals torchvision's transforms of that image bit for bit. With ``draft`` (opt-in,
    ``data.decode: draft``: a speed deviation from the authors) a JPEG is decoded at scale 1/k,
    k in {2, 4, 8} (libjpeg's DCT scaling, ``Image.draft``), the largest k at which the region to
    resize is still at least S (or ``resize``) pixels on each side, so the decoder does the first
    part of the downscaling: same geometry, but pixel values that differ from a full decode (by
    tens of grey levels at edges of a detailed photo). Images too small for that (the synthetic
    64 px ones) are decoded in full either way.

    The output is not normalised: :func:`to_model_input` converts a batch (bit-identical to
    ``ToTensor`` + ``Normalize`` per image).
    """

    lazy_decode = True  # takes the undecoded image and a generator (see HGLDv2Dataset.load)

    def __init__(
        self,
        size: int,
        resize: int | None = None,
        augment: bool = False,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        draft: bool = False,
        train_resize: int | None = None,
        square_resize: bool = False,
    ) -> None:
        self.size = int(size)
        self.train_resize = int(train_resize) if train_resize else None
        self.square_resize = bool(square_resize)
        self.resize = int(resize or size)
        self.augment = augment
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        # as torchvision: log of the float32 ratios
        self._log_ratio = [float(v) for v in torch.log(torch.tensor(self.ratio))]
        self.draft = draft

    def __repr__(self) -> str:
        return (
            f"ImageTransform(size={self.size}, resize={self.resize}, augment={self.augment}, "
            f"scale={self.scale}, ratio={self.ratio}, train_resize={self.train_resize}, "
            f"square_resize={self.square_resize}, draft={self.draft})"
        )

    def crop_params(self, width: int, height: int, generator: torch.Generator | None = None):
        """(top, left, h, w) of a random resized crop of a ``width`` x ``height`` image.

        ``RandomResizedCrop.get_params`` with the random numbers drawn from ``generator``.
        """
        area = height * width
        for _ in range(10):
            u = torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=generator).item()
            target_area = area * u
            r = torch.empty(1).uniform_(self._log_ratio[0], self._log_ratio[1], generator=generator)
            aspect = torch.exp(r).item()
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                i = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
                j = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
                return i, j, h, w
        in_ratio = float(width) / float(height)
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def _decode(self, img: Image.Image, region: tuple[int, int], target: int) -> tuple[Image.Image, int]:
        """Decode ``img`` (RGB) at the smallest JPEG scale 1/k keeping ``region`` (w, h) >= target."""
        k = 1
        if self.draft and getattr(img, "tile", None):  # not decoded yet
            width, height = img.size
            for cand in (8, 4, 2):
                if region[0] >= cand * target and region[1] >= cand * target:
                    got = img.draft("RGB", (width // cand, height // cand))
                    if got is not None:
                        k = max(1, round(width / got[1][2]))
                    break
        return img.convert("RGB"), k

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        import torchvision.transforms.functional as F

        width, height = img.size
        s = self.size
        if self.augment:
            if self.train_resize:  # Resize(train_resize) before the crop, as the authors' SOP recipe
                img = F.resize(img.convert("RGB"), self.train_resize)
                width, height = img.size
            i, j, h, w = self.crop_params(width, height, generator)
            img, k = self._decode(img, (w, h), s)
            if k == 1:
                img = F.resized_crop(img, i, j, h, w, [s, s])
            else:
                box = (j / k, i / k, (j + w) / k, (i + h) / k)
                img = img.resize((s, s), Image.Resampling.BILINEAR, box=box)
            if torch.rand(1, generator=generator).item() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            if self.square_resize:  # Resize((r, r)): both sides to r, the aspect ratio is not kept
                img, _ = self._decode(img, (width, height), self.resize)
                img = F.center_crop(F.resize(img, [self.resize, self.resize]), [s, s])
            else:
                short = min(width, height)
                img, _ = self._decode(img, (short, short), self.resize)
                img = F.center_crop(F.resize(img, self.resize), [s, s])
        return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))


def build_transform(cfg: dict[str, Any], train: bool) -> ImageTransform:
    """The image transform of ``cfg`` (an :class:`ImageTransform`): random resized crop (area
    0.5-1) + flip when training with ``data.augment``, else resize + center crop; JPEG draft
    decoding with ``data.decode: draft``. Outputs uint8; :func:`to_model_input` normalises with
    the ImageNet mean and std."""
    d = cfg["data"]
    size = d["image_size"]
    draft = d.get("decode", "full") == "draft"
    if train and d["augment"]:
        return ImageTransform(
            size,
            augment=True,
            scale=tuple(d.get("crop_scale", (0.5, 1.0))),
            ratio=tuple(d.get("crop_ratio", (0.75, 4 / 3))),
            train_resize=d.get("train_resize"),
            draft=draft,
        )
    return ImageTransform(
        size, resize=d["resize"], square_resize=d.get("eval_resize") == "square", draft=draft
    )


def to_model_input(
    images: torch.Tensor, device: torch.device | str, channels_last: bool = False
) -> torch.Tensor:
    """A batch of images from the loader -> the model's input on ``device``.

    uint8 images (from :class:`ImageTransform`) are copied as uint8 and converted there:
    ``(x / 255 - mean) / std`` with the ImageNet mean and std, the float32 operations of
    torchvision's ``ToTensor`` + ``Normalize`` (identical values). Float images are copied as they
    are. ``channels_last``: NHWC memory layout (faster convolutions on CUDA, with AMP).
    """
    x = images.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:  # before the conversion: 4x fewer bytes to move
        x = x.contiguous(memory_format=torch.channels_last)
    if x.dtype == torch.uint8:
        mean, std = _imagenet_stats(x.device)
        x = x.to(torch.float32).div_(255).sub_(mean).div_(std)  # keeps the memory format
    return x


_STATS: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std (1, 3, 1, 1) float32 on ``device``, made once per device (no host
    to device copy, hence no synchronisation, in the step)."""
    key = str(device)
    if key not in _STATS:
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, -1, 1, 1).to(device)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, -1, 1, 1).to(device)
        _STATS[key] = (mean, std)
    return _STATS[key]


class SeededItems(torch.utils.data.Dataset):
    """Wraps a dataset: item ``(index, seed)`` is ``dataset[index]`` with its randomness from ``seed``.

    When the dataset has a ``load(index, generator)`` method and a transform with
    ``lazy_decode`` (:class:`~hglv2.dataset.HGLDv2Dataset` with an :class:`ImageTransform`), the
    item is computed with a fresh ``torch.Generator`` seeded with ``seed`` (about 2 us). Any other
    transform draws from the global torch RNG: the item is then computed under
    ``torch.manual_seed(seed)`` and the global state restored afterwards (about 100x slower). Either
    way random transforms depend only on the seed (exact resume, independent of the number of
    workers), and the same seed gives the same crop on both paths.
    """

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset
        load = getattr(dataset, "load", None)
        lazy = getattr(getattr(dataset, "transform", None), "lazy_decode", False)
        self._load = load if callable(load) and lazy else None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        if self._load is not None:
            return self._load(index, torch.Generator().manual_seed(seed))
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)


def prepare_data(cfg: dict[str, Any], progress: bool = False) -> Path:
    """Make sure the dataset of ``cfg`` exists; generate the synthetic one if needed. Returns root."""
    d = cfg["data"]
    root = Path(d["root"])
    if d["kind"] == "synthetic":
        from hglv2.synthetic import SyntheticParams, generate, load_table

        syn = dict(d["synthetic"])
        hierarchy = syn.pop("hierarchy")
        try:
            params = SyntheticParams(**syn)
        except TypeError as exc:
            raise InputError(f"config: data.synthetic: {exc}") from None
        _, source = load_table(hierarchy)
        manifest = root / "manifest.json"
        current = False
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text("utf-8"))
                current = old.get("params") == json.loads(json.dumps(params.__dict__)) and (
                    old.get("hierarchy", {}).get("source") == source
                )
            except (ValueError, OSError, AttributeError):
                current = False
        if not current:
            generate(root, hierarchy, params, progress=progress)
    for key in ("train_split", "query_split"):
        if not (root / f"{d[key]}.parquet").is_file():
            raise InputError(f"data.{key}: {root / (d[key] + '.parquet')} does not exist")
    return root


def manifest_image_root(root: Path) -> Path:
    """The image folder of a split folder when ``data.image_root`` is null: the ``image_root`` its
    ``manifest.json`` records (``hglv2 convert``: the dataset's own folder; relative paths are
    relative to ``root``), else ``<root>/images`` (the synthetic data, an export with its images)."""
    try:
        recorded = json.loads((root / "manifest.json").read_text("utf-8")).get("image_root")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, str) and recorded:
        return root / recorded  # an absolute recorded path replaces root
    return root / "images"


def build_dataset(
    cfg: dict[str, Any], root: Path, split: str, train: bool, levels: list[str] | None = None
) -> HGLDv2Dataset:
    """The :class:`HGLDv2Dataset` of split ``split`` under ``root`` with the transform of ``cfg``
    (label columns ``levels``, default ``data.levels``; images under ``data.image_root``, else
    :func:`manifest_image_root`)."""
    d = cfg["data"]
    image_root = d["image_root"]
    if isinstance(image_root, dict):  # one folder per split (GLDv2: train/, index/, test/)
        image_root = image_root.get(split)
        if image_root is None:
            raise InputError(f"data.image_root: no image folder for split {split!r}")
    image_root = Path(image_root) if image_root else manifest_image_root(root)
    return HGLDv2Dataset(
        root / f"{split}.parquet",
        image_root,
        levels=levels or d["levels"],
        transform=build_transform(cfg, train),
    )


def build_batch_sampler(
    cfg: dict[str, Any], labels: np.ndarray, seed: int
) -> MPerClassBatchSampler | HierarchicalBatchSampler:
    """The configured batch sampler over the training labels (N, L).

    Rows whose class (column 0) or cluster (column 1) is unknown (-1) are left out of training, as
    the authors' ``remove_nan`` does (``suprank/datasets/gldv2.py``: rows whose cluster is NaN);
    rows with a known cluster but an unknown coarser level are kept, and their unknown level is
    one shared value, as in the authors' labels.
    """
    s = cfg["sampler"]
    masked = np.array(labels, dtype=np.int64, copy=True)
    if masked.ndim == 1:
        masked = masked[:, None]
    masked[unknown_cluster(masked)] = -1
    try:
        if s["kind"] == "hierarchical":
            return HierarchicalBatchSampler(
                masked,
                m=s["m"],
                batch_size=s["batch_size"],
                clusters_per_batch=s["clusters_per_batch"],
                seed=seed,
                ignore_label=-1,
                max_per_class=s.get("max_per_class"),
                batches_per_super_tuple=s.get("batches_per_super_tuple"),
                top_up=s.get("top_up", False),
            )
        return MPerClassBatchSampler(
            masked,
            m=s["m"],
            batch_size=s["batch_size"],
            seed=seed,
            ignore_label=-1,
            max_per_class=s.get("max_per_class"),
            top_up=s.get("top_up", False),
        )
    except ValueError as exc:
        raise InputError(f"sampler: {exc}") from None


def unknown_cluster(labels: np.ndarray) -> np.ndarray:
    """(N,) bool: rows of (N, L) labels whose class (column 0) or cluster (column 1, when L >= 2)
    is unknown (< 0): the rows the authors' ``remove_nan`` drops."""
    lab = np.asarray(labels)
    return (lab[:, : min(lab.shape[1], 2)] < 0).any(axis=1)


class BatchList(torch.utils.data.Sampler):
    """A fixed list of batches as a ``batch_sampler`` (items: ``(index, seed)`` for :class:`SeededItems`)."""

    def __init__(self, batches: list[list[tuple[int, int]]]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class EpochBatches(torch.utils.data.Sampler):
    """The batches of consecutive epochs as one ``batch_sampler``, from batch ``start`` of
    ``epoch`` on, without end: one ``DataLoader`` serves the whole run, so its workers keep loading
    across epoch boundaries (no restart, no empty prefetch queue).

    Args:
        epoch_batches: ``(epoch, start) -> (batches in the epoch, its batches from start on)``.
        epoch, start: where to begin (a resumed run begins where it stopped).

    ``lengths[e]`` is the number of batches of epoch ``e``, known once the loader has asked for
    that epoch's first batch, which is before the loader yields it.
    """

    def __init__(
        self,
        epoch_batches: Callable[[int, int], tuple[int, list[list[tuple[int, int]]]]],
        epoch: int = 0,
        start: int = 0,
    ) -> None:
        self.epoch_batches = epoch_batches
        self.epoch, self.start = epoch, start
        self.lengths: dict[int, int] = {}

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start = self.epoch, self.start
        while True:
            n, batches = self.epoch_batches(epoch, start)
            if not batches:
                raise InputError("sampler: the training split gives no batch")
            self.lengths[epoch] = n
            yield from batches
            epoch, start = epoch + 1, 0


def build_train_loader(
    dataset: torch.utils.data.Dataset,
    batch_sampler: torch.utils.data.Sampler,
    num_workers: int,
    device: torch.device,
) -> torch.utils.data.DataLoader:
    """The training ``DataLoader``: ``num_workers`` processes, pinned memory on CUDA (so the copy
    to the device with ``non_blocking`` overlaps), a fixed generator for the workers' base seed
    (the main process's global RNG is not touched, so resume stays exact)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
        pin_memory=device.type == "cuda",
    )


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers (per-image augmentation seeds)."""
    h = hashlib.blake2b(b"\x1f".join(str(p).encode() for p in parts), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1
