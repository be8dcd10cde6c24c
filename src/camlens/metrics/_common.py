"""What the metrics that run the model share: map checks, the explained classes, batched
probabilities without autograd, and a Keras model seen through its adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._adapters import adapt
from .._guard import ModelGuard
from ..targets import find_logits


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


def _adapted(model: Any, inputs: Any, baseline: Any = None) -> tuple[nn.Module, Tensor, Any]:
    """A Keras model's adapter and its inputs (and a baseline tensor) made channels-first;
    a PyTorch model and its tensors as they are."""
    adapter = adapt(model)
    if adapter is None:
        return model, inputs, baseline
    if baseline is not None and not isinstance(baseline, str):
        baseline = adapter.from_user(baseline)  # type: ignore[operator]
    return adapter, adapter.from_user(inputs), baseline  # type: ignore[operator]
