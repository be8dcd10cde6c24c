"""Maps after the method: upsampling, min-max normalising, fusing several layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def upsample(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Resize maps (B, K, *S) to ``size`` with (bi/tri)linear interpolation.

    ``align_corners=False`` (pixel centres, like OpenCV's ``resize``).
    """
    size = tuple(size)
    if tuple(maps.shape[2:]) == size:
        return maps
    if len(size) != maps.ndim - 2:
        raise ValueError(
            f"size {size} has {len(size)} dimensions but the maps have {maps.ndim - 2}"
        )
    return F.interpolate(maps, size=size, mode=_MODES[len(size)], align_corners=False)


def normalize(maps: Tensor) -> Tensor:
    """Min-max normalise each map (over its trailing spatial dims) to [0, 1].

    A constant map (all zeros included) becomes all zeros: no division by zero, no NaN.
    """
    flat = maps.flatten(2)
    lo = flat.amin(dim=-1, keepdim=True)
    hi = flat.amax(dim=-1, keepdim=True)
    span = hi - lo
    ok = span > 0
    out = torch.where(ok, (flat - lo) / torch.where(ok, span, torch.ones_like(span)), 0.0)
    return out.view_as(maps)


def fuse(maps: Sequence[Tensor]) -> Tensor:
    """Average several layers' maps (same size) after normalising each."""
    if len(maps) == 1:
        return maps[0]
    return torch.stack([normalize(m) for m in maps]).mean(dim=0)
