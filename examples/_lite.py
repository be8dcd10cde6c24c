"""Shared by the task examples: the bundled EfficientNet-Lite0's last feature map as a
module, and photos resized and normalised for it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Features(nn.Module):
    """The classifier's last feature map (B, 1280, H / 32, W / 32): the layer to explain."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.extract_features(x)


def to_input(image: np.ndarray, size: tuple[int, int], preprocess: Any) -> Tensor:
    """An RGB uint8 photo resized to ``size`` (multiples of 32) and normalised: (1, 3, H, W)."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    return (x - mean) / std


def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
