"""Loading Keras 3 models: saved files (``.keras``, ``.h5``) and ``keras:efficientnet-lite0``.

Keras picks its backend when first imported; camlens picks the torch backend when Keras
is not imported yet and ``KERAS_BACKEND`` is unset (every method works there; a saved
model loads under any backend).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ._conventions import DEFAULT_MODEL, LITE_PREPROCESS, preprocessing
from ._errors import unknown_choice


def import_keras(backend: str | None = None) -> Any:
    """Keras 3, on ``backend`` (default: torch unless ``KERAS_BACKEND`` says otherwise)."""
    if "keras" not in sys.modules:
        if backend is not None:
            os.environ["KERAS_BACKEND"] = backend
        else:
            os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError:
        raise ImportError(
            "Keras models need Keras 3: pip install 'camlens[keras]'"
        ) from None
    if not str(keras.__version__).startswith("3"):
        raise ImportError(
            f"camlens needs Keras 3, found Keras {keras.__version__}: "
            "pip install 'camlens[keras]'"
        )
    return keras


def load_keras(spec: str, trust: bool, torch_twin: Callable[[], Any]) -> tuple[Any, Any]:
    """``(keras model, preprocess)`` for a Keras file or a ``keras:NAME`` spec;
    ``torch_twin()`` gives the PyTorch model whose weights ``keras:efficientnet-lite0``
    takes (the caller's loader, with the caller's weights)."""
    keras = import_keras()
    if spec.startswith("keras:"):
        name = spec.split(":", 1)[1]
        if name not in (DEFAULT_MODEL, "default"):
            raise unknown_choice("Keras model", name, [DEFAULT_MODEL],
                                 "Or give a saved Keras file (.keras, .h5)")
        from ._keras_models import efficientnet_lite0_keras

        return efficientnet_lite0_keras(torch_twin()), replace(LITE_PREPROCESS,
                                                               channels_last=True)
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=not trust)
    except Exception as err:  # Keras raises TypeError, ValueError or others by format
        raise _load_error(path, err) from err
    if not hasattr(model, "get_layer"):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a Keras model")
    shape = getattr(model, "inputs", None) and tuple(model.inputs[0].shape)
    crop = 224
    if shape and len(shape) == 4 and shape[1] is not None and shape[1] == shape[2]:
        crop = int(shape[1])
    channels_last = keras.config.image_data_format() == "channels_last"
    return model, preprocessing("raw", crop, channels_last=channels_last)


def pixels_note(spec: str, preprocess: Any) -> str:
    """The one-line note for a Keras file loaded without a pixel convention: a saved model
    does not say what its inputs were, so it gets 0..255 RGB, and the user can say so."""
    name = Path(spec).name
    return (
        f"{name} gets raw 0..255 RGB pixels ({preprocess.crop} x {preprocess.crop}): a "
        "Keras file does not record its preprocessing. If the model was trained otherwise, "
        "pass --preprocess (preprocess=): caffe for keras.applications VGG16 and ResNet50, "
        "tf (-1..1) for MobileNet, unit (0..1) or imagenet; --preprocess raw keeps 0..255 "
        "without this note"
    )


def _load_error(path: Path, err: Exception) -> ValueError:
    text = str(err)
    missing = re.search(r"[Cc]ould not (?:locate|deserialize) (?:class|function|object)\s*"
                        r"'([^']+)'", text)
    if missing:
        return ValueError(
            f"{path} uses the custom class {missing.group(1)!r}, which camlens cannot load on "
            "its own. Import the code that defines it (registered with "
            "@keras.saving.register_keras_serializable()), load the model yourself with "
            "keras.saving.load_model(path, compile=False, custom_objects={...}) and pass "
            "the model to camlens"
        )
    if "safe_mode" in text or "lambda" in text.lower():
        return ValueError(
            f"{path} holds Python code (a Lambda layer), which runs when it loads; if you "
            "trust its source pass trust=True (--trust-model on the command line)"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return ValueError(f"cannot load the Keras model {path}: {first}")
