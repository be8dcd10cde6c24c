"""The numbers of a bias audit: per-image statistics of a map, per-class totals, the flag rule.

Everything here is plain numpy on one map at a time (the audit streams a run's maps), so
each piece can be checked by hand on a few pixels.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

IGNORE = 255  # mask value of pixels left out (Pascal VOC's object borders)
REFERENCE_SIDE = 224  # the pointing game's 15 px tolerance is for 224 px inputs
REFERENCE_TOLERANCE = 15


# ---------------------------------------------------------------- the object on the map
@dataclass
class Region:
    """Where the object of one image is, in the photo's pixels.

    ``mask``: (H, W) uint8 in the Pascal VOC convention (class index + 1 on the object, 0
    background, 255 ignore); ``boxes``: ``[x0, y0, x1, y1]`` (x1, y1 exclusive) with
    ``box_classes`` (one class or ``None`` per box). ``cls``: the image's true class, whose
    pixels or boxes count as the object when the annotations say which is which.
    A mask wins over boxes when both are given.
    """

    mask: np.ndarray | None = None
    boxes: list[list[float]] = field(default_factory=list)
    box_classes: list[int | None] = field(default_factory=list)
    cls: int | None = None

    @property
    def kind(self) -> str | None:
        if self.mask is not None:
            return "mask"
        return "box" if self.boxes else None


def centres(shape: tuple[int, int], crop: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Photo coordinates ``(xs (W,), ys (H,))`` of the centres of a map's pixels, for a map of
    ``shape`` (H, W) that covers ``crop`` = (x0, y0, x1, y1) of the photo."""
    h, w = shape
    x0, y0, x1, y1 = (float(v) for v in crop)
    xs = x0 + (np.arange(w) + 0.5) * (x1 - x0) / w
    ys = y0 + (np.arange(h) + 0.5) * (y1 - y0) / h
    return xs, ys


def object_on_grid(
    region: Region, shape: tuple[int, int], crop: Sequence[float], size: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(inside, ignore)``: (H, W) bool on a map's grid, sampled at its pixel centres.

    ``size`` is the photo's (width, height): a mask of another size is an error. With a
    known ``region.cls``, only that class's pixels (mask) or boxes count as the object when
    the annotations hold any of them; otherwise every object pixel or box does.
    """
    xs, ys = centres(shape, crop)
    ignore = np.zeros(shape, bool)
    if region.mask is not None:
        mask = region.mask
        width, height = int(size[0]), int(size[1])
        if mask.shape != (height, width):
            raise ValueError(
                f"the mask is {mask.shape[1]} x {mask.shape[0]} pixels but the image is "
                f"{width} x {height}; a mask must have its image's size"
            )
        ix = np.clip(np.floor(xs).astype(np.int64), 0, width - 1)
        iy = np.clip(np.floor(ys).astype(np.int64), 0, height - 1)
        sampled = mask[np.ix_(iy, ix)]
        ignore = sampled == IGNORE
        own = region.cls is not None and bool((mask == region.cls + 1).any())
        inside = sampled == region.cls + 1 if own else (sampled > 0) & ~ignore
        return inside, ignore
    inside = np.zeros(shape, bool)
    own = region.cls is not None and region.cls in region.box_classes
    for box, cls in zip(region.boxes, region.box_classes or [None] * len(region.boxes)):
        if own and cls != region.cls:
            continue
        cols = (xs >= box[0]) & (xs < box[2])
        rows = (ys >= box[1]) & (ys < box[3])
        inside |= rows[:, None] & cols[None, :]
    return inside, ignore


# ---------------------------------------------------------------- one image
def default_tolerance(shape: tuple[int, int]) -> int:
    """The pointing game's 15 px at 224 px, scaled to a map of ``shape``."""
    return max(0, round(REFERENCE_TOLERANCE * min(shape) / REFERENCE_SIDE))


def border_width(shape: tuple[int, int], share: float) -> int:
    """Pixels of the border band: ``share`` of the shorter side, at least 1."""
    return max(1, round(share * min(shape)))


def map_stats(
    cam: np.ndarray, inside: np.ndarray | None = None, ignore: np.ndarray | None = None, *,
    tolerance: int | None = None, border: float = 0.1, top: float = 0.1,
) -> dict[str, Any]:
    """The audit's numbers for one map (H, W) >= 0; ``inside`` marks the object (None
    without annotations), ``ignore`` pixels left out of every sum.

    - ``energy_on``: ``sum(map * inside) / sum(map)`` over the kept pixels (the energy
      pointing game, Wang et al. 2020, https://arxiv.org/abs/1910.01279); ``energy_off``
      is ``1 - energy_on``; ``object_area``: the object's share of the kept pixels (what a
      uniform map would score);
    - ``hit``: the map's maximum lies within ``tolerance`` pixels of the object (the
      pointing game, Zhang et al. 2016, https://arxiv.org/abs/1608.00507; default: 15 px
      of a 224 px input, scaled to the map);
    - without annotations: ``border_energy``, the share of the energy in the outer band
      of width ``border`` x the shorter side; ``concentration``, the share in the map's
      hottest ``top`` of pixels; ``touches_border``, whether the hot region (>= half the
      maximum) reaches the edge.

    An all-zero map (nothing argues for the class at this layer) gives ``empty=True`` and
    ``None`` for every share.
    """
    m = np.asarray(cam, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"expected one map (H, W), got shape {m.shape}")
    if not np.isfinite(m).all() or (m < 0).any():
        raise ValueError("a map must be finite and >= 0 (camlens's maps are in [0, 1])")
    keep = np.ones(m.shape, bool) if ignore is None else ~np.asarray(ignore, bool)
    w = np.where(keep, m, 0.0)
    total = float(w.sum())
    out: dict[str, Any] = {"empty": total <= 0}
    band = border_width(m.shape, border)
    edge = np.zeros(m.shape, bool)
    edge[:band], edge[-band:], edge[:, :band], edge[:, -band:] = True, True, True, True
    if total > 0:
        k = max(1, math.ceil(top * m.size))
        out["border_energy"] = float(w[edge].sum()) / total
        out["concentration"] = float(np.sort(w, axis=None)[-k:].sum()) / total
        hot = m >= 0.5 * m.max()
        out["touches_border"] = bool(hot[0].any() or hot[-1].any() or hot[:, 0].any()
                                     or hot[:, -1].any())
    else:
        out.update(border_energy=None, concentration=None, touches_border=None)
    if inside is None:
        return out
    inside = np.asarray(inside, bool)
    kept = int(keep.sum())
    out["object_area"] = float((inside & keep).sum()) / kept if kept else None
    if total > 0 and inside.any():
        on = float(w[inside].sum()) / total
        out.update(energy_on=on, energy_off=1.0 - on, hit=_hit(m, inside, tolerance))
    else:
        out.update(energy_on=None, energy_off=None, hit=None)
    return out


def _hit(m: np.ndarray, inside: np.ndarray, tolerance: int | None) -> bool:
    """The map's maximum (first in row-major order) within ``tolerance`` px of the object."""
    r = default_tolerance(m.shape) if tolerance is None else int(tolerance)
    py, px = divmod(int(np.argmax(m)), m.shape[1])
    ys, xs = np.nonzero(inside)
    return bool(((ys - py) ** 2 + (xs - px) ** 2 <= r * r).any())


# ---------------------------------------------------------------- per class
SHARES = ("energy_on", "energy_off", "object_area", "hit", "border_energy", "concentration",
          "touches_border")


class Totals:
    """Running sums of one class's images (constant memory per class)."""

    def __init__(self) -> None:
        self.images = 0
        self.known = 0  # images whose true class is known (accuracy / precision)
        self.correct = 0
        self.empty = 0
        self.n: Counter[str] = Counter()
        self.sum: Counter[str] = Counter()
        self.sq: Counter[str] = Counter()
        self.other: Counter[int] = Counter()  # predicted (by true class) or true (by predicted)

    def add(self, stats: Mapping[str, Any], correct: bool | None, other: int | None) -> None:
        self.images += 1
        if correct is not None:
            self.known += 1
            self.correct += bool(correct)
        if other is not None:
            self.other[other] += 1
        self.empty += bool(stats.get("empty"))
        for key in SHARES:
            v = stats.get(key)
            if v is not None:
                v = float(v)
                self.n[key] += 1
                self.sum[key] += v
                self.sq[key] += v * v

    def mean(self, key: str) -> float | None:
        return self.sum[key] / self.n[key] if self.n[key] else None

    def se(self, key: str) -> float | None:
        """Standard error of the mean (sample standard deviation / sqrt(n)); 0 for n = 1."""
        n = self.n[key]
        if not n:
            return None
        if n == 1:
            return 0.0
        var = max(0.0, (self.sq[key] - self.sum[key] ** 2 / n) / (n - 1))
        return math.sqrt(var / n)


@dataclass
class Verdict:
    """How one class compares with the others on one statistic (see :func:`outliers`)."""

    reference: float | None = None
    spread: float | None = None
    z: float | None = None
    ratio: float | None = None
    flagged: bool = False
    compared: bool = False


def outliers(
    classes: Mapping[int, tuple[float, float, int]], *, higher_is_worse: bool = False,
    min_images: int = 10, z: float = 3.0, ratio: float = 0.8, floor: float = 0.05,
) -> dict[int, Verdict]:
    """Which classes stand apart from the others on a per-class mean (robust z-score).

    ``classes``: ``{class: (mean, standard error, images)}``. Classes with at least
    ``min_images`` images are compared (at least two are needed). For each, the others'
    means give a reference, their median ``m``, and a spread ``s = max(1.4826 * MAD,
    floor)`` (the median absolute deviation, scaled to a standard deviation for normal
    data; ``floor`` keeps a handful of near-equal classes from making any difference
    look huge); then ``z = (mean - m) / sqrt(s^2 + se^2)`` (``se``: the class's own
    standard error, so that a class with few images needs a larger gap). A class is
    flagged when ``z <= -z`` and ``mean <= ratio * m`` (``higher_is_worse``: ``z >= z`` and
    ``mean >= m / ratio``): far from the others both in their spread and in plain size.
    """
    if min_images < 1:
        raise ValueError(f"min_images must be at least 1, got {min_images}")
    if not z > 0 or not 0 < ratio <= 1 or not floor > 0:
        raise ValueError(f"need z > 0, 0 < ratio <= 1 and floor > 0; got z={z}, "
                         f"ratio={ratio}, floor={floor}")
    verdicts = {c: Verdict() for c in classes}
    eligible = {c: v for c, v in classes.items() if v[2] >= min_images and v[0] is not None}
    if len(eligible) < 2:
        return verdicts
    for c, (mean, se, _) in eligible.items():
        others = np.array([v[0] for d, v in eligible.items() if d != c], dtype=np.float64)
        ref = float(np.median(others))
        spread = max(1.4826 * float(np.median(np.abs(others - ref))), floor)
        score = (mean - ref) / math.sqrt(spread**2 + (se or 0.0) ** 2)
        rel = mean / ref if ref > 0 else (math.inf if mean > 0 else 1.0)
        if higher_is_worse:
            flagged = score >= z and rel >= 1 / ratio
        else:
            flagged = score <= -z and rel <= ratio
        verdicts[c] = Verdict(ref, spread, score, rel if math.isfinite(rel) else None,
                              bool(flagged), True)
    return verdicts


# ---------------------------------------------------------------- worst cases
class Worst:
    """The ``n`` images with the least map energy on the object, per class and overall
    (bounded heaps: memory does not grow with the dataset)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._seq = 0
        self.heaps: dict[int | None, list[tuple[float, int, dict[str, Any]]]] = {}

    def add(self, cls: int | None, on: float, item: dict[str, Any]) -> None:
        if self.n <= 0:
            return
        self._seq += 1
        for key in (cls, None) if cls is not None else (None,):
            heap = self.heaps.setdefault(key, [])
            entry = (-on, -self._seq, item)  # a max-heap on energy: the largest goes first
            if len(heap) < self.n:
                heapq.heappush(heap, entry)
            elif entry > heap[0]:
                heapq.heapreplace(heap, entry)

    def of(self, cls: int | None) -> list[dict[str, Any]]:
        """Worst first (least energy on the object; ties in the order seen)."""
        return [e[2] for e in sorted(self.heaps.get(cls, []), key=lambda e: (-e[0], -e[1]))]
