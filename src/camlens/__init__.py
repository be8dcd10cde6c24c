"""camlens: where a vision model looks. Class activation maps for any PyTorch model.

>>> import camlens
>>> maps = camlens.explain(model, images, method="gradcam")      # (B, H, W) in [0, 1]
"""

from __future__ import annotations

from . import methods as _methods  # noqa: F401  (registers the methods)
from . import targets
from ._explainer import Explainer, explain
from ._registry import available_methods, describe, register_method
from .targets import ClassTarget, SoftmaxTarget, TopK

__version__ = "0.1.0"

__all__ = [
    "ClassTarget",
    "Explainer",
    "SoftmaxTarget",
    "TopK",
    "__version__",
    "available_methods",
    "describe",
    "explain",
    "register_method",
    "targets",
]
