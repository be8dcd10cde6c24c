"""The ``camlens`` command: explain images, run the demo, list methods and models."""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from ._errors import closest, unknown_choice
from ._explainer import compare
from ._layers import resolve_layers
from ._registry import available_methods, describe
from .models import DEFAULT_MODEL, available_models, load_model
from .targets import TopK

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
DEMO_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
DEMO_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam")
# metric name -> True where higher is better
EVAL_METRICS = {
    "deletion": False, "insertion": True, "average_drop": False, "increase": True,
    "road_morf": False, "road_lerf": True, "pointing_game": True,
    "energy_pointing_game": True, "localization_error": False,
}
BOX_METRICS = ("pointing_game", "energy_pointing_game", "localization_error")
class CliError(Exception):
    """A usage problem: printed as one line, exit code 2."""


@dataclass
class Run:
    """What an ``explain`` run did: for the summary and the exit code."""

    images: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)

    def fail(self, name: str, reason: str) -> None:
        self.errors.append({"file": name, "error": reason})
        print(f"camlens: skipped {name}: {reason}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``camlens`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except CliError as err:
        print(f"camlens: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("camlens: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="camlens", description="Where does a vision model look?")
    p.add_argument("--version", action="version", version=f"camlens {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    e = sub.add_parser("explain", help="explain images: overlays, grids, raw maps, summary.json")
    e.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR")
    _model_options(e)
    e.add_argument("--method", default="gradcam",
                   help="comma-separated method names, or 'all' (default: gradcam)")
    e.add_argument("--layer", default=None, help="layer name (default: picked automatically)")
    e.add_argument("--target", default="top1",
                   help="top1, topK (e.g. top5), a class id or a class name (default: top1)")
    e.add_argument("--counterfactual", action="store_true",
                   help="negated gradients: what argues against the class")
    e.add_argument("--out", default="camlens-out", help="output folder (default: camlens-out)")
    _picture_options(e)
    e.set_defaults(func=_cmd_explain)

    d = sub.add_parser("demo", help="explain the photos that ship with scikit-image")
    d.add_argument("--out", default="camlens-demo", help="output folder (default: camlens-demo)")
    d.add_argument("--method", default=",".join(DEMO_METHODS))
    _model_options(d)
    _picture_options(d)
    d.set_defaults(func=_cmd_demo, target="top1", layer=None, counterfactual=False)

    ev = sub.add_parser("evaluate", help="score every method's maps: a methods x metrics table")
    ev.add_argument("paths", nargs="+", metavar="IMAGES")
    _model_options(ev)
    ev.add_argument("--method", default="all", help="comma-separated method names, or 'all'")
    ev.add_argument("--metric", default="all",
                    help=f"comma-separated, or 'all' (all but ROAD): {', '.join(EVAL_METRICS)}")
    ev.add_argument("--annotations", default=None,
                    help="boxes: COCO JSON, a folder of Pascal VOC XML, or {file: boxes} JSON")
    ev.add_argument("--layer", default=None, help="layer name (default: picked automatically)")
    ev.add_argument("--step", type=_positive, default=None,
                    help="deletion/insertion: pixels per step (default: 1 %% of the image)")
    ev.add_argument("--out", default="camlens-eval", help="output folder (default: camlens-eval)")
    ev.add_argument("--max-pixels", type=_positive, default=None)
    ev.add_argument("--progress", choices=["auto", "always", "never"], default="auto")
    ev.set_defaults(func=_cmd_evaluate)

    m = sub.add_parser("methods", help="list the methods")
    m.set_defaults(func=_cmd_methods)
    mo = sub.add_parser("models", help="list the model specs")
    mo.set_defaults(func=_cmd_models)
    return p


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model spec (default: {DEFAULT_MODEL})")
    p.add_argument("--weights", default=None, help="state dict file for the architecture")
    p.add_argument("--trust-model", action="store_true",
                   help="allow loading a fully pickled model file (runs code from the file)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--batch-size", type=_positive, default=8)


def _picture_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity (default 0.5)")
    p.add_argument("--colormap", default="jet", help="jet, turbo, viridis, inferno, ...")
    p.add_argument("--threshold", type=float, default=0.2,
                   help="box threshold, fraction of the map's maximum (default 0.2)")
    p.add_argument("--max-pixels", type=_positive, default=None,
                   help="refuse images with more pixels (default 64 million)")
    p.add_argument("--progress", choices=["auto", "always", "never"], default="auto")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def _cmd_methods(args: argparse.Namespace) -> int:
    width = max(len(n) for n in available_methods())
    for name in available_methods():
        print(f"{name:<{width}}  {describe(name)}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    for spec, text in available_models():
        print(f"{spec:<22}  {text}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from skimage import data
    except ImportError:
        raise CliError(
            "the demo photos come from scikit-image: pip install 'camlens[demo]'"
        ) from None
    from .viz import save_image

    out = Path(args.out)
    folder = out / "images"
    for name in DEMO_PHOTOS:
        save_image(getattr(data, name)(), folder / f"{name}.png")
    args.paths = [str(folder)]
    code = _cmd_explain(args)
    grids = sorted(out.glob("*_grid.png"))
    print(f"explained {len(DEMO_PHOTOS)} photos with {args.method}")
    for g in grids:
        print(f"  {g}")
    print(f"summary: {out / 'summary.json'}")
    return code


# ---------------------------------------------------------------- explain
def _cmd_explain(args: argparse.Namespace) -> int:
    from .viz import DEFAULT_MAX_PIXELS, atomic_write, available_colormaps

    methods = _parse_methods(args.method)
    if args.colormap not in available_colormaps():
        raise CliError(str(unknown_choice("colormap", args.colormap, available_colormaps())))
    if not 0 <= args.alpha <= 1:
        raise CliError(f"--alpha must be in [0, 1], got {args.alpha}")
    if not 0 <= args.threshold <= 1:
        raise CliError(f"--threshold must be in [0, 1], got {args.threshold}")
    run = Run()
    files = _collect(args.paths, run)
    model, preprocess, labels, layer, device = _load(args)
    target = _parse_target(args.target, labels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    job = Job(args, files, _output_names(files), out, model, preprocess, labels, target, layer,
              device, args.max_pixels or DEFAULT_MAX_PIXELS, methods)
    show = args.progress == "always" or (
        args.progress == "auto" and len(files) > 4 and sys.stderr.isatty()
    )
    job.show = show
    method_errors: dict[str, str] = {}
    layer_names: list[str] = []
    # Pictures are encoded and written by two threads while the model runs the next batch.
    pool = ThreadPoolExecutor(max_workers=2)
    pending: list[tuple[int, Future[dict[str, Any]]]] = []
    try:
        for start in range(0, len(files), args.batch_size):
            chunk = range(start, min(start + args.batch_size, len(files)))
            pending += _explain_batch(job, chunk, run, method_errors, layer_names, pool)
            while len(pending) > 4 * args.batch_size:  # bound the pictures held in memory
                _collect_result(pending.pop(0), files, run)
            if show:
                _progress(start + len(chunk), len(files), job.started)
    finally:
        while pending:
            _collect_result(pending.pop(0), files, run)
        pool.shutdown()
    run.images.sort(key=lambda e: e["file"])
    summary = {
        "camlens": __version__,
        "model": args.model,
        "layer": layer_names,
        "methods": methods,
        "target": args.target,
        "counterfactual": bool(args.counterfactual),
        "images": run.images,
        "errors": run.errors,
        "method_errors": method_errors,
    }
    atomic_write(out / "summary.json", json.dumps(summary, indent=2).encode("utf-8"))
    print(f"camlens: explained {len(run.images)} image(s) into {out}"
          + (f"; {len(run.errors)} failed" if run.errors else ""), file=sys.stderr)
    return 1 if run.errors or method_errors else 0


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
    methods: list[str]
    show: bool = False
    started: float = field(default_factory=time.perf_counter)


def _progress(done: int, total: int, started: float) -> None:
    rate = done / max(time.perf_counter() - started, 1e-9)
    filled = int(30 * done / max(total, 1))
    bar = "#" * filled + "-" * (30 - filled)
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r[{bar}] {done}/{total} images  {rate:.1f} img/s{end}")
    sys.stderr.flush()


def _collect_result(item: tuple[int, Future[dict[str, Any]]],
                    files: Sequence[tuple[Path, str, str]], run: Run) -> None:
    index, future = item
    try:
        run.images.append(future.result())
    except (OSError, ValueError) as err:  # a failed write: report the image, go on
        run.fail(files[index][1], f"could not write its outputs: {err}")


def _explain_batch(
    job: Job,
    chunk: range,
    run: Run,
    method_errors: dict[str, str],
    layer_names: list[str],
    pool: ThreadPoolExecutor,
) -> list[tuple[int, Future[dict[str, Any]]]]:
    """Decode, preprocess and explain one batch; queue the writing of its pictures."""
    from .viz import ImageError, load_image

    loaded = []
    for i in chunk:
        path, shown, _ = job.files[i]
        try:
            rgb = load_image(path, max_pixels=job.max_pixels)
            loaded.append((i, rgb, job.preprocess(rgb)))
        except ImageError as err:
            run.fail(shown, str(err).removeprefix(f"{path}: "))
        except (OSError, ValueError) as err:
            run.fail(shown, f"{type(err).__name__}: {err}")
    if not loaded:
        return []
    x = torch.stack([t for _, _, t in loaded]).to(job.device)
    result = compare(job.model, x, job.methods, job.layer, job.target,
                     counterfactual=job.args.counterfactual, errors="keep",
                     batch_size=max(job.args.batch_size, 32), progress=job.show)
    layer_names[:] = result.layer_names
    for name, value in result.items():
        if isinstance(value, Exception) and name not in method_errors:
            method_errors[name] = str(value)
            print(f"camlens: method {name} failed: {value}", file=sys.stderr)
    return [(item["index"], pool.submit(_render, job, item))
            for item in _prepare_batch(job, loaded, result)]


def _prepare_batch(
    job: Job, loaded: list[tuple[int, np.ndarray, torch.Tensor]], result: Any
) -> list[dict[str, Any]]:
    """Everything torch computes for a batch, moved to numpy: one item per image."""
    from ._derive import boxes

    probs = _probabilities(result.output)
    good = {k: v for k, v in result.items() if not isinstance(v, Exception)}
    items = []
    for b, (i, rgb, _) in enumerate(loaded):
        maps = {}
        for method, m in good.items():
            m = m[b][None] if m[b].ndim == 2 else m[b]  # (K, H, W)
            maps[method] = (m.cpu().numpy(), boxes(m, job.args.threshold).tolist(),
                            m.flatten(1).argmax(1).tolist())
        items.append({
            "index": i,
            "rgb": rgb,
            "crop": job.preprocess.crop_box(*rgb.shape[:2]),
            "probs": probs[b].numpy() if probs is not None else None,
            "classes": result.classes[b].tolist() if result.classes is not None else [None],
            "maps": maps,
        })
    return items


def _render(job: Job, item: dict[str, Any]) -> dict[str, Any]:
    """Overlays, raw maps and grids of one image, each written atomically; its summary."""
    from .viz import atomic_write, compose_grid, overlay

    args, labels = job.args, job.labels
    i, rgb, probs, cls = item["index"], item["rgb"], item["probs"], item["classes"]
    name = job.names[i]
    x0, y0, x1, y1 = item["crop"]
    crop = rgb[y0:y1, x0:x1]
    size = job.preprocess.crop
    sx, sy = (x1 - x0) / size, (y1 - y0) / size
    top = np.argsort(-probs)[:5] if probs is not None else []
    entry: dict[str, Any] = {
        "file": job.files[i][1],
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
    }
    panels: list[tuple[list[np.ndarray], list[str]]] = [([], []) for _ in cls]
    for method, (m, bx, peaks) in item["maps"].items():
        records = []
        for k in range(m.shape[0]):
            suffix = "" if m.shape[0] == 1 else f"_top{k + 1}"
            png = _inside(job.out, f"{name}_{method}{suffix}.png")
            picture = overlay(crop, m[k], args.alpha, args.colormap)
            picture.save(png)
            py, px = divmod(int(peaks[k]), m.shape[-1])
            records.append({
                "overlay": png.name,
                "class": cls[k],
                "peak": [round(x0 + (px + 0.5) * sx), round(y0 + (py + 0.5) * sy)],
                "box": [round(x0 + bx[k][0] * sx), round(y0 + bx[k][1] * sy),
                        round(x0 + bx[k][2] * sx), round(y0 + bx[k][3] * sy)],
            })
            panels[k][0].append(picture)
            panels[k][1].append(_title(method, cls[k], labels, probs, args.counterfactual))
        npy = _inside(job.out, f"{name}_{method}.npy")
        buf = io.BytesIO()
        np.save(buf, (m[0] if m.shape[0] == 1 else m).astype(np.float32))
        atomic_write(npy, buf.getvalue())
        entry["maps"][method] = {"npy": npy.name, "targets": records}
    grids = []
    for k, (pictures, titles) in enumerate(panels):
        if not pictures:
            continue
        suffix = "" if len(panels) == 1 else f"_top{k + 1}"
        path = _inside(job.out, f"{name}_grid{suffix}.png")
        compose_grid(crop, pictures, titles).save(path)
        grids.append(path.name)
    entry["grids"] = grids
    return entry


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import metrics as M
    from ._annotations import load_annotations
    from .viz import DEFAULT_MAX_PIXELS, ImageError, atomic_write, load_image

    methods = _parse_methods(args.method)
    chosen = _parse_metrics(args.metric, args.annotations is not None)
    annotations = {}
    if args.annotations:
        try:
            annotations = load_annotations(args.annotations)
        except ValueError as err:
            raise CliError(str(err)) from None
    run = Run()
    files = _collect(args.paths, run)
    model, preprocess, labels, layer, device = _load(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    show = args.progress == "always" or (
        args.progress == "auto" and len(files) > 4 and sys.stderr.isatty()
    )
    values: dict[tuple[str, str], list[float]] = {}
    method_errors: dict[str, str] = {}
    started = time.perf_counter()
    for start in range(0, len(files), args.batch_size):
        chunk = range(start, min(start + args.batch_size, len(files)))
        loaded = []
        for i in chunk:
            path, shown, _ = files[i]
            try:
                rgb = load_image(path, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
                loaded.append((i, rgb, preprocess(rgb)))
            except ImageError as err:
                run.fail(shown, str(err).removeprefix(f"{path}: "))
        if loaded:
            x = torch.stack([t for _, _, t in loaded]).to(device)
            result = compare(model, x, methods, layer, None, errors="keep",
                             batch_size=max(args.batch_size, 32))
            classes = result.classes[:, 0]
            regions, truth, keep = _regions(loaded, files, annotations, preprocess, run,
                                            bool(set(chosen) & set(BOX_METRICS)))
            for name, maps in result.items():
                if isinstance(maps, Exception):
                    method_errors.setdefault(name, str(maps))
                    continue
                for metric in chosen:
                    got = _metric(M, metric, model, x, maps, classes, regions, truth, keep,
                                  args.step)
                    values.setdefault((name, metric), []).extend(got)
            run.images += [{"file": files[i][1]} for i, _, _ in loaded]
        if show:
            _progress(start + len(chunk), len(files), started)
    for name, err in method_errors.items():
        print(f"camlens: method {name} failed: {err}", file=sys.stderr)
    table = _table(methods, chosen, values)
    print(table)
    rows = [
        {"method": m, **{k: _mean(values.get((m, k))) for k in chosen}} for m in methods
    ]
    header = ["method", *chosen]
    csv = "\n".join([",".join(header)] + [
        ",".join([r["method"]] + ["" if r[k] is None else f"{r[k]:.6g}" for k in chosen])
        for r in rows
    ]) + "\n"
    atomic_write(out / "evaluation.csv", csv.encode("utf-8"))
    summary = {"model": args.model, "metrics": chosen, "higher_is_better":
               {k: EVAL_METRICS[k] for k in chosen}, "results": rows,
               "images": len(run.images), "errors": run.errors, "method_errors": method_errors}
    atomic_write(out / "evaluation.json", json.dumps(summary, indent=2).encode("utf-8"))
    atomic_write(out / "evaluation.md", (table + "\n").encode("utf-8"))
    print(f"camlens: evaluated {len(run.images)} image(s); tables in {out}"
          + (f"; {len(run.errors)} failed" if run.errors else ""), file=sys.stderr)
    return 1 if run.errors or method_errors else 0


def _load(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, list[str], Any, torch.device]:
    """The model, its preprocessing and labels, the checked layer and the device."""
    try:
        model, preprocess, labels = load_model(args.model, args.weights, trust=args.trust_model)
    except (ValueError, ImportError, TypeError) as err:
        raise CliError(str(err)) from None
    if args.layer:
        try:
            resolve_layers(model, args.layer)
        except ValueError as err:
            raise CliError(str(err)) from None
    device = _device(args.device)
    model.to(device)
    return model, preprocess, labels, args.layer or "auto", device


def _parse_metrics(text: str, have_boxes: bool) -> list[str]:
    valid = list(EVAL_METRICS)
    if text.strip().lower() == "all":
        return [m for m in valid
                if have_boxes or m not in BOX_METRICS]
    names = [t.strip().lower().replace("-", "_") for t in text.split(",") if t.strip()]
    for n in names:
        if n not in EVAL_METRICS:
            raise CliError(str(unknown_choice("metric", n, valid)))
        if n in BOX_METRICS and not have_boxes:
            raise CliError(f"{n} needs object boxes: pass --annotations FILE")
    return list(dict.fromkeys(names))


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
            print(f"camlens: {files[i][1]}: {why}; left out of the box metrics", file=sys.stderr)
            truth.append(None)
            continue
        for bx in boxes:
            masks[b, bx[1]:bx[3], bx[0]:bx[2]] = True
        truth.append((boxes, objects.label if objects is not None else None))
        keep[b] = True
    return masks, truth, keep


def _metric(M: Any, metric: str, model: torch.nn.Module, x: torch.Tensor, maps: torch.Tensor,
            classes: torch.Tensor, regions: Any, truth: list[Any], keep: Any,
            step: int | None = None) -> list[float]:
    """Per-image values of one metric (in %, where the metric is a rate)."""
    target = classes.tolist()
    if metric in ("deletion", "insertion"):
        return getattr(M, metric)(model, x, maps, target, step=step).tolist()
    if metric in ("average_drop", "increase"):
        change = M.confidence_change(model, x, maps, target)
        per_image = change.drop if metric == "average_drop" else 100 * change.increased.float()
        return per_image.tolist()
    if metric.startswith("road"):
        return M.road(model, x, maps, target, order=metric[5:]).mean(1).tolist()
    if keep is None or not bool(keep.any()):
        return []
    idx = keep.nonzero().flatten()
    kept = maps[idx].cpu()
    if metric == "pointing_game":
        return (100 * M.pointing_game(kept, regions[idx]).float()).tolist()
    if metric == "energy_pointing_game":
        return (100 * M.energy_pointing_game(kept, regions[idx])).tolist()
    found = M.derive_boxes(kept, 0.2)
    out = []
    for j, b in enumerate(idx.tolist()):
        boxes, label = truth[b]
        best = max(float(M.box_iou(found[j : j + 1], torch.tensor([bx]))[0]) for bx in boxes)
        wrong = (label is not None and int(classes[b]) != label) or best < 0.5
        out.append(100.0 * wrong)
    return out


def _mean(vals: list[float] | None) -> float | None:
    return float(np.mean(vals)) if vals else None


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


def _parse_methods(text: str) -> list[str]:
    if text.strip().lower() == "all":
        return available_methods()
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise CliError("--method is empty; see `camlens methods`")
    valid = available_methods()
    out = []
    for n in names:
        key = n.lower().replace("_", "-")
        if key not in valid:
            raise CliError(str(unknown_choice("method", n, valid, "See `camlens methods`")))
        out.append(key)
    return list(dict.fromkeys(out))


def _parse_target(text: str, labels: Sequence[str]) -> Any:
    t = text.strip()
    m = re.fullmatch(r"top(\d+)", t.lower())
    if m:
        k = int(m.group(1))
        if not 1 <= k <= len(labels):
            raise CliError(f"--target {t}: k must be between 1 and {len(labels)}")
        return None if k == 1 else TopK(k)
    if re.fullmatch(r"\d+", t):
        idx = int(t)
        if idx >= len(labels):
            raise CliError(f"--target {idx} is out of range: the model has {len(labels)} classes")
        return idx
    norm = [lab.lower().replace("_", " ") for lab in labels]
    key = t.lower().replace("_", " ")
    if key in norm:
        return norm.index(key)
    near = closest(t, labels, n=5)
    raise CliError(
        f"unknown class name {t!r}; closest: {', '.join(repr(n) for n in near)} "
        "(or use top1, top5 or a class id)"
    )


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA device is available; use --device cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise CliError("--device mps: MPS is not available; use --device cpu")
    return torch.device(name)


def _collect(paths: Sequence[str], run: Run) -> list[tuple[Path, str, str]]:
    """(file, display name, name relative to its folder argument) for every image.

    Folders are walked recursively for files with an image suffix; a file named on the
    command line is always tried (and reported if it is not an image).
    """
    files: list[tuple[Path, str, str]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                looked = ", ".join(IMAGE_SUFFIXES)
                run.fail(raw, f"no image files in this folder (looked for {looked})")
            files += [(f, str(f), str(f.relative_to(p).with_suffix(""))) for f in found]
        elif p.exists():
            files.append((p, raw, p.stem))
        else:
            run.fail(raw, "no such file or directory")
    return files


def _output_names(files: Sequence[tuple[Path, str, str]]) -> list[str]:
    """A safe, unique file stem per image: letters, digits, '.', '_' and '-' only;
    sub-folders become ``__`` so that nothing is written outside the output folder."""
    taken: set[str] = set()
    names = []
    for _, _, rel in files:
        stem = "__".join(part for part in Path(rel).parts if part not in ("/", "..", "."))
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip(".")[-120:] or "image"
        candidate, n = stem, 2
        while candidate in taken:
            candidate, n = f"{stem}-{n}", n + 1
        taken.add(candidate)
        names.append(candidate)
    return names


def _inside(out: Path, name: str) -> Path:
    target = (out / name).resolve()
    if not target.is_relative_to(out.resolve()):
        raise CliError(f"refusing to write {target}: outside the output folder {out}")
    return target


def _probabilities(output: Any) -> torch.Tensor | None:
    from .targets import find_logits

    try:
        logits = find_logits(output)
    except (TypeError, ValueError):
        return None
    return torch.softmax(logits.float(), dim=1).cpu()


def _title(method: str, cls: Any, labels: Sequence[str], probs: Any, counter: bool) -> str:
    if cls is None:
        return method
    label = labels[cls]
    p = f" {float(probs[cls]):.1%}" if probs is not None else ""
    return f"{method}{' (against)' if counter else ''}: {label}{p}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
