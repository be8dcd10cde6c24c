"""Localisation and faithfulness of every camlens method, with nothing to download.

Part 1, localisation with known boxes: scikit-learn's bundled digits (8x8, upscaled 3x to
24x24 by pixel repetition) are pasted at seeded random positions on a 64x64 canvas of
uniform noise, so the true box of every object is known exactly (the tight box of the
digit's non-zero pixels). A small CNN whose head is global average pooling + one linear
layer (the CAM papers' architecture) is trained on CPU from a seed; its test accuracy is
printed. Then every registered method explains the TRUE class of held-out canvases and
gets the pointing game (hit %), the energy pointing game (mean % of the map's energy inside
the box) and the top-1 localisation error (% wrong class or IoU < 0.5 at threshold 0.2).

Part 2, faithfulness on a real network: the bundled pretrained EfficientNet-Lite0 with
the four skimage photos (chelsea, coffee, astronaut, rocket), top-1 class, layer "auto":
deletion AUC (zeros baseline, lower is better), insertion AUC (blur baseline, higher is
better), average drop % (lower is better) and increase in confidence % (higher is better).
The perturbation methods (scorecam, sscam, iscam, ablationcam, rise) run with small
settings and, in part 2, on the first ``--slow-photos`` photos only (said in the output);
sscam and iscam (2 x 1280 masked forwards per photo on EfficientNet-Lite0's 1280-channel
head) run in part 2 only with ``--slow-all``. On a shared 2-core machine the times move a
lot; the metrics are deterministic for a given seed and torch build.

    python bench/bench_localisation.py            # full run (about 10 min on 2 cores)
    python bench/bench_localisation.py --quick    # smoke run (1 epoch, 60 canvases, ...)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

import camlens
from camlens import metrics

SLOW = ("scorecam", "sscam", "iscam", "ablationcam", "rise")
CANVAS, SCALE = 64, 3
DIGIT = 8 * SCALE
# pointing-game tolerance: the papers' 15 px at 224 px, scaled to the 64 px canvas
TOLERANCE = round(15 * CANVAS / 224)


def slow_options(name: str) -> dict[str, Any]:
    """Small settings for the perturbation methods (the brief's: N = 500, 2 samples)."""
    return {
        "rise": {"n_masks": 500, "batch_size": 64},
        "sscam": {"num_samples": 2, "batch_size": 64},
        "iscam": {"num_samples": 2, "batch_size": 64},
        "scorecam": {"batch_size": 64},
        "ablationcam": {"batch_size": 64},
    }.get(name, {})


# ----------------------------------------------------------------------------- data
def make_canvases(
    digits: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` canvases (n, 1, 64, 64) in [0, 1], labels (n,), true boxes (n, 4) x0 y0 x1 y1."""
    pick = rng.integers(0, len(digits), n)
    images = rng.uniform(0.0, 0.35, (n, CANVAS, CANVAS)).astype(np.float32)
    boxes = np.zeros((n, 4), dtype=np.float32)
    for i, k in enumerate(pick):
        digit = np.kron(digits[k], np.ones((SCALE, SCALE), dtype=np.float32))
        y, x = rng.integers(0, CANVAS - DIGIT + 1, 2)
        patch = images[i, y : y + DIGIT, x : x + DIGIT]
        images[i, y : y + DIGIT, x : x + DIGIT] = np.maximum(patch, digit)
        ys, xs = np.nonzero(digit > 0)
        boxes[i] = (x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1)
    return (torch.from_numpy(images)[:, None], torch.from_numpy(labels[pick]).long(),
            torch.from_numpy(boxes))


class DigitNet(nn.Module):
    """4 conv + BN + ReLU (two 2x2 max-pools) -> global average pooling -> one linear layer."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


LAYER = "features.13"  # the last ReLU: 64 channels at 16 x 16


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for start in range(0, len(x), 128):
            idx = order[start : start + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(x):.3f}", flush=True)
    model.eval()


def centre_prior(n: int, size: int) -> torch.Tensor:
    """A baseline map that ignores the image: a Gaussian bump at the canvas centre."""
    c = (size - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    g = torch.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2 * (size / 4) ** 2))
    return g.expand(n, size, size).clone()


# ----------------------------------------------------------------------------- parts
def part_localisation(args: argparse.Namespace, methods: list[str]) -> None:
    from sklearn.datasets import load_digits

    print("\n## Part 1: localisation on digits pasted on noisy canvases\n", flush=True)
    d = load_digits()
    digits = (d.images / 16.0).astype(np.float32)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(digits))
    cut = int(0.75 * len(digits))
    tr, te = perm[:cut], perm[cut:]  # test canvases use digits never seen in training
    x_tr, y_tr, _ = make_canvases(digits[tr], d.target[tr], args.train, rng)
    x_te, y_te, b_te = make_canvases(digits[te], d.target[te], args.test, rng)
    mean, std = float(x_tr.mean()), float(x_tr.std())
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std

    torch.manual_seed(args.seed)
    model = DigitNet()
    t0 = time.perf_counter()
    train(model, x_tr, y_tr, args.epochs, args.seed)
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        pred = model(x_te).argmax(1)
    acc = float((pred == y_te).float().mean() * 100)
    print(f"\nDigitNet: {sum(p.numel() for p in model.parameters())} parameters, "
          f"{args.train} training canvases ({len(tr)} digit images), {args.epochs} epochs, "
          f"{train_s:.1f} s; test accuracy {acc:.1f} % on {args.test} canvases "
          f"({len(te)} held-out digit images).")

    n_eval = min(args.eval, args.test)
    n_slow = min(args.eval_slow, n_eval)
    print(f"Localisation on the first {n_eval} test canvases ({n_slow} for "
          f"{', '.join(SLOW)}), target = the true class, layer {LAYER!r}, pointing-game "
          f"tolerance {TOLERANCE} px (15 px at 224 scaled to {CANVAS}), localisation "
          "threshold 0.2.\n", flush=True)
    rows = []
    for name in ["baseline: centre prior", *methods]:
        n = n_slow if name in SLOW else n_eval
        x, y, boxes, p = x_te[:n], y_te[:n], b_te[:n], pred[:n]
        t0 = time.perf_counter()
        try:
            if name.startswith("baseline"):
                maps = centre_prior(n, CANVAS)
            else:
                maps = camlens.explain(model, x, method=name, layer=LAYER, target=y.tolist(),
                                       **slow_options(name))
        except Exception as err:  # report and go on
            rows.append((name, n, f"failed: {type(err).__name__}: {err}"))
            continue
        sec = time.perf_counter() - t0
        hit = float(metrics.pointing_game(maps, boxes, tolerance=TOLERANCE).float().mean() * 100)
        energy = float(metrics.energy_pointing_game(maps, boxes).mean() * 100)
        loc = metrics.localization_error(maps, p, y, boxes, threshold=0.2)
        # faithfulness on the same canvases (cheap on a 64 px model): the true class
        step = CANVAS * CANVAS // args.steps
        dele = float(metrics.deletion(model, x, maps, y, step=step).mean())
        ins = float(metrics.insertion(model, x, maps, y, step=step).mean())
        cc = metrics.confidence_change(model, x, maps, y)
        rows.append((name, n, hit, energy, loc, dele, ins, cc.average_drop, cc.increase, sec))
    print("| method | images | pointing game hit % ↑ | energy pointing game % ↑ | "
          "localisation error % ↓ | deletion AUC ↓ | insertion AUC ↑ | average drop % ↓ | "
          "increase % ↑ | maps s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if isinstance(row[2], str):
            print(f"| {row[0]} | {row[1]} | {row[2]} | | | | | | | |")
        else:
            name, n, hit, energy, loc, dele, ins, drop, inc, sec = row
            print(f"| {name} | {n} | {hit:.1f} | {energy:.1f} | {loc:.1f} | {dele:.3f} | "
                  f"{ins:.3f} | {drop:.1f} | {inc:.1f} | {sec:.1f} |")
    wrong = float((pred[:n_eval] != y_te[:n_eval]).float().mean() * 100)
    print(f"\nFloor of the localisation error (misclassified canvases among the first "
          f"{n_eval}): {wrong:.1f} %.", flush=True)


def part_faithfulness(args: argparse.Namespace, methods: list[str]) -> None:
    from skimage import data

    print("\n## Part 2: faithfulness on the pretrained EfficientNet-Lite0\n", flush=True)
    names = ["chelsea", "coffee", "astronaut", "rocket"][: args.photos]
    model, preprocess, labels = camlens.load_model()
    x = torch.stack([preprocess(getattr(data, n)()) for n in names])
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)
    top = probs.argmax(1)
    for n, c, p in zip(names, top.tolist(), probs.max(1).values.tolist()):
        print(f"- {n}: top-1 {labels[c]!r} (p = {p:.3f})")
    hw = x.shape[2] * x.shape[3]
    step = math.ceil(hw / args.steps)
    n_slow = min(args.slow_photos, len(names))
    print(f"\nTarget = top-1, layer 'auto', deletion (zeros) / insertion (blur) with "
          f"{step} pixels per step ({args.steps} steps), explanation map x image for "
          f"average drop / increase. {', '.join(SLOW)}: "
          + ("skipped (--quick)" if n_slow == 0 else
             f"on the first {n_slow} photo(s) only ({', '.join(names[:n_slow])})")
          + ".\n", flush=True)
    per_image: dict[str, dict[str, torch.Tensor]] = {}
    rows = []
    for name in methods:
        n = n_slow if name in SLOW else len(names)
        if n == 0 or (name in ("sscam", "iscam") and not args.slow_all):
            why = "--quick" if n == 0 else "2 x 1280 masked forwards per photo; --slow-all"
            rows.append((name, 0, f"skipped ({why})"))
            continue
        xi, ti = x[:n], top[:n].tolist()
        note = ""
        t0 = time.perf_counter()
        try:
            maps = camlens.explain(model, xi, method=name, target=ti, **slow_options(name))
        except Exception as err:
            # EfficientNet-PyTorch calls one ``_swish`` module for the stem AND the head,
            # which the automatic layer picks; methods that replace the layer's output hit
            # the stem call. _bn1 is the head's output before that swish (swish(0) = 0).
            note = f" (auto layer failed: {type(err).__name__}; layer '_bn1')"
            try:
                maps = camlens.explain(model, xi, method=name, target=ti, layer="_bn1",
                                       **slow_options(name))
            except Exception as err2:
                rows.append((name, n, f"failed: {type(err2).__name__}: {err2}"))
                continue
        sec = time.perf_counter() - t0
        dele = metrics.deletion(model, xi, maps, ti, step=step, baseline="zeros")
        ins = metrics.insertion(model, xi, maps, ti, step=step, baseline="blur")
        cc = metrics.confidence_change(model, xi, maps, ti)
        per_image[name] = {"del": dele, "ins": ins, "drop": cc.drop,
                           "inc": cc.increased.float() * 100}
        rows.append((name + note, n, float(dele.mean()), float(ins.mean()), cc.average_drop,
                     cc.increase, sec))
        print(f"  {name}: {sec:.1f} s", file=sys.stderr, flush=True)
    print("| method | photos | deletion AUC ↓ | insertion AUC ↑ | average drop % ↓ | "
          "increase % ↑ | maps s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if isinstance(row[2], str):
            print(f"| {row[0]} | {row[1]} | {row[2]} | | | | |")
        else:
            name, n, d, i, drop, inc, sec = row
            print(f"| {name} | {n} | {d:.3f} | {i:.3f} | {drop:.1f} | {inc:.0f} | {sec:.1f} |")
    if 0 < n_slow < len(names) and per_image:
        print(f"\nAll methods on the same {n_slow} photo(s) ({', '.join(names[:n_slow])}), "
              "for comparing the perturbation methods with the others:\n")
        print("| method | deletion AUC ↓ | insertion AUC ↑ | average drop % ↓ | increase % ↑ |")
        print("|---|---:|---:|---:|---:|")
        for name, v in per_image.items():
            s = slice(0, n_slow)
            print(f"| {name} | {float(v['del'][s].mean()):.3f} | {float(v['ins'][s].mean()):.3f} "
                  f"| {float(v['drop'][s].mean()):.1f} | {float(v['inc'][s].mean()):.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: small sizes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--parts", default="1,2")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--train", type=int, default=None, help="training canvases")
    p.add_argument("--test", type=int, default=None, help="test canvases (accuracy)")
    p.add_argument("--eval", type=int, default=None, help="canvases for localisation")
    p.add_argument("--eval-slow", type=int, default=None,
                   help="canvases for localisation with the perturbation methods")
    p.add_argument("--photos", type=int, default=None, help="skimage photos in part 2 (max 4)")
    p.add_argument("--slow-photos", type=int, default=None,
                   help="photos for the perturbation methods in part 2")
    p.add_argument("--steps", type=int, default=None, help="deletion/insertion steps")
    p.add_argument("--slow-all", action="store_true",
                   help="also run sscam and iscam in part 2 (slow: 2560 forwards per photo)")
    args = p.parse_args()
    quick = {"epochs": 1, "train": 1500, "test": 300, "eval": 60, "eval_slow": 20,
             "slow_photos": 0, "photos": 2, "steps": 5}
    full = {"epochs": 6, "train": 8000, "test": 1000, "eval": 200, "eval_slow": 200,
            "slow_photos": 1, "photos": 4, "steps": 10}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    methods = camlens.available_methods()
    print("# camlens localisation and faithfulness benchmark" + (" (--quick)" if args.quick
                                                                   else ""))
    print(f"\ncamlens {camlens.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}; "
          f"seed {args.seed} (canvases, training, weights); methods' own seed 0.")
    print(f"Settings: {vars(args)}")
    print("Perturbation methods: " + "; ".join(
        f"{m} {slow_options(m)}" for m in SLOW if m in methods))
    t0 = time.perf_counter()
    parts = {s.strip() for s in args.parts.split(",")}
    if "1" in parts:
        part_localisation(args, methods)
        print(f"\nPart 1 took {time.perf_counter() - t0:.0f} s.", flush=True)
    if "2" in parts:
        t1 = time.perf_counter()
        part_faithfulness(args, methods)
        print(f"\nPart 2 took {time.perf_counter() - t1:.0f} s.")
    print(f"\nTotal runtime {time.perf_counter() - t0:.0f} s.")


if __name__ == "__main__":
    main()
