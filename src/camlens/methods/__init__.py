"""The method catalogue; importing this package registers every method."""

from . import (  # noqa: F401  (registration side effects)
    _activation,
    _extra,
    _gradient,
    _guided,
    _perturbation,
)
from ._base import LayerData, Method

__all__ = ["LayerData", "Method"]
