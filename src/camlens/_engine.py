"""The engine: one forward pass and one gradient computation per batch, for every method.

:func:`run_pass` reads what the methods need (:class:`~camlens._backend.PassPlan`) and hands
the pass to the model adapter's own pass where it brings one
(:class:`~camlens._backend.ModelAdapter`), else runs the PyTorch pass below in short steps:
pick the layers, forward with capture, target scores and their gradients, the extra passes
(guided, noisy), then the methods' :class:`LayerData`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ._backend import (
    Captured,
    PassOptions,
    PassPlan,
    PassResult,
    adapter_of,
    layer_data,
)
from ._capture import LayerCapture, LinearCapture, forget_calls, layer_calls
from ._gradients import (
    check_finite_gradients,
    check_finite_scores,
    classifier_weight,
    detach_output,
    gradients,
    nothing_matched,
    scores_of,
    target_scores,
)
from ._guard import ModelGuard
from ._guided import GuidedReLUs
from ._layers import Reshape, find_auto_layer
from ._scorer import Scorer
from ._validate import check_input_size
from .methods._base import LayerData, Method
from .targets import bind_target

__all__ = ["PassResult", "detach_output", "run_pass"]


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
    are needed, the model runs without autograd until the first captured layer. A model
    adapter with a pass of its own (another framework's autodiff) runs that instead.
    """
    plan = PassPlan.of(methods)
    options = PassOptions(counterfactual=counterfactual, reshape=reshape, eval_mode=eval_mode,
                          batch_size=batch_size, progress=progress, seed=seed)
    adapter = adapter_of(model)
    if adapter is not None:
        own_pass = adapter.engine_pass()
        if own_pass is not None:
            return own_pass(model, inputs, plan, layers, target, options)
        if reshape is None:  # the adapter's layers keep its framework's layout
            options = replace(options, reshape=adapter.layer_to_channels_first)
    return torch_pass(model, inputs, plan, layers, target, options)


def torch_pass(model: nn.Module, inputs: Tensor, plan: PassPlan,
               layers: list[tuple[str, nn.Module]] | None, target: Any,
               options: PassOptions) -> PassResult:
    """The PyTorch pass: forward hooks on the layers and ``torch.autograd.grad``."""
    if plan.backward and torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{', '.join(plan.backward)} needs gradients, which torch.inference_mode() "
            "forbids; call camlens outside inference_mode (torch.no_grad() is fine)"
        )
    if plan.guided_only:
        return _guided_only(model, inputs, target, options.counterfactual, options.eval_mode,
                            options.seed)
    plan.check_alone()
    own = plan.own_layers.own_layers(model, inputs) if plan.own_layers else None  # type: ignore[attr-defined]
    with ModelGuard(model, options.eval_mode):
        try:
            layers = _pick_layers(model, inputs, plan, layers, own)
            x = inputs.detach().requires_grad_(True) if plan.input_gradients else inputs
            forward = _forward(model, x, layers, plan)
        except RuntimeError as err:  # torch's padding or kernel-size error: say the size
            check_input_size(model, inputs, err)
            raise
        _check_called(model, forward)
        with torch.enable_grad():
            target, matched, classes, scores, single = target_scores(
                target, forward.output, inputs.shape[0], plan.transform)
            found = _layer_gradients(forward, x, scores, target, plan, own is not None)
        found.classes = classes
        _extra_passes(model, inputs, target, plan, options, found, forward.refused)
    if plan.scorer:
        found.scorer = Scorer(model, target, classes, eval_mode=options.eval_mode,
                              batch_size=options.batch_size, progress=options.progress,
                              num_images=inputs.shape[0])
    data = layer_data(model, inputs, found, options)
    # detached: the graph from the layer to the output is not kept while the methods run
    return PassResult(detach_output(forward.output), [n for n, _ in layers] or ["input"], data,
                      classes, single, matched, forward.refused)


def _pick_layers(model: nn.Module, inputs: Tensor, plan: PassPlan,
                 layers: list[tuple[str, nn.Module]] | None,
                 own: list[tuple[str, nn.Module]] | None) -> list[tuple[str, nn.Module]]:
    """The method's own layers, none where no method reads a layer, else the caller's
    or the automatic choice."""
    if own is not None:
        return own
    if not plan.layer:
        return []
    return [find_auto_layer(model, inputs)] if layers is None else layers


def _extra_passes(model: nn.Module, inputs: Tensor, target: Any, plan: PassPlan,
                  options: PassOptions, found: Captured,
                  refused: dict[str, ValueError]) -> None:
    """The passes besides the main one: guided input gradients (a full guided pass) and
    gradients at noisy copies; the input gradients the methods see."""
    guided = None
    if plan.guided:
        try:
            guided = _guided_gradients(model, inputs, target, found.classes,
                                       options.counterfactual)
        except ValueError as err:
            refused["guided"] = err
    if plan.noisy is not None:
        found.samples = _noisy_gradients(model, inputs, found.layers, target, found.classes,
                                         plan.noisy, options.seed)
    if plan.input_gradients and found.gradients is not None:
        found.input_gradients = found.gradients[-1].detach() * options.sign
    elif guided is not None:
        found.input_gradients = guided  # of the negated score already: guided is not linear


@dataclass
class _Forward:
    """The forward step's result: the output, the captured layers and linear calls."""

    output: Any
    layers: list[tuple[str, nn.Module]]
    outputs: list[Tensor]
    calls: list[int]
    linears: LinearCapture | None
    refused: dict[str, ValueError]


def _forward(model: nn.Module, x: Tensor, layers: list[tuple[str, nn.Module]],
             plan: PassPlan) -> _Forward:
    """One forward with the layers captured; the graph starts at a layer's last call
    (probed with :func:`layer_calls`) unless input gradients need all of it."""
    # with input gradients the whole forward is recorded anyway: no need to probe
    last = None if plan.input_gradients or not plan.gradients else layer_calls(model, x, layers)
    while True:
        with ExitStack() as stack:
            capture = stack.enter_context(LayerCapture(layers, grads=plan.gradients, last=last))
            linears = stack.enter_context(LinearCapture(model)) if plan.classifier else None
            if plan.hessian:  # fused attention kernels have no second derivative
                stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            with torch.enable_grad() if plan.input_gradients else torch.no_grad():
                output = model(x)
        if last is None or tuple(capture.calls) == last:
            break
        forget_calls(model, x, layers)  # the count depends on the data: not cached
        if capture.complete:
            break
        last = None  # a layer ran fewer times than probed: again from its first call
    return _Forward(output, layers, capture.outputs, list(capture.calls),  # type: ignore[arg-type]
                    linears, {})


def _check_called(model: nn.Module, forward: _Forward) -> None:
    for (name, _), out in zip(forward.layers, forward.outputs):
        if out is None:
            raise ValueError(
                f"layer {name!r} was not called during the forward pass; pick a layer "
                f"the model uses ({getattr(model, 'layer_hint', 'see model.named_modules()')})"
            )


def _layer_gradients(forward: _Forward, x: Tensor, scores: Tensor, target: Any,
                     plan: PassPlan, own_layers: bool) -> Captured:
    """The scores' gradients at the layers (and the input, last, where asked) and the
    Hessian products, in what the forward captured."""
    srcs = forward.outputs
    wrt = srcs + ([x] if plan.input_gradients else [])
    names = [n for n, _ in forward.layers] + (["input"] if plan.input_gradients else [])
    grads = (
        gradients(scores, wrt, names, create_graph=plan.hessian, unused_ok=own_layers,
                  unmatched=nothing_matched(target))
        if plan.gradients and wrt else None
    )
    hvps = None
    if plan.hessian and grads:
        try:
            hvps = _hessian_products(grads[: len(srcs)], srcs)
        except ValueError as err:  # only the methods that need it cannot apply
            forward.refused["needs_hessian"] = err
    linears = forward.linears
    classifier = None
    if linears is not None:
        def classifier(acts: Tensor, name: str) -> Tensor:
            return classifier_weight(linears, acts, forward.output, name)
    return Captured(forward.layers, srcs, forward.calls, scores.shape[1], None,
                    gradients=grads, hvps=hvps, classifier=classifier)


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
            classes, scores, single = scores_of(target, output, inputs.shape[0])
            (g,) = gradients(-scores if counterfactual else scores, [x], ["input"],
                              unmatched=nothing_matched(target))
    data = LayerData(activations=inputs, gradients=None, num_targets=scores.shape[1],
                     classes=classes, counterfactual=counterfactual, inputs=inputs,
                     input_gradients=g.detach(), layer=("input", model), seed=seed)
    return PassResult(detach_output(output), ["input"], [data], classes, single, matched)


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
            _, scores, _ = scores_of(target, output, inputs.shape[0])
        (g,) = gradients(-scores if counterfactual else scores, [x], ["input"],
                          unmatched=nothing_matched(target))
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
                _, scores, _ = scores_of(target, output, inputs.shape[0])
            grads = gradients(scores, capture.outputs, names,  # type: ignore[arg-type]
                               unmatched=nothing_matched(target), check=False)
        all_scores.append(scores.detach())
        per_sample.append([gr.detach() for gr in grads])
    # checked once after the loop, not once per copy (each check makes the host wait for
    # the device); the sum over copies is finite where every copy's score is
    summed = torch.stack(all_scores)
    if summed.dtype in (torch.float16, torch.bfloat16):  # finite scores may sum past 65504
        summed = summed.float()
    check_finite_scores(summed.sum(0))
    stacked = [torch.stack([s[i] for s in per_sample]) for i in range(len(layers))]
    check_finite_gradients(stacked, names)
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
