"""A folder of images labelled batch by batch: ``camlens labels`` and :func:`make_labels`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._errors import UsageError
from .._explainer import compare
from .._messages import Sink, to_log
from ..metrics import _from_confusion
from ..runner._files import (
    Run,
    check_matches,
    collect,
    decode,
    inside,
    output_folder,
    output_names,
    show_progress,
)
from ..runner._setup import load, parse_methods, print_plan
from ..runner._spec import ModelSettings, Outcome
from ._inputs import ClassSet, _label_set, _parse_band, _present_classes
from ._rule import _band, _label_image
from ._writers import coco_json, save_voc_png


@dataclass
class LabelsSpec(ModelSettings):
    """Everything weak labels over files need: what :func:`camlens.labels.make_labels` takes
    and ``camlens labels`` parses (see :func:`make_labels` for each field; the model's are
    those of :class:`camlens.runner.ModelSettings`)."""

    paths: Sequence[str]
    out: str = "camlens-labels"
    method: str = "gradcam"
    options: Sequence[str] = ()  # "[METHOD.]NAME=VALUE"
    classes: Sequence[str | int] | str | None = None
    annotations: str | None = None
    multilabel: bool = False
    bg_threshold: float = 0.15
    ignore_band: str | None = None  # "LOW,HIGH"
    box_threshold: float = 0.2
    true_masks: str | None = None
    batch_size: int = 8
    max_pixels: int | None = None
    progress: str = "never"


@dataclass
class LabelsResult(Outcome):
    """What weak labelling did, built in memory: ``summary`` is what ``labels.json`` holds
    (the result reads as that dict too: ``result["images"]``, ``result["exit_code"]``),
    ``exit_code`` 1 when an image or a named method failed."""

    @property
    def methods(self) -> list[str]:
        """The methods whose masks and boxes were written."""
        return list(self.summary["methods"])

    @property
    def records(self) -> list[dict[str, Any]]:
        """One entry per labelled image: its file, size, classes and mask files."""
        return list(self.summary["records"])

    @property
    def errors(self) -> list[dict[str, str]]:
        """The images skipped, with why."""
        return list(self.summary["errors"])

    @property
    def miou(self) -> dict[str, Any] | None:
        """Per method, the mIoU against ``true_masks`` (None without them)."""
        return self.summary.get("miou")


def label_folder(spec: LabelsSpec, message: Sink = to_log) -> LabelsResult:
    """``camlens labels`` and :func:`make_labels`: the masks, boxes and ``labels.json``
    written, the result returned; notes go to ``message``."""
    from .. import __version__
    from .._annotations import load_classes, load_masks
    from ..viz import DEFAULT_MAX_PIXELS, atomic_write

    methods = parse_methods(spec.method, spec.options)
    band = _parse_band(spec.ignore_band)
    try:
        lo, hi = _band(spec.bg_threshold, band)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if not 0 <= spec.box_threshold <= 1:
        raise UsageError(f"--box-threshold must be in [0, 1], got {spec.box_threshold}")
    model, preprocess, names, layer, device = load(spec)
    chosen = _label_set(spec.classes, names)
    position = {c: k for k, c in enumerate(chosen)}
    given: dict[str, list[int]] | None = None
    if spec.annotations:
        try:
            given = load_classes(spec.annotations, names)
        except ValueError as err:
            raise UsageError(str(err)) from None
    truth: dict[str, np.ndarray] | None = None
    if spec.true_masks:
        try:
            truth = load_masks(spec.true_masks)
        except ValueError as err:
            raise UsageError(str(err)) from None
    run = Run(message=message)
    files = collect(spec.paths, run, out=spec.out)
    if given is not None:
        check_matches(given, files, message)
    out = output_folder(spec.out)
    stems = output_names(files)
    source = (f"annotations {spec.annotations}" if given is not None else
              "predictions: classes with sigmoid > 0.5" if spec.multilabel else
              "predictions: the top-1 class (softmax), when it is one of the classes")
    message(f"classes from {source}")
    show = show_progress(spec.progress)
    max_pixels = spec.max_pixels or DEFAULT_MAX_PIXELS
    boxes: dict[str, list[list[Any]]] = {m: [] for m in methods.names}
    entries: list[dict[str, Any]] = []
    confusion: dict[str, Tensor] = {}
    scored: set[str] = set()
    planned = False
    layer_names: list[str] = []
    from tqdm import tqdm

    bar = tqdm(total=len(files), unit="img", disable=not show)
    for start in range(0, len(files), spec.batch_size):
        chunk = range(start, min(start + spec.batch_size, len(files)))
        loaded = decode(files, chunk, preprocess, max_pixels, run)
        bar.update(len(chunk) - len(loaded))
        live = methods.live()
        if given is not None:
            kept = []
            for item in loaded:
                name = files[item[0]][0].name
                if name not in given:
                    run.fail(files[item[0]][1], "not named in the annotations")
                else:
                    kept.append(item)
            bar.update(len(loaded) - len(kept))
            loaded = kept
        if not loaded or not live:
            continue
        x = torch.stack([t for _, _, t in loaded]).to(device)
        present = _present_classes(model, x, loaded, files, given, chosen, position,
                                   spec.multilabel)
        width = max(1, max(len(p) for p in present))
        index = torch.tensor([[chosen[k] for k in p] + [chosen[0]] * (width - len(p))
                              if p else [chosen[0]] * width for p in present])

        def plan(rows: list[Any], n: int = len(loaded)) -> None:
            nonlocal planned
            if not planned:
                planned = True
                print_plan(rows, n, len(files), message)

        try:
            result = compare(model, x, live, layer, ClassSet(index), normalize=False,
                             errors="keep", batch_size=max(spec.batch_size, 32),
                             progress=show, plan=plan, options=methods.options_for(live))
        except ValueError as err:
            for i, _, _ in loaded:
                run.fail(files[i][1], str(err))
            bar.update(len(loaded))
            continue
        methods.record(result, message)
        layer_names = list(result.layer_names or layer_names)
        good = {m: v for m, v in result.items() if not isinstance(v, Exception)}
        for b, (i, rgb, _) in enumerate(loaded):
            path, shown, rel = files[i]
            height, width_px = rgb.shape[:2]
            crop = preprocess.crop_box(height, width_px)
            entry: dict[str, Any] = {
                "file": shown, "width": width_px, "height": height,
                "classes": [names[chosen[k]] for k in present[b]], "masks": {},
            }
            mask_truth = None
            if truth is not None:
                mask_truth = truth.get(path.stem)
                if mask_truth is None:
                    entry["true_mask"] = "missing"
                elif mask_truth.shape != (height, width_px):
                    entry["true_mask"] = (f"size {mask_truth.shape[1]}x{mask_truth.shape[0]} "
                                          f"is not the image's {width_px}x{height}")
                    message(f"{shown}: true mask {entry['true_mask']}; not scored")
                    mask_truth = None
            try:
                made = _label_image(good, b, present[b], crop, height, width_px, lo, hi,
                                    spec.box_threshold, mask_truth, len(chosen) + 1)
            except ValueError as err:  # a true mask holding values that are not classes
                run.fail(shown, str(err))
                bar.update(1)
                continue
            for method, (mask, found, part) in made.items():
                target = inside(out, f"{method}/{stems[i]}.png")
                save_voc_png(mask, target)
                entry["masks"][method] = f"{method}/{target.name}"
                boxes[method].append(found)
                if part is not None:
                    confusion[method] = confusion.get(method, 0) + part
                    scored.add(shown)
            suffix = path.suffix
            entry["file_name"] = str(Path(rel).with_suffix(suffix)) if suffix else rel
            entries.append(entry)
            bar.update(1)
    bar.close()
    class_names = [names[c] for c in chosen]
    for method, per_image in boxes.items():
        if method not in good_methods(methods):
            continue
        coco = coco_json([{"file_name": e["file_name"], "width": e["width"],
                           "height": e["height"]} for e in entries if method in e["masks"]],
                         per_image, class_names,
                         f"camlens weak boxes: {method}, threshold {spec.box_threshold}")
        atomic_write(inside(out, f"{method}/boxes.json"),
                     json.dumps(coco, indent=1).encode("utf-8"))
    summary: dict[str, Any] = {
        "camlens": __version__, "model": spec.model, "layer": layer_names,
        "methods": good_methods(methods),
        "classes": [{"value": k + 1, "index": c, "name": names[c]}
                    for k, c in enumerate(chosen)],
        "classes_from": source,
        "bg_threshold": None if band is not None else float(spec.bg_threshold),
        "ignore_band": list(band) if band is not None else None,
        "box_threshold": float(spec.box_threshold),
        "images": len(entries), "failed": len(run.errors),
        "skipped_methods": methods.skipped, "failed_methods": methods.failed,
        "errors": run.errors, "records": entries,
    }
    if truth is not None:
        summary["miou"] = {}
        for method, conf in confusion.items():
            score = _from_confusion(conf)
            summary["miou"][method] = {
                "miou": round(score.miou, 4),
                "per_class": {("background" if v == 0 else class_names[v - 1]):
                              (None if bool(score.iou[v].isnan()) else
                               round(float(score.iou[v]), 4))
                              for v in range(len(chosen) + 1)},
                "labelled": round(score.labelled, 4),
            }
        summary["scored_images"] = len(scored)
        missing = sum(1 for e in entries if e.get("true_mask") == "missing")
        if missing:
            message(f"{missing} image(s) have no true mask in {spec.true_masks}; not scored")
        for method, score in summary["miou"].items():
            message(f"{method}: mIoU {score['miou']} % over {len(scored)} image(s)")
    atomic_write(inside(out, "labels.json"), json.dumps(summary, indent=1).encode("utf-8"))
    message(f"labelled {len(entries)} image(s) into {out}")
    failed = bool(run.errors) or bool(methods.failed)
    return LabelsResult(out, summary, 1 if failed else 0)


def good_methods(methods: Any) -> list[str]:
    return [m for m in methods.names if m not in methods.skipped and m not in methods.failed]
