"""Activation-based methods: maps from the layer's activations alone (no gradients)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._options import Flag
from .._registry import register_method
from ._base import LayerData, Method, first_principal_projection


@register_method("cam")
class CAM(Method):
    """CAM: activations weighted by the linear classifier that follows global average pooling.

    ``M_c = ReLU(sum_k w_k^c A_k)`` where ``y_c = sum_k w_k^c mean_ij A_k[ij] + b_c``.
    Zhou et al., CVPR 2016, https://arxiv.org/abs/1512.04150

    Needs the layer to feed global average pooling and then one ``nn.Linear`` that gives
    the model's output; the engine checks this numerically. The ReLU (as in Grad-CAM's
    comparison with CAM) makes CAM, Grad-CAM and HiResCAM give the same normalised map on
    such models; raw values are ``H*W`` times Grad-CAM's. ``counterfactual=True`` negates
    the weights.
    """

    needs_gradients = False
    needs_classifier = True

    def channel_weights(self, data: LayerData) -> Tensor:
        if data.classes is None:
            raise ValueError(
                "cam needs class indices as target (None, an int, a list of ints or TopK); "
                "for other targets use method='gradcam', which equals CAM on GAP+linear models"
            )
        if isinstance(data.classifier_weight, ValueError):
            raise data.classifier_weight
        assert data.classifier_weight is not None
        weights = data.classifier_weight.to(data.activations.dtype)[data.classes]  # (B, K, C)
        return -weights if data.counterfactual else weights


@register_method("eigencam")
class EigenCAM(Method):
    """Eigen-CAM: the activations projected on their first principal component (class-agnostic).

    ``M = ReLU(A v1)`` where ``v1`` is the first right singular vector of the (P, C) matrix
    of activations (one row per location). Muhammad & Yeasin, IJCNN 2020,
    https://arxiv.org/abs/2008.00299. The paper does not centre the matrix; pytorch-grad-cam
    does (``center=True`` reproduces it). SVD's sign is fixed so the map agrees with the
    channel sum. The same map is returned for every target.
    """

    needs_gradients = False
    class_specific = False
    options = {"center": Flag()}

    def __init__(self, center: bool = False) -> None:
        self.center = bool(center)

    def compute(self, data: LayerData) -> Tensor:
        proj = torch.relu(first_principal_projection(data.activations, center=self.center))
        return proj.unsqueeze(1).expand(-1, data.num_targets, *proj.shape[1:])
