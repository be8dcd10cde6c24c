"""More gradient and activation methods: FullGrad, ShapleyCAM, FEM, Finer-CAM,
Smooth Grad-CAM++, KPCA-CAM and the random baseline."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._options import Choice, Count, Ranks, Real
from .._postprocess import upsample
from .._registry import register_method
from ..targets import find_logits
from ._base import LayerData, Method, minmax, spatial_mean


def _bias(module: nn.Module) -> Tensor:
    """The bias a layer adds; for BatchNorm the effective one, ``b - mean * w / std``
    (a Keras layer's through its adapter's ``layer_bias``)."""
    keras_bias = getattr(module, "camlens_bias", None)
    if keras_bias is not None:
        return keras_bias()  # type: ignore[no-any-return]
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        assert module.running_mean is not None and module.running_var is not None
        scale = module.weight / torch.sqrt(module.running_var + module.eps)
        return (module.bias - module.running_mean * scale).detach()
    return module.bias.detach()  # type: ignore[union-attr]


_BIASED = {
    3: (nn.Conv1d, nn.BatchNorm1d),
    4: (nn.Conv2d, nn.BatchNorm2d),
    5: (nn.Conv3d, nn.BatchNorm3d),
}


@register_method("fullgrad")
class FullGrad(Method):
    """FullGrad: input-gradient x input plus every layer's bias-gradient, each normalised.

    ``S = psi(|dy/dx * x|) + sum_l sum_c psi(|dy/dz_l * b_l|_c)``, ``psi`` = min-max per
    channel, then (bi/tri)linear upsampling; every convolution and BatchNorm with a bias
    whose output has the input's number of dimensions is used (BatchNorm's effective bias)
    and ``layer`` is ignored.
    Srinivas & Fleuret, NeurIPS 2019, https://arxiv.org/abs/1905.00780.
    pytorch-grad-cam divides by ``max + 1e-7``; ``eps=1e-7`` reproduces it.
    """

    needs_input_gradients = True
    supports_counterfactual = False
    options = {"eps": Real(0)}

    def __init__(self, eps: float = 0.0) -> None:
        self.eps = float(eps)

    def own_layers(self, model: nn.Module, inputs: Tensor) -> list[tuple[str, nn.Module]]:
        bias_layers = getattr(model, "bias_layers", None)
        if callable(bias_layers):  # a Keras model's adapter
            return bias_layers(inputs)  # type: ignore[no-any-return]
        kinds = _BIASED.get(inputs.ndim, ())
        found = [
            (n, m) for n, m in model.named_modules()
            if type(m) in kinds and getattr(m, "bias", None) is not None
        ]
        if not found:
            names = " or ".join(k.__name__ for k in kinds) or "convolution or BatchNorm"
            raise ValueError(
                f"fullgrad needs {names} layers with a bias for inputs of shape "
                f"{tuple(inputs.shape)}; this model has none"
            )
        return found

    def compute_layers(self, layers: list[LayerData]) -> list[Tensor]:
        first = layers[0]
        assert first.inputs is not None and first.input_gradients is not None
        x, size = first.inputs, tuple(first.inputs.shape[2:])
        total = minmax((first.input_gradients * x.unsqueeze(1)).abs(), 3, self.eps).sum(2)
        for d in layers:
            assert d.gradients is not None and d.layer is not None
            if d.spatial_ndim != len(size):  # a BatchNorm1d on pooled (B, C) features
                continue
            bias = _bias(d.layer[1]).to(d.gradients.dtype)
            shaped = bias.view(1, 1, -1, *([1] * d.spatial_ndim))
            part = minmax((d.gradients * shaped).abs(), 3, self.eps)  # (B, K, C, *S)
            # upsampling is linear: summing the channels first, then upsampling once, is
            # the same as upsampling every channel (C times less work and memory)
            total = total + upsample(part.sum(2), size)
        return [total]


@register_method("shapleycam")
class ShapleyCAM(Method):
    """ShapleyCAM: Grad-CAM weights corrected by the Hessian, a Shapley-value view of CAM.

    ``w_k = mean_ij (dy/dA - 1/2 H A)_k[ij]``, ``M = ReLU(sum_k w_k A_k)``, with ``H A``
    the Hessian-vector product of the score with the activations.
    Cai 2025, https://arxiv.org/abs/2501.06261 (as pytorch-grad-cam computes it).
    """

    needs_hessian = True

    def channel_weights(self, data: LayerData) -> Tensor:
        assert data.gradients is not None and data.hvp is not None
        return spatial_mean(data.gradients - 0.5 * data.hvp, 3)


@register_method("fem")
class FEM(Method):
    """FEM: channels weighted by the share of their locations above ``mean + k * std``.

    ``w_k = mean_ij [A_k[ij] > mean(A_k) + k std(A_k)]``, ``M = ReLU(sum_k w_k A_k)``;
    class-agnostic. Fuad et al., IPTA 2020, https://hal.science/hal-02963298 (``k = 2``);
    ``k >= 0``: the locations that stand out above the channel's mean.
    """

    needs_gradients = False
    class_specific = False
    options = {"k": Real(0)}

    def __init__(self, k: float = 2.0) -> None:
        self.k = float(k)

    def channel_weights(self, data: LayerData) -> Tensor:
        a = data.activations.flatten(2)
        threshold = a.mean(-1, keepdim=True) + self.k * a.std(-1, unbiased=False, keepdim=True)
        w = (a > threshold).to(a.dtype).mean(-1)  # (B, C)
        return w.unsqueeze(1).expand(-1, data.num_targets, -1)


@register_method("randomcam")
class RandomCAM(Method):
    """Random-CAM: channels weighted uniformly at random in [-1, 1] (seeded).

    The baseline sanity checks compare a method against: a map that reads the activations
    but nothing about the class (so it is class-agnostic; the weights depend on ``seed``
    only, the same for every image).
    """

    needs_gradients = False
    class_specific = False

    def channel_weights(self, data: LayerData) -> Tensor:
        b, c = data.activations.shape[:2]
        g = torch.Generator(device="cpu").manual_seed(data.seed)
        w = torch.rand(c, generator=g) * 2 - 1  # the same weights for every image
        return w.to(data.activations).expand(b, data.num_targets, c)


@register_method("finercam")
class FinerCAM(Method):
    """Finer-CAM: Grad-CAM of the target's margin over its most similar classes.

    Score ``s = sum_j p_j (y_c - alpha y_j) / sum_j p_j`` over the classes ``j`` whose logits
    are nearest the target's (ranks ``comparison``, 1 = the nearest), ``p`` the softmax;
    then Grad-CAM of ``s``. Zhang et al. 2025, https://arxiv.org/abs/2501.11309
    (as the authors' code and pytorch-grad-cam's ``FinerCAM`` with its
    ``FinerWeightedTarget``, which add 1e-9 to ``sum_j p_j``; so do we).

    ``alpha`` is the paper's comparison strength ``gamma``: 0 gives Grad-CAM of ``y_c``, 1
    the plain logit margins; larger values stress the differences further; negative ones
    would add the similar classes' evidence and are refused. ``weighting="mean"`` averages
    the margins instead, ``s = y_c - alpha mean_j y_j``: torchcam's ``FinerCAM`` (and the
    authors' ``FinerDefaultTarget``); ``alpha=0.6, weighting="mean"`` with the default
    ranks (1, 2, 3) reproduces torchcam's defaults (``gamma=0.6, num_references=3``).
    """

    options = {"alpha": Real(0), "comparison": Ranks(),
               "weighting": Choice("softmax", "mean")}

    def __init__(self, alpha: float = 1.0, comparison: tuple[int, ...] = (1, 2, 3),
                 weighting: str = "softmax") -> None:
        self.alpha = float(alpha)
        self.comparison = tuple(int(r) for r in comparison)
        self.weighting = weighting

    def transform_scores(self, output: Any, classes: Tensor | None) -> Tensor:
        if classes is None:
            raise ValueError("finercam needs class targets (None, an int, ints or TopK)")
        logits = find_logits(output)
        n = logits.shape[1]
        ranks = [r for r in self.comparison if r < n]
        if not ranks:
            raise ValueError(f"finercam needs more than {n} classes to compare with")
        target = logits.gather(1, classes)  # (B, K)
        distance = (logits.detach().unsqueeze(1) - target.detach().unsqueeze(2)).abs()
        distance.scatter_(2, classes.unsqueeze(2), -1.0)  # the target itself first, even on ties
        order = distance.argsort(dim=2)  # (B, K, n)
        similar = order[:, :, ranks]  # (B, K, R)
        y = logits.gather(1, similar.flatten(1)).view_as(similar)
        margins = target.unsqueeze(2) - self.alpha * y  # (B, K, R)
        if self.weighting == "mean":
            return margins.mean(2)
        probs = torch.softmax(logits, dim=1)
        p = probs.gather(1, similar.flatten(1)).view_as(similar)
        return (p * margins).sum(2) / (p.sum(2) + 1e-9)

    def channel_weights(self, data: LayerData) -> Tensor:
        assert data.gradients is not None
        return spatial_mean(data.gradients, 3)


@register_method("smoothgradcam++")
class SmoothGradCAMPlusPlus(Method):
    """Smooth Grad-CAM++: Grad-CAM++ with gradient moments averaged over noisy inputs.

    With ``D^n = dy/dA`` at ``x + n_i`` (``n_i ~ N(0, std^2)``, ``num_samples`` draws, seeded)
    and ``A`` the clean activations: ``a = mean(D^2) / (2 mean(D^2) + sum A * mean(D^3))``,
    ``w_k = sum_ij a ReLU(mean(D))``. Omeiza et al. 2019, https://arxiv.org/abs/1908.01224.
    torchcam's ``SmoothGradCAMpp`` (defaults N = 4, std = 0.3, kept here) sums
    ``A * mean(D^3)`` inside the denominator and weights with the last sample's gradient
    instead of the mean; we follow the paper.
    """

    options = {"num_samples": Count(1), "std": Real(0)}

    def __init__(self, num_samples: int = 4, std: float = 0.3) -> None:
        self.noise_samples = int(num_samples)
        self.noise_std = float(std)

    def channel_weights(self, data: LayerData) -> Tensor:
        samples = data.gradient_samples
        assert samples is not None
        g2 = (samples * samples).mean(0)
        g3 = (samples**3).mean(0)
        sum_a = data.activations.unsqueeze(1).flatten(3).sum(-1)[
            (...,) + (None,) * data.spatial_ndim
        ]
        den = 2 * g2 + sum_a * g3
        alpha = torch.where(den == 0, torch.zeros_like(g2), g2 / torch.where(den == 0, 1.0, den))
        return (alpha * torch.relu(samples.mean(0))).flatten(3).sum(-1)


@register_method("kpcacam")
class KPCACAM(Method):
    """KPCA-CAM: the first kernel principal component of the activations (class-agnostic).

    Kernel PCA (sigmoid kernel ``tanh(gamma <a, b> + coef0)``, ``gamma = 1 / C`` by default)
    over the locations' channel vectors, centred as pytorch-grad-cam does, projected on the
    first component (scaled by the square root of its eigenvalue, as scikit-learn's
    ``KernelPCA.fit_transform``); the sign follows the channel sum. Karmani et al. 2024,
    https://arxiv.org/abs/2410.00267. Batched ``torch.linalg.eigh``, no scikit-learn.
    NaN activations count as 0 and +-inf as the dtype's largest finite values, as in
    Eigen-CAM (``torch.nan_to_num``), so both give finite maps where a layer overflows.
    """

    needs_gradients = False
    class_specific = False
    options = {"kernel": Choice("sigmoid", "rbf", "linear", "poly", "cosine"),
               "gamma": Real(0, low_open=True, none=True), "coef0": Real()}

    def __init__(self, kernel: str = "sigmoid", gamma: float | None = None,
                 coef0: float = 1.0) -> None:
        self.kernel, self.gamma, self.coef0 = kernel, gamma, float(coef0)

    def _kernel(self, x: Tensor) -> Tensor:
        gamma = self.gamma if self.gamma is not None else 1.0 / x.shape[-1]
        dot = x @ x.transpose(1, 2)
        if self.kernel == "sigmoid":
            return torch.tanh(gamma * dot + self.coef0)
        if self.kernel == "rbf":
            sq = (x * x).sum(-1)
            return torch.exp(-gamma * (sq[:, :, None] + sq[:, None, :] - 2 * dot))
        if self.kernel == "poly":
            return (gamma * dot + self.coef0) ** 3
        if self.kernel == "cosine":
            norm = x.norm(dim=-1).clamp_min(1e-12)
            return dot / (norm[:, :, None] * norm[:, None, :])
        return dot

    def compute(self, data: LayerData) -> Tensor:
        a = data.activations
        b, c = a.shape[:2]
        # non-finite values as in first_principal_projection (Eigen-CAM), in a's dtype
        rows = torch.nan_to_num(a.flatten(2).transpose(1, 2)).double()  # (B, P, C)
        rows = rows - rows.mean(1, keepdim=True)
        k = self._kernel(rows)
        ones = torch.full_like(k, 1.0 / k.shape[1])
        kc = k - ones @ k - k @ ones + ones @ k @ ones
        vals, vecs = torch.linalg.eigh(kc)
        proj = vecs[:, :, -1] * vals[:, -1:].clamp_min(0).sqrt()  # (B, P)
        sign = torch.where((proj * rows.sum(-1)).sum(-1) < 0, -1.0, 1.0).to(proj)
        proj = torch.relu(proj * sign[:, None]).clamp_max(torch.finfo(a.dtype).max)
        proj = proj.to(a.dtype).view(b, *a.shape[2:])
        return proj.unsqueeze(1).expand(-1, data.num_targets, *proj.shape[1:])



