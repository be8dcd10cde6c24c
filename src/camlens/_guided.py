"""Guided backpropagation: ReLUs pass back only positive gradients where they fired.

Springenberg et al. 2015, https://arxiv.org/abs/1412.6806. The override covers ``nn.ReLU``
modules and ``F.relu`` / ``torch.relu`` / ``Tensor.relu`` calls alike, through a
``TorchFunctionMode`` that is active only during the pass: the model is never modified.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clamp_min(0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp_min(0) * (out > 0).to(grad.dtype)


_RELUS = {torch.relu, torch.relu_, F.relu, F.relu_, Tensor.relu, Tensor.relu_}


class GuidedReLUs(TorchFunctionMode):
    """While active, every ReLU call is a guided ReLU; ``count`` says how many ran."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _RELUS:
            self.count += 1
            return _GuidedReLU.apply(args[0])
        return func(*args, **kwargs)
