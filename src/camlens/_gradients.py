"""The gradient maths every backend's pass shares: target scores, batched vector-Jacobian
products in torch, the checks on them, and the classifier weight CAM reads.

Below the engine and the framework adapters alike: a backend's pass (the engine's PyTorch
pass, :mod:`camlens._adapters._keras_tf`) computes its tensors its own way and hands them
through these helpers, so every framework gives the same errors and the same numbers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .targets import bind_target


def detach_output(output: Any) -> Any:
    """The model output without its graph (tensors in tuples, lists and dicts too)."""
    if isinstance(output, Tensor):
        return output.detach()
    if isinstance(output, (tuple, list)):
        return type(output)(detach_output(o) for o in output)
    if isinstance(output, dict):
        return {k: detach_output(v) for k, v in output.items()}
    return output


def target_scores(
    target: Any, output: Any, batch: int, transform: Any = None,
) -> tuple[Any, Tensor | None, Tensor | None, Tensor, bool]:
    """``(bound target, matched, classes, scores (B, K), single)`` for the explained output,
    scores transformed by the method that asks for it (``transform``, Finer-CAM) and
    checked finite."""
    target = bind_target(target, output)
    matched = getattr(target, "matched", None)
    with torch.enable_grad():
        classes, scores, single = scores_of(target, output, batch)
        if transform is not None:
            scores = transform.transform_scores(output, classes)
    check_finite_scores(scores)
    return target, matched, classes, scores, single


def scores_of(target: Any, output: Any, batch: int) -> tuple[Tensor | None, Tensor, bool]:
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


def check_finite_scores(scores: Tensor) -> None:
    """A clear error for NaN or inf target scores: no map can be made from them."""
    bad = ~torch.isfinite(scores.detach())
    if bool(bad.any()):
        images = torch.nonzero(bad.any(dim=1)).flatten().tolist()
        kind = "NaN" if bool(torch.isnan(scores.detach()).any()) else "inf"
        raise ValueError(
            f"the model's target score is {kind} for image(s) {images}; no map can be made "
            "from it. Check the model and its weights (a division by zero, an overflow in "
            "float16, a log of 0) and that the inputs are normalised as the model expects"
        )


def check_finite_gradients(grads: list[Tensor], names: list[str]) -> None:
    for name, g in zip(names, grads):
        if not bool(torch.isfinite(g.detach()).all()):
            raise ValueError(
                f"the gradient of the target score at {name!r} contains NaN or inf, although "
                "the score is finite; an operation of the model has an unstable backward "
                "(e.g. sqrt or log at 0, float16 overflow). Pick another layer, run the "
                "model in float32, or use a gradient-free method such as 'scorecam'"
            )


def nothing_matched(target: Any) -> bool:
    """Whether a bound target found nothing to explain in any image (see ``matched``)."""
    matched = getattr(target, "matched", None)
    return matched is not None and not bool(matched.any())


def gradients(
    scores: Tensor, srcs: list[Tensor], names: list[str], create_graph: bool = False,
    unused_ok: bool = False, unmatched: bool = False, check: bool = True,
) -> list[Tensor]:
    """d scores / d srcs as (B, K, *layer_shape) per layer, in one batched VJP.

    ``unused_ok``: a layer off the path to the score (FullGrad's every-layer sweep meets
    a detector's proposal branch) gets zero gradients instead of an error. ``unmatched``:
    the target matched nothing in any image, so constant scores give zero gradients (and
    all-zero maps) instead of an error. ``check=False``: the caller checks scores and
    gradients for NaN and inf itself (once after a loop, not once per pass)."""
    if check:
        check_finite_scores(scores)
    b, k = scores.shape
    if not scores.requires_grad and unmatched:
        return [s.new_zeros(b, k, *s.shape[1:]) for s in srcs]
    if not scores.requires_grad:
        raise ValueError(
            "the target scores do not depend on the chosen layer(s); a target callable must "
            "compute from the model output without .detach() or .item()"
        )
    if k == 1:
        grads = torch.autograd.grad(scores.sum(), srcs, allow_unused=True,
                                    create_graph=create_graph)
        out = [g.unsqueeze(1) if g is not None else None for g in grads]
    elif create_graph:  # Hessian products need a graph per target
        out = per_target(scores, srcs, create_graph=True)
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
            out = per_target(scores, srcs, create_graph=False)
    for i, (name, g) in enumerate(zip(names, out)):
        if g is None and unused_ok:
            out[i] = srcs[i].new_zeros(b, k, *srcs[i].shape[1:])
        elif g is None:
            raise ValueError(
                f"layer {name!r} does not influence the target score; pick a layer on the "
                "path from the input to the output"
            )
    if check:
        check_finite_gradients(out, names)  # type: ignore[arg-type]
    return out  # type: ignore[return-value]


def per_target(scores: Tensor, srcs: list[Tensor], create_graph: bool) -> list[Tensor | None]:
    """d scores[:, j] / d srcs, one target at a time, stacked as (B, K, ...)."""
    per_k = [
        torch.autograd.grad(scores[:, j].sum(), srcs, allow_unused=True, retain_graph=True,
                            create_graph=create_graph)
        for j in range(scores.shape[1])
    ]
    return [
        torch.stack([p[i] for p in per_k], dim=1) if per_k[0][i] is not None else None
        for i in range(len(srcs))
    ]


def classifier_weight(linears: Any, acts: Tensor, output: Any, name: str) -> Tensor:
    """The weight of the linear layer fed by global average pooling of ``acts``.

    ``linears.calls`` holds ``(weight, input, output)`` for each linear layer the forward
    called (PyTorch's ``nn.Linear``, Keras's ``Dense``)."""
    channels = acts.shape[1]
    pooled = acts.flatten(2).mean(dim=-1)
    requirement = (
        f"cam needs layer {name!r} to feed global average pooling and then one nn.Linear "
        "that gives the model's output"
    )
    for weight, inp, out in reversed(linears.calls):
        if weight.shape[1] != channels or inp.ndim != 2 or inp.shape != pooled.shape:
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
        return weight.detach()
    raise ValueError(
        f"{requirement}; no nn.Linear (Keras: Dense) with in_features={channels} was "
        "called. Use "
        "method='gradcam' for models without such a head"
    )
