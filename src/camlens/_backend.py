"""What the engine asks of a framework: the plan of a pass, the pass's result, and the
interface a model adapter brings its own pass through.

One pass serves every chosen method. :class:`PassPlan` says what they need, read from
their class attributes once; a backend's pass carries the plan out and returns a
:class:`PassResult`. The engine's PyTorch pass serves any ``nn.Module``, a Keras model on
the torch backend included (its layers are torch modules). A model adapter whose framework
computes gradients its own way (Keras on TensorFlow: ``tf.GradientTape``) gives its pass
through :class:`ModelAdapter`; the engine calls it without naming the framework, so a new
backend is one new module under ``camlens/_adapters/``.

Both the engine and the adapters build the methods' :class:`LayerData` with
:func:`layer_data` from what they captured (:class:`Captured`), so every backend hands the
methods the same layout (channels-first, float32 for half-precision activations).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from ._layers import Reshape, to_channels_first
from ._scorer import Scorer
from .methods._base import LayerData, Method


@dataclass(frozen=True)
class PassPlan:
    """What a set of methods needs from one pass (built by :meth:`of`, testable alone).

    ``input_gradients`` means plain input gradients (guided ones are ``guided``);
    ``own_layers``, ``transform`` and ``noisy`` are the method that picks its own layers
    (FullGrad), transforms the target scores (Finer-CAM) or asks for gradients at noisy
    copies of the inputs (SmoothGrad-CAM++), each of which needs a pass of its own."""

    methods: tuple[Method, ...]
    gradients: bool = False
    classifier: bool = False
    hessian: bool = False
    input_gradients: bool = False
    guided: bool = False
    layer: bool = False
    scorer: bool = False
    own_layers: Method | None = None
    transform: Method | None = None
    noisy: Method | None = None
    alone: tuple[str, ...] = ()  # the methods among them that need a pass of their own

    @classmethod
    def of(cls, methods: Sequence[Method]) -> PassPlan:
        own = [m for m in methods if hasattr(m, "own_layers")]
        transforms = [m for m in methods if hasattr(m, "transform_scores")]
        noisy = [m for m in methods if getattr(m, "noise_samples", 0)]
        return cls(
            methods=tuple(methods),
            gradients=any(m.needs_gradients for m in methods),
            classifier=any(m.needs_classifier for m in methods),
            hessian=any(m.needs_hessian for m in methods),
            input_gradients=any(m.needs_input_gradients and not m.guided for m in methods),
            guided=any(m.guided for m in methods),
            layer=any(m.needs_layer for m in methods),
            scorer=any(m.needs_scorer for m in methods),
            own_layers=own[0] if own else None,
            transform=transforms[0] if transforms else None,
            noisy=noisy[0] if noisy else None,
            alone=tuple(m.name for m in own + transforms + noisy),
        )

    @property
    def guided_only(self) -> bool:
        """Guided input gradients and nothing that needs a layer, its gradients or forwards:
        one guided forward and backward serve it."""
        return self.guided and not (self.layer or self.gradients or self.classifier
                                    or self.scorer)

    @property
    def backward(self) -> tuple[str, ...]:
        """The methods that need a backward pass (layer or guided input gradients)."""
        return tuple(m.name for m in self.methods if m.needs_gradients or m.guided)

    def check_alone(self) -> None:
        """Raise when a method that needs a pass of its own shares one."""
        if len(self.alone) > 1 or (self.alone and len(self.methods) > 1):
            raise ValueError(
                "fullgrad, finercam and smoothgradcam++ each need a pass of their own")


@dataclass(frozen=True)
class PassOptions:
    """How the pass runs: the counterfactual sign, the layers' layout, the model's mode
    (PyTorch), the scorer's batches and progress, the seed for random draws."""

    counterfactual: bool = False
    reshape: Reshape | None = None
    eval_mode: bool = True
    batch_size: int = 64
    progress: bool | Callable[[int, int], None] = False
    seed: int = 0

    @property
    def sign(self) -> float:
        return -1.0 if self.counterfactual else 1.0


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


class BackendPass(Protocol):
    """A framework's own pass: run the model once on channels-first torch ``inputs``,
    capture ``layers`` (``None``: the model's automatic choice), score ``target`` and give
    what ``plan`` asks for, as :class:`PassResult`. Needs it cannot meet go to ``refused``
    (the methods that have them raise it; the others run)."""

    def __call__(self, model: Any, inputs: Tensor, plan: PassPlan,
                 layers: list[tuple[str, Any]] | None, target: Any,
                 options: PassOptions) -> PassResult: ...


class ModelAdapter(Protocol):
    """A model of another framework as the engine sees it: an ``nn.Module`` taking
    channels-first torch tensors (``camlens_adapter = True``), with layers whose outputs
    it turns to channels-first, and optionally a pass of its own."""

    camlens_adapter: bool

    def layer_to_channels_first(self, t: Tensor) -> Tensor: ...

    def engine_pass(self) -> BackendPass | None:
        """The framework's own pass, or ``None`` where the PyTorch pass serves (its layers
        are torch modules and its forward is recorded by autograd)."""
        ...


def adapter_of(model: Any) -> ModelAdapter | None:
    """``model`` as a :class:`ModelAdapter`, or ``None`` for a plain PyTorch model."""
    return model if getattr(model, "camlens_adapter", False) else None


@dataclass
class Captured:
    """What a backend's pass found, in its layers' own layout: each layer's output (none:
    the methods see the input), the call of it that was kept, the scores' targets and what
    the plan asked for. ``classifier(acts, name)`` gives the weight CAM reads."""

    layers: list[tuple[str, Any]]
    outputs: list[Tensor]
    calls: list[int]
    num_targets: int
    classes: Tensor | None
    gradients: list[Tensor] | None = None
    hvps: list[Tensor] | None = None
    samples: list[Tensor] | None = None
    input_gradients: Tensor | None = None
    classifier: Callable[[Tensor, str], Tensor] | None = None
    scorer: Scorer | None = None


def layer_data(model: Any, inputs: Tensor, found: Captured,
               options: PassOptions) -> list[LayerData]:
    """The methods' :class:`LayerData` per layer: activations and gradients channels-first
    (``options.reshape``), gradients of the negated score for counterfactual maps,
    half-precision activations and gradients as float32."""
    sign, reshape = options.sign, options.reshape
    srcs = found.outputs
    data = []
    sources = [(s, found.layers[i]) for i, s in enumerate(srcs)] or [(inputs, ("input", model))]
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
        g = hvp = sample = None
        if found.gradients is not None and srcs:
            g = to_channels_first(found.gradients[i].detach(), inputs.shape, reshape,
                                  lead=2) * sign
        if found.hvps is not None:
            hvp = to_channels_first(found.hvps[i], inputs.shape, reshape, lead=2) * sign
        if found.samples is not None:
            s = found.samples[i]
            sample = to_channels_first(s.flatten(0, 1), inputs.shape, reshape, lead=2)
            sample = sample.view(*s.shape[:3], *sample.shape[2:]) * sign
        weight: Tensor | ValueError | None = None
        if found.classifier is not None:
            try:
                weight = found.classifier(acts, layer[0])
            except ValueError as err:  # raised by the methods that need it, not the others
                weight = err
        if acts.dtype in (torch.float16, torch.bfloat16):
            acts = acts.float()
            g = g.float() if g is not None else None
        data.append(LayerData(
            activations=acts, gradients=g, num_targets=found.num_targets,
            classes=found.classes, classifier_weight=weight,
            counterfactual=options.counterfactual, inputs=inputs,
            input_gradients=found.input_gradients, hvp=hvp, scorer=found.scorer, layer=layer,
            seed=options.seed, gradient_samples=sample,
            layer_call=found.calls[i] if srcs else 1,
        ))
    return data
