"""Weak labels on digit canvases: pseudo-label masks and weak boxes from CAM methods, scored.

The weakly supervised segmentation recipe (CAM "seeds"): a classifier trained with image
labels only, each labelled class's map divided by its maximum, a constant background
score, argmax per pixel. Here everything has a known answer: 48 x 48 canvases of grey noise
hold one to three digits of different classes (scikit-learn's 8 x 8 digits upscaled 2x to
16 x 16), the true masks are the digits' ink pixels (VOC convention: class + 1, 0
background) and the true boxes are known. A GAP CNN (``examples/_digits.py``: five
conv-BN-ReLU blocks, two of stride 2, global average pooling, one linear layer; CAM
applies) is trained for multi-label classification (sigmoid + BCE) on training canvases
and explained on held-out canvases whose digit images it never saw.

For every registered method that is not heavy (and applies), on the layer ``features``
(12 x 12, upsampled to 48 x 48):

- pseudo-label masks with :func:`camlens.labels.pseudo_masks`, scored by
  :func:`camlens.metrics.miou` (one confusion matrix over all test canvases, 11 classes
  with the background), over a sweep of the background threshold; classes from the
  annotations (the usual setting for VOC seeds) and from the model (sigmoid > 0.5);
- MaxBoxAccV2 (:func:`camlens.metrics.max_box_acc`) of each (canvas, true class) map
  against that digit's box;
- an end-to-end check: ``camlens.labels.make_labels`` (what ``camlens labels`` runs) on the
  canvases saved as PNG files, with the annotations as a JSON file and the true masks as
  VOC PNGs, must give the same mIoU as the in-memory computation.

Writes ``weak_labels_digits.png`` (canvas | true mask | pseudo masks) and
``weak_labels_digits.md`` (the tables) into ``--out`` and prints the tables.

Run: ``python examples/weak_labels_digits.py [--out DIR] [--seed 0] [--quick]`` (default
``docs/images``; about 8 minutes on one CPU thread, ``--quick`` under a minute).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _digits import GapCNN, canvases, fit, predict, split_digits  # noqa: E402

import camlens  # noqa: E402
from camlens import metrics  # noqa: E402
from camlens.labels import ClassSet, make_labels, pseudo_masks, save_voc_png, voc_palette  # noqa: E402
from camlens.models import preprocessing  # noqa: E402

LAYER = "features"
SIZE = 48  # canvas side; digits are 16 px (the last layer's receptive field is 21 px)
SCALE = (2, 2)
SWEEP = (0.05, 0.10, 0.15, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80)
DEFAULT_BG = 0.15
SHOWN = ("cam", "gradcam++", "layercam", "scorecam", "guided-gradcam", "eigencam", "randomcam")
CHECKED = "cam,gradcam,layercam"  # methods run again end to end through make_labels


def cheap_methods() -> list[str]:
    """Every registered method that is not heavy (thousands of forwards per image)."""
    from camlens._registry import method_class

    return [m for m in camlens.available_methods() if not method_class(m).heavy]


def explain_all(model: torch.nn.Module, x: torch.Tensor, present: np.ndarray,
                predicted: np.ndarray, methods: list[str], batch: int = 50,
                ) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
    """Per method: pseudo masks at each background threshold (annotated classes), at the
    default threshold with predicted classes, and the maps of each (canvas, true class).
    Each canvas's maps are computed for the classes it has or is predicted to have, in one
    pass (``ClassSet`` with a row of classes per canvas), and put on a ten-class axis."""
    found: dict[str, Any] = {}
    refused: dict[str, str] = {}
    seconds: dict[str, float] = {m: 0.0 for m in methods}
    wanted = present | predicted
    width = max(1, int(wanted.sum(1).max()))
    rows = [list(np.flatnonzero(w)) or [0] for w in wanted]
    index = torch.tensor([r + [r[0]] * (width - len(r)) for r in rows])  # padded: repeats
    for method in methods:  # one method at a time: its time is its own
        parts: dict[str, list[Any]] = {"sweep": [], "predicted": [], "pairs": []}
        for start in range(0, len(x), batch):
            xb, ib = x[start:start + batch], index[start:start + batch]
            t0 = time.perf_counter()
            result = camlens.compare(model, xb, [method], LAYER, ClassSet(ib),
                                     normalize=False, errors="keep", batch_size=128)
            seconds[method] += time.perf_counter() - t0
            maps = result[method]
            if isinstance(maps, Exception):
                refused[method] = str(maps)
                break
            full = torch.zeros(len(xb), 10, *maps.shape[-2:], dtype=torch.float64)
            full.scatter_(1, ib[:, :, None, None].expand(-1, -1, *maps.shape[-2:]),
                          maps.double())  # a padded repeat writes the same map again
            have = torch.from_numpy(present[start:start + batch])
            parts["sweep"].append(np.stack([pseudo_masks(full, have, t) for t in SWEEP]))
            parts["predicted"].append(pseudo_masks(
                full, torch.from_numpy(predicted[start:start + batch]), DEFAULT_BG))
            parts["pairs"].append(full[have].float())
        if method in refused:
            continue
        found[method] = {"sweep": np.concatenate(parts["sweep"], axis=1),
                         "predicted": np.concatenate(parts["predicted"]),
                         "pairs": torch.cat(parts["pairs"])}
        seconds[method] /= len(x)
    return found, refused, seconds


def colour(mask: np.ndarray, scale: int = 3) -> np.ndarray:
    """A label mask drawn with the VOC palette, enlarged ``scale`` times."""
    return np.kron(voc_palette()[mask], np.ones((scale, scale, 1), np.uint8))


def picture(images: np.ndarray, truth: np.ndarray, found: dict[str, Any], labels: list[list[int]],
            out: Path, rows: int = 4) -> Path:
    """Canvas | true mask | pseudo mask of each shown method (background 0.15, annotated
    classes), one canvas per row: the first canvases with two or three digits, and one with
    a single digit."""
    from camlens.viz import compose_grid, save_image

    methods = [m for m in SHOWN if m in found]
    many = [i for i in range(len(labels)) if len(labels[i]) > 1][:rows - 1]
    one = [i for i in range(len(labels)) if len(labels[i]) == 1][:1]
    sheets = []
    k = SWEEP.index(DEFAULT_BG)
    for i in (many + one)[:rows]:
        panels = [colour(truth[i])] + [colour(found[m]["sweep"][k, i]) for m in methods]
        title = "digits " + ", ".join(str(c) for c in labels[i])
        sheets.append(np.asarray(compose_grid(
            np.kron(images[i], np.ones((3, 3, 1), np.uint8)), panels,
            ["true mask"] + methods, image_title=title, cols=len(panels) + 1,
            panel_height=144)))
    width = max(s.shape[1] for s in sheets)
    sheets = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255)
              for s in sheets]
    return save_image(np.concatenate(sheets), out / "weak_labels_digits.png")


def check_end_to_end(model: torch.nn.Module, test: Any, present: np.ndarray,
                     work: Path) -> dict[str, float]:
    """The canvases as PNG files, annotations as JSON, true masks as VOC PNGs ->
    ``make_labels`` (the ``camlens labels`` command's code) -> mIoU from ``labels.json``."""
    (work / "images").mkdir(parents=True)
    (work / "truth").mkdir()
    annotations = {}
    from PIL import Image

    for i, image in enumerate(test.images):
        name = f"canvas{i:04d}.png"
        Image.fromarray(image).save(work / "images" / name)
        save_voc_png(test.masks[i], work / "truth" / name)
        annotations[name] = {"boxes": [list(b[1:]) for b in test.boxes[i]],
                             "classes": [b[0] for b in test.boxes[i]]}
    (work / "annotations.json").write_text(json.dumps(annotations))
    summary = make_labels(work / "images", work / "labels", model=model,
                          labels=[str(d) for d in range(10)],
                          preprocess=preprocessing("unit", crop=SIZE, resize=SIZE),
                          method=CHECKED, layer=LAYER, annotations=work / "annotations.json",
                          true_masks=work / "truth", bg_threshold=DEFAULT_BG, batch_size=50)
    assert summary["images"] == len(test.images) and summary["failed"] == 0, summary["errors"]
    return {m: s["miou"] for m, s in summary["miou"].items()}


def main(out: str | Path = "docs/images", seed: int = 0, quick: bool = False,
         methods: list[str] | None = None) -> dict[str, Any]:
    torch.manual_seed(seed)
    out = Path(out)
    n_train, epochs, width, n_test = (300, 1, 8, 12) if quick else (2500, 12, 32, 300)
    t0 = time.perf_counter()
    train_digits, test_digits = split_digits(seed=seed)
    train = canvases(train_digits, n_train, size=SIZE, count=(1, 3), scale=SCALE, seed=seed + 1)
    test = canvases(test_digits, n_test, size=SIZE, count=(1, 3), scale=SCALE, seed=seed + 2)
    model = GapCNN(classes=10, width=width)
    fit(model, train.images, train.multi_hot(), multilabel=True, epochs=epochs, seed=seed,
        batch_size=32)
    trained = time.perf_counter() - t0
    x = test.tensor()
    present = test.multi_hot() > 0
    with torch.no_grad():
        predicted = (torch.sigmoid(predict(model, x)) > 0.5).numpy()
    exact = float((predicted == present).all(1).mean() * 100)
    per_label = float((predicted == present).mean() * 100)

    methods = methods or cheap_methods()
    found, refused, seconds = explain_all(model, x, present, predicted, methods)
    truth = test.masks
    boxes = [[list(b[1:]) for b in test.boxes[i] if b[0] == c]
             for i in range(n_test) for c in np.flatnonzero(present[i])]
    rows = []
    for method, f in found.items():
        sweep = [metrics.miou(list(f["sweep"][k]), list(truth), classes=11).miou
                 for k in range(len(SWEEP))]
        best = int(np.argmax(sweep))
        acc = metrics.max_box_acc(f["pairs"], boxes)
        rows.append({
            "method": method, "sweep": sweep, "miou": sweep[SWEEP.index(DEFAULT_BG)],
            "best": sweep[best], "best_threshold": SWEEP[best],
            "predicted": metrics.miou(list(f["predicted"]), list(truth), classes=11).miou,
            "maxboxacc": acc.value, "per_iou": acc.per_iou.tolist(),
            "box_threshold": acc.best_threshold.tolist(), "seconds": seconds[method],
        })
    rows.sort(key=lambda r: -r["miou"])

    with tempfile.TemporaryDirectory() as tmp:
        checked = check_end_to_end(model, test, present, Path(tmp))
    for method, value in checked.items():
        inside = next(r["miou"] for r in rows if r["method"] == method)
        assert abs(value - inside) < 0.05, (method, value, inside)

    out.mkdir(parents=True, exist_ok=True)
    figure = picture(test.images, truth, found, test.labels, out)
    table = tables(rows, refused, exact, per_label, n_train, n_test, epochs, width, trained,
                   checked, seed)
    (out / "weak_labels_digits.md").write_text(table, "utf-8")
    print(table)
    print(f"saved {figure} and {out / 'weak_labels_digits.md'}")
    return {"rows": rows, "refused": refused, "exact": exact, "checked": checked}


def tables(rows: list[dict[str, Any]], refused: dict[str, str], exact: float,
           per_label: float, n_train: int, n_test: int, epochs: int, width: int,
           trained: float, checked: dict[str, float], seed: int) -> str:
    lines = [
        f"Seed {seed}: {n_train} training canvases, {epochs} epochs, width {width} "
        f"({trained:.0f} s); {n_test} held-out canvases with 1-3 digits; exact label set "
        f"{exact:.1f} %, per-label accuracy {per_label:.1f} %.",
        "",
        "| method | mIoU % (bg 0.15) | best bg | mIoU % there | mIoU %, predicted classes "
        "| MaxBoxAccV2 % | IoU 0.3 / 0.5 / 0.7 | ms / canvas |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        a, b, c = r["per_iou"]
        lines.append(
            f"| {r['method']} | {r['miou']:.1f} | {r['best_threshold']:.2f} | {r['best']:.1f} "
            f"| {r['predicted']:.1f} | {r['maxboxacc']:.1f} | {a:.1f} / {b:.1f} / {c:.1f} "
            f"| {1000 * r['seconds']:.1f} |")
    lines += ["", "mIoU % against the background threshold (classes from the annotations):", "",
              "| method | " + " | ".join(f"{t:.2f}" for t in SWEEP) + " |",
              "|---|" + "---:|" * len(SWEEP)]
    for r in rows:
        lines.append(f"| {r['method']} | " + " | ".join(f"{v:.1f}" for v in r["sweep"]) + " |")
    if refused:
        lines += ["", "Refused: " + "; ".join(f"{m}: {why}" for m, why in refused.items())]
    lines += ["", "End to end (`make_labels`, files on disk): " + ", ".join(
        f"{m} {v:.1f}" for m, v in checked.items()) + " mIoU %, equal to the table."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="folder for the picture and table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a tiny run (under a minute)")
    parser.add_argument("--method", default=None,
                        help="comma-separated methods (default: every method that is not heavy)")
    a = parser.parse_args()
    main(a.out, a.seed, a.quick, a.method.split(",") if a.method else None)
