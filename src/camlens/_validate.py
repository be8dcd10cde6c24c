"""Checks on the user's inputs, with messages that say how to fix them."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._adapters import adapt


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
