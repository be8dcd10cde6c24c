"""The pictures of docs/augment.md: each camlens.augment transform on a few digit canvases.

A GapCNN (``examples/_digits.py``, width 16) is trained without augmentation on 1,000
canvases of 48 x 48 pixels (one digit, 3 strokes of clutter), the setting of
``bench/bench_augment.py``. Then one batch of held-out canvases goes through each
transform with the trained model as guide (``p=1``, so every image is changed):

- row 1: the canvases with the Grad-CAM of their label (what guides the transforms);
- ``CamErase``: the erased rectangle (outlined) lies off the map's high region;
- ``AttentiveCutMix``: the 6 grid cells (of 7 x 7) with the most map of the partner image,
  pasted (outlined), and the soft label;
- ``SaliencyMix``: a box centred on the partner's map peak, pasted (outlined), and the
  soft label.

Writes ``augment_examples.png`` into ``--out`` (default ``docs/images``). About 30 s on
one CPU thread.

Run: ``python examples/augment_picture.py [--out DIR] [--seed 0]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _digits import GapCNN, canvases, fit, split_digits  # noqa: E402

import camlens  # noqa: E402
from camlens.augment import AttentiveCutMix, CamErase, SaliencyMix  # noqa: E402

SCALE = 3  # each 48 px canvas drawn at 144 px
OUTLINE = np.array([255, 255, 0], np.uint8)


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H * SCALE, W * SCALE, 3) uint8, nearest neighbour."""
    rgb = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return rgb.repeat(SCALE, 0).repeat(SCALE, 1)


def outlined(rgb: np.ndarray, region: torch.Tensor) -> np.ndarray:
    """Draw the boundary of ``region`` (H, W) bool (at the canvas's size) in yellow."""
    big = region.numpy().repeat(SCALE, 0).repeat(SCALE, 1)
    inner = big.copy()
    inner[1:] &= big[:-1]
    inner[:-1] &= big[1:]
    inner[:, 1:] &= big[:, :-1]
    inner[:, :-1] &= big[:, 1:]
    out = rgb.copy()
    out[big & ~inner] = OUTLINE
    return out


def label_text(soft: torch.Tensor) -> str:
    """'label 7' for a one-hot label, '7 .88 + 3 .12' for a mixed one."""
    parts = [(float(v), int(c)) for c, v in enumerate(soft) if v > 1e-6]
    parts.sort(reverse=True)
    if len(parts) == 1:
        return f"label {parts[0][1]}"
    return " + ".join(f"{c} {v:.2f}".replace(" 0.", " .") for v, c in parts)


def sheet(rows: list[tuple[str, list[tuple[np.ndarray, str]]]]) -> np.ndarray:
    """Rows of captioned panels with a row title on the left."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    ph, pw = rows[0][1][0][0].shape[:2]
    title_w, caption_h, gap = 150, 20, 6
    cols = max(len(panels) for _, panels in rows)
    width = title_w + cols * (pw + gap)
    height = len(rows) * (ph + caption_h + gap)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for r, (title, panels) in enumerate(rows):
        y = r * (ph + caption_h + gap)
        for k, line in enumerate(title.split("\n")):
            draw.text((4, y + ph // 2 - 16 + 16 * k), line, fill="black", font=font)
        for c, (panel, caption) in enumerate(panels):
            x = title_w + c * (pw + gap)
            img.paste(Image.fromarray(panel), (x, y))
            draw.text((x + 2, y + ph + 3), caption, fill="black", font=font)
    return np.asarray(img)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1]
                        / "docs" / "images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train_digits, test_digits = split_digits(seed=0)
    train = canvases(train_digits, 1000, size=48, scale=(3, 3), clutter=3, seed=100)
    torch.manual_seed(args.seed)
    model = GapCNN(classes=10, width=16)
    fit(model, train.images, train.first(), epochs=15, seed=args.seed)

    shown = canvases(test_digits, 5, size=48, scale=(3, 3), clutter=3, seed=7)
    x, labels = shown.tensor(), torch.as_tensor(shown.first())
    maps = camlens.explain(model, x, target=labels.tolist())
    rows = [("canvas and the\nGrad-CAM of its label", [
        (np.asarray(camlens.viz.overlay(to_rgb(x[i]), maps[i], alpha=0.45)),
         f"#{i}: label {int(labels[i])}") for i in range(len(x))
    ])]
    for name, aug in (
        ("CamErase\n(erased off the map)", CamErase(model, p=1.0, num_classes=10, seed=1)),
        ("AttentiveCutMix\n(6 of 7 x 7 cells)", AttentiveCutMix(model, num_classes=10, seed=1)),
        ("SaliencyMix\n(box on the peak)", SaliencyMix(model, num_classes=10, seed=1)),
    ):
        out, soft = aug(x, labels)
        record = aug.last
        assert record is not None
        panels = []
        for i in range(len(x)):
            j = int(record.partner[i])
            source = "" if j == i else f"from #{j}: "
            panels.append((outlined(to_rgb(out[i]), record.region[i].cpu()),
                           source + label_text(soft[i])))
        rows.append((name, panels))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "augment_examples.png"
    camlens.viz.save_image(sheet(rows), path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
