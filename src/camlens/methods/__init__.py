"""The method catalogue; importing this package registers every method."""

from . import _activation, _gradient  # noqa: F401  (registration side effects)
from ._base import LayerData, Method

__all__ = ["LayerData", "Method"]
