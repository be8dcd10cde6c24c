"""The audit's inputs: checked arguments, the model, annotations, masks, true classes, a
baseline audit."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import UsageError
from ..runner._setup import model_spec, object_labels, object_preprocess
from ._result import AuditResult


@dataclass
class AuditSpec:
    """Everything an audit needs: what :func:`camlens.audit` takes and ``camlens audit``
    parses (see :func:`camlens.audit` for each field). ``model`` is a spec or a model
    object: the audit loads a spec itself, once, to read its class names."""

    paths: Sequence[Any]
    out: Path = Path("camlens-audit")
    model: Any = "efficientnet-lite0"
    weights: str | None = None
    trust_model: bool = False
    preprocess: Any = None
    labels: Sequence[str] | None = None
    method: str = "gradcam"
    layer: str | None = None
    annotations: Any = None
    masks: Any = None
    truth: Any = None
    min_images: int = 10
    z: float = 3.0
    ratio: float = 0.8
    floor: float = 0.05
    worst: int = 8
    tolerance: int | None = None
    border: float = 0.1
    baseline: Any = None
    batch_size: int = 8
    device: str = "auto"
    progress: str = "never"
    restart: bool = False


def check_args(method: str, min_images: int, z: float, ratio: float, floor: float,
               worst: int, tolerance: int | None, border: float, batch_size: int) -> str:
    """Usage errors before anything runs; returns the method's registry name."""
    from .. import methods as _methods  # noqa: F401  (registers camlens's methods)
    from .._registry import available_methods

    if not isinstance(method, str) or "," in method:
        raise UsageError(f"method must be one method name, got {method!r}; audit one method "
                         "at a time (e.g. method='gradcam')")
    key = method.strip().lower().replace("_", "-")
    if key not in available_methods():
        from .._errors import unknown_choice

        raise UsageError(str(unknown_choice("method", method, available_methods(),
                                            "See `camlens methods`")))
    for name, value in (("min_images", min_images), ("worst", worst),
                        ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be a whole number, got {value!r}")
    if min_images < 1 or worst < 0 or batch_size < 1:
        raise UsageError(f"need min_images >= 1, worst >= 0 and batch_size >= 1; got "
                         f"{min_images}, {worst}, {batch_size}")
    if not z > 0 or not 0 < ratio <= 1 or not floor > 0:
        raise UsageError(f"need z > 0, 0 < ratio <= 1 and floor > 0; got z={z}, "
                         f"ratio={ratio}, floor={floor}")
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, int)
                                  or tolerance < 0):
        raise UsageError(f"tolerance must be a whole number of pixels >= 0 or None, got "
                         f"{tolerance!r}")
    if not 0 < border < 0.5:
        raise UsageError(f"border must be a share of the shorter side in (0, 0.5), got {border}")
    return key


def check_out(out: Path, items: Sequence[Any]) -> None:
    """The audit writes pictures: inside an input folder they would be audited next time."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"out={str(out)!r} is an existing file; name a folder for the audit")
    target = out.resolve()
    for item in items:
        p = Path(item)
        if p.is_dir() and target.is_relative_to(p.resolve()):
            raise UsageError(f"the audit folder {out} is inside the input folder {p}: its "
                             "thumbnails would be audited as images next time; choose an "
                             "out folder outside it")


def load(model: Any, weights: str | None, trust: bool, preprocess: Any,
         labels: Sequence[str] | None, device: str) -> tuple[Any, Any, list[str]]:
    """The model object, its preprocessing and class names. A spec is loaded here (once),
    so that class names in annotations can be resolved; the runner then gets the object."""
    from ..models import load_model

    if not isinstance(model, str):
        if weights is not None:
            raise UsageError("weights= goes with a model spec; a model object has its weights")
        pre = object_preprocess(preprocess)
        names = object_labels(model, pre, labels)
        return model, pre, names
    model_spec(model, labels)  # a spec: labels= is refused
    keras = model.startswith("keras:") or model.lower().endswith((".keras", ".h5", ".hdf5"))
    if keras and "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"  # every method works on Keras's torch backend
    loaded, pre, names = load_model(model, weights, trust=trust, preprocess=preprocess)
    if not keras:
        loaded.to(_device(device))  # camlens loaded it: it may move it
    return loaded, pre, list(names)


def _device(name: str) -> Any:
    """Where a model camlens loaded runs: ``auto`` takes a GPU when there is one."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device='cuda': no CUDA device is available; use device='cpu'")
    if name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"device must be 'auto', 'cpu', 'cuda' or 'mps', got {name!r}")
    return torch.device(name)


def read_annotations(annotations: Any, names: Sequence[str]) -> dict[str, Any]:
    """``{file name: Objects}`` from a file or folder ``camlens evaluate`` reads, or from a
    dict (see :func:`_objects`); class names resolved against the model's ``names``."""
    if annotations is None:
        return {}
    from .._annotations import Objects, load_annotations

    if isinstance(annotations, Mapping):
        return {Path(str(k)).name: _objects(str(k), v, names, Objects)
                for k, v in annotations.items()}
    return load_annotations(annotations, labels=names)


def _objects(name: str, value: Any, names: Sequence[str], kind: type) -> Any:
    """An annotation given in Python: ``Objects``, a list of boxes, or ``{"boxes": [...],
    "classes": [...], "label": c}`` (classes as indices or names)."""
    if isinstance(value, kind):
        return value
    if isinstance(value, Mapping):
        boxes, label, classes = value.get("boxes", []), value.get("label"), value.get("classes")
    else:
        boxes, label, classes = value, None, None
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(f"annotations[{name!r}]: expected a list of [x0, y0, x1, y1] boxes "
                        f"or a dict with 'boxes', got {type(value).__name__}")
    checked = []
    for box in boxes:
        b = [float(v) for v in box] if isinstance(box, (list, tuple)) else []
        if len(b) != 4 or not all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
            raise UsageError(f"annotations[{name!r}]: box {box!r} is not [x0, y0, x1, y1] "
                             "with x1 > x0 and y1 > y0")
        checked.append(b)
    where = f"annotations[{name!r}]"
    found = kind(boxes=checked,
                 label=None if label is None else class_of(label, names, where))
    if classes is not None:
        if len(classes) != len(checked):
            raise UsageError(f"{where}: {len(classes)} classes for {len(checked)} boxes")
        found.classes = [None if c is None else class_of(c, names, where) for c in classes]
    return found


def read_masks(masks: Any) -> dict[str, np.ndarray]:
    """``{file stem: mask}`` from a folder of PNG masks, or a dict of arrays."""
    if masks is None:
        return {}
    if isinstance(masks, Mapping):
        return {str(k): np.asarray(v) for k, v in masks.items()}
    from .._annotations import load_masks

    return load_masks(masks)


def read_truth(truth: Any, names: Sequence[str]) -> tuple[dict[str, int] | None, str]:
    """``({file name: class}, what the true classes come from)``; ``None`` for folders or
    the annotations."""
    if truth is None:
        return None, "annotations"
    if isinstance(truth, str) and truth == "folders":
        return None, "folders"
    if isinstance(truth, Mapping):
        raw: dict[str, Any] = dict(truth)
        kind = "the truth mapping"
    else:
        p = Path(truth)
        if not p.is_file():
            raise UsageError(f"truth={str(truth)!r} is neither 'folders' nor an existing "
                             "JSON or CSV file of true classes")
        text = p.read_text("utf-8")
        if p.suffix.lower() == ".json":
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as err:
                raise UsageError(f"{p} is not valid JSON ({err})") from None
            if not isinstance(raw, dict):
                raise UsageError(f"{p}: expected {{file name: class}}, got "
                                 f"{type(raw).__name__}")
        else:
            rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
            if rows and rows[0][-1].strip().lower() in ("class", "label", "truth", "category"):
                rows = rows[1:]
            bad = [r for r in rows if len(r) != 2]
            if bad:
                raise UsageError(f"{p}: each line is `file,class`, got {bad[0]!r}")
            raw = {r[0].strip(): r[1].strip() for r in rows}
        kind = f"`{p.name}`"
    found = {Path(str(k)).name: class_of(v, names, f"truth for {k}") for k, v in raw.items()}
    if not found:
        raise UsageError("truth names no image")
    return found, kind


def class_of(value: Any, names: Sequence[str], where: str) -> int:
    """A class index from an index or a class name (matched like annotations' names)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UsageError(f"{where}: a class is an index or a name, got {value!r}")
    if isinstance(value, int):
        if not 0 <= value < len(names):
            raise UsageError(f"{where}: class {value} is out of range; the model has "
                             f"{len(names)} classes (0 to {len(names) - 1})")
        return value
    norm = [n.strip().lower().replace("_", " ") for n in names]
    key = value.strip().lower().replace("_", " ")
    if key in norm:
        return norm.index(key)
    from .._errors import unknown_choice

    raise UsageError(str(unknown_choice("class name", value, names, f"({where}; names are "
                                        "matched against the model's labels)")))


def check_named(items: Sequence[Any], ann: Mapping[str, Any],
                mask_map: Mapping[str, np.ndarray], truth: Mapping[str, int] | None
                ) -> list[str]:
    """Entries that name none of the images are a mistake: say so before the model runs.
    Returns a note for each kind where some entries name no image (how many, which)."""
    from .._annotations import match_keys

    files = list(_files_under(items))
    names = {f.name for f in files}
    stems = {f.stem for f in files}
    notes = [match_keys(what, keys, pool, how)
             for what, keys, pool, how in (("annotations", ann, names, "file name"),
                                           ("masks", mask_map, stems, "file stem"),
                                           ("truth", truth or {}, names, "file name"))]
    return [n for n in notes if n]


def _files_under(items: Sequence[Any]) -> Iterator[Path]:
    """Every file of ``items`` (folders walked, hidden parts left out), by name only."""
    for item in items:
        p = Path(item)
        if p.is_dir():
            yield from (f for f in p.rglob("*") if f.is_file()
                        and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            yield p


def read_baseline(baseline: Any) -> dict[int, dict[str, Any]] | None:
    """``{class: row}`` of an earlier audit (its folder, its ``audit.json`` or its result)."""
    if baseline is None:
        return None
    if isinstance(baseline, AuditResult):
        rows = [r.as_dict() for r in baseline.rows()]
        return {r["class"]: r for r in rows}
    path = Path(baseline)
    path = path / "audit.json" if path.is_dir() else path
    if not path.is_file():
        raise UsageError(f"baseline={str(baseline)!r}: no audit.json there; give the folder "
                         "of an earlier camlens audit")
    data = json.loads(path.read_text("utf-8"))
    key = "by_true" if data.get("grouping") == "true" else "by_predicted"
    return {r["class"]: r for r in data.get(key, [])}
