"""camlens: where a vision model looks. Class activation maps for any PyTorch or Keras 3 model.

>>> import camlens
>>> maps = camlens.explain(model, images, method="gradcam")      # (B, H, W) in [0, 1]
"""

from __future__ import annotations

from . import methods as _methods  # noqa: F401  (registers the methods)
from . import targets
from ._derive import boxes, masks
from ._explainer import Explainer, compare, explain
from ._registry import available_methods, describe, register_method
from .audit import AuditResult, audit
from .models import load_model
from .runner import read_index, read_maps, run
from .targets import (
    BoxTarget,
    ClassTarget,
    SegmentationTarget,
    SimilarityTarget,
    SoftmaxTarget,
    TokenTarget,
    TopK,
)

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """Import ``camlens.viz`` (Pillow), ``camlens.cli``, ``camlens.metrics``,
    ``camlens.labels`` and ``camlens.augment`` on first use."""
    if name in ("viz", "cli", "metrics", "labels", "augment"):
        import importlib

        return importlib.import_module(f"camlens.{name}")
    raise AttributeError(f"module 'camlens' has no attribute {name!r}")


__all__ = [
    "AuditResult",
    "BoxTarget",
    "ClassTarget",
    "Explainer",
    "SegmentationTarget",
    "SimilarityTarget",
    "SoftmaxTarget",
    "TokenTarget",
    "TopK",
    "__version__",
    "audit",
    "available_methods",
    "boxes",
    "compare",
    "describe",
    "explain",
    "load_model",
    "masks",
    "read_index",
    "read_maps",
    "register_method",
    "run",
    "targets",
]
