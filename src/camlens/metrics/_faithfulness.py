"""Faithfulness by perturbation: deletion and insertion curves (RISE), the confidence change
of the explanation image (Grad-CAM++) and the win rate between two methods."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import _adapted, _check_maps, _classes, _probabilities


def gaussian_blur(inputs: Tensor, size: int = 11, sigma: float = 5.0) -> Tensor:
    """The RISE paper's blurred substrate: a ``size`` x ``size`` Gaussian, zero padding."""
    x = torch.arange(size, dtype=inputs.dtype, device=inputs.device) - size // 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = inputs.shape[1]
    weight = (k[:, None] * k[None, :]).expand(c, 1, size, size)
    return F.conv2d(inputs, weight, padding=size // 2, groups=c)


def _auc(curve: Tensor) -> Tensor:
    """Normalised trapezoid area of curves (B, S+1) over [0, 1]."""
    n = curve.shape[1] - 1
    return (curve.sum(1) - (curve[:, 0] + curve[:, -1]) / 2) / n


def _curve(
    model: nn.Module, inputs: Tensor, maps: Tensor, target: Any, step: int | None,
    start: Tensor, finish: Tensor, batch_size: int,
) -> Tensor:
    """Probabilities (B, S+1) while pixels go from ``start`` to ``finish`` by saliency."""
    maps = _check_maps(inputs, maps)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    b, c, h, w = inputs.shape
    hw = h * w
    step = math.ceil(hw / 100) if step is None else step
    if not 0 < step <= hw:
        raise ValueError(f"step must be between 1 and {hw} pixels, got {step}")
    n_steps = math.ceil(hw / step)
    classes = _classes(model, inputs, target)
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(hw, device=order.device).expand(b, hw))
    owners = torch.arange(b, device=inputs.device).repeat_interleave(n_steps + 1)
    steps = torch.arange(n_steps + 1, device=inputs.device).repeat(b)

    def make(part: slice) -> Tensor:
        o, s = owners[part], steps[part]
        changed = (rank[o] < (s * step)[:, None]).view(-1, 1, h, w)
        return torch.where(changed, finish[o], start[o])

    probs = _probabilities(model, make, classes[owners], owners.numel(), batch_size)
    return probs.view(b, n_steps + 1)


def deletion(
    model: nn.Module, inputs: Tensor, maps: Tensor, target: Any = None, *,
    step: int | None = None, baseline: str | Tensor = "zeros", batch_size: int = 64,
    return_curve: bool = False,
) -> Tensor:
    """Deletion AUC (B,): remove pixels, most salient first, and watch the probability fall.

    Petsiuk et al. 2018 (RISE), https://arxiv.org/abs/1806.07421: ``step`` pixels per step
    (default: 1 % of the image) are replaced by the ``baseline`` (``"zeros"``, ``"blur"``
    or a tensor like the inputs); the score is the class probability; the area is the
    normalised trapezoid. Lower is better. All steps of all images run as batched forwards
    without autograd. ``return_curve=True`` gives the curves (B, S+1) instead.
    """
    model, inputs, baseline = _adapted(model, inputs, baseline)
    base = _baseline(inputs, baseline)
    curve = _curve(model, inputs, maps, target, step, inputs, base, batch_size)
    return curve if return_curve else _auc(curve)


def insertion(
    model: nn.Module, inputs: Tensor, maps: Tensor, target: Any = None, *,
    step: int | None = None, baseline: str | Tensor = "blur", batch_size: int = 64,
    return_curve: bool = False,
) -> Tensor:
    """Insertion AUC (B,): start from the blurred image, put pixels back, most salient
    first, and watch the probability rise (RISE's protocol). Higher is better."""
    model, inputs, baseline = _adapted(model, inputs, baseline)
    base = _baseline(inputs, baseline)
    curve = _curve(model, inputs, maps, target, step, base, inputs, batch_size)
    return curve if return_curve else _auc(curve)


def _baseline(inputs: Tensor, baseline: str | Tensor) -> Tensor:
    if isinstance(baseline, Tensor):
        if baseline.shape != inputs.shape:
            raise ValueError(f"baseline {tuple(baseline.shape)} must match the inputs")
        return baseline
    if baseline == "zeros":
        return torch.zeros_like(inputs)
    if baseline == "blur":
        return gaussian_blur(inputs)
    raise ValueError(f"baseline must be 'zeros', 'blur' or a tensor, got {baseline!r}")


# ----------------------------------------------------------------- confidence change
class ConfidenceChange(NamedTuple):
    """Average drop % and increase in confidence % (Grad-CAM++ paper, sec. 6.1)."""

    average_drop: float
    increase: float
    drop: Tensor  # (B,) per-image drop in %: 100 * max(0, Y - O) / Y
    increased: Tensor  # (B,) bool: O > Y


def confidence_change(
    model: nn.Module, inputs: Tensor, maps: Tensor, target: Any = None, *,
    batch_size: int = 64,
) -> ConfidenceChange:
    """Average drop and increase in confidence of the explanation image ``map * image``.

    ``Y``: the class probability for the image, ``O``: for ``maps * inputs``.
    Average drop = ``100 * mean(max(0, Y - O) / Y)``; increase = ``100 * mean(O > Y)``.
    Chattopadhyay et al. 2018, https://arxiv.org/abs/1710.11063
    """
    model, inputs, _ = _adapted(model, inputs)
    maps = _check_maps(inputs, maps)
    classes = _classes(model, inputs, target)
    b = inputs.shape[0]
    both = torch.cat([inputs, inputs * maps.unsqueeze(1)])
    probs = _probabilities(model, lambda p: both[p], classes.repeat(2), 2 * b, batch_size)
    y, o = probs[:b], probs[b:]
    positive = y > 0  # a probability that underflowed to 0 has nothing to drop
    safe = torch.where(positive, y, torch.ones_like(y))
    drop = torch.where(positive, 100 * torch.clamp(y - o, min=0) / safe, 0.0)
    increased = o > y
    return ConfidenceChange(float(drop.mean()), float(100 * increased.float().mean()), drop,
                            increased)


def win_rate(a: ConfidenceChange | Tensor, b: ConfidenceChange | Tensor) -> float:
    """% of images where method ``a``'s drop is smaller than method ``b``'s (ties: half)."""
    da = a.drop if isinstance(a, ConfidenceChange) else a
    db = b.drop if isinstance(b, ConfidenceChange) else b
    if da.shape != db.shape:
        raise ValueError(f"compare the same images: {tuple(da.shape)} vs {tuple(db.shape)}")
    wins = (da < db).float() + 0.5 * (da == db).float()
    return float(100 * wins.mean())
