"""How faithful and how well localised a map is: deletion/insertion, confidence change,
pointing games, localisation error and the randomisation sanity check.

Everything is torch on the inputs' device; model forwards run batched without autograd in
the model's eval mode, and the model is never modified (``sanity_check`` works on a copy).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._derive import boxes as derive_boxes
from ._guard import ModelGuard
from .targets import find_logits

__all__ = [
    "ConfidenceChange",
    "SanityCheck",
    "confidence_change",
    "deletion",
    "energy_pointing_game",
    "insertion",
    "localization_error",
    "noisy_linear_impute",
    "pointing_game",
    "road",
    "sanity_check",
    "win_rate",
]


# ----------------------------------------------------------------- shared helpers
def _check_maps(inputs: Tensor, maps: Tensor) -> Tensor:
    if not isinstance(maps, Tensor) or not isinstance(inputs, Tensor):
        raise TypeError("inputs and maps must be tensors")
    if inputs.ndim != 4:
        raise ValueError(f"inputs must be (B, C, H, W), got {tuple(inputs.shape)}")
    want = (inputs.shape[0], *inputs.shape[2:])
    if tuple(maps.shape) != want:
        raise ValueError(
            f"maps of shape {tuple(maps.shape)} do not match inputs {tuple(inputs.shape)}: "
            f"expected {want}; compute them with size='input' and one target per image"
        )
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps contain NaN or inf")
    return maps.float()


def _classes(model: nn.Module, inputs: Tensor, target: Any) -> Tensor:
    """(B,) class index per image: None = top-1 of the clean inputs."""
    b = inputs.shape[0]
    if target is None:
        with ModelGuard(model), torch.no_grad():
            return find_logits(model(inputs)).argmax(1)
    if isinstance(target, int):
        return torch.full((b,), target, dtype=torch.long, device=inputs.device)
    t = torch.as_tensor(target, device=inputs.device).long().flatten()
    if t.numel() != b:
        raise ValueError(f"got {t.numel()} target classes for {b} images")
    return t


def _probabilities(
    model: nn.Module, make: Callable[[slice], Tensor], classes: Tensor, n: int,
    batch_size: int,
) -> Tensor:
    """Softmax probability of ``classes[i]`` for the inputs ``make(part)`` (N,)."""
    out = []
    with ModelGuard(model), torch.no_grad():
        for start in range(0, n, batch_size):
            part = slice(start, min(start + batch_size, n))
            probs = torch.softmax(find_logits(model(make(part))).float(), dim=1)
            out.append(probs.gather(1, classes[part, None])[:, 0])
    return torch.cat(out)


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
    maps = _check_maps(inputs, maps)
    classes = _classes(model, inputs, target)
    b = inputs.shape[0]
    both = torch.cat([inputs, inputs * maps.unsqueeze(1)])
    probs = _probabilities(model, lambda p: both[p], classes.repeat(2), 2 * b, batch_size)
    y, o = probs[:b], probs[b:]
    drop = 100 * torch.clamp(y - o, min=0) / y
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


# ----------------------------------------------------------------- localisation
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


def _object_region(maps: Tensor, objects: Tensor) -> Tensor:
    """Boolean object masks (B, H, W) from boxes (B, 4) or masks, checked against maps."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W), got {tuple(maps.shape)}")
    b, h, w = maps.shape
    if objects.ndim == 3:
        if objects.shape != maps.shape:
            raise ValueError(f"masks {tuple(objects.shape)} must match maps {tuple(maps.shape)}")
        return objects.bool().to(maps.device)
    return _box_masks(_check_boxes(objects, h, w), h, w, maps.device)


def pointing_game(maps: Tensor, objects: Tensor, tolerance: int = 15) -> Tensor:
    """Hits (B,) bool: the map's maximum lies within ``tolerance`` pixels of the object.

    ``objects``: boxes (B, 4) or boolean masks (B, H, W). Zhang et al. 2016 (Excitation
    Backprop), https://arxiv.org/abs/1608.00507
    """
    region = _object_region(maps, objects)
    if tolerance > 0:  # grow the object by the tolerance (a disc)
        r = int(tolerance)
        yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
        disc = ((yy**2 + xx**2) <= r * r).float().to(maps.device)[None, None]
        region = F.conv2d(region.float()[:, None], disc, padding=r)[:, 0] > 0
    peak = maps.flatten(1).argmax(1)
    return region.flatten(1).gather(1, peak[:, None])[:, 0]


def energy_pointing_game(maps: Tensor, boxes: Tensor) -> Tensor:
    """Share (B,) of each map's energy inside its box (Score-CAM paper, sec. 5.2);
    ``boxes`` (B, 4), or boolean masks (B, H, W) for several objects."""
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


# ----------------------------------------------------------------- sanity check
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
    from ._explainer import explain

    classes = _classes(model, inputs, target)
    work = copy.deepcopy(model)
    original = explain(work, inputs, method=method, target=classes.tolist(), **explain_options)
    names = list(layers) if layers is not None else [
        n for n, m in work.named_modules()
        if any(True for _ in m.parameters(recurse=False))
    ][::-1]
    g = torch.Generator(device="cpu").manual_seed(seed)
    done, rho, sim = [], [], []
    for name in names:
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


# ----------------------------------------------------------------- ROAD
_ROAD_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def noisy_linear_impute(
    inputs: Tensor, removed: Tensor, noise: float = 0.01, seed: int = 0,
    tol: float = 1e-5, max_iter: int = 5000,
) -> Tensor:
    """ROAD's noisy linear imputation, batched: every removed pixel becomes the weighted
    mean of its 8 neighbours (1/6 direct, 1/12 diagonal; removed neighbours are unknowns
    too), plus Gaussian noise of std ``noise``.

    Rong et al., ICML 2022, https://arxiv.org/abs/2202.00449. The linear system (symmetric
    positive definite on the removed pixels) is solved for all images and channels at once
    by Jacobi-preconditioned conjugate gradients on convolutions, instead of one sparse
    solve per image. ``inputs`` (N, C, H, W), ``removed`` (N, H, W) bool.
    """
    x = inputs.float()
    n, c, h, w = x.shape
    u = removed.to(x.dtype).view(n, 1, h, w)
    kernel = torch.tensor(_ROAD_WEIGHTS, dtype=x.dtype, device=x.device)
    kernel = kernel.expand(c, 1, 3, 3)

    def conv(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, padding=1, groups=c)

    s = conv(torch.ones_like(x))  # sum of the weights of the neighbours inside the image
    b = conv(x * (1 - u)) * u  # known neighbours move to the right-hand side

    def op(z: Tensor) -> Tensor:
        return (s * z - conv(z * u)) * u

    inv = torch.where(u > 0, 1 / s, torch.zeros_like(s))
    z = _coarse_guess(x, removed, u) if min(h, w) >= 32 else b * inv
    r = b - op(z)
    p = r * inv
    rz = (r * p).sum((2, 3), keepdim=True)
    norm_b = b.flatten(2).norm(dim=2).clamp_min(1e-30)[..., None, None]
    for _ in range(max_iter):
        if bool(((r.flatten(2).norm(dim=2)[..., None, None] / norm_b) <= tol).all()):
            break
        ap = op(p)
        denom = (p * ap).sum((2, 3), keepdim=True)
        alpha = torch.where(denom > 0, rz / torch.where(denom > 0, denom, 1), 0.0)
        z = z + alpha * p
        r = r - alpha * ap
        zr = r * inv
        rz_new = (r * zr).sum((2, 3), keepdim=True)
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1), 0.0)
        p = zr + beta * p
        rz = rz_new
    if noise:
        g = torch.Generator(device="cpu").manual_seed(seed)
        z = z + u * torch.randn(z.shape, generator=g, dtype=z.dtype).to(z) * noise
    return torch.where(u > 0, z, x).to(inputs.dtype)


def _coarse_guess(x: Tensor, removed: Tensor, u: Tensor) -> Tensor:
    """A starting point for conjugate gradients: the problem solved at half resolution
    (where a 2 x 2 cell is removed only if all four pixels are), upsampled. Any start
    converges to the same solution; a good one needs far fewer iterations."""
    known = (~removed).to(x.dtype)[:, None]
    weight = F.avg_pool2d(known, 2, ceil_mode=True)
    small_x = F.avg_pool2d(x * known, 2, ceil_mode=True) / weight.clamp_min(1e-12)
    small_removed = weight[:, 0] == 0  # a coarse cell is known if any of its pixels is
    if not bool(small_removed.any()):
        return x * 0
    coarse = noisy_linear_impute(small_x, small_removed, noise=0.0, tol=1e-3)
    up = F.interpolate(coarse, size=x.shape[2:], mode="bilinear", align_corners=False)
    return up * u


def road(
    model: nn.Module, inputs: Tensor, maps: Tensor, target: Any = None, *,
    percentiles: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90), order: str = "morf",
    noise: float = 0.01, seed: int = 0, batch_size: int = 64,
) -> Tensor:
    """ROAD (RemOve And Debias): class probabilities (B, P) after removing ``p`` % of the
    pixels and imputing them by noisy linear imputation.

    ``order="morf"`` removes the most relevant pixels first (a faithful map makes the
    probability fall fast: lower is better), ``"lerf"`` the least relevant (higher is
    better). A pixel is removed when its saliency is at or above the ``100 - p``
    percentile (``morf``), or at or below the ``p`` percentile (``lerf``), with
    interpolated percentiles as NumPy's. Rong et al. 2022, https://arxiv.org/abs/2202.00449
    """
    maps = _check_maps(inputs, maps)
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    ps = [float(p) for p in percentiles]
    if not ps or any(not 0 < p < 100 for p in ps):
        raise ValueError(f"percentiles must lie strictly between 0 and 100, got {list(ps)}")
    classes = _classes(model, inputs, target)
    b = inputs.shape[0]
    flat = maps.flatten(1).double()
    if order == "lerf":
        flat = 1 - flat
    q = torch.tensor([1 - p / 100 for p in ps], dtype=flat.dtype, device=flat.device)
    thresholds = torch.quantile(flat, q, dim=1).T  # (B, P)
    removed = flat[:, None, :] >= thresholds[:, :, None]  # (B, P, HW)
    removed = removed.view(b * len(ps), *inputs.shape[2:])
    owners = torch.arange(b, device=inputs.device).repeat_interleave(len(ps))
    imputed = noisy_linear_impute(inputs[owners], removed, noise=noise, seed=seed)
    probs = _probabilities(model, lambda part: imputed[part], classes[owners], owners.numel(),
                           batch_size)
    return probs.view(b, len(ps))
