"""Localisation: pointing games, box IoU, the ILSVRC localisation error and MaxBoxAccV2 (every
component's box of every threshold against the true boxes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._derive import _labels
from .._derive import boxes as derive_boxes


def _check_boxes(boxes: Tensor, h: int, w: int) -> Tensor:
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (B, 4) x0, y0, x1, y1, got {tuple(boxes.shape)}")
    x0, y0, x1, y1 = boxes.unbind(1)
    bad = (x0 < 0) | (y0 < 0) | (x1 > w) | (y1 > h) | (x1 <= x0) | (y1 <= y0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"box {boxes[i].tolist()} is empty or outside the {w} x {h} image; boxes are "
            "pixel x0, y0, x1, y1 with x1, y1 exclusive"
        )
    return boxes


def _box_masks(boxes: Tensor, h: int, w: int, device: torch.device) -> Tensor:
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    b = boxes.to(device)
    return ((xs >= b[:, 0, None, None]) & (xs < b[:, 2, None, None])
            & (ys >= b[:, 1, None, None]) & (ys < b[:, 3, None, None]))


_OBJECTS_HELP = (
    "objects are boxes (B, 4) x0, y0, x1, y1, a list of B boxes, a list of B lists of "
    "boxes (several objects per image), or boolean masks (B, H, W) like the maps"
)


def _object_region(maps: Tensor, objects: Any) -> Tensor:
    """Boolean object masks (B, H, W) from boxes or masks (see ``_OBJECTS_HELP``), checked
    against the maps; several boxes of one image make the union of their pixels."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got {tuple(maps.shape)}")
    b, h, w = maps.shape
    if isinstance(objects, (list, tuple)):
        return _boxes_per_image(objects, b, h, w, maps.device)
    try:
        objects = torch.as_tensor(objects)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"cannot read {type(objects).__name__} as objects; {_OBJECTS_HELP}"
        ) from None
    if objects.ndim == 3:
        if tuple(objects.shape) == tuple(maps.shape):
            return objects.bool().to(maps.device)
        hint = ""
        if objects.shape[-1] == 4:
            hint = ("; a (B, K, 4) tensor is not read as K boxes per image: pass a list of "
                    "per-image boxes (objects.tolist()), or squeeze a (B, 1, 4) tensor to "
                    "(B, 4) (objects[:, 0])")
        raise ValueError(
            f"objects of shape {tuple(objects.shape)} are neither masks like the maps "
            f"{tuple(maps.shape)} nor boxes (B, 4){hint}. {_OBJECTS_HELP}"
        )
    if objects.ndim != 2 or objects.shape[1] != 4:
        raise ValueError(f"objects of shape {tuple(objects.shape)}: {_OBJECTS_HELP}")
    if objects.shape[0] != b:
        raise ValueError(f"got {objects.shape[0]} boxes for {b} maps; give one per map")
    return _box_masks(_check_boxes(objects, h, w), h, w, maps.device)


def _boxes_per_image(
    objects: Sequence[Any], b: int, h: int, w: int, device: torch.device
) -> Tensor:
    """Masks (B, H, W) from a list of B entries, each one box or a list of boxes."""
    if len(objects) != b:
        raise ValueError(
            f"got {len(objects)} entries of objects for {b} maps: give one per map (a box, "
            "or a list of boxes); a single box for one map is [[x0, y0, x1, y1]]"
        )
    masks = []
    for i, entry in enumerate(objects):
        try:
            if isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], Tensor):
                boxes = torch.stack([e.detach().cpu().float() for e in entry])
            else:
                boxes = torch.as_tensor(entry, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"objects[{i}] is not a box or a list of boxes: {entry!r}") from None
        if boxes.ndim == 1 and boxes.numel() == 4:
            boxes = boxes[None]
        if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] == 0:
            raise ValueError(
                f"objects[{i}] has shape {tuple(boxes.shape)}; each entry is one box "
                "x0, y0, x1, y1 or a non-empty list of boxes (leave out images without one; "
                "masks go in one boolean (B, H, W) tensor)"
            )
        masks.append(_box_masks(_check_boxes(boxes, h, w), h, w, device).any(0))
    return torch.stack(masks)


def pointing_game(maps: Tensor, objects: Any, tolerance: int = 15) -> Tensor:
    """Hits (B,) bool: the map's maximum lies within ``tolerance`` pixels of the object.

    ``objects``: boxes (B, 4) (tensor, array or a list of B boxes), a list of B lists of
    boxes (several objects in an image: a hit on any of them counts), or boolean masks
    (B, H, W). Boxes are pixel x0, y0, x1, y1, x1 and y1 exclusive. Zhang et al. 2016
    (Excitation Backprop), https://arxiv.org/abs/1608.00507

    >>> pointing_game(maps, [[10, 10, 50, 60], [[0, 0, 8, 8], [30, 30, 40, 40]]])
    """
    region = _object_region(maps, objects)
    if tolerance > 0:  # grow the object by the tolerance (a disc)
        r = int(tolerance)
        yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
        disc = ((yy**2 + xx**2) <= r * r).float().to(maps.device)[None, None]
        region = F.conv2d(region.float()[:, None], disc, padding=r)[:, 0] > 0
    peak = maps.flatten(1).argmax(1)
    return region.flatten(1).gather(1, peak[:, None])[:, 0]


def energy_pointing_game(maps: Tensor, boxes: Any) -> Tensor:
    """Share (B,) of each map's energy inside its box (Score-CAM paper, sec. 5.2):
    ``sum(map * inside) / sum(map)``, 0 for an all-zero map.

    ``boxes``: as ``objects`` of :func:`pointing_game`: boxes (B, 4), a list of B boxes, a
    list of B lists of boxes (energy inside their union), or boolean masks (B, H, W).
    """
    inside = _object_region(maps, boxes)
    total = maps.flatten(1).sum(1)
    energy = (maps * inside).flatten(1).sum(1)
    return torch.where(total > 0, energy / torch.where(total > 0, total, 1), 0.0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU (B,) of pixel boxes ``x0, y0, x1, y1`` (x1, y1 exclusive)."""
    a, b = a.float(), b.float()
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp_min(0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp_min(0)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / torch.where(union > 0, union, 1), 0.0)


def localization_error(
    maps: Tensor, predicted: Tensor, true_labels: Tensor, true_boxes: Tensor,
    threshold: float = 0.2,
) -> float:
    """ILSVRC top-1 localisation error %: wrong class, or IoU < 0.5 with the true box.

    The box of each map comes from :func:`camlens.boxes` at ``threshold`` (CAM paper).
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got {tuple(maps.shape)}")
    b, h, w = maps.shape
    truth = _check_boxes(true_boxes, h, w).to(maps.device)
    found = derive_boxes(maps, threshold).to(maps.device)
    predicted = torch.as_tensor(predicted, device=maps.device).flatten()
    labels = torch.as_tensor(true_labels, device=maps.device).flatten()
    if predicted.numel() != b or labels.numel() != b:
        raise ValueError("give one predicted and one true label per map")
    wrong = (predicted != labels) | (box_iou(found, truth) < 0.5)
    return float(100 * wrong.float().mean())


def _component_boxes(mask: Tensor, values: Tensor | None = None
                     ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Boxes of the 8-connected components of boolean masks (N, H, W).

    Returns ``owner`` (C,) the mask of each component, ``boxes`` (C, 4) pixel x0, y0, x1, y1
    (x1, y1 exclusive) and, with ``values`` (N, H, W), each component's largest value (C,).
    """
    n, h, w = mask.shape
    labels = _labels(mask.cpu()).view(n, h * w)
    top = int(labels.max()) if labels.numel() else 0
    if top == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, torch.zeros(0, 4, dtype=torch.long), (
            None if values is None else torch.zeros(0))
    # a key unique across masks (the torch labelling numbers each mask from 1)
    key = labels + torch.arange(n)[:, None] * (top + 1)
    on = labels.flatten() > 0
    ids, inverse = torch.unique(key.flatten()[on], return_inverse=True)
    owner = ids // (top + 1)
    pos = torch.arange(h * w).repeat(n)[on]
    ys, xs = pos // w, pos % w
    count = ids.numel()

    def reduce(v: Tensor, how: str, start: int) -> Tensor:
        out = torch.full((count,), start, dtype=torch.long)
        return out.scatter_reduce(0, inverse, v, how, include_self=True)

    boxes = torch.stack([reduce(xs, "amin", w), reduce(ys, "amin", h),
                         reduce(xs, "amax", -1) + 1, reduce(ys, "amax", -1) + 1], 1)
    peak = None
    if values is not None:
        v = values.detach().cpu().double().flatten()[on]
        peak = torch.full((count,), -torch.inf, dtype=torch.float64).scatter_reduce(
            0, inverse, v, "amax", include_self=True)
    return owner, boxes, peak


def _pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU (A, B) of pixel boxes (x1, y1 exclusive), in float64."""
    a, b = a.double()[:, None], b.double()[None]
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), 0.0)


class MaxBoxAcc(NamedTuple):
    """MaxBoxAccV2 and its parts (Choe et al. 2020)."""

    value: float  # % : mean over the IoU thresholds of the best box accuracy
    per_iou: Tensor  # (D,) % : max over CAM thresholds of the box accuracy, per IoU threshold
    best_threshold: Tensor  # (D,) the CAM threshold reaching it (the lowest, on ties)
    accuracy: Tensor  # (D, T) % : box accuracy at each IoU and CAM threshold
    thresholds: Tensor  # (T,) the CAM thresholds, fractions of each map's maximum
    iou: Tensor  # (D,) the IoU thresholds


def _true_box_lists(true_boxes: Any, n: int) -> list[Tensor]:
    import numpy as np

    if isinstance(true_boxes, (Tensor, np.ndarray)):
        t = torch.as_tensor(true_boxes)
        if t.ndim == 2 and t.shape[-1] == 4:
            t = t[:, None]
        if t.ndim != 3 or t.shape[-1] != 4:
            raise ValueError(f"true_boxes must be (N, 4), (N, G, 4) or a list of N lists of "
                             f"[x0, y0, x1, y1], got shape {tuple(t.shape)}")
        lists = list(t)
    elif isinstance(true_boxes, Sequence):
        lists = []
        for i, b in enumerate(true_boxes):
            t = torch.as_tensor(np.asarray(b, dtype=np.float64))
            if t.ndim == 1:
                t = t[None]
            if t.ndim != 2 or t.shape[-1] != 4 or t.shape[0] == 0:
                raise ValueError(f"map {i}: give at least one true box [x0, y0, x1, y1], got "
                                 f"{b!r}")
            lists.append(t)
    else:
        raise TypeError(f"true_boxes must be boxes (N, 4) or a list of N lists of boxes, got "
                        f"{type(true_boxes).__name__}")
    if len(lists) != n:
        raise ValueError(f"got true boxes for {len(lists)} maps and {n} maps; give each map "
                         "its own list of boxes")
    for i, t in enumerate(lists):
        if bool(((t[:, 2] <= t[:, 0]) | (t[:, 3] <= t[:, 1])).any()):
            raise ValueError(f"map {i}: a true box is empty or inverted: {t.tolist()}; boxes "
                             "are [x0, y0, x1, y1] with x1 > x0 and y1 > y0")
    return [t.double() for t in lists]


def max_box_acc(
    maps: Any, true_boxes: Any, thresholds: Any = None,
    iou: Sequence[float] = (0.3, 0.5, 0.7),
) -> MaxBoxAcc:
    """MaxBoxAccV2: the box accuracy at the best map threshold, averaged over IoU thresholds.

    For a CAM threshold ``tau``, each map ``s = ReLU(M) / max ReLU(M)`` is cut at ``s >=
    tau`` (and ``s > 0``) and every 8-connected component gives its tight box (all of
    them, not only the largest: the "multiple contours" of v2). A map is correct at
    ``(tau, delta)`` when some component box and some true box of the map have IoU >=
    ``delta``. ``BoxAcc(tau, delta)`` = share of correct maps; ``MaxBoxAccV2 = mean_delta
    max_tau BoxAcc(tau, delta)``, delta in {0.3, 0.5, 0.7}. Choe et al. 2020, "Evaluating
    Weakly Supervised Object Localization Methods Right", https://arxiv.org/abs/2001.07437
    (v2 of the metric: the TPAMI version, https://arxiv.org/abs/2007.04178).

    ``maps``: (N, H, W), one per (image, class) pair whose class is known (the paper's
    "GT-known" setting); ``true_boxes``: boxes (N, 4), or a list of N lists of boxes of
    that class, in the maps' pixels (x1, y1 exclusive). ``thresholds``: default 0, 0.01,
    ..., 0.99. Differences from the authors' code: boxes have exclusive corners and IoU
    counts pixels exactly (their code adds 1 to widths of boxes whose x1 is already
    exclusive), and maps are thresholded in floating point (theirs at uint8 levels, with
    ``>``). An all-zero map has no box at any threshold (never correct). Returns percentages.
    """
    m = torch.as_tensor(maps).detach()
    if m.ndim != 3:
        raise ValueError(f"maps must be (N, H, W), got {tuple(m.shape)}")
    if not m.is_floating_point():
        m = m.double()
    if not bool(torch.isfinite(m).all()):
        raise ValueError("maps contain NaN or inf")
    n, h, w = m.shape
    if n == 0:
        raise ValueError("maps is empty; give at least one map")
    truth = _true_box_lists(true_boxes, n)
    taus = torch.arange(100, dtype=torch.float64) / 100 if thresholds is None else \
        torch.as_tensor(thresholds, dtype=torch.float64).flatten()
    if taus.numel() == 0 or bool(((taus < 0) | (taus > 1)).any()):
        raise ValueError(f"thresholds are fractions of each map's maximum in [0, 1], got "
                         f"{taus.tolist()}")
    deltas = torch.as_tensor(list(iou), dtype=torch.float64)
    if deltas.numel() == 0 or bool(((deltas <= 0) | (deltas > 1)).any()):
        raise ValueError(f"iou thresholds must lie in (0, 1], got {list(iou)}")
    s = m.cpu().double().clamp_min(0)
    peak = s.flatten(1).amax(1)
    s = torch.where(peak[:, None, None] > 0, s / peak.clamp_min(1e-300)[:, None, None], 0.0)
    t = taus.numel()
    best = torch.zeros(n, t, dtype=torch.float64)  # best IoU per map and CAM threshold
    chunk = max(1, (1 << 22) // max(1, t * h * w))
    for start in range(0, n, chunk):
        part = s[start:start + chunk]
        k = part.shape[0]
        cut = (part[:, None] >= taus[None, :, None, None]) & (part[:, None] > 0)
        owner, boxes, _ = _component_boxes(cut.view(k * t, h, w))
        if owner.numel() == 0:
            continue
        image = owner // t + start
        found = torch.zeros(k * t, dtype=torch.float64)
        for i in image.unique().tolist():
            sel = image == i
            ious = _pairwise_iou(boxes[sel], truth[i]).amax(1)
            found.scatter_reduce_(0, owner[sel], ious, "amax", include_self=True)
        best[start:start + k] = found.view(k, t)
    correct = best[None] >= deltas[:, None, None] - 1e-12  # (D, N, T)
    accuracy = correct.double().mean(1) * 100
    per_iou = accuracy.amax(1)
    where = (accuracy == per_iou[:, None]).double().argmax(1)  # the lowest threshold on ties
    return MaxBoxAcc(float(per_iou.mean()), per_iou, taus[where], accuracy, taus, deltas)
