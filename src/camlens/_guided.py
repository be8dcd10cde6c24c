"""Guided backpropagation: piecewise-linear activations pass back only positive gradients,
and only where their input lies in a sloped part of the activation.

Springenberg et al. 2015, https://arxiv.org/abs/1412.6806. The paper's rule for a ReLU,
``R = (x > 0) * max(g, 0)``, is the local derivative times the positive part of the
incoming gradient, ``R = f'(x) * max(g, 0)``, which is defined just as well for the other
piecewise-linear activations:

- ReLU (``nn.ReLU``, ``F.relu``, ``torch.relu``, ``Tensor.relu``, in-place forms too):
  ``f'(x) = 1`` for ``x > 0``, else 0: the paper's rule.
- Hardtanh(lo, hi), ReLU6 = Hardtanh(0, 6) (``nn.Hardtanh``, ``nn.ReLU6``, ``F.hardtanh``,
  ``F.relu6``, in-place forms): ``f'(x) = 1`` for ``lo < x < hi``, else 0, so a clipped
  unit passes nothing back, as a ReLU that did not fire.
- LeakyReLU with slope ``a`` (``nn.LeakyReLU``, ``F.leaky_relu``, ``F.leaky_relu_``):
  ``f'(x) = 1`` for ``x > 0``, else ``a``, so on the negative side the positive part of
  the gradient passes scaled by ``a`` (``a = 0`` is the ReLU rule). At the kinks ``f'``
  is torch's own: 0 at a ReLU's 0 and at both ends of a Hardtanh, ``a`` at a LeakyReLU's 0.

Forward values are torch's own (computed out of place, even for the in-place forms).
Every other operation keeps its ordinary gradient, as in the paper's and captum's and
pytorch-grad-cam's implementations; a model with none of the activations above (only
smooth ones such as SiLU, GELU or Hardswish, which have no linear region to keep) is
refused with the reason. The override lives in a ``TorchFunctionMode`` that is active
only during the pass: the model is never modified.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


class _Guided(torch.autograd.Function):
    """``y = f(x)`` for a piecewise-linear ``f`` with slope 1 on ``(lo, hi)`` and
    ``slope`` below ``lo`` (0 above ``hi``); backward ``f'(x) * max(g, 0)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lo: float, hi: float, slope: float) -> Tensor:
        inside = x > lo
        if hi < math.inf:
            inside &= x < hi
        ctx.slope = slope
        ctx.save_for_backward(inside)
        if slope:
            return torch.where(inside, x, x * slope)
        return x.clamp(lo, hi if hi < math.inf else None)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        up = grad.clamp_min(0)
        if ctx.slope:
            return torch.where(inside, up, up * ctx.slope), None, None, None
        return up * inside.to(up.dtype), None, None, None


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: float) -> float:
    """Argument ``i`` (or keyword ``name``) of a call, else ``default``."""
    return float(args[i]) if len(args) > i else float(kwargs.get(name, default))


def _relu(args: tuple, kwargs: dict) -> tuple[float, float, float]:
    return 0.0, math.inf, 0.0


def _relu6(args: tuple, kwargs: dict) -> tuple[float, float, float]:
    return 0.0, 6.0, 0.0


def _hardtanh(args: tuple, kwargs: dict) -> tuple[float, float, float]:
    return (_arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0),
            0.0)


def _leaky(args: tuple, kwargs: dict) -> tuple[float, float, float]:
    return 0.0, math.inf, _arg(args, kwargs, 1, "negative_slope", 0.01)


_Rule = Callable[[tuple, dict], tuple[float, float, float]]
# each call that the guided rule covers -> (lo, hi, slope below lo) from its arguments
_RULES: dict[Any, _Rule] = {
    **dict.fromkeys((torch.relu, torch.relu_, F.relu, F.relu_, Tensor.relu, Tensor.relu_),
                    _relu),
    **dict.fromkeys((F.relu6, torch._C._nn.relu6, torch._C._nn.relu6_), _relu6),
    **dict.fromkeys((F.hardtanh, F.hardtanh_, torch._C._nn.hardtanh), _hardtanh),
    **dict.fromkeys((F.leaky_relu, F.leaky_relu_, torch._C._nn.leaky_relu), _leaky),
}
# smooth activations: no linear region, so no guided rule; named when a model has only these
_SMOOTH = {F.silu: "SiLU", F.gelu: "GELU", F.hardswish: "Hardswish", F.mish: "Mish",
           F.elu: "ELU", F.selu: "SELU", F.celu: "CELU", F.softplus: "Softplus"}

GUIDED_ACTIVATIONS = "ReLU, ReLU6, Hardtanh or LeakyReLU"


class GuidedReLUs(TorchFunctionMode):
    """While active, every ReLU, ReLU6, Hardtanh and LeakyReLU call is guided; ``count``
    says how many ran, ``smooth`` which smooth activations ran (they stay as they are)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.smooth: set[str] = set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        rule = _RULES.get(func)
        if rule is not None:
            self.count += 1
            return _Guided.apply(args[0] if args else kwargs["input"], *rule(args, kwargs))
        if func in _SMOOTH:
            self.smooth.add(_SMOOTH[func])
        return func(*args, **kwargs)

    def check(self, model: Any) -> None:
        """Raise why guided backpropagation cannot apply when no guided activation ran."""
        if self.count:
            return
        ran = ""
        if self.smooth:
            ran = (f"; it runs {', '.join(sorted(self.smooth))}: smooth, with no linear "
                   "region for the guided rule to keep")
        raise ValueError(
            f"guided backpropagation needs ReLUs or clipped-linear activations "
            f"({GUIDED_ACTIVATIONS}, as modules or F.* calls) and {type(model).__name__} "
            f"ran none{ran}; use a gradient method such as 'gradcam'"
        )
