"""``camlens evaluate``: how faithful each method's maps are, as a methods x metrics table."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._errors import unknown_choice
from .._explainer import compare
from .._guard import ModelGuard
from .._scorer import time_forward
from ..runner._files import Run, collect, decode, output_folder, show_progress
from ..runner._index import INDEX, RunFolderError, RunIndex
from ..runner._local import IndexedRun, remaining
from ..runner._setup import duration, load, model_fingerprint, parse_methods
from ._args import EVAL_METRICS, QUICK_METRICS, CliError, say

BOX_METRICS = ("pointing_game", "energy_pointing_game", "localization_error")
QUICK_STEP, FULL_STEP = 0.05, 0.01  # deletion / insertion: share of the pixels per step
ROAD_PERCENTILES = 9


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Scores streamed into ``index.jsonl`` (resumable like ``explain``), then the tables."""
    from .._annotations import load_annotations

    methods = parse_methods(args.method, args.option)
    chosen = parse_metrics("all" if args.full else args.metric, args.annotations is not None)
    annotations = {}
    if args.annotations:
        try:
            annotations = load_annotations(args.annotations)
        except ValueError as err:
            raise CliError(str(err)) from None
    found = collect(args.paths, Run(message=say), out=args.out)
    if annotations and found:
        _check_matches(annotations, found)
    model, preprocess, labels, layer, device = load(args)
    side = preprocess.crop
    step = args.step or math.ceil(side * side * (FULL_STEP if args.full else QUICK_STEP))
    out = output_folder(args.out)
    try:
        index = RunIndex(out, _fingerprint(args, methods, chosen, step, annotations),
                         restart=getattr(args, "restart", False))
    except RunFolderError as err:
        raise CliError(str(err)) from None
    with index:
        return _evaluate(args, index, methods, chosen, annotations, model, preprocess, labels,
                         layer, device, step, out)


def _fingerprint(args: argparse.Namespace, methods: Any, chosen: Sequence[str], step: int,
                 annotations: dict[str, Any]) -> dict[str, Any]:
    """What decides an evaluation's numbers: a resumed run must match it."""
    return {"command": "evaluate", **model_fingerprint(args, methods),
            "metrics": list(chosen), "step": step,
            "annotations": json.dumps(annotations, sort_keys=True, default=str),
            "max_pixels": args.max_pixels}


def _evaluate(args: argparse.Namespace, index: Any, methods: Any, chosen: list[str],
              annotations: dict[str, Any], model: Any, preprocess: Any, labels: Any,
              layer: Any, device: Any, step: int, out: Path) -> int:
    """The streaming part: one index line per image as it is scored; the tables are
    derived from the index at the end (a resumed run's images included)."""
    from tqdm import tqdm

    from .. import metrics as M
    from ..viz import DEFAULT_MAX_PIXELS, atomic_write

    side = preprocess.crop
    run = IndexedRun(index, say)
    files = remaining(args.paths, run)
    show = show_progress(args.progress)
    bar = None
    for start in range(0, len(files), args.batch_size):
        chunk = range(start, min(start + args.batch_size, len(files)))
        loaded = decode(files, chunk, preprocess, args.max_pixels or DEFAULT_MAX_PIXELS, run)
        live = methods.live()
        if not loaded or not live:
            continue
        x = torch.stack([t for _, _, t in loaded]).to(device)
        try:
            result = compare(model, x, live, layer, None, errors="keep",
                             batch_size=max(args.batch_size, 32),
                             options=methods.options_for(live))
        except ValueError as err:
            for i, _, _ in loaded:
                run.fail(files[i][1], str(err))
            continue
        methods.record(result)
        live = methods.live()
        if bar is None:
            _print_plan(model, x, len(files), len(live), chosen, step, side, args.batch_size)
            bar = tqdm(total=len(files) * len(live), unit="map", desc="camlens evaluate",
                       disable=not show, leave=False)
        classes = result.classes[:, 0]
        regions, truth, keep = _regions(loaded, files, annotations, preprocess, run,
                                        bool(set(chosen) & set(BOX_METRICS)))
        rows = [{"key": files[i][1], "file": files[i][1], "class": int(classes[b]),
                 "label": labels[int(classes[b])], "results": {}}
                for b, (i, _, _) in enumerate(loaded)]
        for name in live:
            maps = result[name]
            got = _metrics(M, chosen, model, x, maps, classes, regions, truth, keep, step)
            for metric, vals in got.items():
                for b, v in enumerate(vals):
                    rows[b]["results"].setdefault(name, {})[metric] = v
            bar.update(len(loaded))
        for row in rows:
            index.append(row)
    if bar is not None:
        bar.close()
    evaluated = methods.live()
    values, scored_images = _totals(out, evaluated, chosen)
    table = _table(evaluated, chosen, values)
    print(table)
    rows_out = [
        {"method": m, **{k: _mean(values.get((m, k))) for k in chosen}} for m in evaluated
    ]
    header = ["method", *chosen]
    csv = "\n".join([",".join(header)] + [
        ",".join([r["method"]] + ["" if r[k] is None else f"{r[k]:.6g}" for k in chosen])
        for r in rows_out
    ]) + "\n"
    empty = [k for k in chosen if all(values.get((m, k)) is None for m in evaluated)]
    summary = {
        "model": args.model, "metrics": chosen, "step": step, "full": bool(args.full),
        "higher_is_better": {k: EVAL_METRICS[k] for k in chosen}, "results": rows_out,
        "index": INDEX, "images": scored_images, "failed": index.counts["failed"],
        "method_errors": methods.failed, "skipped_methods": methods.skipped,
        "unscored_metrics": empty,
    }
    atomic_write(out / "evaluation.csv", csv.encode("utf-8"))
    atomic_write(out / "evaluation.json", json.dumps(summary, indent=2, ensure_ascii=False)
                 .encode("utf-8"))
    atomic_write(out / "evaluation.md", (table + "\n").encode("utf-8"))
    for k in empty:
        why = " (no image has an annotated box inside the model's crop)" \
            if k in BOX_METRICS else ""
        say(f"error: {k} was computed for no image{why}")
    if not scored_images or not evaluated:
        say("error: nothing was evaluated")
    failed = index.counts["failed"]
    say(f"evaluated {scored_images} image(s) with {len(evaluated)} method(s); tables in {out}"
        + (f"; {failed} failed (see {INDEX})" if failed else ""))
    scored = bool(scored_images) and bool(evaluated) and not empty
    return 1 if failed or methods.failed or not scored else 0


def _totals(out: Path, methods: Sequence[str], chosen: Sequence[str],
            ) -> tuple[dict[tuple[str, str], list[float]], int]:
    """(sum, count) per (method, metric) over the index's images, read line by line, and
    the number of images scored."""
    from ..runner._index import read_index

    totals: dict[tuple[str, str], list[float]] = {}
    images = 0
    for record in read_index(out):
        if "error" in record:
            continue
        images += 1
        for m in methods:
            for k in chosen:
                v = record["results"].get(m, {}).get(k)
                if v is not None:
                    total = totals.setdefault((m, k), [0.0, 0])
                    total[0] += v
                    total[1] += 1
    return totals, images


def parse_metrics(text: str, have_boxes: bool) -> list[str]:
    valid = list(EVAL_METRICS)
    key = text.strip().lower()
    if key in ("all", "quick"):  # quick: QUICK_METRICS; both: box metrics with boxes
        return [m for m in valid if (key == "all" or m in QUICK_METRICS or m in BOX_METRICS)
                and (have_boxes or m not in BOX_METRICS)]
    names = [t.strip().lower().replace("-", "_") for t in text.split(",") if t.strip()]
    if not names:
        raise CliError("--metric is empty; name metrics, 'quick' or 'all'")
    for n in names:
        if n not in EVAL_METRICS:
            raise CliError(str(unknown_choice("metric", n, valid + ["quick", "all"])))
        if n in BOX_METRICS and not have_boxes:
            raise CliError(f"{n} needs object boxes: pass --annotations FILE")
    return list(dict.fromkeys(names))


def _check_matches(annotations: dict[str, Any], files: Sequence[tuple[Path, str, str]]) -> None:
    """Annotations that name none of the images are a mistake, not an empty result; those
    that name no image are said (how many, which)."""
    from .._annotations import match_keys

    try:
        note = match_keys("annotations", annotations, {f[0].name for f in files}, "file name")
    except ValueError as err:
        raise CliError(str(err)) from None
    if note:
        say(note)


def _print_plan(model: torch.nn.Module, x: torch.Tensor, images: int, methods: int,
                chosen: Sequence[str], step: int, side: int, batch: int) -> None:
    """The metrics' forwards for the whole run and their estimated time, up front."""
    steps = math.ceil(side * side / step) + 1
    per_map = {"deletion": steps, "insertion": steps, "average_drop": 2, "increase": 0,
               "road_morf": ROAD_PERCENTILES, "road_lerf": ROAD_PERCENTILES}
    if "increase" in chosen and "average_drop" not in chosen:
        per_map["increase"] = 2
    forwards = images * methods * sum(per_map.get(k, 0) for k in chosen)
    with ModelGuard(model):
        per_forward = time_forward(model, x, min(max(batch, 8), 32))
    say(f"plan: {images} image(s) x {methods} method(s) x {len(chosen)} metric(s) "
        f"({', '.join(chosen)}): about {forwards:,} forwards, ~ {duration(forwards * per_forward)}"
        f" (deletion/insertion in steps of {step} pixels"
        + ("; ROAD adds its imputation" if any(k.startswith("road") for k in chosen) else "")
        + "). --full runs the full protocol")


def _regions(
    loaded: list[tuple[int, np.ndarray, torch.Tensor]], files: Sequence[tuple[Path, str, str]],
    annotations: dict[str, Any], preprocess: Any, run: Run, needed: bool,
) -> tuple[torch.Tensor | None, list[Any], torch.Tensor | None]:
    """Object masks and boxes in the model's input pixels, for the images that have them."""
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
            say(f"{files[i][1]}: {why}; left out of the box metrics")
            truth.append(None)
            continue
        for bx in boxes:
            masks[b, bx[1]:bx[3], bx[0]:bx[2]] = True
        truth.append((boxes, objects.label if objects is not None else None))
        keep[b] = True
    return masks, truth, keep


def _metrics(M: Any, chosen: Sequence[str], model: torch.nn.Module, x: torch.Tensor,
             maps: torch.Tensor, classes: torch.Tensor, regions: Any, truth: list[Any],
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
            got[metric] = _box_metric(M, metric, maps, classes, regions, truth, keep, b)
    return got


def _box_metric(M: Any, metric: str, maps: torch.Tensor, classes: torch.Tensor, regions: Any,
                truth: list[Any], keep: Any, b: int) -> list[float | None]:
    values: list[float | None] = [None] * b
    if keep is None or not bool(keep.any()):
        return values
    idx = keep.nonzero().flatten()
    kept = maps[idx].cpu()
    if metric == "pointing_game":
        got = (100 * M.pointing_game(kept, regions[idx]).float()).tolist()
    elif metric == "energy_pointing_game":
        got = (100 * M.energy_pointing_game(kept, regions[idx])).tolist()
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


def _mean(total: list[float] | None) -> float | None:
    """The mean of a (sum, count) total; None when nothing was scored."""
    return total[0] / total[1] if total and total[1] else None


def _table(methods: Sequence[str], chosen: Sequence[str],
           values: dict[tuple[str, str], list[float]]) -> str:
    arrows = {True: " (higher better)", False: " (lower better)"}
    head = "| method | " + " | ".join(f"{m}{arrows[EVAL_METRICS[m]]}" for m in chosen) + " |"
    lines = [head, "|---|" + "---:|" * len(chosen)]
    for m in methods:
        cells = []
        for k in chosen:
            v = _mean(values.get((m, k)))
            cells.append("n/a" if v is None else f"{v:.3f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


