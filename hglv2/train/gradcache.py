r"""Gradient caching: a batch larger than the accelerator's memory, with the gradient of the whole batch.

A rank loss couples every embedding of the batch, so a batch of B images cannot be split into
independent micro-batches. Gradient caching (Gao et al. 2021, "Scaling deep contrastive learning
batch size under memory limited setup") computes the exact gradient in three passes:

1. embed the batch in sub-batches of ``chunk`` images without a graph (``torch.no_grad``);
2. compute the loss on the concatenated embeddings ``E`` (a leaf that requires grad) and
   back-propagate it: this gives :math:`G = \partial L / \partial E` (and the gradients of the
   loss's own parameters, e.g. proxies), with only the loss's memory;
3. for each sub-batch ``k``, forward it again *with* a graph and back-propagate its slice,
   ``E_k.backward(G_k)``; by the chain rule the parameter gradients accumulate to
   :math:`\sum_k G_k^\top \partial E_k / \partial \theta = \partial L / \partial \theta`.

Peak activation memory is that of one sub-batch; the cost is one extra forward pass. Our losses
never build the B x N x N tensor of the reference code, so the loss of step 2 fits for B = 4096.

**Randomness.** The RNG states (CPU and the CUDA device) before each sub-batch's first forward
are recorded and restored for its second forward (inside :func:`torch.random.fork_rng`), so
dropout and other random layers draw the same masks; the global RNG ends where one forward pass
leaves it. Data augmentation is not replayed because it is not re-run: the images of the batch are
transformed once by the data loader and both passes read the same tensors (kept where they are,
e.g. pinned CPU memory, and moved to the device one sub-batch at a time).

**BatchNorm.** BatchNorm layers in training mode normalise each sub-batch with its own statistics
in both passes (the same values twice, so the gradient is exact for that model: "ghost" batch
norm with ghost batch ``chunk``, like DDP without SyncBatchNorm; it differs from one forward of
the whole batch). Their running statistics are updated once per sub-batch by the first pass; the
second pass's updates are undone (running mean, variance and ``num_batches_tracked`` restored).
With frozen BatchNorm (eval-mode layers, the authors' ResNets) or no BatchNorm, the gradient is
identical to the direct computation on the whole batch.

**DDP.** Pass a :class:`~torch.nn.parallel.DistributedDataParallel` model and a ``loss_fn`` that
gathers the global batch (:func:`hglv2.losses.gather_batch`): the re-forwards run under
``no_sync()`` except the last, so the gradients are all-reduced once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from hglv2.errors import InputError

__all__ = ["grad_cache_backward"]


def _capture_rng(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def _replay_rng(state: tuple[Tensor, Tensor | None], device: torch.device) -> Iterator[None]:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def _batchnorm_snapshot(model: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """(buffer, copy) of every running statistic a training-mode BatchNorm would update."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked):
                if buf is not None:
                    out.append((buf, buf.detach().clone()))
    return out


def grad_cache_backward(
    model: nn.Module,
    images: Tensor,
    loss_fn: Callable[[Tensor], Any],
    chunk: int,
    *,
    device: torch.device | str | None = None,
    backward: Callable[[Tensor], None] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> Any:
    """Back-propagate ``loss_fn(model(images))`` through ``model`` in sub-batches of ``chunk``.

    Args:
        model: maps a (b, ...) image tensor to (b, D) embeddings; in the mode it should train in.
        images: the whole batch (B, ...), on any device; sub-batches are moved to ``device``.
        loss_fn: embeddings (B, D) (a leaf requiring grad, the model's output dtype) -> the loss
            (0-d tensor), or a tuple whose first item is the loss (returned as is).
        chunk: sub-batch size (>= 1).
        device: where the model runs (default: the device of its first parameter).
        backward: how to back-propagate the loss (default ``loss.backward()``; with AMP
            ``lambda l: scaler.scale(l).backward()``: the cached gradient is then scaled too).
        autocast: a factory of the context each forward runs in (e.g. AMP autocast).

    Returns:
        what ``loss_fn`` returned. Gradients are accumulated into ``.grad`` as by
        ``backward(loss)`` after one forward of the whole batch (see the module docstring for
        BatchNorm in training mode).
    """
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise InputError(f"train.grad_cache_chunk: must be an integer >= 1, got {chunk!r}")
    if images.size(0) == 0:
        raise InputError("grad cache: empty batch")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else images.device
    device = torch.device(device)
    autocast = autocast or contextlib.nullcontext
    backward = backward or (lambda loss: loss.backward())
    bounds = [(a, min(a + chunk, images.size(0))) for a in range(0, images.size(0), chunk)]

    # pass 1: embeddings without a graph, RNG state recorded per sub-batch
    states, parts = [], []
    with torch.no_grad():
        for a, b in bounds:
            states.append(_capture_rng(device))
            with autocast():
                parts.append(model(images[a:b].to(device, non_blocking=True)))
    bn_stats = _batchnorm_snapshot(model)

    # pass 2: the loss and its gradient with respect to the embeddings
    emb = torch.cat(parts).detach().requires_grad_(True)
    del parts
    result = loss_fn(emb)
    loss = result[0] if isinstance(result, tuple) else result
    backward(loss)
    grad = emb.grad
    if grad is None:  # the loss does not depend on the embeddings: no gradient to the model
        return result

    # pass 3: re-forward each sub-batch with a graph and back-propagate its slice
    no_sync = getattr(model, "no_sync", None)
    try:
        for k, (a, b) in enumerate(bounds):
            sync = no_sync() if no_sync is not None and k < len(bounds) - 1 else contextlib.nullcontext()
            with sync, _replay_rng(states[k], device):
                with autocast():
                    out = model(images[a:b].to(device, non_blocking=True))
                out.backward(grad[a:b].to(out.dtype))
    finally:
        with torch.no_grad():
            for buf, saved in bn_stats:
                buf.copy_(saved)
    return result
