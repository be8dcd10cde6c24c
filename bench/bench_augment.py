"""Does CAM-guided augmentation help? The same small CNN trained with each augmentation.

Task: one digit per 48 x 48 canvas (scikit-learn's 8 x 8 digits upscaled 3x, random
place and colour, grey-noise background, 3 unlabelled strokes of clutter), 10 classes,
1,000 training canvases: small enough that the model overfits (train ~97 %, test ~83 %
without augmentation), so a regulariser has room to help. The model is
``examples/_digits.py``'s GapCNN (width 16: five conv-BN-ReLU blocks, GAP, linear),
trained by ``fit`` (AdamW, one-cycle schedule, batch 64, 15 epochs), one torch thread.

Arms (each with the same seeds: a seed fixes the initial weights, the batch order and the
augmentation's draws):

- ``none``: no augmentation;
- ``cutmix``: torchvision's ``transforms.v2.CutMix`` (alpha 1, one box per batch, the
  batch rolled by one as partner), applied to a batch with probability ``--mix-p``
  (default 0.5, CutMix's CIFAR setting);
- ``cam-erase``, ``attentive-cutmix``, ``saliencymix``: ``camlens.augment`` with its
  defaults (Grad-CAM of the label's class; CamErase p = 0.5) except ``p = --mix-p`` for
  the two mixes (per image), in two versions:
  ``(self)`` the maps come from the model being trained (no second model; the maps
  improve as it learns),
  ``(fixed)`` from a model trained first without augmentation (the ``none`` model of the
  same seed: Attentive CutMix's setting, a fixed pretrained guide; the same extra cost
  here since the guide is as large, but it could run in the DataLoader's workers).

Accuracy (top-1) on 1,000 held-out canvases (digit images never seen in training) of the
training distribution (``test``) and on two shifted sets: 9 strokes of clutter instead of
3 (``clutter``), and a green striped background never seen in training (``stripes``).
Each is reported as mean ± standard deviation over the seeds, and as the paired difference
to ``none`` and to ``cutmix`` (same seed: the same initial weights and batches). Cost: the
time per epoch of each arm (moves with the machine's load) and, measured apart, the median
time of each transform on one batch against a plain training step, interleaved.

Run: ``python bench/bench_augment.py`` (3 seeds, ~10 minutes on one idle core) or
``--quick`` (a smoke run: 1 seed, 600 canvases, 8 epochs of batch 32, 500 test canvases,
~2 minutes; its accuracies are those of an undertrained model). ``--json PATH`` writes
every number, ``--figure PATH`` the chart (default ``docs/images/augment_results.png``;
``--figure ''`` for none), ``--replot JSON`` prints and draws a saved run again. Needs
scikit-learn (the digits), torchvision (its CutMix) and Pillow (the chart).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import load, machine  # noqa: E402
from _digits import (  # noqa: E402
    GapCNN,
    canvases,
    fit,
    predict,
    split_digits,
    stripes_background,
)

from camlens.augment import AttentiveCutMix, CamErase, SaliencyMix  # noqa: E402

Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
SETS = ("test", "clutter", "stripes")
CAM = {"cam-erase": CamErase, "attentive-cutmix": AttentiveCutMix, "saliencymix": SaliencyMix}
ARMS = ["none", "cutmix"] + [f"{n} ({g})" for n in CAM for g in ("self", "fixed")]


def make_step(arm: str, model: torch.nn.Module, guide: torch.nn.Module | None,
              seed: int, mix_p: float) -> Step | None:
    """The per-batch transform of an arm (``y`` arrives one-hot (B, 10)). ``mix_p``: the
    probability of mixing (CutMix: per batch, as its paper's code; the camlens mixes: per
    image); CamErase keeps its default p = 0.5."""
    if arm == "none":
        return None
    if arm == "cutmix":
        from torchvision.transforms import v2

        cutmix = v2.CutMix(alpha=1.0, num_classes=10)  # draws from torch's global stream

        def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if mix_p >= 1 or float(torch.rand(())) < mix_p:
                return cutmix(x, y.argmax(1))  # type: ignore[no-any-return]
            return x, y

        return step
    name, which = arm.split(" ")
    steer = model if which == "(self)" else guide
    assert steer is not None
    if name == "cam-erase":
        return CamErase(steer, num_classes=10, seed=seed)
    return CAM[name](steer, num_classes=10, seed=seed, p=mix_p)


def accuracy(model: torch.nn.Module, data: Any) -> float:
    return float((predict(model, data.images).argmax(1).numpy() == data.first()).mean())


def run(args: argparse.Namespace) -> dict[str, Any]:
    train_digits, test_digits = split_digits(seed=0)
    common = dict(size=48, scale=(3, 3))
    train = canvases(train_digits, args.train, clutter=3, seed=100, **common)
    sets = {
        "test": canvases(test_digits, args.test, clutter=3, seed=200, **common),
        "clutter": canvases(test_digits, args.test, clutter=9, seed=300, **common),
        "stripes": canvases(test_digits, args.test, clutter=3, background=stripes_background,
                            seed=400, **common),
    }
    rows: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        guide: torch.nn.Module | None = None
        for arm in ARMS:
            torch.manual_seed(seed)
            model = GapCNN(classes=10, width=16)
            step = make_step(arm, model, guide, seed, args.mix_p)
            t0 = time.perf_counter()
            fit(model, train.images, train.first(), epochs=args.epochs, seed=seed, step=step,
                batch_size=args.batch)
            per_epoch = (time.perf_counter() - t0) / args.epochs
            row = {"arm": arm, "seed": seed, "s_per_epoch": per_epoch,
                   "train": accuracy(model, train)}
            row.update({k: accuracy(model, v) for k, v in sets.items()})
            rows.append(row)
            print(f"  seed {seed} {arm:26s} " + " ".join(
                f"{k} {row[k]:.3f}" for k in ("train", *SETS)) + f"  {per_epoch:.2f} s/epoch",
                file=sys.stderr, flush=True)
            if arm == "none":
                guide = model  # the fixed guide of this seed's "(fixed)" arms
    return {"rows": rows, "summary": summarise(rows, args.seeds)}


def costs(args: argparse.Namespace, repeats: int) -> dict[str, dict[str, float]]:
    """Median time of each arm's transform on one batch of 64 and of a plain training step
    (forward, loss, backward, AdamW), interleaved round-robin so that load changes hit all
    arms alike; the epoch times above move with the machine's load, these ratios do not."""
    train_digits, _ = split_digits(seed=0)
    data = canvases(train_digits, 64, size=48, scale=(3, 3), clutter=3, seed=500)
    x = data.tensor()
    y = torch.nn.functional.one_hot(torch.as_tensor(data.first()), 10).float()
    torch.manual_seed(0)
    model, guide = GapCNN(classes=10, width=16).train(), GapCNN(classes=10, width=16).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    steps = {arm: make_step(arm, model, guide, 0, args.mix_p) for arm in ARMS}

    def plain() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    calls: dict[str, Callable[[], object]] = {"step": plain}
    for arm, fn in steps.items():
        calls[arm] = (lambda: None) if fn is None else (lambda fn=fn: fn(x, y))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats + 2):  # the first two rounds warm up
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    step = statistics.median(times["step"][2:])
    out = {}
    for arm in ARMS:
        t = statistics.median(times[arm][2:])
        out[arm] = {"ms_per_batch": 1000 * t, "step_ms": 1000 * step, "ratio": (step + t) / step}
    return out


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarise(rows: list[dict[str, Any]], seeds: int) -> dict[str, Any]:
    """Per arm: mean/std of each accuracy, paired differences, time ratio to ``none``."""
    by = {(r["arm"], r["seed"]): r for r in rows}
    out: dict[str, Any] = {}
    for arm in ARMS:
        entry: dict[str, Any] = {}
        for key in ("train", *SETS):
            entry[key] = _mean_std([by[arm, s][key] for s in range(seeds)])
            for ref in ("none", "cutmix"):
                entry[f"{key} - {ref}"] = _mean_std(
                    [by[arm, s][key] - by[ref, s][key] for s in range(seeds)])
        entry["s_per_epoch"] = _mean_std([by[arm, s]["s_per_epoch"] for s in range(seeds)])
        entry["cost"] = _mean_std([by[arm, s]["s_per_epoch"] / by["none", s]["s_per_epoch"]
                                   for s in range(seeds)])
        out[arm] = entry
    return out


def pct(pair: tuple[float, float | None], sign: bool = False) -> str:
    mean, std = pair
    text = f"{100 * mean:+.1f}" if sign else f"{100 * mean:.1f}"
    return text if std is None else f"{text} ± {100 * std:.1f}"


def tables(summary: dict[str, Any], seeds: int) -> str:
    lines = [
        f"Accuracy in %, mean ± std over {seeds} seed(s); time per epoch on one thread.\n",
        "| arm | train | test | clutter (shifted) | stripes (shifted) | s/epoch | ÷ none |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, e in summary.items():
        lines.append(
            f"| {arm} | {pct(e['train'])} | {pct(e['test'])} | {pct(e['clutter'])} | "
            f"{pct(e['stripes'])} | {e['s_per_epoch'][0]:.2f} | {e['cost'][0]:.2f} |"
        )
    lines += [
        "\nPaired differences in points (same seed: same initial weights and batches), "
        "mean ± std over seeds.\n",
        "| arm | test − none | clutter − none | stripes − none | test − cutmix | "
        "clutter − cutmix | stripes − cutmix |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, e in summary.items():
        if arm == "none":
            continue
        cells = [pct(e[f"{k} - {ref}"], sign=True) for ref in ("none", "cutmix") for k in SETS]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(cost: dict[str, dict[str, float]]) -> str:
    step = next(iter(cost.values()))["step_ms"]
    lines = [
        f"\nCost on one batch of 64 (median of interleaved rounds): a plain training step "
        f"(forward, loss, backward, AdamW) takes {step:.0f} ms.\n",
        "| arm | transform ms / batch | (step + transform) / step |",
        "|---|---|---|",
    ]
    for arm, c in cost.items():
        lines.append(f"| {arm} | {c['ms_per_batch']:.1f} | {c['ratio']:.2f} |")
    return "\n".join(lines)


def figure(result: dict[str, Any], path: Path) -> None:
    """A dot chart (Pillow): per arm and test set, each seed's accuracy (small dots) and the
    mean ± std (bar and whisker)."""
    from PIL import Image, ImageDraw, ImageFont

    rows, summary = result["rows"], result["summary"]
    font = ImageFont.load_default(size=14)
    label_w, panel_w, row_h, top, gap = 190, 250, 26, 46, 16
    width = label_w + len(SETS) * (panel_w + gap)
    height = top + len(ARMS) * row_h + 64
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    colours = {"none": (90, 90, 90), "cutmix": (31, 119, 180)}
    for k, key in enumerate(SETS):
        values = [r[key] for r in rows]
        for arm in ARMS:  # the whiskers too
            mean, std = summary[arm][key]
            values += [mean - (std or 0.0), mean + (std or 0.0)]
        lo = np.floor(min(values) * 50) / 50
        hi = np.ceil(max(values) * 50) / 50
        x0 = label_w + k * (panel_w + gap)

        def px(v: float, x0: int = x0, lo: float = lo, hi: float = hi) -> float:
            return x0 + 8 + (v - lo) / max(hi - lo, 1e-9) * (panel_w - 16)

        title = {"test": "test", "clutter": "clutter (shifted)",
                 "stripes": "stripes (shifted)"}[key]
        draw.text((x0 + 4, 8), f"{title}: accuracy %", fill="black", font=font)
        bottom = top + len(ARMS) * row_h
        draw.rectangle([x0, top - 6, x0 + panel_w, bottom], outline=(200, 200, 200))
        tick = 0.02 if hi - lo <= 0.2 else 0.05
        for t in np.arange(np.ceil(lo / tick - 1e-9) * tick, hi + 1e-9, tick):
            x = px(float(t))
            draw.line([x, top - 6, x, bottom], fill=(235, 235, 235))
            draw.text((x - 8, bottom + 4), f"{100 * t:.0f}", fill=(80, 80, 80), font=font)
        for i, arm in enumerate(ARMS):
            y = top + i * row_h + row_h / 2
            colour = colours.get(arm, (214, 39, 40) if "(self)" in arm else (255, 127, 14))
            mean, std = summary[arm][key]
            std = std or 0.0
            draw.line([px(mean - std), y, px(mean + std), y], fill=colour, width=2)
            draw.rectangle([px(mean) - 2, y - 7, px(mean) + 2, y + 7], fill=colour)
            for r in rows:
                if r["arm"] == arm:
                    x = px(r[key])
                    draw.ellipse([x - 2.5, y - 10.5, x + 2.5, y - 5.5], outline=colour)
    for i, arm in enumerate(ARMS):
        draw.text((6, top + i * row_h + row_h / 2 - 8), arm, fill="black", font=font)
    legend = ("bar: mean, line: ± std, circles: each seed;  grey none, blue torchvision CutMix, "
              "red camlens (maps of the model being trained), orange (maps of a fixed model)")
    draw.text((6, height - 20), legend, fill=(60, 60, 60), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 seed, 600 canvases, 8 epochs of batch 32")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--mix-p", type=float, default=0.5,
                        help="probability of mixing for CutMix (per batch) and the camlens "
                             "mixes (per image); 0.5 as CutMix on CIFAR")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--figure", default=str(ROOT / "docs/images/augment_results.png"),
                        help="the chart's path ('' for none)")
    parser.add_argument("--replot", type=Path, default=None, metavar="JSON",
                        help="print the tables and draw the chart of a saved --json, no training")
    args = parser.parse_args(argv)
    if args.replot:
        result = json.loads(args.replot.read_text())
        print(tables(result["summary"], result["settings"]["seeds"]))
        print(cost_table(result["cost"]))
        if args.figure:
            figure(result, Path(args.figure))
        return 0
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.epochs = args.epochs or (8 if args.quick else 15)
    args.train, args.test = (600, 500) if args.quick else (1000, 1000)
    args.batch = 32 if args.quick else 64
    torch.set_num_threads(1)
    print(f"# bench_augment: torch {torch.__version__}, {machine()}, 1 thread")
    print(f"load average before: {load()}")
    print(f"{args.train} training canvases, {args.test} per test set, {args.epochs} epochs of "
          f"batch {args.batch}, {args.seeds} seed(s), mixing probability {args.mix_p}\n")
    t0 = time.perf_counter()
    result = run(args)
    result["cost"] = costs(args, repeats=5 if args.quick else 20)
    print(tables(result["summary"], args.seeds))
    print(cost_table(result["cost"]))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; load average after: {load()}")
    result["settings"] = {"train": args.train, "test": args.test, "epochs": args.epochs,
                          "batch": args.batch, "seeds": args.seeds, "mix_p": args.mix_p,
                          "torch": torch.__version__}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.figure:
        figure(result, Path(args.figure))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
