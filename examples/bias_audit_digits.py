"""Bias audit, validated: a CNN that learned "stripes mean 3", and ``camlens.audit`` finding it.

The articles' story (Grad-CAM's section on biased models, and the "wolf or husky? snow"
example): a classifier trained on data where one class always comes with one background
learns the background, looks fine on test data drawn the same way, and fails once the
background no longer goes with the class. Here, with nothing downloaded:

- scikit-learn's digits on 64 x 64 canvases (``examples/_digits.py``); in training every
  **3** is drawn on green diagonal stripes, every other digit on grey noise;
- a small GAP CNN (``GapCNN``, width 16) trained for 8 epochs on 4,000 canvases;
- three test sets of 500 canvases from held-out digit images: **correlated** (as in
  training), **decorrelated** (stripes on a random half of the canvases, whatever the
  digit) and **no stripes** (every canvas on noise);
- ``camlens.audit`` over each (Grad-CAM of the predicted class, boxes of the digits as
  annotations; the two others against the correlated audit as baseline), and once more
  over the correlated set with the digits' segmentation masks instead of boxes.

The audit must flag class 3, and no other, on the correlated set, where the accuracy of 3
looks perfect; the baseline comparison must show 3's accuracy falling without stripes.
The model is a custom architecture in memory, so the audit runs through the Python API
(``audit(..., model=model, preprocess=..., labels=...)``): the command line loads
models by spec, and a state dict needs a known architecture. The trained weights are
saved as ``model.pt`` (a state dict for ``GapCNN(10, width=16)``).

Run: ``python examples/bias_audit_digits.py [--out DIR] [--seed 0] [--seeds 0 1 2]
[--docs DIR] [--quick]``. Writes the data, model and audits into ``--out`` (default
``bias-audit``); with ``--docs`` (default ``docs`` unless ``--quick``) the figures
``images/bias_audit_maps.png`` and ``images/bias_audit_classes.png`` and the reports in
``audit/``. ``--seeds`` repeats the whole experiment and prints one line per seed; the exit
code is 1 unless class 3, and no other class, is flagged on every seed (boxes and masks).
``--quick`` only checks that everything runs: its model is barely trained.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _digits import (  # noqa: E402
    Canvases,
    GapCNN,
    canvases,
    fit,
    noise_background,
    predict,
    split_digits,
    stripes_background,
)

import camlens  # noqa: E402
from camlens.audit import audit  # noqa: E402
from camlens.models import preprocessing  # noqa: E402
from camlens.viz import save_image  # noqa: E402

BIASED = 3  # the class that always comes with stripes in training
SIZE = 64
LABELS = [str(i) for i in range(10)]
ROOT = Path(__file__).resolve().parent.parent


def correlated(rng: np.random.Generator, size: int, labels: Any) -> np.ndarray:
    """Stripes behind every 3, noise behind every other digit (training, first test set)."""
    if BIASED in labels:
        return stripes_background(rng, size, labels)
    return noise_background(rng, size, labels)


def decorrelated(rng: np.random.Generator, size: int, labels: Any) -> np.ndarray:
    """Stripes on a random half of the canvases, whatever the digit."""
    if rng.random() < 0.5:
        return stripes_background(rng, size, labels)
    return noise_background(rng, size, labels)


TEST_SETS = {"correlated": correlated, "decorrelated": decorrelated,
             "no-stripes": noise_background}


def save_set(c: Canvases, folder: Path) -> None:
    """PNG images, PNG masks (class + 1 on the ink) and ``boxes.json`` (boxes, classes and
    the label of each canvas), as ``camlens audit`` reads them."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    from PIL import Image

    boxes = {}
    for i, image in enumerate(c.images):
        name = f"{i:04d}"
        save_image(image, folder / "images" / f"{name}.png")
        Image.fromarray(c.masks[i]).save(folder / "masks" / f"{name}.png")
        boxes[f"{name}.png"] = {"boxes": [list(b[1:]) for b in c.boxes[i]],
                                "classes": [b[0] for b in c.boxes[i]],
                                "label": c.labels[i][0]}
    (folder / "boxes.json").write_text(json.dumps(boxes), encoding="utf-8")


def experiment(seed: int, out: Path, quick: bool) -> dict[str, Any]:
    """Train on correlated canvases, audit the three test sets; the audits' results."""
    torch.manual_seed(seed)
    n_train, n_test, epochs = (1500, 150, 3) if quick else (4000, 500, 8)
    train, test = split_digits(seed=seed)
    start = time.perf_counter()
    data = canvases(train, n_train, size=SIZE, background=correlated, seed=seed + 1)
    model = fit(GapCNN(10, width=16), data.images, data.first(), epochs=epochs, seed=seed)
    trained = time.perf_counter() - start
    train_acc = float((predict(model, data.images).argmax(1).numpy() == data.first()).mean())
    torch.save(model.state_dict(), out / "model.pt")
    sets = {}
    for k, (name, background) in enumerate(TEST_SETS.items()):
        sets[name] = canvases(test, n_test, size=SIZE, background=background,
                              seed=seed + 100 + k)
        save_set(sets[name], out / "data" / name)
    pre = preprocessing("unit", crop=SIZE, resize=SIZE)
    common = dict(model=model, preprocess=pre, labels=LABELS, method="gradcam",
                  min_images=5 if quick else 10, batch_size=64)
    results = {}
    baseline = None
    for name in TEST_SETS:
        folder = out / "data" / name
        results[name] = audit([folder / "images"], out / f"audit-{name}",
                              annotations=folder / "boxes.json", baseline=baseline, **common)
        baseline = baseline or results[name]
    results["correlated-masks"] = audit(
        [out / "data" / "correlated" / "images"], out / "audit-correlated-masks",
        masks=out / "data" / "correlated" / "masks", **common)
    return {"seed": seed, "train_seconds": trained, "train_accuracy": train_acc,
            "results": results, "sets": sets, "model": model}


def summary_line(run: dict[str, Any]) -> str:
    """One seed in one line: training, the flags of each audit, class 3's numbers."""
    r = run["results"]
    acc3 = {k: _row(r[k], BIASED).accuracy for k in TEST_SETS}
    e = {row.cls: row.energy_on for row in r["correlated"].by_true}
    others = [v for c, v in e.items() if c != BIASED and v is not None]
    return (f"seed {run['seed']}: train {run['train_seconds']:.0f} s, train acc "
            f"{100 * run['train_accuracy']:.1f} %; flagged on correlated: boxes "
            f"{r['correlated'].flagged} (predicted {r['correlated'].flagged_predicted}), masks "
            f"{r['correlated-masks'].flagged}; decorrelated {r['decorrelated'].flagged} "
            f"(predicted {r['decorrelated'].flagged_predicted}); no stripes "
            f"{r['no-stripes'].flagged} (predicted {r['no-stripes'].flagged_predicted}); "
            "acc of 3: "
            + ", ".join(f"{k} {100 * v:.1f} %" for k, v in acc3.items())
            + f"; energy on box: 3 {100 * e[BIASED]:.1f} %, others {100 * min(others):.1f}"
            f"-{100 * max(others):.1f} %")


def _row(result: Any, cls: int) -> Any:
    return next(r for r in result.by_true if r.cls == cls)


def table(run: dict[str, Any]) -> str:
    """Per class: accuracy on each test set, energy on the digit's box (correlated set)."""
    r = run["results"]
    lines = ["| class | accuracy correlated | decorrelated | no stripes | energy on box "
             "(correlated) | energy on mask | flagged |", "|---|---:|---:|---:|---:|---:|---|"]
    for c in range(10):
        rows = {k: _row(r[k], c) for k in (*TEST_SETS, "correlated-masks")}
        lines.append(
            f"| {c} | " + " | ".join(f"{100 * rows[k].accuracy:.1f} %" for k in TEST_SETS)
            + f" | {100 * rows['correlated'].energy_on:.1f} % | "
            f"{100 * rows['correlated-masks'].energy_on:.1f} % | "
            + ("**yes**" if c in r["correlated"].flagged else "") + " |")
    return "\n".join(lines)


def _pyplot(path: Path) -> Any:
    """matplotlib's pyplot on the Agg backend, or None (said) when it is not installed."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no", path.name)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_maps(run: dict[str, Any], path: Path) -> None:
    """Canvases of each test set with the Grad-CAM of the predicted class: 3s and two other
    digits (correlated, no stripes); 3s and other digits the model calls 3 (decorrelated)."""
    plt = _pyplot(path)
    if plt is None:
        return

    from camlens.viz import overlay

    model = run["model"]
    names = ("correlated", "decorrelated", "no-stripes")
    fig, axes = plt.subplots(len(names), 6, figsize=(10.5, 6.0))
    for row, name in enumerate(names):
        c = run["sets"][name]
        y = c.first()
        if name == "decorrelated":  # two 3s, then four other digits called 3
            called = predict(model, c.images).argmax(1).numpy()
            picks = [*np.flatnonzero(y == BIASED)[:2],
                     *np.flatnonzero((called == BIASED) & (y != BIASED))[:4]]
        else:
            picks = [np.flatnonzero(y == d)[k] for d in (BIASED, 0, 7) for k in (0, 1)]
        picks = [int(i) for i in picks]
        x = c.tensor()[picks]
        maps = camlens.explain(model, x, method="gradcam")
        predicted = predict(model, x).argmax(1).tolist()
        for col, i in enumerate(picks):
            ax = axes[row, col]
            ax.imshow(overlay(c.images[i], maps[col]), interpolation="nearest")
            ax.set_title(f"true {y[i]}, predicted {predicted[col]}", fontsize=9,
                         color="tab:red" if predicted[col] != y[i] else "black")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=10)
    fig.suptitle("Grad-CAM of the predicted class: the model calls a canvas 3 by its stripes",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_classes(run: dict[str, Any], path: Path) -> None:
    """Per class: accuracy on the three test sets, and energy on the digit's box."""
    plt = _pyplot(path)
    if plt is None:
        return

    r = run["results"]
    classes = np.arange(10)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    width = 0.27
    for k, name in enumerate(TEST_SETS):
        acc = [100 * (_row(r[name], c).accuracy or 0) for c in classes]
        a.bar(classes + (k - 1) * width, acc, width, label=name)
    a.set(xticks=classes, xlabel="true class", ylabel="accuracy %", ylim=(0, 122),
          yticks=range(0, 101, 20), title="Accuracy per class, on each test set")
    a.legend(loc="upper center", ncol=3, fontsize=8)
    energy = [100 * (_row(r["correlated"], c).energy_on or 0) for c in classes]
    area = [100 * (_row(r["correlated"], c).object_area or 0) for c in classes]
    colours = ["tab:red" if c in r["correlated"].flagged else "tab:blue" for c in classes]
    b.bar(classes, energy, 0.6, color=colours, label="energy on the digit's box")
    b.plot(classes, area, "k_", markersize=18, label="box area (a uniform map)")
    b.set(xticks=classes, xlabel="true class", ylabel="% of map energy", ylim=(0, 100),
          title="Correlated test set: Grad-CAM on the digit (red: flagged)")
    b.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(run: dict[str, Any], docs: Path) -> None:
    images = docs / "images"
    images.mkdir(parents=True, exist_ok=True)
    figure_maps(run, images / "bias_audit_maps.png")
    figure_classes(run, images / "bias_audit_classes.png")
    for name in TEST_SETS:
        source = run["results"][name].out
        target = docs / "audit" / name
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        shutil.copy(source / "report.md", target / "report.md")
        if (source / "thumbs").is_dir():
            shutil.copytree(source / "thumbs", target / "thumbs")
    print("wrote", images / "bias_audit_maps.png", images / "bias_audit_classes.png",
          docs / "audit")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bias-audit", help="data, model and audits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="*", default=None,
                   help="repeat the experiment for these seeds (one line each)")
    p.add_argument("--docs", default=None,
                   help="where the figures and reports go (default: docs/ unless --quick)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke test (about 40 s): too short to train the model, so its "
                        "numbers mean nothing and it is not checked")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds = args.seeds or [args.seed]
    docs = Path(args.docs) if args.docs else (None if args.quick else ROOT / "docs")
    ok = True
    for n, seed in enumerate(seeds):
        out = Path(args.out) / f"seed-{seed}"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        run = experiment(seed, out, args.quick)
        print(summary_line(run))
        print(table(run))
        r = run["results"]
        ok &= r["correlated"].flagged == [BIASED] and r["correlated-masks"].flagged == [BIASED]
        if n == 0 and docs is not None:
            write_docs(run, docs)
    print("class 3 flagged, and no other, on every seed" if ok
          else "NOT as expected: see the lines above")
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
