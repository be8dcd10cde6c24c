"""The model parameter randomisation test and the map similarities it reports (Spearman rank
correlation, SSIM)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._explainer import explain
from ._common import _adapted, _classes


class SanityCheck(NamedTuple):
    """Similarity of the original maps with maps after cascading re-initialisation."""

    layers: list[str]  # randomised so far, top first; one row per step
    spearman: Tensor  # (S, B)
    ssim: Tensor  # (S, B)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation (B,) of maps (B, ...) (average ranks for ties)."""
    ra, rb = _ranks(a.flatten(1).double()), _ranks(b.flatten(1).double())
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    den = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(den > 0, (ra * rb).sum(1) / torch.where(den > 0, den, 1), 0.0).float()


def _ranks(x: Tensor) -> Tensor:
    order = x.argsort(dim=1, stable=True)
    sorted_x = x.gather(1, order)
    n = x.shape[1]
    pos = torch.arange(n, dtype=x.dtype, device=x.device).expand_as(x)
    # average the positions of equal values
    new_group = torch.ones_like(sorted_x, dtype=torch.bool)
    new_group[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    group = new_group.long().cumsum(1) - 1
    sums = torch.zeros_like(x).scatter_add_(1, group, pos)
    counts = torch.zeros_like(x).scatter_add_(1, group, torch.ones_like(pos))
    avg = sums.gather(1, group) / counts.gather(1, group)
    ranks = torch.empty_like(x)
    ranks.scatter_(1, order, avg)
    return ranks


def ssim(a: Tensor, b: Tensor, window: int = 7) -> Tensor:
    """Mean SSIM (B,) of maps (B, H, W) in [0, 1]: uniform 7 x 7 windows, sample
    covariances, mean over the windows that fit (scikit-image's defaults, data range 1)."""
    x, y = a.double()[:, None], b.double()[:, None]
    c1, c2 = 0.01**2, 0.03**2
    mean = lambda t: F.avg_pool2d(t, window, 1, 0)  # noqa: E731
    mx, my = mean(x), mean(y)
    n = window * window
    cov = n / (n - 1)
    vx = (mean(x * x) - mx * mx) * cov
    vy = (mean(y * y) - my * my) * cov
    vxy = (mean(x * y) - mx * my) * cov
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()


def sanity_check(
    model: nn.Module, inputs: Tensor, method: str = "gradcam", target: Any = None, *,
    layers: Sequence[str] | None = None, seed: int = 0, **explain_options: Any,
) -> SanityCheck:
    """Model parameter randomisation test (Adebayo et al. 2018, https://arxiv.org/abs/1810.03292).

    Re-initialise the model's parameterised layers one by one from the top (output) down,
    cumulatively, on a deep copy (the caller's model is never touched), and after each step
    compare the map with the original one: Spearman rank correlation and SSIM per image.
    A map that stays similar does not depend on what the model learned. The explained
    class is fixed to the original model's (``target=None``: its top-1).
    """
    model, inputs, _ = _adapted(model, inputs)
    classes = _classes(model, inputs, target)
    keras = getattr(model, "camlens_adapter", False)
    work = model.clone() if keras else copy.deepcopy(model)  # type: ignore[operator]
    original = explain(work, inputs, method=method, target=classes.tolist(), **explain_options)
    names = list(layers) if layers is not None else (
        work.weighted_layers() if keras else [  # type: ignore[operator]
            n for n, m in work.named_modules()
            if any(True for _ in m.parameters(recurse=False))
        ])[::-1]
    g = torch.Generator(device="cpu").manual_seed(seed)
    done, rho, sim = [], [], []
    for name in names:
        if keras:  # a clone of the Keras model: its layers' weights redrawn the same way
            work.randomize(name, g)  # type: ignore[operator]
            maps = explain(work, inputs, method=method, target=classes.tolist(),
                           **explain_options)
            done.append(name)
            rho.append(spearman(original, maps))
            sim.append(ssim(original, maps))
            continue
        module = work.get_submodule(name)
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                fan = p[0].numel() if p.ndim > 1 else p.numel()
                p.copy_((torch.randn(p.shape, generator=g) / math.sqrt(max(fan, 1))).to(p))
        for buf_name in ("running_mean", "running_var"):
            buf = getattr(module, buf_name, None)
            if isinstance(buf, Tensor):
                buf.fill_(0.0 if buf_name == "running_mean" else 1.0)
        maps = explain(work, inputs, method=method, target=classes.tolist(), **explain_options)
        done.append(name)
        rho.append(spearman(original, maps))
        sim.append(ssim(original, maps))
    return SanityCheck(done, torch.stack(rho), torch.stack(sim))
