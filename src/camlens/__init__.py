"""camlens: where a vision model looks. Class activation maps for any PyTorch or Keras 3 model.

>>> import camlens
>>> maps = camlens.explain(model, images, method="gradcam")      # (B, H, W) in [0, 1]

The public API is imported on its first use (PEP 562), so that ``camlens methods``,
``camlens --help`` and other light uses of the package never import torch.
"""

from __future__ import annotations

import sys
import types
import typing

__version__ = "0.1.0"

if typing.TYPE_CHECKING:
    from . import targets
    from ._derive import boxes, masks
    from ._errors import CamlensError, UsageError
    from ._explainer import Explainer, compare, explain
    from ._registry import available_methods, describe, register_method
    from ._validate import InputTooSmallError
    from .audit import AuditResult, audit
    from .evaluation import EvaluationResult, EvaluationSpec, evaluate_folder
    from .models import load_model
    from .runner import RunFolderError, RunResult, RunSpec, read_index, read_maps, run
    from .targets import (
        BoxTarget,
        ClassTarget,
        SegmentationTarget,
        SimilarityTarget,
        SoftmaxTarget,
        TokenTarget,
        TopK,
    )
    from .viz import ImageError

_SUBMODULES = ("viz", "cli", "metrics", "labels", "augment")


# Where each name of the public API lives (``None``: the module itself).
_API: dict[str, tuple[str, str | None]] = {
    "AuditResult": ("audit", "AuditResult"),
    "BoxTarget": ("targets", "BoxTarget"),
    "CamlensError": ("_errors", "CamlensError"),
    "ClassTarget": ("targets", "ClassTarget"),
    "EvaluationResult": ("evaluation", "EvaluationResult"),
    "EvaluationSpec": ("evaluation", "EvaluationSpec"),
    "Explainer": ("_explainer", "Explainer"),
    "ImageError": ("viz._image", "ImageError"),
    "InputTooSmallError": ("_validate", "InputTooSmallError"),
    "RunFolderError": ("runner._index", "RunFolderError"),
    "RunResult": ("runner._spec", "RunResult"),
    "RunSpec": ("runner._spec", "RunSpec"),
    "SegmentationTarget": ("targets", "SegmentationTarget"),
    "SimilarityTarget": ("targets", "SimilarityTarget"),
    "SoftmaxTarget": ("targets", "SoftmaxTarget"),
    "TokenTarget": ("targets", "TokenTarget"),
    "TopK": ("targets", "TopK"),
    "UsageError": ("_errors", "UsageError"),
    "audit": ("audit", "audit"),
    "available_methods": ("_registry", "available_methods"),
    "boxes": ("_derive", "boxes"),
    "compare": ("_explainer", "compare"),
    "describe": ("_registry", "describe"),
    "evaluate_folder": ("evaluation", "evaluate_folder"),
    "explain": ("_explainer", "explain"),
    "load_model": ("models", "load_model"),
    "masks": ("_derive", "masks"),
    "read_index": ("runner", "read_index"),
    "read_maps": ("runner", "read_maps"),
    "register_method": ("_registry", "register_method"),
    "run": ("runner", "run"),
    "targets": ("targets", None),
}


def _load_api() -> None:
    """Import the whole public API (torch with it) and bind it on the package, the
    methods registered first, as a plain ``import camlens`` did before."""
    import importlib

    importlib.import_module("camlens.methods")  # registers the methods
    for name, (module, attr) in _API.items():
        found = importlib.import_module(f"camlens.{module}")
        globals()[name] = found if attr is None else getattr(found, attr)


def __getattr__(name: str) -> object:
    """The public API on first use (and the submodules it imports, as ``import camlens``
    did before it was lazy); ``camlens.viz`` (Pillow), ``camlens.cli``,
    ``camlens.metrics``, ``camlens.labels`` and ``camlens.augment`` on their own."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"camlens.{name}")
    if not name.startswith("__"):  # also the submodules the API brings (camlens.models)
        _load_api()
        if name in globals():
            return globals()[name]
    raise AttributeError(f"module 'camlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))


class _Package(types.ModuleType):
    """The package's module type: ``camlens.audit`` stays the function when the subpackage
    of the same name is imported (the import system binds each submodule on its parent)."""

    def __setattr__(self, name: str, value: typing.Any) -> None:
        if name == "audit" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "AuditResult",
    "BoxTarget",
    "CamlensError",
    "ClassTarget",
    "EvaluationResult",
    "EvaluationSpec",
    "Explainer",
    "ImageError",
    "InputTooSmallError",
    "RunFolderError",
    "RunResult",
    "RunSpec",
    "SegmentationTarget",
    "SimilarityTarget",
    "SoftmaxTarget",
    "TokenTarget",
    "TopK",
    "UsageError",
    "__version__",
    "audit",
    "available_methods",
    "boxes",
    "compare",
    "describe",
    "evaluate_folder",
    "explain",
    "load_model",
    "masks",
    "read_index",
    "read_maps",
    "register_method",
    "run",
    "targets",
]
