"""Targets: what score a map explains. Any callable ``f(model_output) -> (B,) or (B, K)`` works.

The classes here also tell the engine which class indices they score (``classes``), so
methods that read the classifier (CAM) and the CLI's labels can use them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["ClassTarget", "SoftmaxTarget", "TopK", "find_logits"]


def find_logits(output: Any) -> Tensor:
    """The (B, num_classes) logits inside a model output.

    Understands a tensor, a tuple/list (first tensor), a dict (``"logits"``, ``"out"``, or
    its first tensor value) and objects with a ``.logits`` attribute (Hugging Face).
    """
    found: Any = output
    if isinstance(output, Tensor):
        found = output
    elif hasattr(output, "logits") and isinstance(output.logits, Tensor):
        found = output.logits
    elif isinstance(output, Mapping):
        for key in ("logits", "out"):
            if isinstance(output.get(key), Tensor):
                found = output[key]
                break
        else:
            found = next((v for v in output.values() if isinstance(v, Tensor)), None)
    elif isinstance(output, (tuple, list)):
        found = next((v for v in output if isinstance(v, Tensor)), None)
    if not isinstance(found, Tensor):
        raise TypeError(
            f"cannot find class scores in a model output of type {type(output).__name__}; "
            "pass target=callable(output) -> Tensor (B,) that picks the score to explain"
        )
    if found.ndim != 2:
        raise ValueError(
            f"class targets need (B, num_classes) scores, but the model output has shape "
            f"{tuple(found.shape)}; pass target=callable(output) -> Tensor (B,) instead"
        )
    return found


def _check_classes(classes: Tensor, num_classes: int) -> None:
    bad = (classes < 0) | (classes >= num_classes)
    if bool(bad.any()):
        wrong = int(classes[bad][0])
        raise ValueError(
            f"target class {wrong} is out of range for a model with {num_classes} outputs; "
            f"use a class index from 0 to {num_classes - 1}"
        )


class ClassTarget:
    """The logit of a class: one index for every image, or one index per image.

    >>> ClassTarget(281)             # tabby cat, for every image
    >>> ClassTarget([281, 285])      # one class per image
    """

    single = True

    def __init__(self, index: int | Sequence[int] | Tensor) -> None:
        if isinstance(index, bool) or not isinstance(index, (int, Sequence, Tensor)):
            raise TypeError(f"class index must be an int or a sequence of ints, got {index!r}")
        if isinstance(index, Tensor):
            index = index.flatten().tolist()
        if isinstance(index, Sequence) and not isinstance(index, (str, bytes)):
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in index):
                raise TypeError(f"class indices must be ints, got {list(index)!r}")
            self.index: int | list[int] = [int(i) for i in index]
        elif isinstance(index, int):
            self.index = int(index)
        else:
            raise TypeError(f"class index must be an int or a sequence of ints, got {index!r}")

    def classes(self, output: Any) -> Tensor:
        logits = find_logits(output)
        b = logits.shape[0]
        if isinstance(self.index, list):
            if len(self.index) != b:
                raise ValueError(
                    f"got {len(self.index)} target classes for a batch of {b} images; "
                    "give one class per image, or a single int for all"
                )
            idx = torch.tensor(self.index, device=logits.device).view(b, 1)
        else:
            idx = torch.full((b, 1), self.index, device=logits.device, dtype=torch.long)
        _check_classes(idx, logits.shape[1])
        return idx

    def scores(self, output: Any, classes: Tensor) -> Tensor:
        return find_logits(output).gather(1, classes)

    def __call__(self, output: Any) -> Tensor:
        return self.scores(output, self.classes(output))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.index!r})"


class SoftmaxTarget(ClassTarget):
    """The softmax probability of a class rather than its logit."""

    def scores(self, output: Any, classes: Tensor) -> Tensor:
        return torch.softmax(find_logits(output), dim=1).gather(1, classes)


class TopK:
    """The ``k`` highest-scoring classes of each image: maps of shape (B, k, H, W)."""

    single = False

    def __init__(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"TopK needs a whole number k >= 1, got {k!r}")
        self.k = k

    def classes(self, output: Any) -> Tensor:
        logits = find_logits(output)
        if self.k > logits.shape[1]:
            raise ValueError(
                f"TopK({self.k}) asks for more classes than the model's {logits.shape[1]}"
            )
        return logits.detach().topk(self.k, dim=1).indices

    def scores(self, output: Any, classes: Tensor) -> Tensor:
        return find_logits(output).gather(1, classes)

    def __call__(self, output: Any) -> Tensor:
        return self.scores(output, self.classes(output))

    def __repr__(self) -> str:
        return f"TopK({self.k})"


TargetLike = int | Sequence[int] | ClassTarget | TopK | Callable[[Any], Tensor] | None


class _Top1(TopK):
    single = True

    def __init__(self) -> None:
        super().__init__(1)

    def __repr__(self) -> str:
        return "None (top-1)"


def as_target(target: TargetLike) -> Any:
    """Turn the user's ``target=`` into an object with ``single`` and a ``__call__``."""
    if target is None:
        return _Top1()
    if isinstance(target, bool):
        raise TypeError("target must be None, an int, a sequence of ints, TopK(k) or a callable")
    if isinstance(target, (int, Sequence, Tensor)) and not isinstance(target, (str, bytes)):
        return ClassTarget(target)
    if isinstance(target, str):
        raise TypeError(
            f"target {target!r} is a string; give a class index (int) or a callable"
        )
    if callable(target):
        return target
    raise TypeError(
        f"target must be None, an int, a sequence of ints, TopK(k) or a callable, got "
        f"{type(target).__name__}"
    )
