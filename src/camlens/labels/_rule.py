"""The maps-to-masks rule: each class's map divided by its maximum against a constant
background score, every pixel to the best one (VOC masks), and one box per connected
component above a threshold (weak boxes); per image of a folder run, the maps placed onto
the part of the image the model saw."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..metrics import _component_boxes, _confusion

IGNORE = 255
MAX_CLASSES = 254  # values 1..254 in an 8-bit mask; 0 is background and 255 ignore


def _as_maps(maps: Any) -> Tensor:
    if isinstance(maps, np.ndarray):
        maps = torch.from_numpy(maps)
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps must be a tensor or array (B, K, H, W), got {type(maps).__name__}")
    if maps.ndim != 4:
        raise ValueError(f"maps must be (B, K, H, W): a map per image and class, got "
                         f"{tuple(maps.shape)}; add the class axis with maps[:, None]")
    if not maps.is_floating_point():
        maps = maps.double()
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps contain NaN or inf")
    if maps.shape[1] > MAX_CLASSES:
        raise ValueError(f"{maps.shape[1]} classes do not fit an 8-bit VOC mask (at most "
                         f"{MAX_CLASSES}: 0 is background and 255 ignore); label fewer classes")
    return maps.detach()


def _as_present(present: Any, b: int, k: int) -> Tensor:
    """(B, K) bool from a (B, K) bool tensor/array or a list of B lists of class positions."""
    if isinstance(present, (Tensor, np.ndarray)):
        t = torch.as_tensor(present)
        if t.shape != (b, k) or t.dtype != torch.bool:
            raise ValueError(f"present must be (B, K) = ({b}, {k}) bool, got "
                             f"{tuple(t.shape)} {t.dtype}; or give a list of class positions "
                             "per image")
        return t.cpu()
    if not isinstance(present, Sequence) or len(present) != b:
        raise ValueError(f"present must give the classes of each of the {b} images: a (B, K) "
                         "bool tensor or a list of B lists of class positions")
    out = torch.zeros(b, k, dtype=torch.bool)
    for i, classes in enumerate(present):
        for c in classes:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < k:
                raise ValueError(f"image {i}: class {c!r} is not a position 0..{k - 1} of the "
                                 "maps' class axis")
            out[i, int(c)] = True
    return out


def _normalised(maps: Tensor, keep: Tensor) -> Tensor:
    """``ReLU(M) / max ReLU(M)`` per map, 0 for classes not present and all-zero maps."""
    s = maps.clamp_min(0)
    peak = s.flatten(2).amax(-1)[..., None, None]
    s = torch.where(peak > 0, s / torch.where(peak > 0, peak, 1), 0)
    return s * keep.to(s.device)[..., None, None]


def _band(bg_threshold: float, ignore_band: Any) -> tuple[float, float]:
    if ignore_band is None:
        if (isinstance(bg_threshold, bool) or not isinstance(bg_threshold, (int, float))
                or not 0 <= bg_threshold <= 1):
            raise ValueError(f"bg_threshold is the background's score in [0, 1] (0.15 is "
                             f"usual), got {bg_threshold!r}")
        return float(bg_threshold), float(bg_threshold)
    try:
        lo, hi = (float(v) for v in ignore_band)
    except (TypeError, ValueError):
        raise ValueError(f"ignore_band must be two numbers (low, high), got {ignore_band!r}"
                         ) from None
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"ignore_band must satisfy 0 <= low <= high <= 1, got {ignore_band!r}")
    return lo, hi


def _assign(scores: Tensor, values: Tensor, lo: float, hi: float) -> Tensor:
    """Labels (..., H, W) from normalised scores (..., P, H, W): the value of the best class
    where its score is above ``hi``, 0 at or below ``lo``, ignore in between."""
    if scores.shape[-3] == 0:
        return torch.zeros(scores.shape[:-3] + scores.shape[-2:], dtype=torch.uint8)
    best = scores.amax(-3)
    arg = scores.argmax(-3)  # the first of equal scores: the lower class
    label = values.to(arg.device)[arg]
    out = torch.where(best > hi, label, torch.where(best > lo, IGNORE, 0))
    return out.to(torch.uint8).cpu()


def pseudo_masks(
    maps: Any, present: Any, bg_threshold: float = 0.15,
    ignore_band: tuple[float, float] | None = None,
) -> np.ndarray:
    """Pseudo-label masks (B, H, W) uint8 in the Pascal VOC convention from class maps.

    ``s_k = ReLU(M_k) / max ReLU(M_k)`` for each class ``k`` the image has (``present``), 0
    for the others; the background scores ``bg_threshold`` everywhere; each pixel takes
    ``argmax`` over ``(bg_threshold, s_0, ..., s_{K-1})``, written as 0 (background) or
    ``k + 1``, i.e. ``k + 1`` where ``max_k s_k > bg_threshold``. With ``ignore_band=(lo,
    hi)``, two thresholds: ``k + 1`` where ``max_k s_k > hi``, 0 where it is ``<= lo``, 255
    (ignore) in between (``bg_threshold`` is then not used). 0.15 is the usual background
    threshold for evaluating CAM seeds (IRN, Ahn et al. 2019,
    https://arxiv.org/abs/1904.05044).

    ``maps``: (B, K, H, W), a map per image and class (K <= 254); ``present``: (B, K) bool
    or a list of B lists of class positions ``k``.

    >>> pseudo_masks(maps, [[0, 2]], bg_threshold=0.15)   # image 0 has classes 0 and 2
    """
    m = _as_maps(maps)
    b, k = m.shape[:2]
    keep = _as_present(present, b, k)
    lo, hi = _band(bg_threshold, ignore_band)
    scores = _normalised(m, keep)
    return _assign(scores, torch.arange(1, k + 1), lo, hi).numpy()


def weak_boxes(
    maps: Any, present: Any, threshold: float = 0.2,
) -> list[list[tuple[int, tuple[int, int, int, int], float]]]:
    """Weak boxes per image: ``[(k, (x0, y0, x1, y1), score), ...]``, x1 and y1 exclusive.

    For each class ``k`` of an image, the map ``s_k = ReLU(M_k) / max ReLU(M_k)`` is cut at
    ``s_k >= threshold`` (and ``s_k > 0``); every 8-connected component gives one box (all
    of them, as MaxBoxAccV2 scores them), with ``score = max s_k`` inside it (1 for the
    component that holds the map's peak). Sorted by class, then score. The CAM paper boxes
    at 0.2 (Zhou et al. 2016, https://arxiv.org/abs/1512.04150).
    """
    m = _as_maps(maps)
    b, k = m.shape[:2]
    keep = _as_present(present, b, k)
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            or not 0 <= threshold <= 1):
        raise ValueError(f"threshold is a fraction of each map's maximum in [0, 1], got "
                         f"{threshold!r}")
    found: list[list[tuple[int, tuple[int, int, int, int], float]]] = [[] for _ in range(b)]
    pairs = keep.nonzero().tolist()
    if not pairs:
        return found
    rows = torch.tensor([i for i, _ in pairs])
    cols = torch.tensor([c for _, c in pairs])
    s = _normalised(m, keep)[rows, cols].cpu()
    owner, boxes, peak = _component_boxes((s >= threshold) & (s > 0), s)
    assert peak is not None
    for o, box, score in zip(owner.tolist(), boxes.tolist(), peak.tolist()):
        found[pairs[o][0]].append((pairs[o][1], tuple(box), float(score)))  # type: ignore[arg-type]
    for items in found:
        items.sort(key=lambda item: (item[0], -item[2], item[1]))
    return found


def _placed(maps: Tensor, box: tuple[int, int, int, int], height: int, width: int) -> Tensor:
    """Maps (P, h, w) of the model's input, resized bilinearly onto ``box`` of an image of
    ``height`` x ``width`` pixels (zero outside it)."""
    x0, y0, x1, y1 = box
    full = torch.zeros(maps.shape[0], height, width, dtype=torch.float64)
    if maps.shape[0] == 0:
        return full
    inner = F.interpolate(maps[None].double(), size=(y1 - y0, x1 - x0), mode="bilinear",
                          align_corners=False)[0]
    full[:, y0:y1, x0:x1] = inner
    return full


def _label_image(
    good: dict[str, Tensor], b: int, present: list[int], crop: tuple[int, int, int, int],
    height: int, width: int, lo: float, hi: float, box_threshold: float,
    truth: np.ndarray | None, classes: int,
) -> dict[str, tuple[Tensor, list[Any], Tensor | None]]:
    """Image ``b`` of a batch, for every method: (mask (H, W) uint8 in the image's pixels,
    weak boxes, confusion against the true mask or None)."""
    p = len(present)
    values = torch.tensor([k + 1 for k in present], dtype=torch.long)
    outside = torch.ones(height, width, dtype=torch.bool)
    outside[crop[1]:crop[3], crop[0]:crop[2]] = False
    made = {}
    for method, maps in good.items():
        m = maps[b] if maps[b].ndim == 3 else maps[b][None]
        full = _placed(m[:p].cpu(), crop, height, width)
        scores = _normalised(full[None], torch.ones(1, p, dtype=torch.bool))[0]
        mask = _assign(scores, values, lo, hi)
        mask[outside] = IGNORE
        found = weak_boxes(full[None], [list(range(p))], box_threshold)[0]
        part = None
        if truth is not None:
            part = _confusion(mask, torch.from_numpy(truth), classes, IGNORE)
        made[method] = (mask, [(present[k], box, score) for k, box, score in found], part)
    return made
