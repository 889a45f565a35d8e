"""hglv2: Hierarchical Google Landmarks v2 dataset pipeline, SupRank rank losses and hierarchical
retrieval metrics."""

__version__ = "0.1.0"

__all__ = ["__version__"]
