"""The page's work, done with camlens's API: read an upload, predict the top classes,
estimate what methods will cost, explain with several methods in one pass, measure the
maps' faithfulness, and draw the pictures and files the page shows and offers.

These functions run the model and must only be called from the app's model queue
(:class:`~camlens.app._state.Worker`), except the drawing ones, which only read results.
"""

from __future__ import annotations

import io
import json
import math
import re
import secrets
import time
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import methods as _methods  # noqa: F401  (registers camlens's methods)
from .. import metrics
from .._derive import boxes as map_boxes
from .._errors import closest
from .._explainer import compare
from .._guard import ModelGuard
from .._layers import resolve_layers
from .._registry import available_methods, describe, method_class
from .._validate import check_model
from ..models import engine_input
from ..targets import find_logits
from ..viz import ImageError, available_colormaps, compose_grid, load_image, overlay
from ..viz._compose import panel_title
from ._state import Job, Photo, Result

SAMPLES = ("chelsea", "coffee", "astronaut", "rocket")  # scikit-image's photos, as `camlens demo`
CURVE_STEPS = 20  # deletion and insertion in steps of 5 % of the pixels, as `camlens evaluate`
CROP_SIDE = 512  # the overlays are drawn on the model's crop at most this large
THUMB_SIDE = 160
TOP_K = 5
BOX_THRESHOLD = 0.2  # the CAM paper's box threshold, as `camlens explain`
# Formats Pillow may open here: images only (never EPS, which would run Ghostscript).
FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")


class _PlanOnly(Exception):
    """Stops ``compare`` once it has said what its methods will cost."""


@dataclass
class Model:
    """The model the page explains, loaded once: the engine's view of it (a Keras model's
    adapter), its preprocessing and class names, and the names of its layers."""

    model: nn.Module
    preprocess: Any
    labels: list[str]
    device: torch.device
    name: str
    layers: list[str]
    # methods this model cannot run, and notes on those it cannot run at the auto layer,
    # each with the reason (see ``_cannot``)
    cannot: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def wrap(cls, model: Any, preprocess: Any, labels: Sequence[str] | None, name: str,
             device: torch.device | None = None) -> Model:
        """A model object as given (PyTorch or Keras), with its ``Preprocess``."""
        if not callable(preprocess) or not hasattr(preprocess, "crop_box"):
            raise TypeError(
                "preprocess must be the preprocess that camlens.load_model returns (or "
                "camlens.models.preprocessing(name)): it turns a photo into the model's input "
                "and says which part of the photo the model sees"
            )
        engine = check_model(model)
        if device is None:
            param = next(iter(engine.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
        if getattr(engine, "camlens_adapter", False):
            layers = list(engine.layer_paths())  # type: ignore[operator]
        else:
            layers = [n for n, _ in engine.named_modules() if n]
        names = list(labels) if labels is not None else _default_labels(engine, preprocess,
                                                                         device)
        return cls(engine, preprocess, names, device, name, layers,
                   *_cannot(engine, preprocess, device))

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "classes": len(self.labels), "device": str(self.device),
                "input": int(getattr(self.preprocess, "crop", 0))}


def _default_labels(model: nn.Module, preprocess: Any, device: torch.device) -> list[str]:
    """Class names for a model given without them: ImageNet's for 1000 classes, else
    "class i"; the number of classes from one forward of a blank input."""
    from ..models import default_labels

    side = int(getattr(preprocess, "crop", 224))
    with ModelGuard(model), torch.no_grad():
        output = model(torch.zeros(1, 3, side, side, device=device))
    return default_labels(int(find_logits(output).shape[1]))


def _cannot(model: nn.Module, preprocess: Any,
            device: torch.device) -> tuple[dict[str, str], dict[str, str]]:
    """What the page says beside a method before anyone picks it: ``cannot``, the methods
    this model cannot run whatever the photo and layer (the guided methods, when it has no
    ReLU-type activation to guide), and ``notes``, those that cannot run at the auto layer
    (CAM without a GAP + linear head after it; another layer may serve), each with the
    reason. A pass of guided backpropagation and one of CAM on a seeded random input
    decide it."""
    guided = [n for n in available_methods() if method_class(n).guided]
    side = int(getattr(preprocess, "crop", 224))
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)
    found: dict[str, str] = {}
    for probe in (guided[0], "cam"):  # apart: a failure of one pass says nothing of the other
        try:
            value = compare(model, x, [probe], errors="keep")[probe]
        except RuntimeError:  # the model fails on its own: the first run will say so
            continue
        if isinstance(value, Exception):
            found[probe] = str(value)
    cannot = dict.fromkeys(guided, found[guided[0]]) if guided[0] in found else {}
    notes = {"cam": f"at the auto layer: {found['cam']}"} if "cam" in found else {}
    return cannot, notes


# ------------------------------------------------------------------ choices for the page
def method_choices(model: Model) -> list[dict[str, Any]]:
    """Every registered method, the best known first, with its description, whether it
    costs extra forwards, why this model cannot run it (``cannot``: not offered) and why
    it cannot run at the auto layer (``note``: offered, as another layer may serve)."""
    out = []
    for name in available_methods():
        cls = method_class(name)
        kind = "heavy" if cls.heavy else "forwards" if cls.needs_scorer else "pass"
        out.append({"name": name, "description": describe(name), "kind": kind,
                    "class_specific": bool(cls.class_specific),
                    "cannot": model.cannot.get(name), "note": model.notes.get(name)})
    return out


def colormaps() -> list[str]:
    return available_colormaps()


def samples() -> list[str]:
    """The sample photos on offer: scikit-image's, when it is installed."""
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        return []
    return list(SAMPLES)


# ------------------------------------------------------------------ reading photos
def read_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """An uploaded file's bytes as RGB uint8 (H, W, 3), or an :class:`ImageError` that says
    what is wrong with it (empty, not an image, too many pixels, truncated)."""
    from PIL import Image

    if not data:
        raise ImageError("the file is empty")
    Image.init()  # registers every plugin, so that the formats below are known
    formats = [f for f in FORMATS if f in Image.OPEN]
    try:
        with warnings.catch_warnings():  # the pixel limit below says it in our words
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError:
        raise ImageError("refused: far too many pixels (a decompression bomb?)") from None
    except (Image.UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ImageError(
            "not an image this page reads (JPEG, PNG, WebP, GIF, BMP, TIFF or PPM)"
        ) from None
    w, h = image.size
    if w * h > max_pixels:
        raise ImageError(
            f"{w}x{h} = {w * h:,} pixels is over this page's limit of {max_pixels:,}; "
            "make the photo smaller, or start the app with a larger --max-pixels"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"truncated or corrupt image ({err})") from None
    return load_image(image, max_pixels=max_pixels)


def sample(name: str) -> np.ndarray:
    """One of scikit-image's photos by name (only the names in ``SAMPLES``)."""
    if name not in samples():
        raise ValueError(f"no sample photo {name!r}; the samples are {', '.join(samples())}")
    import skimage.data

    return np.asarray(getattr(skimage.data, name)())


def safe_name(name: str, fallback: str = "photo") -> str:
    """A file name shown and used for downloads: letters, digits, '.', '_', '-'."""
    stem = re.sub(r"[^\w.-]+", "_", name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1])
    stem = stem.strip("._")[:80]
    return stem or fallback


def make_photo(model: Model, rgb: np.ndarray, name: str) -> Photo:
    """Preprocess a photo and predict its top classes (one forward, the model untouched)."""
    from PIL import Image

    h, w = rgb.shape[:2]
    x = engine_input(model.preprocess, rgb)  # channels-first, as the engine's model takes it
    x0, y0, x1, y1 = model.preprocess.crop_box(h, w)
    side = max(min(CROP_SIDE, max(x1 - x0, y1 - y0)), int(x.shape[-1]))
    crop = np.asarray(Image.fromarray(rgb[y0:y1, x0:x1]).resize((side, side), Image.BILINEAR))
    thumb = Image.fromarray(rgb)
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
    with ModelGuard(model.model), torch.no_grad():
        start = time.perf_counter()
        output = model.model(x[None].to(model.device))
        seconds = time.perf_counter() - start
    probs = torch.softmax(find_logits(output).float(), dim=1)[0].cpu()
    if probs.numel() != len(model.labels):
        raise ValueError(f"the model gave {probs.numel()} class scores but has "
                         f"{len(model.labels)} class names; pass labels= with one per class")
    top = probs.topk(min(TOP_K, probs.numel()))
    predictions = [{"class": int(c), "name": model.labels[int(c)], "probability": float(p)}
                   for p, c in zip(top.values, top.indices)]
    note = None
    crop_side = int(x.shape[-1])
    if 2 * min(h, w) < crop_side:
        note = (f"{w}x{h} is far smaller than the model's {crop_side}x{crop_side} input: the "
                "maps show upscaled pixels")
    return Photo(
        id=secrets.token_urlsafe(9), name=name, size=(w, h), inputs=x.cpu(), crop=crop,
        thumbnail=png(np.asarray(thumb)), predictions=predictions, forward_seconds=seconds,
        probabilities=probs.numpy(), note=note,
    )


# ------------------------------------------------------------------ what a request asks
def resolve_target(model: Model, photo: Photo, target: Any) -> int:
    """A class index from a click (an index) or a typed class name or index."""
    n = len(model.labels)
    if target is None or target == "":
        return int(photo.predictions[0]["class"])
    if isinstance(target, bool):
        raise ValueError(f"target must be a class index or name, got {target!r}")
    if isinstance(target, int) or (isinstance(target, str) and target.strip().isdigit()):
        idx = int(target)
        if not 0 <= idx < n:
            raise ValueError(f"class {idx} is out of range: the model has {n} classes")
        return idx
    if not isinstance(target, str):
        raise ValueError(f"target must be a class index or name, got {type(target).__name__}")
    key = target.strip().lower().replace("_", " ")
    norm = [label.lower().replace("_", " ") for label in model.labels]
    if key in norm:
        return norm.index(key)
    near = ", ".join(repr(c) for c in closest(target.strip(), model.labels, n=5))
    raise ValueError(f"unknown class {target.strip()[:100]!r}; closest: {near}")


def resolve_layer(model: Model, layer: Any) -> str:
    """``"auto"`` or a layer name of the model (an unknown name lists the closest)."""
    if layer is None or (isinstance(layer, str) and layer.strip() in ("", "auto")):
        return "auto"
    if not isinstance(layer, str):
        raise ValueError(f"layer must be a layer name or 'auto', got {type(layer).__name__}")
    name = layer.strip()[:200]
    resolve_layers(model.model, name)
    return name


def resolve_methods(names: Any) -> list[str]:
    if not isinstance(names, list) or not names:
        raise ValueError("pick at least one method")
    valid = available_methods()
    out = []
    for n in names:
        if not isinstance(n, str) or n not in valid:
            raise ValueError(f"unknown method {str(n)[:60]!r}; pick from the list")
        out.append(n)
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------ cost, before running
def estimate(model: Model, photo: Photo, methods: list[str], layer: str, target: int,
             counterfactual: bool, faithfulness: bool, steps: int = CURVE_STEPS
             ) -> dict[str, Any]:
    """What the chosen methods will cost on this photo, before any of them runs: the extra
    forwards of each (from camlens's plan: one pass, no method computed) and the time."""
    costly = [m for m in methods if method_class(m).needs_scorer]
    rows: list[Any] = []
    if costly:
        def stop(plan_rows: list[Any]) -> None:
            rows.extend(plan_rows)
            raise _PlanOnly

        try:
            compare(model.model, photo.inputs[None].to(model.device), costly, layer, target,
                    counterfactual=counterfactual, errors="keep", plan=stop)
        except _PlanOnly:
            pass
    per_forward = next((r.seconds / r.forwards for r in rows if r.forwards and r.seconds),
                       photo.forward_seconds)
    out = {r.method: {"forwards": int(r.forwards), "seconds": float(r.seconds),
                      "partial": bool(r.partial)} for r in rows}
    curves = 2 * (steps + 1) * len(methods) if faithfulness else 0
    seconds = sum(r.seconds for r in rows) + curves * per_forward + 3 * photo.forward_seconds
    return {"methods": out, "faithfulness": {"forwards": curves,
                                             "seconds": curves * per_forward},
            "seconds": seconds}


# ------------------------------------------------------------------ the explanation
def explain(model: Model, photo: Photo, methods: list[str], layer: str, target: int,
            counterfactual: bool, faithfulness: bool, job: Job, steps: int = CURVE_STEPS
            ) -> Result:
    """Maps of every chosen method from one shared pass (``camlens.compare``), each map's
    box, and (optionally) deletion and insertion curves of the maps."""
    start = time.perf_counter()
    x = photo.inputs[None].to(model.device)
    costly = [m for m in methods if method_class(m).needs_scorer]
    seen = {"i": -1, "done": -1, "total": -1}

    def progress(done: int, total: int) -> None:  # the running method's extra forwards
        if total != seen["total"] or done <= seen["done"]:
            seen["i"] += 1
        seen["done"], seen["total"] = done, total
        name = costly[seen["i"]] if seen["i"] < len(costly) else "extra"
        job.report(f"{name}: {done:,} of {total:,} forwards", done, total)

    job.report("forward and gradient pass")
    result = compare(model.model, x, methods, layer, target, counterfactual=counterfactual,
                     errors="keep", batch_size=32, progress=progress,
                     plan=lambda rows: job.report("computing the maps"))
    maps: dict[str, np.ndarray] = {}
    refused: dict[str, str] = {}
    found: dict[str, tuple[int, int, int, int] | None] = {}
    for name in methods:
        value = result[name]
        if isinstance(value, Exception):
            refused[name] = str(value)
            continue
        m = value[0].detach().float().cpu()
        maps[name] = m.numpy()
        empty = float(m.max()) <= 0
        found[name] = None if empty else tuple(map_boxes(m, BOX_THRESHOLD).tolist())
    job.report()
    curves = _faithfulness(model, x, maps, target, job, steps) if faithfulness else {}
    p = float(photo.probabilities[target])
    return Result(
        id=secrets.token_urlsafe(9), photo=photo,
        target={"class": target, "name": model.labels[target], "probability": p},
        counterfactual=counterfactual, layers=list(result.layer_names), maps=maps,
        boxes=found, refused=refused, faithfulness=curves,
        seconds=time.perf_counter() - start,
    )


def _faithfulness(model: Model, x: torch.Tensor, maps: dict[str, np.ndarray], target: int,
                  job: Job, steps: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Deletion and insertion curves (RISE's protocol) of every non-empty map, all methods
    batched together; the area under each curve as ``camlens evaluate`` gives it."""
    names = [n for n, m in maps.items() if float(m.max()) > 0]
    if not names:
        return {}
    stack = torch.from_numpy(np.stack([maps[n] for n in names])).to(x.device)
    inputs = x.expand(len(names), *x.shape[1:])
    step = math.ceil(stack.shape[-1] * stack.shape[-2] / steps)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for k, (kind, fn) in enumerate((("deletion", metrics.deletion),
                                    ("insertion", metrics.insertion))):
        job.report(f"faithfulness: {kind} curves of {len(names)} map(s)", k, 2)
        curves = fn(model.model, inputs, stack, target, step=step, return_curve=True)
        out[kind] = {n: {"curve": [round(float(v), 5) for v in c], "auc": _auc(c)}
                     for n, c in zip(names, curves.cpu())}
    job.report(None, 2, 2)
    return out


def _auc(curve: torch.Tensor) -> float:
    """Normalised trapezoid area of a curve over [0, 1] (as :mod:`camlens.metrics`)."""
    n = curve.numel() - 1
    return float((curve.sum() - (curve[0] + curve[-1]) / 2) / n)


# ------------------------------------------------------------------ pictures and files
def png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _check_look(alpha: float, colormap: str) -> None:
    if not (isinstance(alpha, float) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if colormap not in available_colormaps():
        raise ValueError(f"unknown colormap {colormap[:40]!r}; choose one of "
                         f"{', '.join(available_colormaps())}")


def _overlay(result: Result, method: str, alpha: float, colormap: str,
             show_box: bool) -> np.ndarray:
    from PIL import Image, ImageDraw

    crop = result.photo.crop
    picture = np.asarray(overlay(crop, result.maps[method], alpha, colormap))
    box = result.boxes.get(method)
    if not show_box or box is None:
        return picture
    scale = crop.shape[0] / result.maps[method].shape[0]
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    width = max(2, crop.shape[0] // 160)
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(0, 0, 0), width=width + 2)
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 255, 255), width=width)
    return np.asarray(image)


def overlay_png(result: Result, method: str, alpha: float, colormap: str,
                show_box: bool) -> bytes:
    """One method's map over the crop the model saw, with its box: a PNG."""
    _check_look(alpha, colormap)
    if method not in result.maps:
        raise KeyError(method)
    return result.picture(("overlay", method, alpha, colormap, show_box),
                          lambda: png(_overlay(result, method, alpha, colormap, show_box)))


def title(result: Result, method: str) -> str:
    t = result.target
    return panel_title(method, t["name"], t["probability"], counterfactual=result.counterfactual)


def grid_png(result: Result, alpha: float, colormap: str, show_box: bool) -> bytes:
    """The comparison grid: the crop, then one labelled overlay per method."""
    _check_look(alpha, colormap)

    def draw() -> bytes:
        names = list(result.maps)
        pictures = [_overlay(result, n, alpha, colormap, show_box) for n in names]
        sheet = compose_grid(result.photo.crop, pictures, [title(result, n) for n in names],
                             image_title=result.photo.name)
        return png(np.asarray(sheet))

    return result.picture(("grid", alpha, colormap, show_box), draw)


def npy(result: Result, method: str) -> bytes:
    """One method's map as a ``.npy`` file (float32, the model input's size)."""
    buf = io.BytesIO()
    np.save(buf, result.maps[method].astype(np.float32))
    return buf.getvalue()


def summary(result: Result) -> dict[str, Any]:
    """What the page shows of a result (and ``result.json`` in the download)."""
    return {
        "id": result.id,
        "photo": result.photo.id,
        "target": result.target,
        "counterfactual": result.counterfactual,
        "layers": result.layers,
        "methods": [{"name": n, "box": result.boxes[n], "empty": result.boxes[n] is None}
                    for n in result.maps],
        "refused": result.refused,
        "faithfulness": result.faithfulness,
        "seconds": round(result.seconds, 3),
        "map_size": list(next(iter(result.maps.values())).shape) if result.maps else None,
    }


def bundle(result: Result, alpha: float, colormap: str, show_box: bool) -> bytes:
    """Everything of a result in one zip: maps (.npy), overlays, the grid, result.json."""
    _check_look(alpha, colormap)
    stem = safe_name(result.photo.name.rsplit(".", 1)[0])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for n in result.maps:
            z.writestr(f"{stem}/maps/{n}.npy", npy(result, n))
            z.writestr(f"{stem}/overlays/{n}.png",
                       overlay_png(result, n, alpha, colormap, show_box))
        if result.maps:
            z.writestr(f"{stem}/grid.png", grid_png(result, alpha, colormap, show_box))
        z.writestr(f"{stem}/result.json", json.dumps(
            {**summary(result), "photo": result.photo.name}, indent=1))
    return buf.getvalue()
