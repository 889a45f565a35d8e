"""The one embedder (:func:`embed_images`: batched, progress bar, AMP and channels-last on CUDA,
finite check), used by the evaluation protocols and the trainer, and :class:`ImageList` (images
by path, with optional crops)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from hglv2.errors import InputError
from hglv2.models import autocast
from hglv2.transforms import to_model_input


class ImageList(torch.utils.data.Dataset):
    """Images by path under ``root``; ``boxes[i]`` = (x0, y0, x1, y1) crops image i first (the
    Revisited Oxford/Paris query regions), ``None`` keeps it whole."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        paths: Sequence[str],
        transform: Callable[[Image.Image], Any],
        boxes: Sequence[Sequence[float] | None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.paths = list(paths)
        self.boxes = list(boxes) if boxes is not None else [None] * len(self.paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.root / self.paths[index]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except FileNotFoundError:
            raise InputError(f"{path}: image not found") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{path}: unreadable image ({exc})") from None
        box = self.boxes[index]
        if box is not None:
            img = img.crop(tuple(int(round(float(v))) for v in box))
        return {"image": self.transform(img)}


def embed_images(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    amp: bool = True,
    progress: bool = True,
    desc: str = "embedding",
    channels_last: bool = False,
    check_finite: bool = True,
    with_labels: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """(N, D) float32 embeddings of every item's ``image``, in dataset order.

    uint8 images are normalised on ``device`` (:func:`~hglv2.transforms.to_model_input`); the
    batches are pinned on CUDA, with float16 autocast when ``amp`` and NHWC memory layout when
    ``channels_last``. A tqdm bar when ``progress`` (off without a terminal). The model runs in
    eval mode and is left in the mode it came in. ``check_finite``: a non-finite embedding is an
    :class:`~hglv2.errors.InputError` naming the image. ``with_labels``: returns
    ``(embeddings, labels)``, the labels (N, L) of the items' ``labels``.
    """
    from tqdm import tqdm

    device = torch.device(device)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    was_training = model.training
    model.eval()
    out, labels = [], []
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc=desc, unit="batch", disable=None if progress else True):
                with autocast(device, amp):
                    e = model(to_model_input(batch["image"], device, channels_last=channels_last))
                out.append(e.float().cpu())
                if with_labels:
                    labels.append(batch["labels"])
    finally:
        model.train(was_training)
    if not out:
        raise InputError(f"{desc}: no images to embed")
    emb = torch.cat(out).numpy()
    if check_finite:
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            raise InputError(f"{desc}: image {int(np.flatnonzero(bad)[0])} gives a non-finite embedding")
    if with_labels:
        return emb, torch.cat(labels).numpy()
    return emb
