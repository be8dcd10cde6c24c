"""What a method sees (:class:`LayerData`) and the maths shared by the methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor


@dataclass(frozen=True)
class LayerData:
    """One layer's tensors from the engine's single forward/gradient pass.

    Shapes: ``activations`` (B, C, *S); ``gradients`` (B, K, C, *S) or ``None`` for
    gradient-free methods; ``classes`` (B, K) class indices when the target names classes;
    ``classifier_weight`` (num_classes, C) for methods that read the linear head, or the
    ``ValueError`` that says why the model has none.
    ``S`` is the layer's spatial shape (one, two or three dimensions).
    """

    activations: Tensor
    gradients: Tensor | None
    num_targets: int
    classes: Tensor | None = None
    classifier_weight: Tensor | ValueError | None = None
    counterfactual: bool = False

    @property
    def spatial_ndim(self) -> int:
        return self.activations.ndim - 2


class Method:
    """Base class: a method turns one layer's :class:`LayerData` into maps (B, K, *S).

    A method only does maths: it never registers hooks, runs the model or loops over
    images. The engine gives it everything it declares it needs.
    """

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = True
    needs_classifier: ClassVar[bool] = False
    class_specific: ClassVar[bool] = True

    def compute(self, data: LayerData) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def spatial_axes(x: Tensor, lead: int) -> tuple[int, ...]:
    """The trailing spatial axes of ``x`` after ``lead`` leading axes."""
    return tuple(range(lead, x.ndim))


def weighted_channel_sum(activations: Tensor, weights: Tensor) -> Tensor:
    """``sum_c weights[b, k, c] * activations[b, c, ...]`` -> (B, K, *S)."""
    flat = activations.flatten(2)  # (B, C, P)
    out = torch.bmm(weights, flat)  # (B, K, P)
    return out.view(*weights.shape[:2], *activations.shape[2:])


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 wherever ``den`` is 0 (no NaN, no inf)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, 1.0, den))


def first_principal_projection(x: Tensor, center: bool = False) -> Tensor:
    """Project each (C, *S) slice of ``x`` (N, C, *S) on its first principal component.

    The matrix of a slice is (P, C): one row per spatial position. Its first right singular
    vector ``v1`` gives the projection ``X v1`` (N, *S), computed by one batched SVD. The
    SVD's sign is arbitrary; it is fixed so that the projection correlates positively with
    the channel sum ``X 1`` (so the map points at evidence, not at its absence).
    """
    n, c = x.shape[:2]
    rows = x.reshape(n, c, -1).transpose(1, 2)  # (N, P, C)
    if rows.dtype not in (torch.float32, torch.float64):
        rows = rows.float()
    rows = torch.nan_to_num(rows)
    if center:
        rows = rows - rows.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(rows, full_matrices=False)
    proj = torch.bmm(rows, vh[:, :1, :].transpose(1, 2)).squeeze(-1)  # (N, P)
    reference = rows.sum(dim=-1)
    if center:
        reference = reference - reference.mean(dim=1, keepdim=True)
    agreement = (proj * reference).sum(dim=1)
    sign = torch.where(agreement < 0, -1.0, 1.0).to(proj.dtype)
    return (proj * sign[:, None]).view(n, *x.shape[2:])
