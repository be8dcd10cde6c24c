"""The engine: one forward pass and one gradient computation per batch, for every method."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._capture import LayerCapture, LinearCapture
from ._guard import ModelGuard
from ._layers import Reshape, find_auto_layer, to_channels_first
from .methods._base import LayerData, Method


@dataclass
class PassResult:
    """What one pass produced: the model output, each layer's data and the targets."""

    output: Any
    layer_names: list[str]
    layers: list[LayerData]
    classes: Tensor | None
    single: bool


def run_pass(
    model: nn.Module,
    inputs: Tensor,
    methods: Sequence[Method],
    layers: list[tuple[str, nn.Module]] | None,
    target: Any,
    *,
    counterfactual: bool = False,
    reshape: Reshape | None = None,
    eval_mode: bool = True,
) -> PassResult:
    """Run the model once, take the target scores and their gradients at the layers.

    One pass serves all ``methods``: gradients are computed if any needs them, the
    classifier is read if any needs it. Gradients come from ``torch.autograd.grad`` with
    respect to the captured layer outputs only (never ``.backward()``: no parameter's
    ``.grad`` is touched). K targets per image are differentiated together by batched
    vector-Jacobian products.
    """
    need_grads = any(m.needs_gradients for m in methods)
    need_classifier = any(m.needs_classifier for m in methods)
    if need_grads and torch.is_inference_mode_enabled():
        names = ", ".join(m.name for m in methods if m.needs_gradients)
        raise RuntimeError(
            f"{names} needs gradients, which torch.inference_mode() forbids; call "
            "camlens outside inference_mode (torch.no_grad() is fine)"
        )
    with ModelGuard(model, eval_mode):
        if layers is None:
            layers = [find_auto_layer(model, inputs)]
        with ExitStack() as stack:
            capture = stack.enter_context(LayerCapture(layers, grads=need_grads))
            linears = stack.enter_context(LinearCapture(model)) if need_classifier else None
            with torch.no_grad():
                output = model(inputs)
        for (name, _), out in zip(layers, capture.outputs):
            if out is None:
                raise ValueError(
                    f"layer {name!r} was not called during the forward pass; pick a layer "
                    "the model uses (see model.named_modules())"
                )
        srcs: list[Tensor] = capture.outputs  # type: ignore[assignment]
        with torch.enable_grad():
            classes, scores, single = _scores(target, output, inputs.shape[0])
            grads = _gradients(scores, srcs, layers) if need_grads else None
    names = [n for n, _ in layers]
    data = []
    for i, src in enumerate(srcs):
        acts = to_channels_first(src.detach(), inputs.shape, reshape, lead=1)
        g = None
        if grads is not None:
            g = to_channels_first(grads[i], inputs.shape, reshape, lead=2)
            if counterfactual:
                g = -g
        weight: Tensor | ValueError | None = None
        if need_classifier:
            assert linears is not None
            try:
                weight = _classifier_weight(linears, acts, output, names[i])
            except ValueError as err:  # raised by the methods that need it, not the others
                weight = err
        if acts.dtype in (torch.float16, torch.bfloat16):
            acts = acts.float()
            g = g.float() if g is not None else None
        data.append(
            LayerData(
                activations=acts,
                gradients=g,
                num_targets=scores.shape[1],
                classes=classes,
                classifier_weight=weight,
                counterfactual=counterfactual,
            )
        )
    return PassResult(output, names, data, classes, single)


def _scores(target: Any, output: Any, batch: int) -> tuple[Tensor | None, Tensor, bool]:
    """(classes or None, scores (B, K), single) for a target object or callable."""
    classes = None
    if hasattr(target, "classes") and hasattr(target, "scores"):
        classes = target.classes(output)
        scores = target.scores(output, classes)
        single = bool(getattr(target, "single", False))
    else:
        scores = target(output)
        if not isinstance(scores, Tensor):
            raise TypeError(
                f"the target callable returned {type(scores).__name__}; it must return a "
                f"Tensor of shape (B,) = ({batch},) or (B, K)"
            )
        single = scores.ndim == 1
    if scores.ndim == 1:
        scores = scores.unsqueeze(1)
    if scores.ndim != 2 or scores.shape[0] != batch or scores.shape[1] == 0:
        raise ValueError(
            f"the target returned scores of shape {tuple(scores.shape)}; expected (B,) = "
            f"({batch},) or (B, K) with one score per image and target"
        )
    if not scores.is_floating_point():
        raise TypeError(f"target scores must be floating point, got {scores.dtype}")
    return classes, scores, single


def _gradients(
    scores: Tensor, srcs: list[Tensor], layers: list[tuple[str, nn.Module]]
) -> list[Tensor]:
    """d scores / d srcs as (B, K, *layer_shape) per layer, in one batched VJP."""
    if not scores.requires_grad:
        raise ValueError(
            "the target scores do not depend on the chosen layer(s); a target callable must "
            "compute from the model output without .detach() or .item()"
        )
    b, k = scores.shape
    if k == 1:
        grads = torch.autograd.grad(scores.sum(), srcs, allow_unused=True)
        out = [g.unsqueeze(1) if g is not None else None for g in grads]
    else:
        eye = torch.eye(k, dtype=scores.dtype, device=scores.device)
        basis = eye.unsqueeze(1).expand(k, b, k)
        try:
            grads = torch.autograd.grad(
                scores, srcs, grad_outputs=basis, is_grads_batched=True, allow_unused=True,
                retain_graph=True,
            )
            out = [g.movedim(0, 1) if g is not None else None for g in grads]
        except RuntimeError:  # an op without a batching rule: fall back to K passes
            per_k = [
                torch.autograd.grad(scores[:, j].sum(), srcs, allow_unused=True, retain_graph=True)
                for j in range(k)
            ]
            out = [
                torch.stack([p[i] for p in per_k], dim=1) if per_k[0][i] is not None else None
                for i in range(len(srcs))
            ]
    for (name, _), g in zip(layers, out):
        if g is None:
            raise ValueError(
                f"layer {name!r} does not influence the target score; pick a layer on the "
                "path from the input to the output"
            )
    return out  # type: ignore[return-value]


def _classifier_weight(linears: LinearCapture, acts: Tensor, output: Any, name: str) -> Tensor:
    """The weight of the linear layer fed by global average pooling of ``acts``."""
    channels = acts.shape[1]
    pooled = acts.flatten(2).mean(dim=-1)
    requirement = (
        f"cam needs layer {name!r} to feed global average pooling and then one nn.Linear "
        "that gives the model's output"
    )
    for module, inp, out in reversed(linears.calls):
        if module.in_features != channels or inp.ndim != 2 or inp.shape != pooled.shape:
            continue
        scale = pooled.abs().amax().clamp_min(1e-12)
        if not torch.allclose(inp.to(pooled.dtype), pooled, rtol=1e-4, atol=1e-5 * float(scale)):
            raise ValueError(
                f"{requirement}, but the linear layer's input is not the spatial mean of "
                "that layer's output; pick the layer right before the pooling, or use "
                "method='gradcam' (which equals CAM on such models)"
            )
        final = output if isinstance(output, Tensor) else None
        if final is None or final.shape != out.shape or not torch.equal(final, out):
            raise ValueError(
                f"{requirement}, but the model's output is not that linear layer's output; "
                "use method='gradcam' instead"
            )
        return module.weight.detach()
    raise ValueError(
        f"{requirement}; no nn.Linear with in_features={channels} was called. Use "
        "method='gradcam' for models without such a head"
    )
