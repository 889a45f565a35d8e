"""Evaluate a trained model from its checkpoint: embed a dataset's images and report the metrics.

- :mod:`hglv2.evaluation.checkpoint`: a run folder or checkpoint file -> the trained model and its
  config (``torch.load(weights_only=True)``, :func:`hglv2.models.build_model`);
- :mod:`hglv2.evaluation.embed`: the one embedder of a dataset (progress bar, AMP and
  channels-last on CUDA, finite check), used here and by the trainer, and image lists with
  optional crops (Revisited Oxford/Paris queries);
- :mod:`hglv2.evaluation.protocols`: the split protocol (``--data DIR --query --gallery``), the
  Revisited Oxford/Paris protocol (``--protocol roxford5k|rparis6k``) and the paper's landmark
  table.
"""

from hglv2.evaluation.checkpoint import load_trained_model
from hglv2.evaluation.embed import ImageList, embed_images
from hglv2.evaluation.protocols import evaluate_revisited, evaluate_splits, landmark_table

__all__ = [
    "ImageList",
    "embed_images",
    "evaluate_revisited",
    "evaluate_splits",
    "landmark_table",
    "load_trained_model",
]
