"""Which layer of a vision transformer to explain: a layer comparison (no downloads).

Builds torchvision's ViT-B/16 and Swin-T with seeded random weights, explains
scikit-image's ``chelsea`` photo with Grad-CAM at several layers of each, and writes
``transformers_layers.png`` (one row per model) to the ``--out`` folder.

Nothing is downloaded, so the weights are random: the maps do not show what a trained
model looks at, only where a layer *can* carry a map at all, and that part does not
depend on the weights:

* ViT-B/16 classifies from the class token alone. After the last block nothing mixes the
  tokens any more, so the gradient at every patch token of the last block's output (and
  of the final norm) is exactly zero, and so is the map. The last block's first norm
  (``ln_1``, what ``layer="auto"`` picks) still feeds the attention that mixes patches into
  the class token: its map is alive.
* Swin-T averages all tokens for its head, so every patch gets a gradient: the last
  stage's first norm (auto), the last stage's output and the final norm all give maps.

Run: ``python examples/vision_transformer.py [--out docs/images]`` (about 20 s on a CPU).
Needs ``pip install 'camlens[demo]' torchvision``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data
from torch import nn
from torchvision import models

import camlens
from camlens import viz

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
TABBY = 281  # ImageNet "tabby cat"; with random weights any class shows the same effect

# (model, [(layer, title)]): "auto" is what layer="auto" picks
LAYERS = {
    "ViT-B/16": [
        ("auto", "auto: block 12 ln_1"),
        ("encoder.layers.encoder_layer_5.ln_1", "block 6 ln_1"),
        ("encoder.layers.encoder_layer_11", "block 12 output"),
        ("encoder.ln", "final norm"),
    ],
    "Swin-T": [
        ("auto", "auto: last block norm1"),
        ("features.5", "stage 3 output"),
        ("features.7", "stage 4 output"),
        ("norm", "final norm"),
    ],
}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "ViT-B/16":
        model = models.vit_b_16(weights=None)
        nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision starts it at zero
    else:
        model = models.swin_t(weights=None)
    return model.eval()


def photo_224() -> tuple[np.ndarray, torch.Tensor]:
    """chelsea, shorter side resized to 224 and centre-cropped: (uint8 crop, (1, 3, 224, 224))."""
    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255
    h, w = img.shape[2:]
    scale = 224 / min(h, w)
    img = F.interpolate(img, size=(round(h * scale), round(w * scale)), mode="bilinear",
                        antialias=True, align_corners=False)
    top, left = (img.shape[2] - 224) // 2, (img.shape[3] - 224) // 2
    img = img[:, :, top : top + 224, left : left + 224].clamp(0, 1)
    crop = (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return crop, (img - MEAN) / STD


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="folder for the picture")
    args = parser.parse_args(argv)
    crop, x = photo_224()
    rows = []
    for name, layers in LAYERS.items():
        model = build(name)
        maps = {}
        for layer, title in layers:
            explainer = camlens.Explainer(model, "gradcam", layer=layer)
            raw = explainer(x, target=TABBY, normalize=False)[0]
            peak = float(raw.max())
            print(f"{name:9s} {explainer.layer_names[0]:40s} map max {peak:.3g}")
            # shown min-max normalised; an all-zero map stays all zero (dark blue)
            shown = (raw - raw.min()) / (peak - float(raw.min())) if peak > raw.min() else raw
            maps[title if peak > 0 else f"{title}: all 0"] = shown
        rows.append(viz.grid(crop, maps, image_title=name, panel_height=192, font_size=13))
    width = max(r.shape[1] for r in rows)
    gap = np.full((6, width, 3), 255, np.uint8)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
              for r in rows]
    sheet = viz.Picture(np.concatenate([padded[0], gap, *padded[1:]]))
    path = sheet.save(Path(args.out) / "transformers_layers.png")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
