"""Batched embedding of image lists (progress bar, AMP on CUDA), with optional crops."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from hglv2.errors import InputError


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
) -> np.ndarray:
    """(N, D) float32 embeddings of every item's ``image``, in dataset order; float16 autocast on
    CUDA when ``amp``; a tqdm bar when ``progress`` (off without a terminal)."""
    from tqdm import tqdm

    device = torch.device(device)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    use_amp = amp and device.type == "cuda"
    model.eval()
    out = []
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=None if progress else True):
            ctx = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
            with ctx:
                e = model(batch["image"].to(device, non_blocking=True))
            out.append(e.float().cpu())
    if not out:
        raise InputError(f"{desc}: no images to embed")
    emb = torch.cat(out).numpy()
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise InputError(f"{desc}: image {int(np.flatnonzero(bad)[0])} gives a non-finite embedding")
    return emb
