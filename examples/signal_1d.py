"""Class activation maps for 1-D signals (B, C, L): where in time does the evidence lie?

Synthetic signals of 256 samples: Gaussian noise plus ONE pattern of 48 samples at a
random position, the class being which pattern: a sine burst, a square pulse or a chirp.
A small Conv1d network with a global-average-pooling + linear head (the CAM papers'
architecture) trains on CPU in a few seconds from a seed. camlens then explains it with the
same call as for images and returns (B, L) maps::

    camlens.explain(model, signals, method="gradcam", layer="features.10")   # (B, 256)

Printed: test accuracy, and per method the share of the map's energy inside the true
pattern interval (a map that ignores the signal gets the uniform share 48 / 256 = 18.75 %).
Saved: ``signal_1d.png`` (matplotlib if installed, else Pillow): for one signal of each
class, the signal and each method's map as a coloured band under it.

    python examples/signal_1d.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import camlens

LENGTH, PATTERN = 256, 48
CLASSES = ["sine burst", "square pulse", "chirp"]
METHODS = ("gradcam", "cam", "layercam")
LAYER = "features.10"  # the last ReLU: 32 channels at 64 samples, then GAP + linear
FULL_STEPS, QUICK_STEPS, BATCH = 400, 120, 32


# ----------------------------------------------------------------------------- data
@dataclass
class Signals:
    x: Tensor  # (N, 1, L)
    y: Tensor  # (N,) class
    span: Tensor  # (N, 2): start, end (exclusive) of the pattern


def pattern(kind: int, rng: np.random.Generator) -> np.ndarray:
    """One pattern of ``PATTERN`` samples, amplitude about 1, with a random phase/sign."""
    t = np.arange(PATTERN) / PATTERN
    phase = rng.uniform(0, 2 * math.pi)
    if kind == 0:  # sine burst: 4 cycles under a Hann window
        return np.sin(2 * math.pi * 4 * t + phase) * np.hanning(PATTERN) * 1.5
    if kind == 1:  # square pulse
        return np.full(PATTERN, rng.choice([-1.0, 1.0]))
    # chirp: frequency sweeping from 1 to 8 cycles per pattern
    return np.sin(2 * math.pi * (1 * t + 3.5 * t**2) + phase)


def make_signals(n: int, rng: np.random.Generator, noise: float = 0.4) -> Signals:
    x = rng.normal(0.0, noise, (n, 1, LENGTH)).astype(np.float32)
    y = rng.integers(0, len(CLASSES), n)
    start = rng.integers(0, LENGTH - PATTERN + 1, n)
    for i in range(n):
        x[i, 0, start[i] : start[i] + PATTERN] += pattern(int(y[i]), rng).astype(np.float32)
    span = np.stack([start, start + PATTERN], 1)
    return Signals(torch.from_numpy(x), torch.from_numpy(y).long(), torch.from_numpy(span))


# ----------------------------------------------------------------------------- model
class SignalNet(nn.Module):
    """3 x (Conv1d + BN + ReLU), two max-pools -> global average pooling -> one linear layer."""

    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 16, 7, padding=3), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(32, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU(),
        )
        # index 10 is the last ReLU (LAYER)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def build(quick: bool, seed: int = 0, log: bool = True) -> tuple[SignalNet, float]:
    """A trained network (fresh seeded signals every step, one CPU thread); seconds taken."""
    torch.manual_seed(seed)
    model = SignalNet()
    rng = np.random.default_rng(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = QUICK_STEPS if quick else FULL_STEPS
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    t0 = time.perf_counter()
    try:
        for i in range(steps):
            data = make_signals(BATCH, rng)
            loss = nn.functional.cross_entropy(model(data.x), data.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if log and (i + 1) % max(1, steps // 4) == 0:
                print(f"  step {i + 1}/{steps}: loss {loss.item():.3f}", flush=True)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model, time.perf_counter() - t0


def held_out(n: int, seed: int = 0) -> Signals:
    return make_signals(n, np.random.default_rng(seed + 2))


def energy_inside(maps: Tensor, span: Tensor) -> Tensor:
    """Share (B,) of each (B, L) map's sum inside its interval ``[start, end)``."""
    pos = torch.arange(maps.shape[1], device=maps.device)
    inside = (pos >= span[:, :1]) & (pos < span[:, 1:])
    total = maps.sum(1)
    return torch.where(total > 0, (maps * inside).sum(1) / total.clamp_min(1e-12), 0.0)


# ----------------------------------------------------------------------------- picture
def picture(signals: Signals, maps: dict[str, Tensor], index: list[int]) -> np.ndarray:
    """One row per signal: the curve with the true interval shaded, and a coloured band per
    method under it. matplotlib when installed, otherwise Pillow."""
    try:
        import matplotlib
    except ImportError:
        return _picture_pil(signals, maps, index)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(maps)
    fig, axes = plt.subplots(
        len(index) * (1 + len(names)), 1, figsize=(9, 0.8 * len(index) * (2 + len(names))),
        gridspec_kw={"height_ratios": ([2.5] + [0.4] * len(names)) * len(index)},
        squeeze=False,
    )
    axes = axes[:, 0]
    k = 0
    for i in index:
        ax = axes[k]
        s, e = (int(v) for v in signals.span[i])
        ax.plot(signals.x[i, 0].numpy(), color="black", linewidth=0.8)
        ax.axvspan(s, e, color="tab:green", alpha=0.2, label="true pattern")
        ax.set_xlim(-0.5, LENGTH - 0.5)
        ax.set_xticks([])
        ax.set_title(f"{CLASSES[int(signals.y[i])]}", fontsize=10, loc="left")
        ax.legend(loc="upper right", fontsize=7, frameon=False)
        k += 1
        for name in names:
            band = axes[k]
            band.imshow(maps[name][i][None].numpy(), aspect="auto", cmap="jet", vmin=0,
                        vmax=1, extent=(-0.5, LENGTH - 0.5, 0, 1))
            band.set_yticks([])
            band.set_xlim(-0.5, LENGTH - 0.5)
            band.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
            band.set_xticks([])
            k += 1
    axes[-1].set_xticks(range(0, LENGTH, 32))
    axes[-1].set_xlabel("sample", fontsize=8)
    fig.tight_layout(h_pad=0.2)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def _picture_pil(signals: Signals, maps: dict[str, Tensor], index: list[int]) -> np.ndarray:
    from PIL import Image, ImageDraw

    from camlens.viz import colormap

    w, curve_h, band_h, gap = 768, 90, 14, 10
    names = list(maps)
    row_h = curve_h + band_h * len(names) + gap
    sheet = Image.new("RGB", (w, row_h * len(index)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    xs = np.linspace(0, w - 1, LENGTH)
    for r, i in enumerate(index):
        top = r * row_h
        s, e = (int(v) for v in signals.span[i])
        draw.rectangle([xs[s], top, xs[e - 1], top + curve_h], fill=(210, 240, 210))
        sig = signals.x[i, 0].numpy()
        ys = top + curve_h / 2 - sig / (np.abs(sig).max() + 1e-6) * (curve_h / 2 - 4)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=(0, 0, 0), width=1)
        draw.text((4, top + 2), CLASSES[int(signals.y[i])], fill=(0, 0, 0))
        for m, name in enumerate(names):
            strip = maps[name][i].numpy()
            col = colormap(np.interp(np.arange(w), xs, strip)[None].repeat(band_h, 0), "jet")
            sheet.paste(Image.fromarray(col), (0, top + curve_h + m * band_h))
            draw.text((4, top + curve_h + m * band_h), name, fill=(255, 255, 255))
    return np.asarray(sheet)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/images", help="folder for signal_1d.png")
    parser.add_argument("--quick", action="store_true", help="train for a few seconds only")
    parser.add_argument("--test", type=int, default=300, help="held-out signals")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print("Training SignalNet (Conv1d x3, GAP + linear):", flush=True)
    cpu = time.process_time()
    model, seconds = build(args.quick, args.seed)
    cpu = time.process_time() - cpu
    data = held_out(args.test, args.seed)
    with torch.no_grad():
        pred = model(data.x).argmax(1)
    acc = float((pred == data.y).float().mean())
    print(f"\ntrained in {seconds:.1f} s wall, {cpu:.1f} s CPU (one thread); test accuracy "
          f"{acc:.1%} on {args.test} held-out signals")
    uniform = PATTERN / LENGTH
    print(f"Energy share inside the true {PATTERN}-sample pattern (target = true class, layer "
          f"{LAYER!r}; a uniform map gets {uniform:.1%}):")
    maps = {}
    for method in METHODS:
        maps[method] = camlens.explain(model, data.x, method=method, layer=LAYER,
                                       target=data.y.tolist())
        share = energy_inside(maps[method], data.span)
        print(f"  {method:<9} maps {tuple(maps[method].shape)}: mean {float(share.mean()):.1%}, "
              f"median {float(share.median()):.1%}")
    index = [int((data.y == c).nonzero()[0]) for c in range(len(CLASSES))]
    path = camlens.viz.save_image(picture(data, maps, index), Path(args.out) / "signal_1d.png")
    print(f"\nsaved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
