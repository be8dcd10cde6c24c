"""Label masks against true ones: mean IoU over one confusion matrix (Pascal VOC's rule)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor


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
