"""Forward hooks that capture layer outputs for exact gradients, removed in ``finally``."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ._layers import output_tensor

Layers = Sequence[tuple[str, nn.Module]]

# model -> {(input shape, dtype, device, layers): how often each layer runs per forward}
_CALLS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], tuple[int, ...] | None]] = (
    weakref.WeakKeyDictionary()
)


def _calls_key(inputs: Tensor, layers: Layers) -> tuple[Any, ...]:
    return (tuple(inputs.shape[1:]), inputs.dtype, str(inputs.device),
            tuple((name, id(module)) for name, module in layers))


def layer_calls(model: nn.Module, inputs: Tensor, layers: Layers) -> tuple[int, ...] | None:
    """How many times each of ``layers`` runs in one forward of ``model`` on ``inputs``.

    Found by a probe forward of the first image under ``no_grad`` (once per model, input
    shape and layers; cached), so that :class:`LayerCapture` can start the graph at a
    layer's *last* call: a module that also runs early in the model (EfficientNet's one
    ``_swish`` serves the stem and the head) must not record the whole model for backward.
    ``None`` (unknown, use the first call) for a model with a module in training mode (a
    probe would move BatchNorm statistics and draw dropout masks), when the probe fails
    (a model that takes pairs of images) and when the count changed from one forward to
    the next.
    """
    if not layers or any(m.training for m in model.modules()):
        return None
    cache = _CALLS.setdefault(model, {})
    key = _calls_key(inputs, layers)
    if key not in cache:
        counts = [0] * len(layers)
        handles = []

        def counter(i: int) -> Any:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                counts[i] += 1
            return hook

        devices = [inputs.device.index or 0] if inputs.device.type == "cuda" else []
        try:
            for i, (_, module) in enumerate(layers):
                handles.append(module.register_forward_hook(counter(i)))
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                model(inputs[:1])
        except Exception:  # noqa: BLE001 (e.g. a model that needs pairs): the pass will say
            counts = [0]
        finally:
            for handle in handles:
                handle.remove()
        cache[key] = tuple(counts) if all(counts) else None
    return cache[key]


def forget_calls(model: nn.Module, inputs: Tensor, layers: Layers) -> None:
    """The layers ran another number of times than the probe saw: stop relying on it."""
    _CALLS.setdefault(model, {})[_calls_key(inputs, layers)] = None


def _aliases_an_input(args: Any, t: Tensor) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return any(isinstance(a, Tensor) and a.untyped_storage().data_ptr() == ptr for a in args)


class LayerCapture:
    """Capture each layer's own output, protected from later in-place changes.

    The forward runs under ``no_grad`` until the first captured layer: there the hook
    detaches the output into a leaf that requires grad and switches autograd on, so the
    graph is recorded only from that layer to the score (nothing before it is kept).
    Later captured layers are attached to the graph as they are. ``last`` (from
    :func:`layer_calls`) says how often each layer runs: earlier calls of a layer that
    runs again are let through untouched, so the graph starts at its last call;
    ``complete`` is False when a layer then ran fewer times (run the forward again
    without ``last``). Each hook hands the rest
    of the model a *copy* of the output, so ``out += identity`` or ``relu_`` downstream
    change the copy, never the captured tensor: activations and ``autograd.grad`` refer to
    the layer's own output. With ``grads=False`` a detached copy is kept.

    If a layer runs more than once in a forward pass, its last call is kept.
    """

    def __init__(self, layers: Layers, grads: bool,
                 last: Sequence[int] | None = None) -> None:
        self.layers = layers
        self.grads = grads
        self.last = last
        self.outputs: list[Tensor | None] = [None] * len(layers)
        self.calls: list[int] = [0] * len(layers)  # how often each layer ran
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> LayerCapture:
        try:
            for i, (_, module) in enumerate(self.layers):
                self._handles.append(module.register_forward_hook(self._hook(i)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    @property
    def complete(self) -> bool:
        """Whether every layer ran as often as ``last`` said (its last call captured)."""
        return self.last is None or all(c >= n for c, n in zip(self.calls, self.last))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, index: int) -> Any:
        name = self.layers[index][0]

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            self.calls[index] += 1
            t = output_tensor(output)
            if t is None:
                raise TypeError(
                    f"layer {name!r} returned {type(output).__name__}, not a tensor; "
                    "pick a submodule that returns a tensor"
                )
            if not t.is_floating_point():
                raise TypeError(f"layer {name!r} returned a {t.dtype} tensor; pick another layer")
            if not self.grads:
                self.outputs[index] = t.detach().clone()
                return None
            if self.last is not None and self.calls[index] < self.last[index]:
                return None  # the layer runs again: its last call starts the graph
            src = t.clone() if _aliases_an_input(args, t) else t
            if not src.requires_grad:
                src = src.detach().requires_grad_(True)
                torch.set_grad_enabled(True)
            self.outputs[index] = src
            copy = src.clone()
            if isinstance(output, Tensor):
                return copy
            return type(output)((copy, *output[1:]))

        return hook


class LinearCapture:
    """Record the weight, input and output of every ``nn.Linear`` call (for CAM's
    classifier); for a Keras model's adapter, of every ``Dense`` layer."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []  # (weight (out, in), in, out)
        self._handles: list[Any] = []

    def __enter__(self) -> LinearCapture:
        def recorder(weight: Any) -> Any:
            def hook(module: Any, args: Any, output: Any) -> None:
                if args and isinstance(args[0], Tensor) and isinstance(output, Tensor):
                    self.calls.append((weight(module), args[0].detach(), output.detach()))
            return hook

        try:
            linear_layers = getattr(self.model, "linear_layers", None)
            if callable(linear_layers):  # a Keras model: Dense layers through its adapter
                for layer, weight in linear_layers():
                    hook = recorder(lambda _m, w=weight: w())
                    self._handles.append(self.model.hook_layer(layer, hook))  # type: ignore[operator]
            else:
                for m in self.model.modules():
                    if isinstance(m, nn.Linear):
                        hook = recorder(lambda mod: mod.weight.detach())
                        self._handles.append(m.register_forward_hook(hook))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
