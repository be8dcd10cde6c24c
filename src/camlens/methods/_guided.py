"""Guided methods: guided backpropagation and Guided Grad-CAM, pixel-level maps."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .._options import Choice, Flag
from .._postprocess import upsample
from .._registry import register_method
from ._base import LayerData, Method
from ._gradient import GradCAM


def _reduce(g: Tensor, channels: bool) -> Tensor:
    """(B, K, C, H, W) -> itself with ``channels``, else max |g| over colour channels."""
    return g if channels else g.abs().amax(dim=2)


@register_method("guided-backprop")
class GuidedBackprop(Method):
    """Guided backpropagation: the input gradient with ReLUs passing back only positive
    gradients where their input was positive.

    Springenberg et al., ICLR workshop 2015, https://arxiv.org/abs/1412.6806. Each
    piecewise-linear activation passes back ``f'(x) * max(g, 0)``: ReLU ``(x > 0) g+``
    (the paper's rule), ReLU6 / Hardtanh(lo, hi) ``(lo < x < hi) g+`` (nothing through a
    clipped unit), LeakyReLU(a) ``g+`` for ``x > 0`` and ``a g+`` below (see
    ``camlens._guided``). Modules (``nn.ReLU``, ``nn.ReLU6``, ``nn.Hardtanh``,
    ``nn.LeakyReLU``) and ``F.*`` / ``torch.*`` calls alike, in-place forms too (the
    override lives only during the call); other operations keep their gradient. A model
    with only smooth activations (SiLU, GELU, Hardswish) is refused: they have no linear
    region to keep. The map is ``max_c |g_c|`` at the input resolution; ``channels=True``
    returns the signed gradient per colour channel (B, 3, H, W), the colour picture of the
    papers.
    """

    needs_gradients = False
    needs_input_gradients = True
    guided = True
    needs_layer = False
    options = {"channels": Flag()}

    def __init__(self, channels: bool = False) -> None:
        self.channels = bool(channels)

    def compute(self, data: LayerData) -> Tensor:
        assert data.input_gradients is not None
        return _reduce(data.input_gradients, self.channels)


@register_method("guided-gradcam")
class GuidedGradCAM(Method):
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map.

    ``G_guided * Up(ReLU(sum_k mean(dy/dA_k) A_k))`` (Selvaraju et al. 2017, sec. 3.1);
    the Grad-CAM part uses ordinary gradients, the guided part guided activations (ReLU,
    ReLU6, Hardtanh, LeakyReLU: the rule of ``guided-backprop``). The map is
    ``max_c |.|`` per pixel; ``channels=True`` keeps the colour channels, as captum's
    ``GuidedGradCam`` returns them. ``Up`` is (bi/tri)linear (``interpolate="bilinear"``,
    the paper's, ``align_corners=False``); ``interpolate="nearest"`` repeats each cell of
    the Grad-CAM map (``F.interpolate(mode="nearest")``), as captum's default
    ``interpolate_mode="nearest"`` does.
    """

    needs_gradients = True
    needs_input_gradients = True
    guided = True
    options = {"channels": Flag(), "interpolate": Choice("bilinear", "nearest")}

    def __init__(self, channels: bool = False, interpolate: str = "bilinear") -> None:
        self.channels = bool(channels)
        self.interpolate = interpolate

    def compute(self, data: LayerData) -> Tensor:
        assert data.input_gradients is not None and data.gradients is not None
        cam = GradCAM().compute(data)
        size = data.input_gradients.shape[3:]
        if self.interpolate == "nearest":
            cam = F.interpolate(cam, size=tuple(size), mode="nearest")
        else:
            cam = upsample(cam, size)
        return _reduce(data.input_gradients * cam.unsqueeze(2), self.channels)
