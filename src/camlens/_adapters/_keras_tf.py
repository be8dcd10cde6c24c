"""A Keras 3 model on the TensorFlow backend: the engine's pass through ``tf.GradientTape``.

The same capture interface as on PyTorch feeds the same method code: each chosen layer's
output (watched by the tape), the gradients of the target scores with respect to it,
the Dense layers' inputs for CAM, and batched forwards for the score methods. Tensors move
between TensorFlow and torch through DLPack (no copy on the CPU).

The target scores are computed by camlens's targets in torch from the model output; their
gradient with respect to that output is handed to the tape as ``output_gradients``, so
``d score / d layer = tape.gradient(output, layer, d score / d output)`` (the chain rule,
one vector-Jacobian product per target). Layers are hooked by shadowing ``layer.call`` with
an instance attribute during the call (deleted after): the model is never rebuilt, so
nested models and shared layers work as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from .._backend import BackendPass, Captured, PassOptions, PassPlan, PassResult, layer_data
from .._gradients import (
    check_finite_gradients,
    classifier_weight,
    detach_output,
    nothing_matched,
    target_scores,
)
from .._scorer import Scorer
from ._keras import Hook, KerasModel, swapped_call, to_torch

_TORCH_ONLY = (
    ("needs_hessian", "second derivatives (Hessian-vector products)"),
    ("guided", "guided ReLUs in the backward pass"),
    ("needs_input_gradients", "gradients with respect to the input pixels of every layer"),
    ("noise_samples", "gradients at noisy copies of the inputs"),
)


def to_tf(t: Tensor) -> Any:
    import tensorflow as tf

    t = t.detach().contiguous()
    if t.data_ptr() % 64 == 0:  # TensorFlow aborts the process on unaligned memory
        try:
            return tf.experimental.dlpack.from_dlpack(t.__dlpack__())
        except Exception:  # an unsupported dtype or device: copy
            pass
    return tf.convert_to_tensor(t.cpu().numpy())


class _Handle:
    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack

    def remove(self) -> None:
        self._stack.close()


class KerasTFModel(KerasModel):
    """A Keras 3 model (TensorFlow backend) as a module taking channels-first torch
    tensors: forwards (for the score methods and metrics) go torch -> TensorFlow -> torch
    without autograd; gradients come from :func:`run_tf_pass`."""

    backend = "tensorflow"

    def engine_pass(self) -> BackendPass:
        return run_tf_pass

    def forward(self, x: Tensor) -> Any:
        with self.logits():
            out = self.keras_model(to_tf(self._to_keras(x)), training=False)
        return _map(out, lambda t: to_torch(t).clone())

    def parameters(self, recurse: bool = True) -> Any:  # TensorFlow variables: no torch ones
        return iter(())

    def hook_layer(self, layer: Any, hook: Hook) -> _Handle:
        def wrapper(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            torch_args = tuple(to_torch(a) if _is_tf(a) else a for a in args)
            if not _is_tf(out):
                return out
            new = hook(layer, torch_args, to_torch(out))
            return out if new is None else to_tf(new)

        stack = ExitStack()
        stack.enter_context(swapped_call(layer, wrapper))
        return _Handle(stack)


def _is_tf(x: Any) -> bool:
    return type(x).__module__.startswith("tensorflow") and hasattr(x, "dtype")


def _map(out: Any, fn: Callable[[Any], Any]) -> Any:
    if isinstance(out, dict):
        return {k: _map(v, fn) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_map(v, fn) for v in out)
    return fn(out) if _is_tf(out) else out


def _leaves(out: Any) -> list[Any]:
    if isinstance(out, dict):
        return [leaf for v in out.values() for leaf in _leaves(v)]
    if isinstance(out, (list, tuple)):
        return [leaf for v in out for leaf in _leaves(v)]
    return [out] if _is_tf(out) or isinstance(out, Tensor) else []


def run_tf_pass(model: KerasTFModel, inputs: Tensor, plan: PassPlan,
                layers: list[tuple[str, Any]] | None, target: Any,
                options: PassOptions) -> PassResult:
    """The engine's pass (:class:`~camlens._backend.BackendPass`) for a Keras model on
    TensorFlow."""
    import tensorflow as tf

    refused: dict[str, ValueError] = {}
    for need, what in _TORCH_ONLY + (("own_layers", "a pass over every biased layer"),):
        users = [m.name for m in plan.methods if getattr(m, need, False)]
        if users:
            refused[need] = ValueError(
                f"{', '.join(users)} {'need' if len(users) > 1 else 'needs'} {what}, which "
                "camlens computes for Keras models on the torch backend only; set "
                "KERAS_BACKEND=torch before keras is imported "
                "(a saved model loads under either: camlens.load_model('model.keras'))"
            )
    live = [m for m in plan.methods if not any(getattr(m, need, False) for need in refused)]
    if not live:
        raise next(iter(refused.values()))
    plan = PassPlan.of(live)
    if not plan.layer:
        layers = []
    elif layers is None:
        layers = [model.auto_layer(inputs)]
    options = replace(options, reshape=options.reshape or model.layer_to_channels_first)

    captured: list[Any] = [None] * len(layers)
    calls = [0] * len(layers)
    linear_calls: list[tuple[Tensor, Tensor, Tensor]] = []
    tape = tf.GradientTape(persistent=True, watch_accessed_variables=False)

    def capture(i: int) -> Callable[..., Any]:
        def wrapper(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if isinstance(out, (list, tuple)) and out:
                out = out[0]
            if not _is_tf(out) or not out.dtype.is_floating:
                raise TypeError(f"layer {layers[i][0]!r} returned no floating-point tensor; "
                                "pick another layer")
            if plan.gradients:
                tape.watch(out)
            captured[i] = out
            calls[i] += 1
            return out
        return wrapper

    def dense(weight: Callable[[], Tensor]) -> Callable[..., Any]:
        def wrapper(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if args and _is_tf(args[0]) and _is_tf(out):
                linear_calls.append((weight(), to_torch(args[0]).clone(), to_torch(out).clone()))
            return out
        return wrapper

    with ExitStack() as stack:
        for i, (_, layer) in enumerate(layers):
            stack.enter_context(swapped_call(layer, capture(i)))
        if plan.classifier:
            for layer, weight in model.linear_layers():
                stack.enter_context(swapped_call(layer, dense(weight)))
        stack.enter_context(model.logits())
        x = to_tf(model._to_keras(inputs))
        with tape:
            out_tf = model.keras_model(x, training=False)
    for (name, _), out in zip(layers, captured):
        if out is None:
            raise ValueError(
                f"layer {name!r} was not called during the forward pass; pick a layer the "
                "model uses (see model.summary(expand_nested=True))"
            )
    leaves_tf = _leaves(out_tf)
    leaves_t = [to_torch(t).clone().requires_grad_(t.dtype.is_floating) for t in leaves_tf]
    it = iter(leaves_t)
    output = _map(out_tf, lambda _t: next(it))
    target, matched, classes, scores, single = target_scores(target, output, inputs.shape[0],
                                                             plan.transform)
    grads: list[Tensor] | None = None
    names = [n for n, _ in layers]
    if plan.gradients and layers:
        grads = _tape_gradients(tape, scores, leaves_t, leaves_tf, captured, names,
                                nothing_matched(target))
        check_finite_gradients(grads, names)
    output = detach_output(output)  # torch tensors by now: the graph is not kept
    found = Captured(layers, [to_torch(c) for c in captured], calls, scores.shape[1], classes,
                     gradients=grads)
    if plan.classifier:
        def classifier(acts: Tensor, name: str) -> Tensor:
            return classifier_weight(_Calls(linear_calls), acts, output, name)
        found.classifier = classifier
    if plan.scorer:
        found.scorer = Scorer(model, target, classes, batch_size=options.batch_size,
                              progress=options.progress, num_images=inputs.shape[0])
    data = layer_data(model, inputs, found, options)
    return PassResult(output, names or ["input"], data, classes, single, matched, refused)


class _Calls:
    def __init__(self, calls: list[tuple[Tensor, Tensor, Tensor]]) -> None:
        self.calls = calls


def _tape_gradients(
    tape: Any, scores: Tensor, leaves_t: list[Tensor], leaves_tf: list[Any],
    captured: list[Any], names: list[str], unmatched: bool,
) -> list[Tensor]:
    """d scores[:, k] / d layer for every target k, as (B, K, *layer_shape) torch tensors."""
    b, k = scores.shape
    wrt = [t for t in leaves_t if t.requires_grad]
    if not scores.requires_grad:
        if unmatched:
            return [to_torch(c).new_zeros(b, k, *c.shape[1:]) for c in captured]
        raise ValueError(
            "the target scores do not depend on the chosen layer(s); a target callable must "
            "compute from the model output without .detach() or .item()"
        )
    per_k: list[list[Tensor]] = []
    for j in range(k):
        vs = torch.autograd.grad(scores[:, j].sum(), wrt, retain_graph=j + 1 < k,
                                 allow_unused=True)
        sources = [tf_t for tf_t, t in zip(leaves_tf, leaves_t) if t.requires_grad]
        vectors = [to_tf(v if v is not None else torch.zeros_like(t)) for v, t in zip(vs, wrt)]
        got = tape.gradient(sources, captured, output_gradients=vectors)
        row = []
        for name, g in zip(names, got):
            if g is None:
                raise ValueError(
                    f"layer {name!r} does not influence the target score; pick a layer on the "
                    "path from the input to the output"
                )
            row.append(to_torch(g).clone())
        per_k.append(row)
    return [torch.stack([row[i] for row in per_k], dim=1) for i in range(len(captured))]
