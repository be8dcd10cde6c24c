"""Which classes to label and which an image has: the ``ClassSet`` target (several classes
per image in one pass), ``--classes`` and ``--ignore-band`` read, the classes of each image
from its annotations or from the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._errors import UsageError
from .._guard import ModelGuard
from ..targets import ClassTarget, _check_classes, find_logits
from ._rule import MAX_CLASSES


class ClassSet(ClassTarget):
    """Target: the logits of several classes per image, maps (B, K, H, W) in one pass.

    ``ClassSet([3, 5, 7])`` explains the same classes for every image; ``ClassSet(index)``
    with an (B, K) tensor of class indices gives each image its own. Like
    :class:`camlens.TopK` it names its classes, so CAM applies, and every method keeps
    image ``i``'s classes for image ``i`` (also in the perturbation methods' forwards).

    >>> maps = camlens.compare(model, x, ["gradcam", "cam"], target=ClassSet(range(10)))
    >>> masks = pseudo_masks(maps["gradcam"], present)   # present: (B, 10) bool
    """

    single = False

    def __init__(self, classes: Any) -> None:
        index = torch.as_tensor(list(classes) if not isinstance(classes, (Tensor, np.ndarray))
                                else classes)
        if index.is_floating_point() or index.dtype == torch.bool or index.ndim not in (1, 2) \
                or index.numel() == 0:
            raise ValueError(f"ClassSet takes class indices: a list (K,) for every image or a "
                             f"(B, K) tensor, got {tuple(index.shape)} {index.dtype}")
        self.index = index.long()  # type: ignore[assignment]  (a tensor here)

    def classes(self, output: Any) -> Tensor:
        logits = find_logits(output)
        b, n = logits.shape
        index = self.index.to(logits.device)
        if index.ndim == 1:
            index = index[None].expand(b, -1)
        elif index.shape[0] != b:
            raise ValueError(f"ClassSet holds classes for {index.shape[0]} images, the batch "
                             f"has {b}; give one row per image")
        _check_classes(index, n)
        return index.contiguous()

    def __repr__(self) -> str:
        return f"ClassSet({self.index.tolist()})"


def _label_set(text: Any, names: Sequence[str]) -> list[int]:
    """Model class indices of ``--classes`` (names or indices, comma-separated, or a list)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        if len(names) > MAX_CLASSES:
            raise UsageError(
                f"the model has {len(names)} classes and a VOC mask holds {MAX_CLASSES}: name "
                "the classes to label with --classes (classes=), e.g. --classes "
                f"'{names[0]},{names[1]}'"
            )
        return list(range(len(names)))
    from .._annotations import _Names

    resolve = _Names(names)
    chosen: list[int] = []
    parts = str(text).split(",") if isinstance(text, str) else list(text)
    for part in parts:
        if isinstance(part, str):
            part = part.strip()
            if not part:
                continue
        try:
            index = resolve.index(part, "--classes")
        except ValueError as err:
            raise UsageError(str(err)) from None
        assert index is not None
        if index in chosen:
            raise UsageError(f"--classes names {names[index]!r} twice")
        chosen.append(index)
    if not chosen:
        raise UsageError("--classes is empty; name the classes to label")
    if len(chosen) > MAX_CLASSES:
        raise UsageError(f"--classes names {len(chosen)} classes; a VOC mask holds {MAX_CLASSES}")
    return chosen


def _parse_band(text: Any) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = [p for p in str(text).replace(" ", "").split(",") if p]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--ignore-band takes LOW,HIGH (e.g. 0.1,0.3), got {text!r}") from None
    if not 0 <= lo <= hi <= 1:
        raise UsageError(f"--ignore-band needs 0 <= LOW <= HIGH <= 1, got {text!r}")
    return lo, hi


@torch.no_grad()
def _present_classes(model: Any, x: Tensor, loaded: Sequence[Any], files: Sequence[Any],
                     given: dict[str, list[int]] | None, chosen: list[int],
                     position: dict[int, int], multilabel: bool) -> list[list[int]]:
    """The classes (positions in ``chosen``) of each image of a batch: from the annotations
    or from one forward of the model (top-1 if in ``chosen``; sigmoid > 0.5 if
    ``multilabel``)."""
    if given is not None:
        return [sorted(position[c] for c in given[files[i][0].name] if c in position)
                for i, _, _ in loaded]
    with ModelGuard(model, eval_mode=True):
        logits = find_logits(model(x)).float().cpu()
    if multilabel:
        on = torch.sigmoid(logits[:, chosen]) > 0.5
        return [torch.nonzero(row).flatten().tolist() for row in on]
    top = logits.argmax(1).tolist()
    return [[position[t]] if t in position else [] for t in top]
