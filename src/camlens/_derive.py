"""Boxes and masks from maps: weak localisation and weak segmentation labels."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def _check(maps: Tensor, threshold: float) -> Tensor:
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps must be a tensor (..., H, W), got {type(maps).__name__}")
    if maps.ndim < 2:
        raise ValueError(f"maps must have shape (..., H, W), got {tuple(maps.shape)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number in [0, 1], got {threshold!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(
            f"threshold is a fraction of each map's maximum in [0, 1], got {threshold}"
        )
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps contain NaN or inf")
    return maps.float()


def _above(maps: Tensor, threshold: float) -> Tensor:
    peak = maps.flatten(-2).amax(-1)[..., None, None]
    return (maps >= threshold * peak) & (maps > 0)


def connected_components(mask: Tensor) -> Tensor:
    """Label 8-connected components of boolean masks (N, H, W): 0 for background.

    Labels propagate by 3x3 max-pooling with pointer jumping (a label is the flat index + 1
    of some pixel of the same component), all masks at once, on the masks' device.
    """
    n, h, w = mask.shape
    dtype = torch.float32 if h * w < 2**24 else torch.float64
    flat_ids = torch.arange(1, h * w + 1, device=mask.device, dtype=dtype).view(1, h, w)
    labels = torch.where(mask, flat_ids, torch.zeros((), dtype=dtype, device=mask.device))
    while True:
        grown = F.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0]
        grown = torch.where(mask, grown, 0).view(n, -1)
        # pointer jumping: a pixel takes the label of the pixel its label points to
        for _ in range(8):
            jumped = torch.gather(grown, 1, (grown.long() - 1).clamp_min(0))
            jumped = torch.where(grown > 0, jumped, 0)
            if torch.equal(jumped, grown):
                break
            grown = torch.maximum(grown, jumped)
        grown = grown.view(n, h, w)
        if torch.equal(grown, labels):
            return labels.long()
        labels = grown


def _labels(mask: Tensor) -> Tensor:
    """Component labels (N, H, W) of 8-connected regions; SciPy's C labelling on CPU if
    installed (same components, faster), else :func:`connected_components`."""
    ndimage = _ndimage() if mask.device.type == "cpu" else None
    if ndimage is not None:
        structure = np.zeros((3, 3, 3), dtype=bool)
        structure[1] = True  # 8-connected within a map, never across maps
        labels, _ = ndimage.label(mask.numpy(), structure=structure)
        return torch.from_numpy(labels.astype(np.int64))
    return connected_components(mask)


def masks(maps: Tensor, threshold: float = 0.2, largest_component: bool = False) -> Tensor:
    """Boolean masks (..., H, W): pixels at or above ``threshold`` x the map's maximum.

    With ``largest_component=True`` only the largest 8-connected region is kept (the
    region CAM's boxes are drawn around; ties go to the region met first in raster order).
    An all-zero map gives an empty mask.
    """
    maps = _check(maps, threshold)
    mask = _above(maps, threshold)
    if not largest_component:
        return mask
    shape = mask.shape
    flat = mask.reshape(-1, *shape[-2:])
    n, hw = flat.shape[0], shape[-1] * shape[-2]
    labels = _labels(flat).view(n, hw)
    counts = torch.zeros(n, int(labels.max()) + 1, dtype=torch.long, device=maps.device)
    counts.scatter_add_(1, labels, torch.ones_like(labels))
    counts[:, 0] = 0
    size = counts.gather(1, labels)  # each pixel's component size
    order = torch.arange(hw, 0, -1, device=maps.device)  # earlier pixels win ties
    best = (size * (hw + 1) + order * (size > 0)).argmax(dim=1, keepdim=True)
    best_label = labels.gather(1, best)
    keep = (labels == best_label) & (best_label > 0)
    return keep.view(shape)


def boxes(maps: Tensor, threshold: float = 0.2) -> Tensor:
    """Boxes (..., 4) as pixel ``x0, y0, x1, y1`` (x1, y1 exclusive), by the CAM paper's recipe.

    Keep the pixels at or above ``threshold`` x the map's maximum, take the bounding box of
    the largest 8-connected component (Zhou et al. 2016 use 0.2; the Grad-CAM paper 0.15).
    An all-zero map gives the empty box (0, 0, 0, 0).
    """
    if isinstance(maps, Tensor) and maps.device.type == "cpu" and _ndimage() is not None:
        return torch.from_numpy(_scipy_boxes(_check(maps, threshold).detach().numpy(),
                                             threshold))
    keep = masks(maps, threshold, largest_component=True)
    rows = keep.any(dim=-1)  # (..., H)
    cols = keep.any(dim=-2)  # (..., W)
    h, w = keep.shape[-2:]
    ys = torch.arange(h, device=keep.device)
    xs = torch.arange(w, device=keep.device)
    y0 = torch.where(rows, ys, h).amin(-1)
    y1 = torch.where(rows, ys + 1, 0).amax(-1)
    x0 = torch.where(cols, xs, w).amin(-1)
    x1 = torch.where(cols, xs + 1, 0).amax(-1)
    out = torch.stack([x0, y0, x1, y1], dim=-1)
    empty = ~rows.any(dim=-1)
    return torch.where(empty[..., None], torch.zeros_like(out), out)


def boxes_numpy(maps: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """:func:`boxes` of finite float maps (..., H, W) given as NumPy, with SciPy's labelling:
    the same boxes (int64), 3-5x faster on the CPU and without torch, so the dataset
    runner's writer threads never start an OpenMP team for it."""
    ndimage = _ndimage()
    if ndimage is None:  # pragma: no cover - scipy comes with the demo's scikit-image
        return boxes(torch.from_numpy(np.ascontiguousarray(maps)), threshold).numpy()
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim < 2:
        raise ValueError(f"maps must have shape (..., H, W), got {maps.shape}")
    if not np.isfinite(maps).all():
        raise ValueError("maps contain NaN or inf")
    return _scipy_boxes(maps, threshold)


def _scipy_boxes(maps: np.ndarray, threshold: float) -> np.ndarray:
    """The boxes of checked float32 maps (..., H, W), labelled by SciPy."""
    ndimage = _ndimage()
    h, w = maps.shape[-2:]
    flat = maps.reshape(-1, h, w)
    out = np.zeros((flat.shape[0], 4), np.int64)
    structure = np.ones((3, 3), bool)  # 8-connected
    for k, m in enumerate(flat):
        keep = (m >= threshold * m.max()) & (m > 0)
        labels, count = ndimage.label(keep, structure=structure)
        if count == 0:
            continue  # an all-zero map: the empty box
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes[0] = 0
        # labels are numbered in raster order of their first pixel: argmax picks the
        # largest region, and among equals the one met first, as masks() does
        ys, xs = ndimage.find_objects(labels)[int(sizes.argmax()) - 1]
        out[k] = (xs.start, ys.start, xs.stop, ys.stop)
    return out.reshape(*maps.shape[:-2], 4)


@functools.lru_cache(maxsize=1)
def _ndimage() -> Any:
    try:
        from scipy import ndimage
    except ImportError:
        return None
    return ndimage
