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

from .._derive import boxes as derive_boxes
from .._guard import ModelGuard
from ..targets import find_logits

__all__ = [
    "ConfidenceChange",
    "MaxBoxAcc",
    "MeanIoU",
    "SanityCheck",
    "confidence_change",
    "deletion",
    "energy_pointing_game",
    "insertion",
    "localization_error",
    "max_box_acc",
    "miou",
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


def _adapted(model: Any, inputs: Any, baseline: Any = None) -> tuple[nn.Module, Tensor, Any]:
    """A Keras model's adapter and its inputs (and a baseline tensor) made channels-first;
    a PyTorch model and its tensors as they are."""
    from .._adapters import adapt

    adapter = adapt(model)
    if adapter is None:
        return model, inputs, baseline
    if baseline is not None and not isinstance(baseline, str):
        baseline = adapter.from_user(baseline)  # type: ignore[operator]
    return adapter, adapter.from_user(inputs), baseline  # type: ignore[operator]


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
    from .._explainer import explain

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


# ----------------------------------------------------------------- ROAD
_ROAD_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def noisy_linear_impute(
    inputs: Tensor, removed: Tensor, noise: float = 0.01, seed: int = 0,
    tol: float = 1e-7, max_iter: int = 200,
) -> Tensor:
    """ROAD's noisy linear imputation, batched: every removed pixel becomes the weighted
    mean of its 8 neighbours inside the image (1/6 direct, 1/12 diagonal; removed
    neighbours are unknowns too), plus Gaussian noise of std ``noise``.

    Rong et al., ICML 2022, https://arxiv.org/abs/2202.00449. The linear system (symmetric
    positive definite on the removed pixels) is solved for all images and channels at once
    by conjugate gradients (float64) preconditioned with one geometric multigrid V-cycle
    (float32; bilinear transfers, Galerkin coarse operators, damped Jacobi smoothing), a
    few images at a time, until the residual of every image and channel is below ``tol``
    times that of its right-hand side (at most ``max_iter`` iterations; 7 to 9 on
    224 x 224 images with 10 to 90 % removed). With the default ``tol`` the result is
    within 1e-6 (measured: 2e-7, float32 rounding) of an exact sparse solve on [0, 1]-scaled
    images, for holes of any shape and size.
    ``inputs`` (N, C, H, W), ``removed`` (N, H, W) bool.
    """
    x = inputs.float()
    n, c, h, w = x.shape
    removed = removed.to(device=x.device, dtype=torch.bool).view(n, h, w)
    # float64: holes far from any known pixel make the system ill-conditioned (float32
    # stalls at errors around 1e-3); MPS has no float64
    solve_dtype = torch.float32 if x.device.type == "mps" else torch.float64
    chunks = []
    for start in range(0, n, _ROAD_CHUNK):
        part = slice(start, start + _ROAD_CHUNK)
        chunks.append(_impute_chunk(x[part].to(solve_dtype), removed[part], tol, max_iter).to(x))
    z = torch.cat(chunks) if chunks else x.clone()
    u = removed.to(x.dtype)[:, None]
    if noise:
        g = torch.Generator(device="cpu").manual_seed(seed)
        z = z + u * torch.randn(z.shape, generator=g, dtype=z.dtype).to(z) * noise
    return torch.where(u > 0, z, x).to(inputs.dtype)


_ROAD_CHUNK = 4  # images solved together: bounds memory, and converged chunks stop early
_ROAD_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
_ROAD_OMEGA = 0.8  # Jacobi damping of the multigrid smoother
_ROAD_DENSE = 100  # the coarsest level has at most this many points, solved densely


class _Level(NamedTuple):
    """One multigrid level: a 9-point stencil per point (N, 9, H, W), centre at 4, with an
    identity row where the point is not an unknown; ``active`` (N, 1, H, W) marks the
    unknowns; ``stride`` per dim: 2 where the next level halves it, 1 where it keeps it
    (at most 4 points); ``dense_inv`` (N, HW, HW) on the coarsest level only."""

    k: Tensor
    active: Tensor
    inv_diag: Tensor
    stride: tuple[int, int]
    dense_inv: Tensor | None


def _stencil(k: Tensor, z: Tensor) -> Tensor:
    """Apply a per-point 9-point stencil ``k`` (N, 9, H, W) to ``z`` (N, C, H, W)."""
    h, w = z.shape[-2:]
    zp = F.pad(z, (1, 1, 1, 1))
    out = k[:, 4:5] * z
    for d, (dy, dx) in enumerate(_ROAD_OFFSETS):
        if d != 4:
            out.addcmul_(k[:, d : d + 1], zp[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w])
    return out


def _along(dim: int, part: slice) -> tuple[slice, ...]:
    return (slice(None),) * (dim % 4) + (part,)


def _prolong(zc: Tensor, lev: _Level) -> Tensor:
    """Bilinear interpolation from the next coarser level onto ``lev``'s unknowns: per
    coarsened dim, coarse point j lands on fine 2 j, fine 2 j + 1 is the mean of j, j + 1."""
    out = zc
    for dim, stride, size in ((-1, lev.stride[1], lev.k.shape[3]),
                              (-2, lev.stride[0], lev.k.shape[2])):
        if stride == 2:
            m = out.shape[dim]
            shape = list(out.shape)
            shape[dim] = 2 * m - 1
            up = out.new_empty(shape)
            up[_along(dim, slice(0, None, 2))] = out
            up[_along(dim, slice(1, None, 2))] = (
                out[_along(dim, slice(0, -1))] + out[_along(dim, slice(1, None))]) * 0.5
            out = up[_along(dim, slice(0, size))]
    return out * lev.active


def _restrict(r: Tensor, lev: _Level, size: tuple[int, int]) -> Tensor:
    """The transpose of ``_prolong``: ``lev``'s residual onto the coarser level."""
    out = r * lev.active
    for dim, stride, m in ((-2, lev.stride[0], size[0]), (-1, lev.stride[1], size[1])):
        if stride == 2:
            pad = [0, 0, 0, 0]
            pad[2 * (-1 - dim)] = 1
            pad[2 * (-1 - dim) + 1] = 2 * m - out.shape[dim]
            g = F.pad(out, pad)  # fine i at 1 + i, zeros around: length 2 m + 1
            even = g[_along(dim, slice(0, None, 2))]
            out = g[_along(dim, slice(1, None, 2))] + (
                even[_along(dim, slice(0, -1))] + even[_along(dim, slice(1, None))]) * 0.5
    return out


def _level(k: Tensor, active: Tensor) -> _Level:
    h, w = k.shape[2:]
    inv_diag = 1 / k[:, 4:5]
    if h * w <= _ROAD_DENSE or max(h, w) <= 4:
        # dense inverse of the coarsest operator (a pseudo-inverse: with no known pixel at
        # all the operator is singular, and the right-hand side is then zero)
        n, m = k.shape[0], h * w
        idx = torch.arange(m, device=k.device).view(h, w)
        mat = k.new_zeros(n, m, m)
        for d, (dy, dx) in enumerate(_ROAD_OFFSETS):
            rows = idx[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
            cols = rows + dy * w + dx
            vals = k[:, d, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
            mat[:, rows.flatten(), cols.flatten()] = vals.flatten(1)
        mat = (mat + mat.transpose(1, 2)).double() / 2
        dense_inv = torch.linalg.pinv(mat, hermitian=True).to(k.dtype)
        return _Level(k, active, inv_diag, (1, 1), dense_inv)
    stride = (2 if h > 4 else 1, 2 if w > 4 else 1)
    return _Level(k, active, inv_diag, stride, None)


def _coarsen(lev: _Level) -> tuple[Tensor, Tensor]:
    """The Galerkin operator R A P of the next level, found by probing with 9 colours:
    coarse points of one colour (position mod 3) have disjoint stencils."""
    n, _, h, w = lev.k.shape
    size = (h // 2 + 1 if lev.stride[0] == 2 else h, w // 2 + 1 if lev.stride[1] == 2 else w)
    iy = torch.arange(size[0], device=lev.k.device)
    ix = torch.arange(size[1], device=lev.k.device)
    colour = (iy % 3)[:, None] * 3 + (ix % 3)[None, :]
    probes = (colour == torch.arange(9, device=colour.device)[:, None, None]).to(lev.k)
    probes = probes[None].expand(n, 9, *size)
    y = _restrict(_stencil(lev.k, _prolong(probes, lev)), lev, size)
    cols = [((iy + dy) % 3)[:, None] * 3 + ((ix + dx) % 3)[None, :] for dy, dx in _ROAD_OFFSETS]
    kc = y.gather(1, torch.stack(cols)[None].expand(n, 9, *size))
    active = kc[:, 4:5] > 0
    kc[:, 4:5] += (~active).to(kc)
    return kc, active.to(kc)


def _vcycle(levels: list[_Level], r: Tensor, i: int = 0) -> Tensor:
    """One symmetric V-cycle on ``levels[i:]`` for the residual ``r``, from zero."""
    lev = levels[i]
    if lev.dense_inv is not None:
        n, c, h, w = r.shape
        flat = r.reshape(n, c, h * w).transpose(1, 2)
        return (lev.dense_inv @ flat).transpose(1, 2).reshape(r.shape)
    z = r * lev.inv_diag * _ROAD_OMEGA
    coarse = levels[i + 1].k.shape[2:]
    z = z + _prolong(_vcycle(levels, _restrict(r - _stencil(lev.k, z), lev, coarse), i + 1), lev)
    return z + (r - _stencil(lev.k, z)) * lev.inv_diag * _ROAD_OMEGA


def _impute_chunk(x: Tensor, removed: Tensor, tol: float, max_iter: int) -> Tensor:
    """The exact (noise-free) imputation of a few images by multigrid-preconditioned CG."""
    n, c, h, w = x.shape
    u = removed.to(x.dtype)[:, None]
    weights = torch.tensor(_ROAD_WEIGHTS, dtype=x.dtype, device=x.device).flatten()
    ones = F.pad(torch.ones_like(u), (1, 1, 1, 1))  # 1 inside the image
    up = F.pad(u, (1, 1, 1, 1))
    k = torch.empty(n, 9, h, w, dtype=x.dtype, device=x.device)
    s = torch.zeros_like(u)
    for d, (dy, dx) in enumerate(_ROAD_OFFSETS):
        if d != 4:
            win = (slice(None), slice(None), slice(1 + dy, 1 + dy + h), slice(1 + dx, 1 + dx + w))
            s += weights[d] * ones[win]
            k[:, d : d + 1] = -weights[d] * up[win] * u
    k[:, 4:5] = torch.where(u > 0, s, torch.ones_like(s))
    # known neighbours move to the right-hand side (in float32, a fast convolution: its
    # rounding moves the solution by at most that relative rounding, maximum principle)
    kernel = weights.float().view(1, 1, 3, 3).expand(c, 1, 3, 3)
    b = F.conv2d(F.pad((x * (1 - u)).float(), (1, 1, 1, 1)), kernel, groups=c).to(x) * u
    # the preconditioner runs in float32 (half the memory traffic, fast convolutions);
    # the flexible (Polak-Ribiere) CG step tolerates its rounding
    levels = [_level(k.float(), u.float())]
    while levels[-1].dense_inv is None:
        levels.append(_level(*_coarsen(levels[-1])))

    def precondition(r: Tensor) -> Tensor:
        return _vcycle(levels, r.float()).to(r)

    z = torch.zeros_like(x)
    r = b.clone()
    norm_b = b.flatten(2).norm(dim=2).clamp_min(1e-30)[..., None, None]
    zr = precondition(r)
    p = zr
    rz = (r * zr).sum((2, 3), keepdim=True)
    for _ in range(max_iter):
        if bool(((r.flatten(2).norm(dim=2)[..., None, None] / norm_b) <= tol).all()):
            break
        ap = _stencil(k, p)
        denom = (p * ap).sum((2, 3), keepdim=True)
        alpha = torch.where(denom > 0, rz / torch.where(denom > 0, denom, 1), 0.0)
        z = z + alpha * p
        r = r - alpha * ap
        zr_new = precondition(r)
        rz_new = (r * zr_new).sum((2, 3), keepdim=True)
        step = (r * (zr_new - zr)).sum((2, 3), keepdim=True)
        beta = torch.where(rz > 0, step / torch.where(rz > 0, rz, 1), 0.0)
        p = zr_new + beta * p
        zr, rz = zr_new, rz_new
    return z


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
    model, inputs, _ = _adapted(model, inputs)
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


# ----------------------------------------------------------------- weak labels
class MeanIoU(NamedTuple):
    """Mean intersection over union of label masks, from one confusion matrix."""

    miou: float  # % : mean of ``iou`` over the classes present in the truth or the prediction
    iou: Tensor  # (classes,) float64 % per class; NaN for a class in neither
    confusion: Tensor  # (classes, classes + 1) int64: true row, predicted column; last = ignore
    labelled: float  # % of the scored true pixels the prediction gives a class (not ignore)


def _label_pairs(pred: Any, true: Any) -> list[tuple[Tensor, Tensor]]:
    """(pred, true) integer mask pairs from (B, H, W) tensors / arrays or sequences of (H, W)."""
    import numpy as np

    def items(x: Any, what: str) -> list[Tensor]:
        if isinstance(x, (Tensor, np.ndarray)):
            t = torch.as_tensor(x)
            if t.ndim == 2:
                t = t[None]
            if t.ndim != 3:
                raise ValueError(f"{what} masks must be (B, H, W) or (H, W), got {tuple(t.shape)}")
            return list(t)
        if isinstance(x, Sequence) and not isinstance(x, (str, bytes)):
            return [torch.as_tensor(np.asarray(m)) for m in x]
        raise TypeError(f"{what} must be label masks (B, H, W) or a list of (H, W) masks, got "
                        f"{type(x).__name__}")

    ps, ts = items(pred, "pred"), items(true, "true")
    if len(ps) != len(ts):
        raise ValueError(f"got {len(ps)} predicted and {len(ts)} true masks; give one of each "
                         "per image")
    for i, (p, t) in enumerate(zip(ps, ts)):
        if p.shape != t.shape or p.ndim != 2:
            raise ValueError(f"image {i}: predicted mask {tuple(p.shape)} and true mask "
                             f"{tuple(t.shape)} must be the same (H, W)")
        if p.is_floating_point() or t.is_floating_point() or p.dtype == torch.bool:
            raise TypeError(f"image {i}: label masks hold integer class values (uint8 as in "
                            f"VOC PNGs), got {p.dtype} and {t.dtype}")
    return list(zip(ps, ts))


def _confusion(pred: Tensor, true: Tensor, classes: int, ignore: int) -> Tensor:
    """(classes, classes + 1) pixel counts of one pair; column ``classes`` = predicted ignore."""
    p, t = pred.flatten().long().cpu(), true.flatten().long().cpu()
    keep = t != ignore
    p, t = p[keep], t[keep]
    bad_t = (t < 0) | (t >= classes)
    bad_p = ((p < 0) | (p >= classes)) & (p != ignore)
    if bool(bad_t.any()) or bool(bad_p.any()):
        value = int(t[bad_t][0]) if bool(bad_t.any()) else int(p[bad_p][0])
        raise ValueError(
            f"mask value {value} is not a class: with classes={classes} the values are 0 "
            f"(background) to {classes - 1}, and {ignore} (ignore); pass the number of classes "
            "including the background"
        )
    p = torch.where(p == ignore, classes, p)
    counts = torch.bincount(t * (classes + 1) + p, minlength=classes * (classes + 1))
    return counts.view(classes, classes + 1)


def miou(
    pred: Any, true: Any, classes: int, ignore: int = 255, ignored: str = "miss"
) -> MeanIoU:
    """Mean IoU of predicted label masks against true ones, over all images together.

    One confusion matrix ``C[t, p]`` (pixel counts, true class ``t``, predicted ``p``) is
    summed over every image; then ``IoU_c = C[c, c] / (sum_p C[c, p] + sum_t C[t, c] -
    C[c, c])`` and ``mIoU = mean_c IoU_c`` over the classes that occur in the truth or the
    prediction, as in Pascal VOC's segmentation evaluation (Everingham et al. 2015,
    https://doi.org/10.1007/s11263-014-0733-5). Values are classes ``0..classes-1`` (0 the
    background, VOC's convention) and ``ignore``: true ``ignore`` pixels are not scored. A
    pixel the prediction leaves at ``ignore`` (a pseudo-label's uncertain band) counts as a
    miss of its true class with ``ignored="miss"`` (default), or is not scored with
    ``"skip"`` (then the score is that of the labelled pixels only; ``labelled`` says how
    many they are).

    ``pred``, ``true``: (B, H, W) integer tensors or arrays, or lists of (H, W) masks of
    any sizes. Returns percentages.

    >>> miou(np.array([[0, 1], [1, 255]]), np.array([[0, 1], [0, 1]]), classes=2).miou
    41.66...   # background 1/2, class 1: 1/3 (the ignored pixel is a miss)
    """
    if isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= 65535:
        raise ValueError(f"classes must be the number of classes including the background "
                         f"(>= 1), got {classes!r}")
    if ignored not in ("miss", "skip"):
        raise ValueError(f"ignored must be 'miss' or 'skip', got {ignored!r}")
    if 0 <= ignore < classes:
        raise ValueError(f"ignore={ignore} is a class value (classes={classes}); use a value "
                         "outside 0..classes-1, such as 255")
    conf = torch.zeros(classes, classes + 1, dtype=torch.int64)
    for p, t in _label_pairs(pred, true):
        conf += _confusion(p, t, classes, ignore)
    return _from_confusion(conf, ignored)


def _from_confusion(conf: Tensor, ignored: str = "miss") -> MeanIoU:
    """:class:`MeanIoU` of a summed confusion matrix (classes, classes + 1)."""
    classes = conf.shape[0]
    c = conf.double()
    tp = c.diagonal()
    rows = c.sum(1) if ignored == "miss" else c[:, :classes].sum(1)
    union = rows + c[:, :classes].sum(0) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.nan) * 100
    seen = union > 0
    if not bool(seen.any()):
        raise ValueError("no pixel was scored: every true pixel is ignore")
    scored = c.sum()
    labelled = float(100 * c[:, :classes].sum() / scored) if scored > 0 else 0.0
    return MeanIoU(float(iou[seen].mean()), iou, conf, labelled)


def _component_boxes(mask: Tensor, values: Tensor | None = None
                     ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Boxes of the 8-connected components of boolean masks (N, H, W).

    Returns ``owner`` (C,) the mask of each component, ``boxes`` (C, 4) pixel x0, y0, x1, y1
    (x1, y1 exclusive) and, with ``values`` (N, H, W), each component's largest value (C,).
    """
    from .._derive import _labels

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
