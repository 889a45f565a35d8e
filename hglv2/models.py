"""Retrieval models: backbone -> pooling -> (LayerNorm) -> linear projection -> L2 normalisation.

``build_model(backbone="resnet50", embedding_dim=512, pretrained=True)`` is the paper's model (the
authors' ``RetrievalNet``: pooling ``gem`` (learnable p), ``avg`` or ``max``; a LayerNorm without
affine parameters; BatchNorm frozen). The model has two parts, ``backbone`` and ``head`` (pooling,
LayerNorm, projection), which get their own learning rates (:meth:`EmbeddingModel.param_groups`).
The backbones are torchvision's ResNet-18/34/50/101 (ImageNet weights through torchvision's weight registry,
i.e. from the torch hub cache or a download) and ``tiny``, a small convolutional net for CPU demos
on 64x64 images. Pretrained weights that cannot be had (no internet, no cached file) raise
:class:`hglv2.errors.NetworkError` with the file to provide; random initialisation happens only when
asked for (``pretrained=False``).

Device helpers: :func:`resolve_device` (``auto``, ``cpu``, ``cuda:N``, checked) and
:func:`autocast` (float16 on CUDA when asked).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from hglv2.errors import InputError, NetworkError

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "tiny")
POOLINGS = ("gem", "avg", "max")


class GeM(nn.Module):
    r"""Generalised-mean pooling over the spatial dimensions.

    .. math:: f_c = \Big(\frac{1}{HW} \sum_{h,w} \max(x_{chw}, \epsilon)^p\Big)^{1/p}

    p = 1 is average pooling, p -> inf max pooling. Input (B, C, H, W) -> output (B, C).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = False) -> None:
        super().__init__()
        p_t = torch.tensor(float(p))
        if learnable:
            self.p = nn.Parameter(p_t)
        else:
            self.register_buffer("p", p_t)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.to(x.dtype)
        return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class TinyConvNet(nn.Module):
    """A small conv net for CPU demos: 4 stages of stride-2 conv3x3-norm-ReLU.

    GroupNorm by default, so each image's features do not depend on the rest of the batch (DDP
    gives the same result as one process). Output (B, ``width * 4``, H / 16, W / 16).
    """

    def __init__(self, width: int = 32, norm: str = "group") -> None:
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        for k in range(4):
            layers.append(nn.Conv2d(chans[k], chans[k + 1], 3, stride=2, padding=1, bias=False))
            if norm == "group":
                layers.append(nn.GroupNorm(8, chans[k + 1]))
            elif norm == "batch":
                layers.append(nn.BatchNorm2d(chans[k + 1]))
            else:
                raise InputError(f"model: unknown norm {norm!r} (expected group or batch)")
            layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.out_channels = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _resnet(name: str, pretrained: bool) -> tuple[nn.Module, int]:
    import torchvision

    weights = None
    if pretrained:
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    model = torchvision.models.get_model(name, weights=None)
    if weights is not None:
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # URLError, OSError, hash mismatch ...
            hub = torch.hub.get_dir()
            fname = weights.url.rsplit("/", 1)[-1]
            raise NetworkError(
                f"could not load the ImageNet weights of {name} ({type(exc).__name__}: {exc}); "
                f"put {fname} (from {weights.url}) in {hub}/checkpoints/, or train from random "
                "initialisation with `pretrained: false` / --random-init"
            ) from None
        model.load_state_dict(state)
    out = model.fc.in_features
    body = nn.Sequential(*(m for n, m in model.named_children() if n not in ("avgpool", "fc")))
    return body, out


class EmbeddingModel(nn.Module):
    """Backbone -> pooling -> optional LayerNorm -> Linear(C, D) -> L2 normalise.

    Input images (B, 3, H, W) normalised with the ImageNet mean/std; output (B, D) unit vectors.

    Args:
        pooling: ``gem`` (:class:`GeM` with ``gem_p``, learnable when ``gem_learnable``), ``avg``
            or ``max`` (global average / max over H x W).
        layernorm, layernorm_affine: a LayerNorm over the pooled features, with or without its
            scale and shift (the authors' ``resnet_ln`` models have none).
        freeze_batchnorm: BatchNorm layers always run in eval mode (running statistics frozen, as
            the authors do; their scale and shift still learn), so a sample's embedding does not
            depend on the rest of its batch.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        embedding_dim: int = 512,
        pretrained: bool = True,
        pooling: str = "gem",
        gem_p: float = 3.0,
        gem_learnable: bool = False,
        layernorm: bool = True,
        layernorm_affine: bool = True,
        freeze_batchnorm: bool = False,
        width: int = 32,
        norm: str = "group",
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise InputError(f"model: unknown backbone {backbone!r} (expected one of {', '.join(BACKBONES)})")
        if pooling not in POOLINGS:
            raise InputError(f"model: unknown pooling {pooling!r} (expected one of {', '.join(POOLINGS)})")
        if embedding_dim < 1:
            raise InputError(f"model: embedding_dim must be >= 1, got {embedding_dim}")
        if backbone == "tiny":
            if pretrained:
                raise InputError("model: the tiny backbone has no pretrained weights; set pretrained: false")
            self.backbone: nn.Module = TinyConvNet(width=width, norm=norm)
            channels = self.backbone.out_channels
        else:
            self.backbone, channels = _resnet(backbone, pretrained)
        if pooling == "gem":
            self.pool: nn.Module = GeM(gem_p, learnable=gem_learnable)
        elif pooling == "avg":
            self.pool = nn.AdaptiveAvgPool2d(1)
        else:
            self.pool = nn.AdaptiveMaxPool2d(1)
        self.norm = (
            nn.LayerNorm(channels, elementwise_affine=layernorm_affine) if layernorm else nn.Identity()
        )
        self.proj = nn.Linear(channels, embedding_dim)
        self.freeze_batchnorm = freeze_batchnorm
        if freeze_batchnorm:
            self.train(self.training)

    def train(self, mode: bool = True) -> EmbeddingModel:
        super().train(mode)
        if self.freeze_batchnorm:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters after the backbone: pooling (learnable GeM p), LayerNorm, projection."""
        return [p for m in (self.pool, self.norm, self.proj) for p in m.parameters() if p.requires_grad]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.backbone(images)).flatten(1)
        x = self.proj(self.norm(x))
        return F.normalize(x.float(), dim=-1)


def build_model(**kwargs) -> EmbeddingModel:
    """:class:`EmbeddingModel` from keyword arguments (the ``model:`` section of a config)."""
    return EmbeddingModel(**kwargs)


def resolve_device(device: str | None) -> torch.device:
    """``auto``/None -> cuda when available else cpu; anything else as given (checked)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r}: not a torch device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"--device {device!r}: expected cpu or cuda[:N]")
    return dev


def autocast(device: torch.device, amp: bool):
    """float16 autocast on CUDA when ``amp``, else a no-op context."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
