"""Model adapters: how a model of another framework is called, its layers found and hooked.

The engine speaks PyTorch: a module called on channels-first tensors, forward hooks on its
layers, ``torch.autograd.grad`` from their outputs. A PyTorch model is used as it is. A
Keras 3 model is wrapped in a small adapter module (:class:`KerasModel`) that takes
channels-first tensors, calls the Keras model in its own layout with ``training=False``,
finds layers by their Keras names and hooks them; on the TensorFlow backend it brings its own
pass through ``tf.GradientTape`` (:mod:`._keras_tf`). The engine reaches an adapter only
through :class:`camlens._backend.ModelAdapter`: a new backend is a new module here and a
line in :func:`adapt`. The methods never learn which framework ran.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import Tensor, nn


def is_keras_model(model: Any) -> bool:
    """Whether ``model`` is a Keras model or layer (without importing Keras)."""
    if "keras" not in sys.modules and "tf_keras" not in sys.modules:
        return False
    return any(
        c.__module__.split(".")[0] in ("keras", "tf_keras") for c in type(model).__mro__
    ) and hasattr(model, "get_layer")


def adapt(model: Any) -> nn.Module | None:
    """The adapter for a Keras model, or ``None`` when ``model`` is not one."""
    if not is_keras_model(model):
        return None
    from ._keras import KerasModel, keras_backend

    backend = keras_backend(model)
    if backend == "torch":
        return KerasModel(model)
    if backend == "tensorflow":
        from ._keras_tf import KerasTFModel

        return KerasTFModel(model)
    raise ValueError(
        f"camlens runs Keras models on the torch or tensorflow backend; this Keras runs on "
        f"{backend!r}. Set KERAS_BACKEND=torch before keras is first imported (a saved "
        "model loads under any backend: camlens.load_model('model.keras'))"
    )


def user_inputs(model: Any, inputs: Any) -> tuple[nn.Module | Any, Tensor | Any]:
    """``(engine model, engine inputs)``: a Keras model's adapter and its inputs turned from
    the Keras layout (channels-last numpy or tensors) into channels-first torch tensors;
    anything else unchanged."""
    adapter = adapt(model)
    if adapter is None:
        return model, inputs
    return adapter, adapter.from_user(inputs)  # type: ignore[operator]


def is_adapter(model: Any) -> bool:
    return bool(getattr(model, "camlens_adapter", False))
