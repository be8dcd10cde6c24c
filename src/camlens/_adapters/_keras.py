"""A Keras 3 model as a channels-first torch module: layout, layers by name, hooks, logits.

Keras keeps images channels-last (B, H, W, C), names its layers (``block5_conv3``, or a
path ``"mobilenetv3small/expanded_conv_6_add"`` inside a nested model), builds activations
into layers and often ends in a softmax. The adapter hides all of it from the engine:

- ``forward(x)`` takes (B, C, H, W) torch tensors, calls the Keras model channels-last with
  ``training=False`` (Keras ignores torch's ``.eval()``) and returns its output as torch;
- a final softmax (a ``Dense(..., activation="softmax")``, an ``Activation("softmax")`` or a
  ``Softmax`` layer) is made linear during the call, so the maps explain the logits, the
  papers' choice (``camlens.SoftmaxTarget`` explains the probabilities instead); the layer
  gets its own activation back before the call returns, also on error;
- layers are found with ``get_layer``, recursing into nested models; hooks see each
  layer's output as a torch tensor and may replace it.

On the torch backend Keras layers are ``torch.nn.Module`` s, so the engine's forward hooks
and ``torch.autograd.grad`` serve them as they are. On TensorFlow see :mod:`._keras_tf`.
"""

from __future__ import annotations

import math
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._errors import unknown_choice

Hook = Callable[[Any, tuple[Any, ...], Tensor], Tensor | None]

_AUTO: dict[int, tuple[weakref.ref[Any], dict[tuple[Any, ...], str]]] = {}
# Keras layers that layer="auto" passes over at the end of the spatial part: they only pool
# or drop what the last convolution gave (MaxPooling2D, AveragePooling2D, SpatialDropout2D)
_AFTER_CONV = ("Pooling1D", "Pooling2D", "Pooling3D", "Dropout", "Dropout1D", "Dropout2D",
               "Dropout3D")


def keras_backend(model: Any) -> str:
    """The Keras backend ``model`` runs on, once it is checked to be a built Keras 3 model
    (the adapter for that backend is picked by :func:`camlens._adapters.adapt`)."""
    keras = sys.modules.get("keras")
    version = str(getattr(keras, "__version__", "0"))
    if type(model).__module__.startswith("tf_keras") or not version.startswith("3"):
        raise TypeError(
            f"camlens explains Keras 3 models; this is a {type(model).__module__} model "
            f"(Keras {version}). Install Keras 3 (pip install 'camlens[keras]') and load the "
            "model with keras.saving.load_model(path, compile=False)"
        )
    backend = keras.backend.backend()  # type: ignore[union-attr]
    if not _is_model(model):
        raise TypeError(
            f"camlens explains a whole Keras model, got the layer {model.name!r} "
            f"({type(model).__name__}); wrap it in a keras.Model"
        )
    if not model.built:
        raise ValueError(
            f"the Keras model {model.name!r} is not built yet (no input shape); call it once "
            "on a batch or give it a keras.Input, then explain it"
        )
    return str(backend)


def _is_model(obj: Any) -> bool:
    return any(c.__name__ in ("Model", "Functional", "Sequential") for c in type(obj).__mro__)


class KerasModel(nn.Module):
    """A Keras 3 model (torch backend) as a module taking channels-first torch tensors.

    The Keras model is held, not registered: torch's ``modules()``, ``.eval()`` and
    ``.to()`` leave it alone; ``parameters()`` gives its variables so that
    :class:`~camlens._guard.ModelGuard` restores their ``requires_grad`` and ``.grad``.
    """

    camlens_adapter = True
    backend = "torch"
    layer_hint = "see model.summary(expand_nested=True)"

    def __init__(self, model: Any) -> None:
        super().__init__()
        object.__setattr__(self, "keras_model", model)
        import keras

        self.channels_last = keras.config.image_data_format() == "channels_last"
        self._paths: dict[str, Any] | None = None
        self._layout: list[Any] | None = None
        shape = _input_shape(model)
        self.input_spec_shape: tuple[int | None, ...] | None = shape

    # -- calling ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Any:
        with self.logits(), self.native_layout():
            return self.keras_model(self._to_keras(x), training=False)

    def engine_pass(self) -> None:
        """None: on the torch backend Keras layers are torch modules, the engine's PyTorch
        pass serves them (:class:`~camlens._backend.ModelAdapter`)."""
        return None

    def _to_keras(self, x: Tensor) -> Any:
        return x.movedim(1, -1) if self.channels_last and x.ndim >= 3 else x

    @contextmanager
    def logits(self) -> Iterator[None]:
        """The final softmax made linear during the block (restored after, also on error)."""
        with ExitStack() as stack:
            for layer in _softmax_layers(self.keras_model):
                stack.enter_context(_linear_activation(layer))
            yield

    @contextmanager
    def native_layout(self) -> Iterator[None]:
        """Convolutions and pooling run on torch's layout during the block, without copies.

        On its torch backend Keras copies a channels-last input to channels-first memory
        before each convolution and back to channels-last for the kernel (then permutes the
        output back), and copies before each pooling: two copies of the activations per
        convolution, 47 % of the CPU time of EfficientNet-Lite0's Grad-CAM in a profile
        (camlens's Grad-CAM 1.3x the PyTorch model's instead of 2.0x, batch 8, measured by
        ``bench/bench_keras.py`` on a shared 2-core machine). The same memory seen
        through ``movedim(-1, 1)`` already is a channels-first tensor in torch's
        channels-last format; these layers get it with ``data_format="channels_first"``
        during their call (their output is moved back), which computes the same values.
        Each layer's ``call`` and ``data_format`` are restored after the block, also on
        error.
        """
        with ExitStack() as stack:
            for layer in self._layout_layers():
                stack.enter_context(swapped_call(layer, _channels_first_call(layer)))
            yield

    def _layout_layers(self) -> list[Any]:
        if self._layout is None:
            self._layout = [
                layer for layer in self.layer_paths().values()
                if type(layer).__name__ in _LAYOUT_LAYERS
                and getattr(layer, "data_format", None) == "channels_last"
            ]
        return self._layout

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:  # type: ignore[override]
        for v in self.keras_model.weights:
            value = getattr(v, "value", None)
            if isinstance(value, nn.Parameter):
                yield value

    def extra_repr(self) -> str:
        return f"keras_model={self.keras_model.name!r}, backend={self.backend!r}"

    # -- inputs ----------------------------------------------------------------------------
    def from_user(self, inputs: Any) -> Any:
        """Inputs as a Keras user holds them (channels-last numpy, torch or TF tensors) as a
        channels-first torch tensor; non-array values pass through for the usual checks."""
        t = _as_torch(inputs)
        if t is None:
            return inputs
        if not t.is_floating_point():
            raise TypeError(
                f"inputs must be floating point, got {t.dtype}; convert the images as the "
                "model expects (e.g. keras.applications.vgg16.preprocess_input(x.astype("
                "'float32')))"
            )
        expected = self.input_spec_shape
        if expected is not None and t.ndim == len(expected) - 1 and t.ndim >= 2:
            raise ValueError(
                f"inputs of shape {tuple(t.shape)} look like one example without a batch "
                f"dimension; the Keras model takes {_shape_text(expected)}: use x[None]"
            )
        if expected is not None and t.ndim == len(expected):
            self._check_layout(tuple(t.shape), expected)
        if self.channels_last and t.ndim >= 3:
            t = t.movedim(-1, 1)
        param = next(iter(self.parameters()), None)  # Keras's torch backend picks a device
        return t.to(param.device) if param is not None else t

    def _check_layout(self, shape: tuple[int, ...], expected: tuple[int | None, ...]) -> None:
        axis = -1 if self.channels_last else 1
        channels = expected[axis]
        if channels is None or shape[axis] == channels:
            for got, want in zip(shape[1:], expected[1:]):
                if want is not None and got != want:
                    raise ValueError(
                        f"inputs of shape {shape} do not fit the Keras model's input "
                        f"{_shape_text(expected)}; resize the images to that size"
                    )
            return
        other = 1 if self.channels_last else -1
        if len(shape) >= 4 and shape[other] == channels:
            order = (0, *range(2, len(shape)), 1) if self.channels_last else (
                0, len(shape) - 1, *range(1, len(shape) - 1))
            have, want = ("channels-first", "channels-last") if self.channels_last else (
                "channels-last", "channels-first")
            raise ValueError(
                f"inputs of shape {shape} look {have}, but this Keras model takes "
                f"{want} inputs {_shape_text(expected)}; pass np.transpose(x, {order}) "
                f"(x.permute{order} for a torch tensor)"
            )
        raise ValueError(
            f"inputs of shape {shape} have {shape[axis]} channels; the Keras model takes "
            f"{_shape_text(expected)}"
        )

    # -- layers ----------------------------------------------------------------------------
    def layer_paths(self) -> dict[str, Any]:
        """Every layer by path (nested models' layers as ``"outer/inner"``), in order."""
        if self._paths is None:
            self._paths = dict(_walk(self.keras_model, ""))
        return self._paths

    def resolve_layers(self, spec: Any) -> list[tuple[str, Any]] | None:
        if isinstance(spec, str) and spec == "auto":
            return None
        specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
        if not specs:
            raise ValueError("layer is an empty list; give at least one Keras layer name")
        return [self._one_layer(s) for s in specs]

    def _one_layer(self, spec: Any) -> tuple[str, Any]:
        paths = self.layer_paths()
        if isinstance(spec, str):
            if spec in paths:
                return spec, paths[spec]
            tails = [p for p in paths if p.rsplit("/", 1)[-1] == spec]
            if len(tails) == 1:
                return tails[0], paths[tails[0]]
            if len(tails) > 1:
                raise ValueError(
                    f"layer name {spec!r} is in several nested models: {tails}; give the path"
                )
            raise unknown_choice(
                f"layer of Keras model {self.keras_model.name!r}", spec, paths,
                "Keras layers are named by model.get_layer names, nested ones as "
                "'outer/inner' (see model.summary(expand_nested=True))",
            )
        for path, layer in paths.items():
            if layer is spec:
                return path, layer
        if hasattr(spec, "name") and hasattr(spec, "call"):
            raise ValueError(
                f"the Keras layer {spec.name!r} given is not part of the model "
                f"{self.keras_model.name!r}; pass one of its layers or its name"
            )
        raise TypeError(
            f"layer must be 'auto', a Keras layer name or path, a layer of the model or a "
            f"list of these, got {type(spec).__name__}"
        )

    def hook_layer(self, layer: Any, hook: Hook) -> Any:
        """Call ``hook(layer, args, output)`` after ``layer`` runs; a tensor it returns
        replaces the output. Returns a handle with ``remove()``."""
        return layer.register_forward_hook(hook)

    def layer_to_channels_first(self, t: Tensor) -> Tensor:
        return t.movedim(-1, 1) if self.channels_last and t.ndim >= 3 else t

    def layer_from_channels_first(self, x: Tensor) -> Tensor:
        return x.movedim(1, -1) if self.channels_last and x.ndim >= 3 else x

    def auto_layer(self, inputs: Tensor) -> tuple[str, Any]:
        """The last layer (not a nested model) whose output keeps a spatial size above 1,
        passing over pooling and dropout layers after the last convolution, found by one
        probe forward of one input (cached per model and input shape)."""
        key = (tuple(inputs.shape[1:]), inputs.dtype)
        entry = _AUTO.get(id(self.keras_model))
        if entry is None or entry[0]() is not self.keras_model:
            try:
                ref = weakref.ref(self.keras_model)
            except TypeError:
                ref = lambda: None  # noqa: E731  (not cached)
            entry = (ref, {})
            _AUTO[id(self.keras_model)] = entry
        cache = entry[1]
        if key not in cache:
            cache[key] = self._probe(inputs)
        path = cache[key]
        return path, self.layer_paths()[path]

    def _probe(self, inputs: Tensor) -> str:
        seen: list[tuple[str, tuple[int, ...]]] = []
        handles = []
        nested = {id(layer) for layer in self.layer_paths().values() if _is_model(layer)}

        def recorder(path: str) -> Hook:
            def hook(layer: Any, args: Any, output: Any) -> None:
                t = output if isinstance(output, Tensor) else None
                if t is not None:
                    seen.append((path, tuple(t.shape)))
                return None
            return hook

        try:
            for path, layer in self.layer_paths().items():
                if id(layer) not in nested:
                    handles.append(self.hook_layer(layer, recorder(path)))
            with torch.no_grad():
                self(inputs[:1])
        finally:
            for h in handles:
                h.remove()
        nd = inputs.ndim
        spatial = [
            p for p, s in seen
            if len(s) == nd and math.prod(s[1:-1] if self.channels_last else s[2:]) > 1
        ]
        if not spatial:
            raise ValueError(
                f"layer='auto' found no layer of the Keras model {self.keras_model.name!r} "
                "whose output keeps a spatial size above 1 x 1; pass layer='name'"
            )
        # the last convolution's output, not a pooling (or dropout) layer after it: VGG16's
        # block5_conv3 (14 x 14), the Grad-CAM paper's layer, rather than block5_pool
        paths = self.layer_paths()
        while len(spatial) > 1 and type(paths[spatial[-1]]).__name__.endswith(_AFTER_CONV):
            spatial.pop()
        return spatial[-1]

    # -- FullGrad's biases, the sanity check's copies --------------------------------------
    def bias_layers(self, inputs: Tensor) -> list[tuple[str, Any]]:
        """Convolutions with a bias and batch normalisations whose outputs have the inputs'
        rank, in order, each with its bias (FullGrad). A convolution that applies a
        non-linear activation inside hides the output its bias is added to: refused."""
        import keras

        rank = inputs.ndim - 2
        convs = (f"Conv{rank}D", f"DepthwiseConv{rank}D", f"SeparableConv{rank}D")
        found: list[tuple[str, Any]] = []
        for path, layer in self.layer_paths().items():
            name = type(layer).__name__
            if name in convs and getattr(layer, "use_bias", False):
                if layer.activation not in (None, keras.activations.linear):
                    raise ValueError(
                        f"fullgrad needs the output each bias is added to, but Keras layer "
                        f"{path!r} applies {layer.activation.__name__} inside; build the "
                        "model with separate Activation layers, or use another method"
                    )
                found.append((path, _Biased(layer, _conv_bias(layer))))
            elif name == "BatchNormalization" and len(layer.moving_mean.shape) == 1:
                found.append((path, _Biased(layer, _bn_bias(layer))))
        if not found:
            raise ValueError(
                f"fullgrad needs Conv{rank}D or BatchNormalization layers with a bias for "
                f"inputs of shape {tuple(inputs.shape)}; this model has none"
            )
        return found

    def weighted_layers(self) -> list[str]:
        """Paths of the layers (not nested models) that hold weights, input to output."""
        return [p for p, layer in self.layer_paths().items()
                if not _is_model(layer) and layer.weights]

    def clone(self) -> KerasModel:
        """An adapter of a copy of the Keras model with the same weights."""
        import keras

        try:
            copy = keras.models.clone_model(self.keras_model)
        except Exception as err:  # subclassed models cannot be cloned from their config
            raise ValueError(
                f"this needs a copy of the Keras model {self.keras_model.name!r}, which "
                f"keras.models.clone_model cannot make ({err}); use a functional or "
                "Sequential model"
            ) from err
        copy.set_weights(self.keras_model.get_weights())
        return type(self)(copy)

    def randomize(self, path: str, generator: torch.Generator) -> None:
        """Redraw a layer's weights as N(0, 1 / fan-in) (moving means 0, variances 1)."""
        layer = self.layer_paths()[path]
        values = []
        for v in layer.weights:
            shape = tuple(int(d) for d in v.shape)
            name = v.path.rsplit("/", 1)[-1]
            if name in ("moving_mean", "moving_variance"):
                values.append(np.full(shape, 0.0 if name == "moving_mean" else 1.0, "float32"))
                continue
            fan = math.prod(shape[:-1]) if len(shape) > 1 else math.prod(shape)
            draw = torch.randn(shape, generator=generator) / math.sqrt(max(fan, 1))
            values.append(draw.numpy().astype(np.dtype(str(v.dtype))))
        layer.set_weights(values)

    # -- CAM's classifier ------------------------------------------------------------------
    def linear_layers(self) -> list[tuple[Any, Callable[[], Tensor]]]:
        """Dense layers and their weight as (out, in), for CAM."""
        found = []
        for layer in self.layer_paths().values():
            kernel = getattr(layer, "kernel", None)
            if type(layer).__name__ == "Dense" and kernel is not None and len(kernel.shape) == 2:
                found.append((layer, _weight_of(layer)))
        return found


class _Biased:
    """A Keras layer with its bias for FullGrad: hooked as the layer itself."""

    def __init__(self, layer: Any, bias: Callable[[], Tensor]) -> None:
        self.layer = layer
        self.camlens_bias = bias

    def register_forward_hook(self, hook: Any) -> Any:
        return self.layer.register_forward_hook(hook)


def _conv_bias(layer: Any) -> Callable[[], Tensor]:
    def bias() -> Tensor:
        return to_torch(layer.bias.value).detach()
    return bias


def _bn_bias(layer: Any) -> Callable[[], Tensor]:
    def bias() -> Tensor:
        mean = to_torch(layer.moving_mean.value).detach()
        var = to_torch(layer.moving_variance.value).detach()
        gamma = to_torch(layer.gamma.value).detach() if layer.gamma is not None else 1.0
        beta = to_torch(layer.beta.value).detach() if layer.beta is not None else 0.0
        return beta - mean * gamma / torch.sqrt(var + layer.epsilon)
    return bias


def _weight_of(layer: Any) -> Callable[[], Tensor]:
    def weight() -> Tensor:
        return to_torch(layer.kernel.value).detach().T
    return weight


def to_torch(value: Any) -> Tensor:
    """A backend tensor (torch, TensorFlow) or array as a torch tensor (no copy for torch,
    DLPack for TensorFlow)."""
    if isinstance(value, Tensor):
        return value
    if hasattr(value, "__dlpack__") and type(value).__module__.startswith("tensorflow"):
        try:
            return torch.from_dlpack(value)
        except Exception:  # e.g. a non-contiguous or unsupported dtype: copy instead
            return torch.from_numpy(np.array(value))
    return torch.from_numpy(np.array(value))


def _as_torch(inputs: Any) -> Tensor | None:
    if isinstance(inputs, Tensor):
        return inputs
    if isinstance(inputs, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(inputs))
    if type(inputs).__module__.startswith("tensorflow") and hasattr(inputs, "numpy"):
        return torch.from_numpy(np.array(inputs))
    if isinstance(inputs, (list, tuple)) and inputs and all(
        isinstance(i, np.ndarray) for i in inputs
    ):
        return torch.from_numpy(np.stack(inputs))
    return None


def _input_shape(model: Any) -> tuple[int | None, ...] | None:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs or len(inputs) != 1:
        return None
    return tuple(None if d is None else int(d) for d in inputs[0].shape)


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("B" if i == 0 else ("any" if d is None else str(d))
                           for i, d in enumerate(shape)) + ")"


def _walk(model: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        path = prefix + layer.name
        yield path, layer
        if _is_model(layer):
            yield from _walk(layer, path + "/")


def _output_layers(model: Any) -> list[Any]:
    """The layer(s) that produce a model's output(s), inside nested models too."""
    found = []
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if outputs:
        for t in outputs:
            history = getattr(t, "_keras_history", None)
            op = getattr(history, "operation", None) if history is not None else None
            if op is not None:
                found.append(op)
    elif getattr(model, "layers", None):
        found.append(model.layers[-1])
    out = []
    for layer in found:
        out.extend(_output_layers(layer) if _is_model(layer) else [layer])
    return out


def _softmax_layers(model: Any) -> list[Any]:
    import keras

    softmax = keras.activations.softmax
    found = []
    for layer in _output_layers(model):
        if type(layer).__name__ == "Softmax" or getattr(layer, "activation", None) is softmax:
            found.append(layer)
    return found


@contextmanager
def _linear_activation(layer: Any) -> Iterator[None]:
    """``layer`` without its softmax during the block."""
    import keras

    if type(layer).__name__ == "Softmax":
        layer.call = _identity
        try:
            yield
        finally:
            del layer.call
        return
    saved = layer.activation
    layer.activation = keras.activations.linear
    try:
        yield
    finally:
        layer.activation = saved


def _identity(inputs: Any, *args: Any, **kwargs: Any) -> Any:
    return inputs


# Keras layers whose torch-backend call copies channels-last inputs to another layout, and
# computes the same on a channels-first view with data_format="channels_first"
_LAYOUT_LAYERS = frozenset(
    f"{kind}{rank}D" for rank in (1, 2, 3)
    for kind in ("Conv", "MaxPooling", "AveragePooling")
) | {"DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D"}


def _channels_first_call(layer: Any) -> Callable[..., Any]:
    """A ``call`` wrapper: the layer's own call, channels-first on a view of its input."""
    rank = int(type(layer).__name__[-2])

    def wrapper(original: Callable[..., Any], inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(inputs, Tensor) or inputs.ndim != rank + 2:
            return original(inputs, *args, **kwargs)
        layer.data_format = "channels_first"
        try:
            out = original(inputs.movedim(-1, 1), *args, **kwargs)
        finally:
            layer.data_format = "channels_last"
        return out.movedim(1, -1)

    return wrapper


@contextmanager
def swapped_call(layer: Any, wrapper: Callable[..., Any]) -> Iterator[None]:
    """Run ``wrapper(original_call, *args, **kwargs)`` instead of ``layer.call`` in the
    block (an instance attribute shadowing the method, deleted after)."""
    original = layer.call
    had_own = "call" in vars(layer)

    def call(*args: Any, **kwargs: Any) -> Any:
        return wrapper(original, *args, **kwargs)

    layer.call = call
    try:
        yield
    finally:
        if had_own:
            layer.call = original
        else:
            del layer.call
