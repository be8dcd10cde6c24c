"""The metrics of an evaluation: which were asked for (``parse_metrics``), the annotated
objects in the model's input pixels, each image's value of each metric, and the cost plan's
text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import metrics as M
from .._catalog import EVAL_METRICS, QUICK_METRICS
from .._errors import UsageError, unknown_choice
from .._guard import ModelGuard
from .._scorer import time_forward
from ..runner._files import Run
from ..runner._setup import duration

BOX_METRICS = ("pointing_game", "energy_pointing_game", "localization_error")
QUICK_STEP, FULL_STEP = 0.05, 0.01  # deletion / insertion: share of the pixels per step
ROAD_PERCENTILES = 9


def parse_metrics(text: str, have_boxes: bool) -> list[str]:
    """The metrics of ``--metric`` (names, ``quick`` or ``all``); the box metrics need
    annotations (``have_boxes``)."""
    valid = list(EVAL_METRICS)
    key = text.strip().lower()
    if key in ("all", "quick"):  # quick: QUICK_METRICS; both: box metrics with boxes
        return [m for m in valid if (key == "all" or m in QUICK_METRICS or m in BOX_METRICS)
                and (have_boxes or m not in BOX_METRICS)]
    names = [t.strip().lower().replace("-", "_") for t in text.split(",") if t.strip()]
    if not names:
        raise UsageError("--metric is empty; name metrics, 'quick' or 'all'")
    for n in names:
        if n not in EVAL_METRICS:
            raise UsageError(str(unknown_choice("metric", n, valid + ["quick", "all"])))
        if n in BOX_METRICS and not have_boxes:
            raise UsageError(f"{n} needs object boxes: pass --annotations FILE")
    return list(dict.fromkeys(names))


def plan_text(model: torch.nn.Module, x: torch.Tensor, images: int, methods: int,
              chosen: Sequence[str], step: int, side: int, batch: int) -> str:
    """The metrics' forwards for the whole run and their estimated time, from one timed
    forward of ``x``."""
    steps = math.ceil(side * side / step) + 1
    per_map = {"deletion": steps, "insertion": steps, "average_drop": 2, "increase": 0,
               "road_morf": ROAD_PERCENTILES, "road_lerf": ROAD_PERCENTILES}
    if "increase" in chosen and "average_drop" not in chosen:
        per_map["increase"] = 2
    forwards = images * methods * sum(per_map.get(k, 0) for k in chosen)
    with ModelGuard(model):
        per_forward = time_forward(model, x, min(max(batch, 8), 32))
    return (f"plan: {images} image(s) x {methods} method(s) x {len(chosen)} metric(s) "
            f"({', '.join(chosen)}): about {forwards:,} forwards, ~ "
            f"{duration(forwards * per_forward)} (deletion/insertion in steps of {step} pixels"
            + ("; ROAD adds its imputation" if any(k.startswith("road") for k in chosen)
               else "")
            + "). --full runs the full protocol")


def regions(
    loaded: list[tuple[int, np.ndarray, torch.Tensor]], files: Sequence[tuple[Path, str, str]],
    annotations: dict[str, Any], preprocess: Any, run: Run, needed: bool,
) -> tuple[torch.Tensor | None, list[Any], torch.Tensor | None]:
    """Object masks and boxes in the model's input pixels, for the images that have them
    (the others are told to the run's sink)."""
    if not needed:
        return None, [], None
    size = preprocess.crop
    masks = torch.zeros(len(loaded), size, size, dtype=torch.bool)
    truth: list[Any] = []
    keep = torch.zeros(len(loaded), dtype=torch.bool)
    for b, (i, rgb, _) in enumerate(loaded):
        objects = annotations.get(files[i][0].name)
        x0, y0, x1, y1 = preprocess.crop_box(*rgb.shape[:2])
        sx, sy = (x1 - x0) / size, (y1 - y0) / size
        boxes = []
        for bx in objects.boxes if objects is not None else []:
            box = [max(0.0, (bx[0] - x0) / sx), max(0.0, (bx[1] - y0) / sy),
                   min(float(size), (bx[2] - x0) / sx), min(float(size), (bx[3] - y0) / sy)]
            if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
                boxes.append([round(v) for v in box])
        if not boxes:
            why = "no annotation" if objects is None else "no annotated box inside the crop"
            run.message(f"{files[i][1]}: {why}; left out of the box metrics")
            truth.append(None)
            continue
        for bx in boxes:
            masks[b, bx[1]:bx[3], bx[0]:bx[2]] = True
        truth.append((boxes, objects.label if objects is not None else None))
        keep[b] = True
    return masks, truth, keep


def score(chosen: Sequence[str], model: torch.nn.Module, x: torch.Tensor,
          maps: torch.Tensor, classes: torch.Tensor, masks: Any, truth: list[Any],
          keep: Any, step: int) -> dict[str, list[float | None]]:
    """Per-image values of each chosen metric (in %, where the metric is a rate); ``None``
    where an image has no value (no box for the box metrics)."""
    target = classes.tolist()
    b = x.shape[0]
    got: dict[str, list[float | None]] = {}
    change = None
    for metric in chosen:
        if metric in ("deletion", "insertion"):
            got[metric] = getattr(M, metric)(model, x, maps, target, step=step).tolist()
        elif metric in ("average_drop", "increase"):
            if change is None:
                change = M.confidence_change(model, x, maps, target)
            per = change.drop if metric == "average_drop" else 100 * change.increased.float()
            got[metric] = per.tolist()
        elif metric.startswith("road"):
            got[metric] = M.road(model, x, maps, target, order=metric[5:]).mean(1).tolist()
        else:
            got[metric] = _box_metric(metric, maps, classes, masks, truth, keep, b)
    return got


def _box_metric(metric: str, maps: torch.Tensor, classes: torch.Tensor, masks: Any,
                truth: list[Any], keep: Any, b: int) -> list[float | None]:
    values: list[float | None] = [None] * b
    if keep is None or not bool(keep.any()):
        return values
    idx = keep.nonzero().flatten()
    kept = maps[idx].cpu()
    if metric == "pointing_game":
        got = (100 * M.pointing_game(kept, masks[idx]).float()).tolist()
    elif metric == "energy_pointing_game":
        got = (100 * M.energy_pointing_game(kept, masks[idx])).tolist()
    else:
        found = M.derive_boxes(kept, 0.2)
        got = []
        for j, i in enumerate(idx.tolist()):
            boxes, label = truth[i]
            best = max(float(M.box_iou(found[j : j + 1], torch.tensor([bx]))[0])
                       for bx in boxes)
            wrong = (label is not None and int(classes[i]) != label) or best < 0.5
            got.append(100.0 * wrong)
    for j, i in enumerate(idx.tolist()):
        values[i] = got[j]
    return values
