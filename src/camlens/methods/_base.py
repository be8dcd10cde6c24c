"""What a method sees (:class:`LayerData`) and the maths shared by the methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from .._options import Rule

if TYPE_CHECKING:
    from .._scorer import Scorer


@dataclass(frozen=True)
class LayerData:
    """One layer's tensors from the engine's pass, and what else a method asked for.

    Shapes: ``activations`` (B, C, *S); ``gradients`` (B, K, C, *S) of the K target scores
    (``None`` for gradient-free methods); ``hvp`` (B, K, C, *S), the Hessian of each score
    times the activations; ``inputs`` (B, C_in, *S_in); ``input_gradients`` (B, K, C_in,
    *S_in) (through guided ReLUs for guided methods); ``classes`` (B, K) when the target
    names classes; ``classifier_weight`` (num_classes, C) for methods that read the linear
    head, or the ``ValueError`` that says why the model has none; ``scorer`` runs batched
    forwards of perturbed inputs; ``layer`` is the (name, module) of this layer.
    """

    activations: Tensor
    gradients: Tensor | None
    num_targets: int
    classes: Tensor | None = None
    classifier_weight: Tensor | ValueError | None = None
    counterfactual: bool = False
    inputs: Tensor | None = None
    input_gradients: Tensor | None = None
    hvp: Tensor | None = None
    scorer: Scorer | None = None
    layer: tuple[str, Any] | None = None
    seed: int = 0
    gradient_samples: Tensor | None = None
    layer_call: int = 1  # which call of the layer was captured (the last of the forward)

    @property
    def spatial_ndim(self) -> int:
        return self.activations.ndim - 2


class Method:
    """Base class: a method turns one layer's :class:`LayerData` into maps (B, K, *S).

    A method only does maths: it never registers hooks, runs the model itself or loops
    over images; the engine gives it what its class attributes ask for. Methods that weight
    channels implement :meth:`channel_weights` (B, K, C); methods that weight elements
    implement :meth:`weighted` (B, K, C, *S). Either gives ``eigen_smooth`` for free.

    ``options`` gives one rule per ``__init__`` option (``Real``, ``Count``, ``Flag``,
    ``Choice``, ``Ranks`` from ``camlens._options``); the registry checks what users
    pass against them before building the method, so ``__init__`` only stores values.
    """

    name: ClassVar[str] = ""
    options: ClassVar[dict[str, Rule]] = {}
    needs_gradients: ClassVar[bool] = True
    needs_classifier: ClassVar[bool] = False
    needs_hessian: ClassVar[bool] = False
    needs_input_gradients: ClassVar[bool] = False
    guided: ClassVar[bool] = False
    needs_scorer: ClassVar[bool] = False
    needs_layer: ClassVar[bool] = True
    class_specific: ClassVar[bool] = True
    supports_counterfactual: ClassVar[bool] = True
    # heavy: many forwards per image (thousands); left out of the CLI's `all`
    heavy: ClassVar[bool] = False

    def channel_weights(self, data: LayerData) -> Tensor:
        raise NotImplementedError

    def forwards(self, data: LayerData) -> int:
        """Extra forwards of the model this method runs for ``data``'s batch (0: none)."""
        return 0

    def weighted(self, data: LayerData) -> Tensor:
        """Weighted activations (B, K, C, *S), whose channel sum is the map before ReLU."""
        w = self.channel_weights(data)
        return w[(...,) + (None,) * data.spatial_ndim] * data.activations.unsqueeze(1)

    def compute(self, data: LayerData) -> Tensor:
        return torch.relu(weighted_channel_sum(data.activations, self.channel_weights(data)))

    def compute_layers(self, layers: list[LayerData]) -> list[Tensor]:
        """Maps of every layer (the engine fuses them); FullGrad overrides this."""
        return [self.compute(d) for d in layers]

    @property
    def supports_eigen_smooth(self) -> bool:
        cls = type(self)
        own_weights = cls.channel_weights is not Method.channel_weights
        return own_weights or cls.weighted is not Method.weighted

    def eigen(self, data: LayerData) -> Tensor:
        """``eigen_smooth``: the first principal component of the weighted activations."""
        w = self.weighted(data)
        b, k = w.shape[:2]
        proj = first_principal_projection(w.flatten(0, 1))
        return torch.relu(proj.view(b, k, *proj.shape[1:]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def spatial_mean(x: Tensor, lead: int) -> Tensor:
    """Mean over the trailing spatial dims after ``lead`` leading dims."""
    return x.flatten(lead).mean(dim=-1)


def weighted_channel_sum(activations: Tensor, weights: Tensor) -> Tensor:
    """``sum_c weights[b, k, c] * activations[b, c, ...]`` -> (B, K, *S)."""
    flat = activations.flatten(2)  # (B, C, P)
    out = torch.bmm(weights.to(flat.dtype), flat)  # (B, K, P)
    return out.view(*weights.shape[:2], *activations.shape[2:])


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 wherever ``den`` is 0 (no NaN, no inf)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, 1.0, den))


def minmax(x: Tensor, lead: int, eps: float = 0.0) -> Tensor:
    """Min-max normalise over the dims after ``lead``; constant slices become 0."""
    flat = x.flatten(lead)
    lo = flat.amin(-1, keepdim=True)
    span = flat.amax(-1, keepdim=True) - lo
    if eps:
        return ((flat - lo) / (span + eps)).view_as(x)
    return safe_divide(flat - lo, span).view_as(x)


def first_principal_projection(x: Tensor, center: bool = False) -> Tensor:
    """Project each (C, *S) slice of ``x`` (N, C, *S) on its first principal component.

    The matrix of a slice is (P, C): one row per spatial position. Its first right singular
    vector ``v1`` gives the projection ``X v1`` (N, *S), computed by one batched SVD. The
    SVD's sign is arbitrary; it is fixed so that the projection correlates positively with
    the channel sum ``X 1`` (so the map points at evidence, not at its absence); where
    that sum is ~0 (token layers after a LayerNorm), its largest-magnitude value is positive.
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
    # After a LayerNorm the channel sum is ~0 and says nothing: then the projection's
    # largest-magnitude value is made positive instead.
    weak = (agreement == 0) | (reference.norm(dim=1) <= 1e-4 * rows.flatten(1).norm(dim=1))
    peak = proj.gather(1, proj.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    agreement = torch.where(weak, peak, agreement)
    sign = torch.where(agreement < 0, -1.0, 1.0).to(proj.dtype)
    return (proj * sign[:, None]).view(n, *x.shape[2:])
