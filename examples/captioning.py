"""Explain a caption word by word, as the Grad-CAM paper does (no downloads, CPU only).

A tiny captioner reads canvases with two handwritten digits (scikit-learn's bundled
digits, 8x8 upscaled 3x to 24x24, pasted on 64x96 noise, one at a random place in the left
half and one in the right half) and writes the caption ``[left digit, right digit, <end>]``.
It is a CNN encoder (four convs, spatial features kept) and a GRU decoder that decodes
greedily inside ``forward(images)``: ``<start>`` first, then its own argmax token fed back,
for a fixed 3 steps, returning (B, T, V) logits. It trains on CPU in about a minute from a
seed (``--quick``: a few seconds).

Then ONE call explains every generated word::

    camlens.explain(model, x, method="gradcam", layer="encoder.9",
                    target=TokenTarget(step=[0, 1]))    # (B, 2, H, W)

and the pointing game checks, on held-out canvases, that word 0's map peaks on the left
digit and word 1's on the right one.

    python examples/captioning.py                 # trains ~60-90 s, saves docs/images/
    python examples/captioning.py --quick --out /tmp/out
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import camlens
from camlens import metrics, viz
from camlens.targets import TokenTarget

HEIGHT, WIDTH, SCALE = 64, 96, 3
DIGIT = 8 * SCALE
START, END = 10, 11
VOCAB = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "<start>", "<end>"]
STEPS = 3  # left digit, right digit, <end>
LAYER = "encoder.9"  # the encoder's last conv: 32 channels at 16 x 24
# pointing-game tolerance: the papers' 15 px at 224 px, scaled to the 64 px canvas height
TOLERANCE = round(15 * HEIGHT / 224)
FULL_STEPS, QUICK_STEPS, BATCH = 800, 120, 32


# ----------------------------------------------------------------------------- data
@dataclass
class Canvases:
    images: Tensor  # (N, 1, 64, 96), normalised
    captions: Tensor  # (N, 3): left digit, right digit, <end>
    boxes: Tensor  # (N, 2, 4): x0, y0, x1, y1 (exclusive) of the left and right digit


def load_digit_images(seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray],
                                              tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 1797 bundled digits in [0, 1], split 75 / 25 (train / held out)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    digits = (d.images / 16.0).astype(np.float32)
    perm = np.random.default_rng(seed).permutation(len(digits))
    cut = int(0.75 * len(digits))
    return ((digits[perm[:cut]], d.target[perm[:cut]]),
            (digits[perm[cut:]], d.target[perm[cut:]]))


def make_canvases(digits: np.ndarray, labels: np.ndarray, n: int,
                  rng: np.random.Generator) -> Canvases:
    """``n`` canvases in [0, 1] (noise up to 0.35), two digits each, with their true boxes."""
    images = rng.uniform(0.0, 0.35, (n, HEIGHT, WIDTH)).astype(np.float32)
    captions = np.full((n, STEPS), END, dtype=np.int64)
    boxes = np.zeros((n, 2, 4), dtype=np.float32)
    half = WIDTH // 2
    for i in range(n):
        for side in range(2):
            k = rng.integers(len(digits))
            digit = np.kron(digits[k], np.ones((SCALE, SCALE), dtype=np.float32))
            y = rng.integers(0, HEIGHT - DIGIT + 1)
            x = side * half + rng.integers(0, half - DIGIT + 1)
            patch = images[i, y : y + DIGIT, x : x + DIGIT]
            np.maximum(patch, digit, out=patch)
            ys, xs = np.nonzero(digit > 0)
            boxes[i, side] = (x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1)
            captions[i, side] = labels[k]
    return Canvases(torch.from_numpy(images)[:, None], torch.from_numpy(captions),
                    torch.from_numpy(boxes))


# ----------------------------------------------------------------------------- model
def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


class Captioner(nn.Module):
    """CNN encoder (spatial features kept) + GRU decoder with greedy decoding in ``forward``.

    The encoder keeps a 16 x 24 grid of 32-channel features. The decoder reads them
    max-pooled over each half of the canvas (a 1 x 2 grid: what is on the left, what is on
    the right, wherever it sits in its half) into one image vector, which sets the GRU's
    first hidden state and is fed again at every step with the previous token's embedding.
    ``forward(images)`` -> (B, 3, 12) logits; ``forward(images, captions)`` teacher-forces.
    """

    def __init__(self, hidden: int = 96) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            *_block(1, 16, 2),   # 32 x 48
            *_block(16, 32, 2),  # 16 x 24
            *_block(32, 32, 1),
            *_block(32, 32, 1),  # encoder.9 is this block's conv: the last conv
        )
        self.pool = nn.AdaptiveMaxPool2d((1, 2))
        self.image = nn.Sequential(nn.Flatten(), nn.Linear(32 * 2, hidden), nn.ReLU())
        self.init = nn.Linear(hidden, hidden)
        self.embed = nn.Embedding(len(VOCAB), 32)
        self.gru = nn.GRUCell(32 + hidden, hidden)
        self.head = nn.Linear(hidden, len(VOCAB))

    def forward(self, images: Tensor, captions: Tensor | None = None) -> Tensor:
        v = self.image(self.pool(self.encoder(images)))
        h = torch.tanh(self.init(v))
        token = torch.full((images.shape[0],), START, dtype=torch.long, device=images.device)
        logits = []
        for t in range(STEPS):
            h = self.gru(torch.cat([self.embed(token), v], 1), h)
            step = self.head(h)
            logits.append(step)
            token = captions[:, t] if captions is not None else step.detach().argmax(1)
        return torch.stack(logits, 1)  # (B, T, V)


def train(model: Captioner, digits: np.ndarray, labels: np.ndarray, steps: int,
          seed: int, batch: int = BATCH, log: bool = True) -> float:
    """Adam on fresh seeded canvases every step (teacher forcing); returns seconds taken.

    Runs on one CPU thread (restored after): as fast as more for a model this small, and
    the same numbers on every machine with the same torch build.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(model, digits, labels, steps, seed, batch, log)
    finally:
        torch.set_num_threads(threads)


def _train(model: Captioner, digits: np.ndarray, labels: np.ndarray, steps: int,
           seed: int, batch: int, log: bool) -> float:
    rng = np.random.default_rng(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    t0 = time.perf_counter()
    running = 0.0
    for i in range(steps):
        data = make_canvases(digits, labels, batch, rng)
        logits = model(normalise(data.images), data.captions)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), data.captions.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        running = 0.9 * running + 0.1 * loss.item() if i else loss.item()
        if log and (i + 1) % max(1, steps // 5) == 0:
            print(f"  step {i + 1}/{steps}: loss {running:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()
    return time.perf_counter() - t0


def normalise(images: Tensor) -> Tensor:
    """Fixed scaling of the [0, 1] canvases (mean and std of the noise-and-digit canvases)."""
    return (images - 0.2) / 0.15


def build(quick: bool, seed: int = 0, log: bool = True) -> tuple[Captioner, float]:
    """A trained captioner: ``quick`` trains for a few seconds, else for about a minute."""
    torch.manual_seed(seed)
    (digits, labels), _ = load_digit_images(seed)
    model = Captioner()
    steps = QUICK_STEPS if quick else FULL_STEPS
    seconds = train(model, digits, labels, steps=steps, seed=seed, log=log)
    return model, seconds


def held_out(n: int, seed: int = 0) -> Canvases:
    """Canvases made of the held-out digit images only (never seen in training)."""
    _, (digits, labels) = load_digit_images(seed)
    return make_canvases(digits, labels, n, np.random.default_rng(seed + 2))


def explain_words(model: Captioner, images: Tensor, steps: list[int] | int = (0, 1),
                  method: str = "gradcam") -> Tensor:
    """One map per generated word, (B, K, 64, 96), from one batched pass."""
    step = steps if isinstance(steps, int) else list(steps)
    return camlens.explain(model, normalise(images), method=method, layer=LAYER,
                           target=TokenTarget(step=step))


def pointing(maps: Tensor, data: Canvases) -> dict[str, Tensor]:
    """Pointing-game hits (B,) of word 0 on the left digit and word 1 on the right one, and
    the hits on the OTHER digit (the map pointing at the wrong word)."""
    return {
        "word 0 -> left": metrics.pointing_game(maps[:, 0], data.boxes[:, 0], TOLERANCE),
        "word 1 -> right": metrics.pointing_game(maps[:, 1], data.boxes[:, 1], TOLERANCE),
        "word 0 -> right (wrong)": metrics.pointing_game(maps[:, 0], data.boxes[:, 1],
                                                         TOLERANCE),
        "word 1 -> left (wrong)": metrics.pointing_game(maps[:, 1], data.boxes[:, 0],
                                                        TOLERANCE),
    }


def chance(data: Canvases, draws: int = 20, seed: int = 0) -> dict[str, float]:
    """Hit rate of maps whose peak is a uniformly random pixel, with the same tolerance."""
    g = torch.Generator().manual_seed(seed)
    n = len(data.images)
    out = {}
    for side, name in ((0, "left"), (1, "right")):
        hits = [
            metrics.pointing_game(torch.rand(n, HEIGHT, WIDTH, generator=g),
                                  data.boxes[:, side], TOLERANCE).float().mean()
            for _ in range(draws)
        ]
        out[name] = float(torch.stack(hits).mean())
    return out


def picture(model: Captioner, data: Canvases, indices: list[int],
            method: str = "gradcam") -> np.ndarray:
    """Rows of: the canvas, then one overlay per generated word, titled with the word."""
    x = data.images[indices]
    maps = explain_words(model, x, method=method)
    with torch.no_grad():
        words = model(normalise(x)).argmax(-1)
    rows = []
    for r in range(len(indices)):
        canvas = (x[r, 0].numpy() * 255).astype(np.uint8)
        rgb = np.repeat(canvas[:, :, None], 3, axis=2)
        titles = [f"{method}, word {t}: '{VOCAB[int(words[r, t])]}'"
                  for t in range(maps.shape[1])]
        truth = " ".join(VOCAB[int(c)] for c in data.captions[indices[r], :2])
        rows.append(viz.grid(rgb, list(maps[r]), titles, image_title=f"truth: {truth}",
                             panel_height=128, font_size=13))
    width = max(r.shape[1] for r in rows)
    gap = np.full((4, width, 3), 255, np.uint8)
    sheet = []
    for i, row in enumerate(rows):
        if i:
            sheet.append(gap)
        pad = np.full((row.shape[0], width - row.shape[1], 3), 255, np.uint8)
        sheet.append(np.concatenate([row, pad], 1))
    return np.concatenate(sheet, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/images",
                        help="folder for captioning_words.png and captioning_words_hirescam.png")
    parser.add_argument("--quick", action="store_true", help="train for a few seconds only")
    parser.add_argument("--test", type=int, default=200, help="held-out canvases")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print("Training the captioner (CNN encoder + GRU decoder, teacher forcing):", flush=True)
    cpu = time.process_time()
    model, seconds = build(args.quick, args.seed)
    cpu = time.process_time() - cpu
    n_params = sum(p.numel() for p in model.parameters())
    data = held_out(args.test, args.seed)
    with torch.no_grad():
        generated = model(normalise(data.images)).argmax(-1)
    words_ok = (generated == data.captions).float().mean(0)
    caption_ok = float((generated == data.captions).all(1).float().mean())
    print(f"\n{n_params} parameters, trained in {seconds:.1f} s wall, {cpu:.1f} s CPU (one "
          f"thread). On {args.test} held-out "
          f"canvases: caption accuracy {caption_ok:.1%} (word 0 {float(words_ok[0]):.1%}, "
          f"word 1 {float(words_ok[1]):.1%}, <end> {float(words_ok[2]):.1%}).")

    print(f"\nPointing game (peak within {TOLERANCE} px of the digit's box), layer "
          f"{LAYER!r}, target TokenTarget(step=[0, 1]), one pass per method:")
    base = chance(data, seed=args.seed)
    print(f"  chance (uniform random peak): left {base['left']:.1%}, right {base['right']:.1%}")
    results = {}
    for method in ("gradcam", "hirescam", "layercam"):
        t0 = time.perf_counter()
        maps = explain_words(model, data.images, method=method)
        sec = time.perf_counter() - t0
        hits = {k: float(v.float().mean()) for k, v in pointing(maps, data).items()}
        results[method] = hits
        print(f"  {method:<9} maps {tuple(maps.shape)} in {sec:.2f} s: "
              + ", ".join(f"{k} {v:.1%}" for k, v in hits.items()))

    out = Path(args.out)
    for method, name in (("gradcam", "captioning_words.png"),
                         ("hirescam", "captioning_words_hirescam.png")):
        path = viz.save_image(picture(model, data, [0, 1, 2], method), out / name)
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
