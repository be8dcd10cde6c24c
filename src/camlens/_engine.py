"""The engine: one forward pass and one gradient computation per batch, for every method."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ._capture import LayerCapture, LinearCapture, forget_calls, layer_calls
from ._guard import ModelGuard
from ._guided import GuidedReLUs
from ._layers import Reshape, find_auto_layer, to_channels_first
from ._scorer import Scorer
from ._validate import check_input_size
from .methods._base import LayerData, Method
from .targets import bind_target


@dataclass
class PassResult:
    """What one pass produced: the model output, each layer's data and the targets."""

    output: Any
    layer_names: list[str]
    layers: list[LayerData]
    classes: Tensor | None
    single: bool
    matched: Tensor | None = None  # (B,) False where the target found nothing to explain
    # why the methods with a given need (a Method class attribute) cannot apply
    refused: dict[str, ValueError] = field(default_factory=dict)

    def check(self, method: Method) -> None:
        """Raise the reason ``method`` cannot use this pass, if there is one."""
        for need, err in self.refused.items():
            if getattr(method, need, False):
                raise err


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
    batch_size: int = 64,
    progress: bool | Callable[[int, int], None] = False,
    seed: int = 0,
) -> PassResult:
    """Run the model once, take the target scores and their gradients at the layers.

    One pass serves all ``methods``: it computes whatever any of them asks for (layer
    gradients, Hessian-vector products, input gradients, guided input gradients, the
    classifier's weights, a scorer for perturbed forwards). Gradients come from
    ``torch.autograd.grad`` with respect to the captured tensors only (never
    ``.backward()``: no parameter's ``.grad`` is touched). K targets per image are
    differentiated together by batched vector-Jacobian products. Unless input gradients
    are needed, the model runs without autograd until the first captured layer.
    """
    if getattr(model, "backend", None) == "tensorflow":  # a Keras model on TensorFlow
        from ._adapters._keras_tf import run_tf_pass

        return run_tf_pass(model, inputs, methods, layers, target,
                           counterfactual=counterfactual, reshape=reshape,
                           batch_size=batch_size, progress=progress, seed=seed)
    if reshape is None and getattr(model, "camlens_adapter", False):
        reshape = model.layer_to_channels_first  # Keras layers are channels-last
    need_grads = any(m.needs_gradients for m in methods)
    need_classifier = any(m.needs_classifier for m in methods)
    need_hessian = any(m.needs_hessian for m in methods)
    need_input_grads = any(m.needs_input_gradients and not m.guided for m in methods)
    need_guided = any(m.guided for m in methods)
    need_layer = any(m.needs_layer for m in methods)
    if (need_grads or need_guided) and torch.is_inference_mode_enabled():
        names = ", ".join(m.name for m in methods if m.needs_gradients or m.guided)
        raise RuntimeError(
            f"{names} needs gradients, which torch.inference_mode() forbids; call "
            "camlens outside inference_mode (torch.no_grad() is fine)"
        )
    if need_guided and not need_layer and not need_grads and not need_classifier and not any(
        m.needs_scorer for m in methods
    ):
        return _guided_only(model, inputs, target, counterfactual, eval_mode, seed)
    own = [m.own_layers(model, inputs) for m in methods if hasattr(m, "own_layers")]
    transforms = [m for m in methods if hasattr(m, "transform_scores")]
    noisy = [m for m in methods if getattr(m, "noise_samples", 0)]
    if len(own) + len(transforms) + len(noisy) > 1 or (
        (own or transforms or noisy) and len(methods) > 1
    ):
        raise ValueError("fullgrad, finercam and smoothgradcam++ each need a pass of their own")
    with ModelGuard(model, eval_mode):
        try:
            if own:
                layers = own[0]
            elif not need_layer:
                layers = []
            elif layers is None:
                layers = [find_auto_layer(model, inputs)]
            x = inputs.detach().requires_grad_(True) if need_input_grads else inputs
            # with input gradients the whole forward is recorded anyway: no need to probe
            last = None if need_input_grads or not need_grads else layer_calls(model, x, layers)
            while True:
                with ExitStack() as stack:
                    capture = stack.enter_context(
                        LayerCapture(layers, grads=need_grads, last=last))
                    linears = (stack.enter_context(LinearCapture(model)) if need_classifier
                               else None)
                    if need_hessian:  # fused attention kernels have no second derivative
                        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
                    with torch.enable_grad() if need_input_grads else torch.no_grad():
                        output = model(x)
                if last is None or tuple(capture.calls) == last:
                    break
                forget_calls(model, x, layers)  # the count depends on the data: not cached
                if capture.complete:
                    break
                last = None  # a layer ran fewer times than probed: again from its first call
        except RuntimeError as err:  # torch's padding or kernel-size error: say the size
            check_input_size(model, inputs, err)
            raise
        for (name, _), out in zip(layers, capture.outputs):
            if out is None:
                raise ValueError(
                    f"layer {name!r} was not called during the forward pass; pick a layer "
                    f"the model uses ({getattr(model, 'layer_hint', 'see model.named_modules()')})"
                )
        srcs: list[Tensor] = capture.outputs  # type: ignore[assignment]
        refused: dict[str, ValueError] = {}
        with torch.enable_grad():
            target, matched, classes, scores, single = target_scores(
                target, output, inputs.shape[0], transforms)
            wrt = srcs + ([x] if need_input_grads else [])
            names = [n for n, _ in layers] + (["input"] if need_input_grads else [])
            grads = (
                _gradients(scores, wrt, names, create_graph=need_hessian, unused_ok=bool(own),
                           unmatched=_nothing_matched(target))
                if need_grads and wrt else None
            )
            hvps = None
            if need_hessian and grads:
                try:
                    hvps = _hessian_products(grads[: len(srcs)], srcs)
                except ValueError as err:  # only the methods that need it cannot apply
                    refused["needs_hessian"] = err
        guided = None
        if need_guided:
            try:
                guided = _guided_gradients(model, inputs, target, classes, counterfactual)
            except ValueError as err:
                refused["guided"] = err
        samples = None
        if noisy:
            samples = _noisy_gradients(model, inputs, layers, target, classes, noisy[0], seed)
    sign = -1.0 if counterfactual else 1.0
    input_grads = None
    if need_input_grads and grads is not None:
        input_grads = grads[-1].detach() * sign
    elif guided is not None:
        input_grads = guided  # already of the negated score: guided activations are not linear
    scorer = None
    if any(m.needs_scorer for m in methods):
        scorer = Scorer(model, target, classes, eval_mode=eval_mode, batch_size=batch_size,
                        progress=progress, num_images=inputs.shape[0])
    data = []
    sources = [(s, layers[i]) for i, s in enumerate(srcs)] or [(inputs, ("input", model))]
    for i, (src, layer) in enumerate(sources):
        if srcs:
            if src.shape[0] != inputs.shape[0]:
                raise ValueError(
                    f"layer {layer[0]!r} gives an output of shape {tuple(src.shape)}, whose "
                    f"first dimension is not the batch of {inputs.shape[0]} input(s) (e.g. "
                    "features per detected region, or sequence-first tokens); pick a layer "
                    "whose output starts with the batch, such as 'backbone.body.layer4' in "
                    "torchvision detectors"
                )
            acts = to_channels_first(src.detach(), inputs.shape, reshape, lead=1)
        else:
            acts = src
        g = hvp = None
        if grads is not None and srcs:
            g = to_channels_first(grads[i].detach(), inputs.shape, reshape, lead=2) * sign
        if hvps is not None:
            hvp = to_channels_first(hvps[i], inputs.shape, reshape, lead=2) * sign
        sample = None
        if samples is not None:
            sample = to_channels_first(samples[i].flatten(0, 1), inputs.shape, reshape, lead=2)
            sample = sample.view(*samples[i].shape[:3], *sample.shape[2:]) * sign
        weight: Tensor | ValueError | None = None
        if need_classifier:
            assert linears is not None
            try:
                weight = _classifier_weight(linears, acts, output, layer[0])
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
                inputs=inputs,
                input_gradients=input_grads,
                hvp=hvp,
                scorer=scorer,
                layer=layer,
                seed=seed,
                gradient_samples=sample,
                layer_call=capture.calls[i] if srcs else 1,
            )
        )
    # detached: the graph from the layer to the output is not kept while the methods run
    return PassResult(detach_output(output), [n for n, _ in layers] or ["input"], data,
                      classes, single, matched, refused)


def _guided_only(model: nn.Module, inputs: Tensor, target: Any, counterfactual: bool,
                 eval_mode: bool, seed: int) -> PassResult:
    """Guided backpropagation alone: one forward (guided activations change only the backward,
    so its output and the top classes are the plain model's) and one backward."""
    with ModelGuard(model, eval_mode):
        x = inputs.detach().requires_grad_(True)
        with GuidedReLUs() as mode, torch.enable_grad():
            try:
                output = model(x)
            except RuntimeError as err:
                check_input_size(model, inputs, err)
                raise
            mode.check(model)
            target = bind_target(target, output)
            matched = getattr(target, "matched", None)
            classes, scores, single = _scores(target, output, inputs.shape[0])
            (g,) = _gradients(-scores if counterfactual else scores, [x], ["input"],
                              unmatched=_nothing_matched(target))
    data = LayerData(activations=inputs, gradients=None, num_targets=scores.shape[1],
                     classes=classes, counterfactual=counterfactual, inputs=inputs,
                     input_gradients=g.detach(), layer=("input", model), seed=seed)
    return PassResult(detach_output(output), ["input"], [data], classes, single, matched)


def detach_output(output: Any) -> Any:
    """The model output without its graph (tensors in tuples, lists and dicts too)."""
    if isinstance(output, Tensor):
        return output.detach()
    if isinstance(output, (tuple, list)):
        return type(output)(detach_output(o) for o in output)
    if isinstance(output, dict):
        return {k: detach_output(v) for k, v in output.items()}
    return output


def _guided_gradients(model: nn.Module, inputs: Tensor, target: Any,
                      classes: Tensor | None, counterfactual: bool = False) -> Tensor:
    """d score / d input (B, K, C, *S) with every ReLU, ReLU6, Hardtanh and LeakyReLU
    guided (a second, full pass)."""
    x = inputs.detach().requires_grad_(True)
    with GuidedReLUs() as mode, torch.enable_grad():
        output = model(x)
        mode.check(model)
        if classes is not None and hasattr(target, "scores"):
            scores = target.scores(output, classes)
        else:
            _, scores, _ = _scores(target, output, inputs.shape[0])
        (g,) = _gradients(-scores if counterfactual else scores, [x], ["input"],
                          unmatched=_nothing_matched(target))
    return g.detach()


def _noisy_gradients(
    model: nn.Module, inputs: Tensor, layers: list[tuple[str, nn.Module]], target: Any,
    classes: Tensor | None, method: Any, seed: int,
) -> list[Tensor]:
    """Layer gradients (N, B, K, ...) at N noisy copies ``x + n``, ``n ~ N(0, std^2)``
    (one draw per copy, shared by the images: results do not depend on the batch)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    names = [n for n, _ in layers]
    per_sample: list[list[Tensor]] = []
    all_scores = []
    last = layer_calls(model, inputs, layers)
    for _ in range(method.noise_samples):
        noise = torch.randn(inputs.shape[1:], generator=g).to(inputs) * method.noise_std
        with LayerCapture(layers, grads=True, last=last) as capture, torch.no_grad():
            output = model(inputs + noise)
        if not capture.complete:  # a layer ran fewer times than in the probe
            last = None
            forget_calls(model, inputs, layers)
            with LayerCapture(layers, grads=True) as capture, torch.no_grad():
                output = model(inputs + noise)
        with torch.enable_grad():
            if classes is not None and hasattr(target, "scores"):
                scores = target.scores(output, classes)
            else:
                _, scores, _ = _scores(target, output, inputs.shape[0])
            grads = _gradients(scores, capture.outputs, names,  # type: ignore[arg-type]
                               unmatched=_nothing_matched(target), check=False)
        all_scores.append(scores.detach())
        per_sample.append([gr.detach() for gr in grads])
    # checked once after the loop, not once per copy (each check makes the host wait for
    # the device); the sum over copies is finite where every copy's score is
    check_finite_scores(torch.stack(all_scores).sum(0))
    stacked = [torch.stack([s[i] for s in per_sample]) for i in range(len(layers))]
    _check_finite_gradients(stacked, names)
    return stacked


def _hessian_products(grads: list[Tensor], srcs: list[Tensor]) -> list[Tensor]:
    """(d/dA of (dy/dA . A)) for each layer and target: the Hessian times the activations."""
    try:
        return _hvps(grads, srcs)
    except RuntimeError as err:  # e.g. torchvision's roi_align has no double backward
        raise ValueError(
            "this method needs second derivatives (Hessian-vector products), but an "
            f"operation of the model has none ({str(err).splitlines()[0]}); use a "
            "first-order method such as 'gradcam'"
        ) from err


def _hvps(grads: list[Tensor], srcs: list[Tensor]) -> list[Tensor]:
    out = []
    for g, a in zip(grads, srcs):
        per_k = []
        for k in range(g.shape[1]):
            if not g.requires_grad:  # the gradient does not depend on A: H A = 0
                per_k.append(torch.zeros_like(a).detach())
                continue
            (h,) = torch.autograd.grad(g[:, k], a, grad_outputs=a.detach(), retain_graph=True,
                                       allow_unused=True)
            per_k.append(torch.zeros_like(a) if h is None else h.detach())
        out.append(torch.stack(per_k, dim=1))
    return out


def target_scores(
    target: Any, output: Any, batch: int, transforms: Sequence[Any] = (),
) -> tuple[Any, Tensor | None, Tensor | None, Tensor, bool]:
    """``(bound target, matched, classes, scores (B, K), single)`` for the explained output,
    scores transformed by a method that asks for it (Finer-CAM) and checked finite."""
    target = bind_target(target, output)
    matched = getattr(target, "matched", None)
    with torch.enable_grad():
        classes, scores, single = _scores(target, output, batch)
        if transforms:
            scores = transforms[0].transform_scores(output, classes)
    check_finite_scores(scores)
    return target, matched, classes, scores, single


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


def _check_finite_gradients(grads: list[Tensor], names: list[str]) -> None:
    for name, g in zip(names, grads):
        if not bool(torch.isfinite(g.detach()).all()):
            raise ValueError(
                f"the gradient of the target score at {name!r} contains NaN or inf, although "
                "the score is finite; an operation of the model has an unstable backward "
                "(e.g. sqrt or log at 0, float16 overflow). Pick another layer, run the "
                "model in float32, or use a gradient-free method such as 'scorecam'"
            )


def _nothing_matched(target: Any) -> bool:
    """Whether a bound target found nothing to explain in any image (see ``matched``)."""
    matched = getattr(target, "matched", None)
    return matched is not None and not bool(matched.any())


def _gradients(
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
        out = _per_target(scores, srcs, create_graph=True)
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
            out = _per_target(scores, srcs, create_graph=False)
    for i, (name, g) in enumerate(zip(names, out)):
        if g is None and unused_ok:
            out[i] = srcs[i].new_zeros(b, k, *srcs[i].shape[1:])
        elif g is None:
            raise ValueError(
                f"layer {name!r} does not influence the target score; pick a layer on the "
                "path from the input to the output"
            )
    if check:
        _check_finite_gradients(out, names)  # type: ignore[arg-type]
    return out  # type: ignore[return-value]


def _per_target(scores: Tensor, srcs: list[Tensor], create_graph: bool) -> list[Tensor | None]:
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


def _classifier_weight(linears: Any, acts: Tensor, output: Any, name: str) -> Tensor:
    """The weight of the linear layer fed by global average pooling of ``acts``."""
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
