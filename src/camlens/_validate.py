"""Checks on the user's inputs, with messages that say how to fix them."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._adapters import adapt
from ._errors import CamlensError
from ._guard import ModelGuard


def check_model(model: Any) -> nn.Module:
    """The model as the engine runs it: a PyTorch module as it is, a Keras 3 model through
    its adapter (see :mod:`camlens._adapters`)."""
    adapter = adapt(model)
    if adapter is not None:
        return adapter
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            "camlens reads layers through forward hooks, which TorchScript modules do not "
            "support; explain the eager model instead (its class and state dict, e.g. "
            "--model torchvision:resnet50 --weights FILE)"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module or a Keras 3 model, got {type(model).__name__}; "
            "for a TorchScript or saved file, load it first (camlens.load_model(path))"
        )
    return model


def check_inputs(inputs: Any, model: nn.Module) -> Tensor:
    """Inputs must be a finite floating batch (B, C, L), (B, C, H, W) or (B, C, T, H, W)."""
    if not isinstance(inputs, Tensor):
        raise TypeError(
            f"inputs must be a torch.Tensor of shape (B, C, H, W), got {type(inputs).__name__}; "
            "convert images with your model's preprocessing first"
        )
    if inputs.is_inference():
        raise ValueError(
            "inputs were created under torch.inference_mode(), which autograd cannot use; "
            "create them outside inference_mode (or pass inputs.clone() made outside it)"
        )
    if not inputs.is_floating_point():
        raise TypeError(
            f"inputs must be a floating-point tensor, got {inputs.dtype}; use inputs.float() "
            "(and scale uint8 images to [0, 1] with your model's normalisation)"
        )
    if inputs.ndim not in (3, 4, 5):
        hint = " add a batch dimension with inputs.unsqueeze(0)" if inputs.ndim == 2 else ""
        raise ValueError(
            f"expected inputs of shape (B, C, H, W) (or (B, C, L), (B, C, T, H, W)), got "
            f"{tuple(inputs.shape)};{hint or ' reshape your batch accordingly'}"
        )
    if inputs.ndim == 3 and _has(model, nn.Conv2d) and not _has(model, nn.Conv1d):
        raise ValueError(
            f"inputs of shape {tuple(inputs.shape)} look like one image without a batch "
            "dimension; use inputs.unsqueeze(0) to make it (1, C, H, W)"
        )
    if inputs.shape[0] == 0:
        raise ValueError("inputs is an empty batch (B = 0); pass at least one image")
    if any(s == 0 for s in inputs.shape[1:]):
        raise ValueError(f"inputs has an empty dimension: {tuple(inputs.shape)}")
    if not bool(torch.isfinite(inputs).all()):
        bad = "NaN" if bool(torch.isnan(inputs).any()) else "inf"
        raise ValueError(
            f"inputs contain {bad} values; clean the images (e.g. torch.nan_to_num) first"
        )
    return inputs


def _has(model: nn.Module, kind: type) -> bool:
    return any(isinstance(m, kind) for m in model.modules())


def check_size(size: Any) -> Any:
    if size is None or size == "input":
        return size
    if (
        isinstance(size, (tuple, list))
        and len(size) in (1, 2, 3)
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        return tuple(size)
    raise ValueError(
        f"size must be 'input', None or a tuple of positive ints such as (224, 224), got {size!r}"
    )


class InputTooSmallError(CamlensError, ValueError):
    """The inputs are smaller than the model takes; ``smallest`` is the spatial size it
    does take (each side grown to the smallest that runs)."""

    def __init__(self, message: str, size: tuple[int, ...], smallest: tuple[int, ...]) -> None:
        super().__init__(message)
        self.size = size
        self.smallest = smallest


_LARGEST = 1 << 24  # values per image the search for a working size may try
_REACH = 512  # the side it tries up to (or twice the input's largest side)


def check_input_size(model: nn.Module, inputs: Tensor, err: Exception) -> None:
    """Raise :class:`InputTooSmallError` from ``err`` (a forward's error) when the inputs
    are too small for ``model``: zeros of their shape fail too, and zeros with every side
    grown to some ``m`` (up to 512, or twice the largest side) run. ``m`` is found by
    doubling, then bisection, with no-grad forwards of one image in eval mode (a few
    milliseconds at such sizes); the model's modes and the random state are restored.
    Otherwise return (``err`` is not about size: a wrong channel count, a bug).
    """
    size = tuple(int(s) for s in inputs.shape[2:])
    if not size or isinstance(err, torch.OutOfMemoryError):
        return
    reach = max(_REACH, 2 * max(size))  # the largest side tried: a few forwards at most
    shape = (1, inputs.shape[1])

    def runs(side: int) -> bool:
        grown = shape + tuple(max(s, side) for s in size)
        try:
            model(inputs.new_zeros(grown))
        except Exception:  # noqa: BLE001 (any failure: this size does not run)
            return False
        return True

    devices = [inputs.device.index or 0] if inputs.device.type == "cuda" else []
    with ModelGuard(model, eval_mode=True), torch.random.fork_rng(devices=devices), \
            torch.no_grad():
        low = min(size)
        if runs(low):
            return  # the same shape runs on zeros: the size is not the problem
        high = low
        while True:
            high *= 2
            if high > reach or inputs.shape[1] * max(high, *size) ** len(size) > _LARGEST:
                return  # no size runs: not a question of size
            if runs(high):
                break
            low = high
        while high - low > 1:  # low fails, high runs
            mid = (low + high) // 2
            low, high = (low, mid) if runs(mid) else (mid, high)
    smallest = tuple(max(s, high) for s in size)
    name = type(getattr(model, "keras_model", model)).__name__
    shown = "x".join(map(str, size))
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    raise InputTooSmallError(
        f"inputs of {shown} are too small for {name}: it takes each side at least {high} "
        f"({'x'.join(map(str, smallest))} here); resize or pad the images to that size "
        f"(the model's error: {reason})",
        size, smallest,
    ) from err
