"""``camlens explain``: overlays, grids, raw maps and ``summary.json`` for every image."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .._errors import unknown_choice
from .._explainer import compare
from ._common import (
    CliError,
    Methods,
    Run,
    collect,
    decode,
    inside,
    load,
    output_folder,
    output_names,
    parse_methods,
    parse_target,
    print_plan,
    probabilities,
    say,
    show_progress,
    small_image_note,
)


@dataclass
class Job:
    """The settings of one ``explain`` run, shared by its batches."""

    args: argparse.Namespace
    files: Sequence[tuple[Path, str, str]]
    names: Sequence[str]
    out: Path
    model: torch.nn.Module
    preprocess: Any
    labels: Sequence[str]
    target: Any
    layer: Any
    device: torch.device
    max_pixels: int
    methods: Methods
    show: bool = False
    planned: bool = False
    layer_names: list[str] = field(default_factory=list)


def cmd_explain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..viz import DEFAULT_MAX_PIXELS, atomic_write, available_colormaps

    methods = parse_methods(args.method, args.option)
    if args.colormap not in available_colormaps():
        raise CliError(str(unknown_choice("colormap", args.colormap, available_colormaps())))
    if not 0 <= args.alpha <= 1:
        raise CliError(f"--alpha must be in [0, 1], got {args.alpha}")
    if not 0 <= args.threshold <= 1:
        raise CliError(f"--threshold must be in [0, 1], got {args.threshold}")
    out = output_folder(args.out)
    run = Run()
    files = collect(args.paths, run)
    model, preprocess, labels, layer, device = load(args)
    target = parse_target(args.target, labels)
    job = Job(args, files, output_names(files), out, model, preprocess, labels, target, layer,
              device, args.max_pixels or DEFAULT_MAX_PIXELS, methods,
              show=show_progress(args.progress))
    # Pictures are encoded and written by two threads while the model runs the next batch.
    pool = ThreadPoolExecutor(max_workers=2)
    pending: list[tuple[int, Future[dict[str, Any]]]] = []
    bar = tqdm(total=len(files), unit="img", desc="camlens explain", disable=not job.show,
               leave=False)
    try:
        for start in range(0, len(files), args.batch_size):
            chunk = range(start, min(start + args.batch_size, len(files)))
            pending += _explain_batch(job, chunk, run, pool)
            while len(pending) > 4 * args.batch_size:  # bound the pictures held in memory
                _collect_result(pending.pop(0), files, run)
            bar.update(len(chunk))
    finally:
        bar.close()
        while pending:
            _collect_result(pending.pop(0), files, run)
        pool.shutdown()
    run.images.sort(key=lambda e: e["file"])
    summary = {
        "camlens": __version__,
        "model": args.model,
        "layer": job.layer_names,
        "methods": methods.live(),
        "target": args.target,
        "counterfactual": bool(args.counterfactual),
        "images": run.images,
        "errors": run.errors,
        "method_errors": methods.failed,
        "skipped_methods": methods.skipped,
    }
    atomic_write(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False)
                 .encode("utf-8"))
    say(f"explained {len(run.images)} image(s) into {out}"
        + (f"; {len(run.errors)} failed" if run.errors else ""))
    return 1 if run.errors or methods.failed else 0


def _collect_result(item: tuple[int, Future[dict[str, Any]]],
                    files: Sequence[tuple[Path, str, str]], run: Run) -> None:
    index, future = item
    try:
        run.images.append(future.result())
    except (OSError, ValueError) as err:  # a failed write: report the image, go on
        run.fail(files[index][1], f"could not write its outputs: {err}")


def _explain_batch(
    job: Job, chunk: range, run: Run, pool: ThreadPoolExecutor
) -> list[tuple[int, Future[dict[str, Any]]]]:
    """Decode, preprocess and explain one batch; queue the writing of its pictures."""
    loaded = decode(job.files, chunk, job.preprocess, job.max_pixels, run)
    methods = job.methods.live()
    if not loaded or not methods:
        return []
    x = torch.stack([t for _, _, t in loaded]).to(job.device)

    def plan(rows: list[Any]) -> None:
        if not job.planned:
            job.planned = True
            print_plan(rows, len(loaded), len(job.files))

    try:
        result = compare(job.model, x, methods, job.layer, job.target,
                         counterfactual=job.args.counterfactual, errors="keep",
                         batch_size=max(job.args.batch_size, 32), progress=job.show, plan=plan,
                         options=job.methods.options_for(methods))
    except ValueError as err:  # the pass itself failed (e.g. NaN scores): this batch only
        for i, _, _ in loaded:
            run.fail(job.files[i][1], str(err))
        return []
    job.layer_names[:] = result.layer_names or job.layer_names
    job.methods.record(result)
    return [(item["index"], pool.submit(_render, job, item))
            for item in _prepare_batch(job, loaded, result)]


def _prepare_batch(
    job: Job, loaded: list[tuple[int, np.ndarray, torch.Tensor]], result: Any
) -> list[dict[str, Any]]:
    """Everything torch computes for a batch, moved to numpy: one item per image."""
    from .._derive import boxes

    probs = probabilities(result.output)
    good = {k: v for k, v in result.items() if not isinstance(v, Exception)}
    items = []
    for b, (i, rgb, _) in enumerate(loaded):
        maps = {}
        for method, m in good.items():
            m = m[b][None] if m[b].ndim == 2 else m[b]  # (K, H, W)
            empty = (m.flatten(1).amax(1) <= 0).tolist()
            maps[method] = (m.cpu().numpy(), boxes(m, job.args.threshold).tolist(),
                            m.flatten(1).argmax(1).tolist(), empty)
        items.append({
            "index": i,
            "rgb": rgb,
            "crop": job.preprocess.crop_box(*rgb.shape[:2]),
            "probs": probs[b].numpy() if probs is not None else None,
            "classes": result.classes[b].tolist() if result.classes is not None else [None],
            "maps": maps,
            "note": small_image_note(rgb, job.preprocess),
        })
    return items


def _render(job: Job, item: dict[str, Any]) -> dict[str, Any]:
    """Overlays, raw maps and the grid of one image, each written atomically; its summary."""
    from ..viz import atomic_write, compose_grid, compose_rows, overlay

    args, labels = job.args, job.labels
    i, rgb, probs, cls = item["index"], item["rgb"], item["probs"], item["classes"]
    name, shown = job.names[i], job.files[i][1]
    x0, y0, x1, y1 = item["crop"]
    crop = rgb[y0:y1, x0:x1]
    size = job.preprocess.crop
    sx, sy = (x1 - x0) / size, (y1 - y0) / size
    top = np.argsort(-probs)[:5] if probs is not None else []
    entry: dict[str, Any] = {
        "file": shown,
        "size": [rgb.shape[1], rgb.shape[0]],
        "crop": [x0, y0, x1, y1],
        "predictions": [
            {"class": int(c), "name": labels[int(c)], "probability": round(float(probs[c]), 6)}
            for c in top
        ],
        "targets": [
            {"class": c, "name": labels[c] if c is not None else None,
             "probability": round(float(probs[c]), 6) if c is not None and probs is not None
             else None}
            for c in cls
        ],
        "maps": {},
        "notes": [],
    }
    if item["note"]:
        entry["notes"].append(item["note"])
        say(f"{shown}: {item['note']}")
    rows: list[tuple[list[np.ndarray], list[str]]] = [([], []) for _ in cls]
    for method, (m, bx, peaks, empty) in item["maps"].items():
        records = []
        for k in range(m.shape[0]):
            suffix = "" if m.shape[0] == 1 else f"_top{k + 1}"
            png = inside(job.out, f"{name}_{method}{suffix}.png")
            picture = overlay(crop, m[k], args.alpha, args.colormap)
            picture.save(png)
            record: dict[str, Any] = {"overlay": png.name, "class": cls[k]}
            if empty[k]:
                record.update(peak=None, box=None, empty=True)
                what = f"class {labels[cls[k]]!r}" if cls[k] is not None else "the target"
                side = "against" if args.counterfactual else "for"
                say(f"{shown}: the {method} map of {what} is empty (all zero: nothing in the "
                    f"image argues {side} it at this layer); no peak or box")
            else:
                py, px = divmod(int(peaks[k]), m.shape[-1])
                record.update(
                    peak=[round(x0 + (px + 0.5) * sx), round(y0 + (py + 0.5) * sy)],
                    box=[round(x0 + bx[k][0] * sx), round(y0 + bx[k][1] * sy),
                         round(x0 + bx[k][2] * sx), round(y0 + bx[k][3] * sy)],
                    empty=False,
                )
            records.append(record)
            rows[k][0].append(picture)
            rows[k][1].append(_title(method, cls[k], labels, probs, args.counterfactual,
                                     empty[k]))
        npy = inside(job.out, f"{name}_{method}.npy")
        buf = io.BytesIO()
        np.save(buf, (m[0] if m.shape[0] == 1 else m).astype(np.float32))
        atomic_write(npy, buf.getvalue())
        entry["maps"][method] = {"npy": npy.name, "targets": records}
    entry["grids"] = []
    if rows and rows[0][0]:
        path = inside(job.out, f"{name}_grid.png")
        if len(rows) == 1:
            compose_grid(crop, rows[0][0], rows[0][1]).save(path)
        else:  # one row per class: the image labelled with the class, then the methods
            heads = [_row_title(k, c, labels, probs) for k, c in enumerate(cls)]
            compose_rows(crop, [(heads[k], pics, titles)
                                for k, (pics, titles) in enumerate(rows)]).save(path)
        entry["grids"].append(path.name)
    return entry


def _title(method: str, cls: Any, labels: Sequence[str], probs: Any, counter: bool,
           empty: bool = False) -> str:
    mark = " (empty)" if empty else ""
    if cls is None:
        return method + mark
    label = labels[cls]
    p = f" {float(probs[cls]):.1%}" if probs is not None else ""
    return f"{method}{' (against)' if counter else ''}: {label}{p}{mark}"


def _row_title(k: int, cls: Any, labels: Sequence[str], probs: Any) -> str:
    if cls is None:
        return f"target {k + 1}"
    p = f" {float(probs[cls]):.1%}" if probs is not None else ""
    return f"top {k + 1}: {labels[cls]}{p}"
