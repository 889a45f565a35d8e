"""Image transforms: decoding (JPEG draft scaling), training augmentation, evaluation resize, and
the conversion of a batch of uint8 images to the model's normalised input.

:class:`ImageTransform` receives the image opened but not decoded, so a JPEG is decoded at 1/2,
1/4 or 1/8 scale when the crop allows it (``Image.draft``); its items are uint8 and
:func:`to_model_input` converts a whole batch on the device (4x less to copy than float32).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageTransform", "build_transform", "to_model_input"]

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
    <hglv2.dataset.HGLDv2Dataset>` does so for transforms with ``lazy_decode``). With ``draft`` a
    JPEG is then decoded at scale 1/k, k in {2, 4, 8} (libjpeg's DCT scaling, ``Image.draft``),
    the largest k at which the region to resize is still at least S (or ``resize``) pixels on
    each side, so the decoder does the first part of the downscaling: same geometry, pixel values
    within a few grey levels of a full decode. Images too small for that (the synthetic 64 px
    ones) are decoded in full, and the output equals torchvision's bit for bit.

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
        draft: bool = True,
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
    0.5-1) + flip when training with ``data.augment``, else resize + center crop. Outputs uint8;
    :func:`to_model_input` normalises with the ImageNet mean and std."""
    d = cfg["data"]
    size = d["image_size"]
    if train and d["augment"]:
        return ImageTransform(
            size,
            augment=True,
            scale=tuple(d.get("crop_scale", (0.5, 1.0))),
            ratio=tuple(d.get("crop_ratio", (0.75, 4 / 3))),
            train_resize=d.get("train_resize"),
        )
    return ImageTransform(size, resize=d["resize"], square_resize=d.get("eval_resize") == "square")


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
