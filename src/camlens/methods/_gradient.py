"""Gradient-weighted methods: Grad-CAM and the variants that reweight its gradients.

Every method here receives the layer's activations ``A`` (B, C, *S) and the gradients
``G = dy/dA`` (B, K, C, *S) of each of the K target scores, and returns (B, K, *S).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .._options import Flag, Real
from .._registry import register_method
from ._base import LayerData, Method, first_principal_projection, safe_divide


def _grads(data: LayerData) -> Tensor:
    assert data.gradients is not None, "the engine must provide gradients"
    return data.gradients


def plus_plus_weights(activations: Tensor, g: Tensor, eps: float = 0.0) -> Tensor:
    """Grad-CAM++ channel weights (B, K, C) from activations (B, C, *S) and gradients
    (B, K, C, *S): ``sum_ij a_ij ReLU(g_ij)``, ``a = g^2 / (2 g^2 + sum A * g^3 + eps)``."""
    spatial = activations.ndim - 2
    g2 = g * g
    sum_a = activations.unsqueeze(1).flatten(3).sum(dim=-1)[(...,) + (None,) * spatial]
    alpha = safe_divide(g2, 2 * g2 + sum_a * g2 * g + eps)
    return (alpha * torch.relu(g)).flatten(3).sum(dim=-1)


@register_method("gradcam")
class GradCAM(Method):
    """Grad-CAM: channels weighted by their spatially averaged gradient, then ReLU.

    ``alpha_k = mean_ij dy/dA_k[ij]``, ``M = ReLU(sum_k alpha_k A_k)``.
    Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391

    Example: ``camlens.explain(model, x, method="gradcam", layer="layer4")``.
    """

    def channel_weights(self, data: LayerData) -> Tensor:
        return _grads(data).flatten(3).mean(dim=-1)  # (B, K, C)


@register_method("gradcam++")
class GradCAMPlusPlus(Method):
    """Grad-CAM++: pixel-wise weighted positive gradients, for several instances of a class.

    With ``g = dy/dA`` (the paper's exponential-score closed form):
    ``a_k[ij] = g^2 / (2 g^2 + sum_ab A_k[ab] g^3)``, ``w_k = sum_ij a_k[ij] ReLU(g[ij])``,
    ``M = ReLU(sum_k w_k A_k)``; ``a`` is 0 where its denominator is 0.
    Chattopadhyay et al., WACV 2018, https://arxiv.org/abs/1710.11063 (eq. 19).

    pytorch-grad-cam adds ``1e-6`` to the denominator; with gradients of order 1e-3 that
    term is as large as ``g^2`` and changes the map. We follow the paper (``eps=0``);
    ``eps=1e-6`` reproduces pytorch-grad-cam.
    """

    options = {"eps": Real(0)}

    def __init__(self, eps: float = 0.0) -> None:
        self.eps = float(eps)

    def channel_weights(self, data: LayerData) -> Tensor:
        return plus_plus_weights(data.activations, _grads(data), self.eps)


@register_method("xgradcam")
class XGradCAM(Method):
    """XGrad-CAM: gradients weighted by each channel's share of its own activation.

    ``w_k = sum_ij A_k[ij] / (sum_ab A_k[ab] + eps) * dy/dA_k[ij]``, ``M = ReLU(sum_k w_k A_k)``;
    a channel whose denominator is 0 gets weight 0. Fu et al., BMVC 2020,
    https://arxiv.org/abs/2008.02312 (``eps=0``, the default); ``eps=1e-7`` reproduces
    pytorch-grad-cam.

    The shares assume non-negative activations (a layer after a ReLU). A ``UserWarning``
    says when the division is ill-conditioned: a channel with ``|sum A + eps| < 1e-3 *
    sum |A|`` (its share, so its weight, can be over 1000 times a one-signed channel's,
    float32 rounding of its sum included; LayerNorm, Hardswish or BatchNorm outputs), or
    an ``eps`` above 1e-3 times the median channel's ``sum |A|`` (``eps``, not the sums,
    then sets the weights: MobileNetV3 with random weights has sums of 1e-10, against
    pytorch-grad-cam's 1e-7). Prefer a layer after a ReLU, or ``gradcam`` / ``layercam``,
    which do not divide.
    """

    options = {"eps": Real(0)}
    #: |sum A + eps| below this fraction of sum |A| makes a channel's share ill-conditioned
    cancellation = 1e-3

    def __init__(self, eps: float = 0.0) -> None:
        self.eps = float(eps)

    def channel_weights(self, data: LayerData) -> Tensor:
        a = data.activations.flatten(2)  # (B, C, P)
        den = a.sum(dim=-1) + self.eps  # (B, C)
        self._check_conditioning(den, a.abs().sum(dim=-1))
        share = safe_divide(a, den.unsqueeze(-1))  # (B, C, P)
        return (_grads(data).flatten(3) * share.unsqueeze(1)).sum(dim=-1)  # (B, K, C)

    def _check_conditioning(self, den: Tensor, magnitude: Tensor) -> None:
        """Warn where ``A / (sum A + eps)`` is ill-conditioned or ``eps`` swamps the sums."""
        tol = self.cancellation
        bad = (den.abs() < tol * magnitude) & (magnitude > 0)
        if bool(bad.any()):
            worst = float((den.abs() / magnitude)[bad].min())
            warnings.warn(
                f"xgradcam: {int(bad.sum())} of the {den.numel()} channel sums (images x "
                f"channels) nearly cancel, |sum A + eps| down to {worst:.1e} x sum |A|. "
                "XGrad-CAM divides by these sums, which assumes non-negative activations: "
                f"these channels are amplified up to {1 / max(worst, 1e-300):.0e} times and "
                "rounding errors with them. Use a layer after a ReLU, method='gradcam' or "
                "'layercam' (no division), or an eps larger than these sums",
                UserWarning,
                stacklevel=3,
            )
        alive = magnitude[magnitude > 0]
        if self.eps > 0 and alive.numel() and self.eps > tol * float(alive.median()):
            warnings.warn(
                f"xgradcam: eps={self.eps:g} is not negligible against this layer's channel "
                f"sums (median sum |A| {float(alive.median()):.1e}): eps, not the sums, sets "
                "the weights, so the map is not XGrad-CAM's (eps=1e-7 reproduces "
                "pytorch-grad-cam). Use a layer after a ReLU, or method='gradcam' or "
                "'layercam', which do not divide",
                UserWarning,
                stacklevel=3,
            )


@register_method("hirescam")
class HiResCAM(Method):
    """HiResCAM: element-wise gradient x activation summed over channels, then ReLU.

    ``M = ReLU(sum_k dy/dA_k * A_k)``; equals CAM (up to the factor 1/HW) on a
    GAP + linear head, and shows exactly the locations the score used.
    Draelos & Carin 2020, https://arxiv.org/abs/2011.08891
    """

    def weighted(self, data: LayerData) -> Tensor:
        return _grads(data) * data.activations.unsqueeze(1)

    def compute(self, data: LayerData) -> Tensor:
        return torch.relu(self.weighted(data).sum(dim=2))


@register_method("gradcam-elementwise")
class GradCAMElementWise(Method):
    """Element-wise Grad-CAM: ReLU of gradient x activation per element, summed over channels.

    ``M = sum_k ReLU(dy/dA_k * A_k)``. A variant introduced by pytorch-grad-cam (no paper);
    it keeps positive evidence per element before channels can cancel each other.
    """

    def weighted(self, data: LayerData) -> Tensor:
        return torch.relu(_grads(data) * data.activations.unsqueeze(1))

    def compute(self, data: LayerData) -> Tensor:
        return self.weighted(data).sum(dim=2)


@register_method("layercam")
class LayerCAM(Method):
    """LayerCAM: activations weighted by their own positive gradients, location by location.

    ``M = ReLU(sum_k ReLU(dy/dA_k) * A_k)``; reliable on shallow layers too.
    Jiang et al., IEEE TIP 2021, https://doi.org/10.1109/TIP.2021.3089943
    """

    def weighted(self, data: LayerData) -> Tensor:
        return torch.relu(_grads(data)) * data.activations.unsqueeze(1)

    def compute(self, data: LayerData) -> Tensor:
        return torch.relu(self.weighted(data).sum(dim=2))


@register_method("eigengradcam")
class EigenGradCAM(Method):
    """Eigen-Grad-CAM: first principal component of gradient x activation, then ReLU.

    ``M = ReLU((G * A) v1)`` with ``v1`` the first right singular vector of the (P, C)
    matrix of ``G * A``; class-specific, unlike Eigen-CAM. A pytorch-grad-cam variant of
    Eigen-CAM (Muhammad & Yeasin 2020, https://arxiv.org/abs/2008.00299).
    ``center=True`` subtracts the per-channel mean first, as pytorch-grad-cam does;
    the sign is fixed so the map agrees with ``sum_k G_k A_k`` (SVD's sign is arbitrary).
    """

    options = {"center": Flag()}

    def __init__(self, center: bool = False) -> None:
        self.center = bool(center)

    def weighted(self, data: LayerData) -> Tensor:
        return _grads(data) * data.activations.unsqueeze(1)

    def compute(self, data: LayerData) -> Tensor:
        prod = self.weighted(data)  # (B, K, C, *S)
        b, k = prod.shape[:2]
        proj = first_principal_projection(prod.flatten(0, 1), center=self.center)
        return torch.relu(proj.view(b, k, *proj.shape[1:]))
