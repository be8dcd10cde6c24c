"""Explain a semantic segmenter with ``camlens.SegmentationTarget`` (Seg-Grad-CAM).

The segmenter is built from the bundled *pretrained* ImageNet classifier, so its output
means something without any download: EfficientNet-Lite0's linear classifier is applied
as a 1x1 convolution at every position of the last feature map (an FCN, Long et al. 2015),
giving (B, 1000, h, w) logits, upsampled to the image and returned as ``{"out": logits}``
like torchvision's DeepLabV3. ``SegmentationTarget(c)`` explains the summed logit of class
``c`` over the pixels where ``c`` wins (Vinogradova et al. 2020,
https://arxiv.org/abs/2002.11434). Prints the class, its region and the share of each
map's energy that falls inside that region; saves ``task_segmentation.png``.

torchvision's DeepLabV3 works the same way (layer ``backbone.layer4``)::

    from torchvision.models.segmentation import deeplabv3_resnet50
    model = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21)
    model.load_state_dict(torch.load("deeplabv3.pth", weights_only=True))
    maps = camlens.explain(model, x, layer="backbone.layer4",
                           target=camlens.SegmentationTarget(15))   # 15 = person (VOC)

Run: ``python examples/segmentation.py [--out DIR]`` (default ``docs/images``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _lite import Features, resized, to_input  # examples/_lite.py
from skimage import data
from torch import Tensor, nn

import camlens
from camlens import metrics, viz
from camlens.targets import SegmentationTarget

METHODS = ["gradcam", "hirescam", "layercam"]


class FCNSegmenter(nn.Module):
    """Per-pixel ImageNet logits: the classifier's linear layer as a 1x1 convolution."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.backbone = Features(classifier)
        self.fc = classifier._fc  # shared, not copied: (1000, 1280) weights and bias

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.backbone(x)
        logits = F.conv2d(features, self.fc.weight[:, :, None, None], self.fc.bias)
        out = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": out}


def region_picture(image: np.ndarray, region: Tensor) -> np.ndarray:
    """The photo with the class's region tinted green and the rest darkened."""
    mask = region.numpy()[..., None]
    green = np.array([40, 220, 60], np.float32)
    out = np.where(mask, 0.55 * image + 0.45 * green, 0.35 * image)
    return np.clip(out, 0, 255).astype(np.uint8)


def main(out: str | Path = "docs/images") -> dict[str, dict[str, float]]:
    """Explain the top class of two photos; returns {photo: {number: value}}."""
    classifier, preprocess, labels = camlens.load_model()
    segmenter = FCNSegmenter(classifier).eval()
    photos = {"chelsea": (data.chelsea(), (224, 320)), "coffee": (data.coffee(), (224, 320))}
    rows, results = [], {}
    for name, (photo, size) in photos.items():
        x = to_input(photo, size, preprocess)
        with torch.no_grad():
            logits = segmenter(x)["out"]
        winners = logits.argmax(1)[0]
        c = int(winners.flatten().mode().values)  # the class that wins most pixels
        region = winners == c
        target = SegmentationTarget(c)
        maps = camlens.compare(segmenter, x, METHODS, layer="backbone", target=target)
        area = float(region.float().mean())
        row = {"class": c, "region_share": area}
        print(f"{name}: class {c} '{labels[c]}' wins {area:.1%} of the pixels")
        for method in METHODS:
            energy = float(metrics.energy_pointing_game(maps[method], region[None])[0])
            row[f"energy_in_region_{method}"] = energy
            print(f"  {method:<9} map energy inside the region: {energy:.1%}")
        results[name] = row
        rgb = resized(photo, size)
        overlays = [viz.overlay(rgb, maps[m][0]) for m in METHODS]
        titles = [f"{m}: {energy:.0%} in region" for m, energy in
                  zip(METHODS, (row[f"energy_in_region_{m}"] for m in METHODS))]
        rows.append(viz.compose_grid(rgb, [region_picture(rgb, region), *overlays],
                                     [f"'{labels[c]}' wins", *titles], image_title=name,
                                     panel_height=200))
    width = max(r.shape[1] for r in rows)
    sheet = np.full((sum(r.shape[0] for r in rows) + 4 * (len(rows) - 1), width, 3), 255,
                    np.uint8)
    top = 0
    for r in rows:
        sheet[top : top + r.shape[0], : r.shape[1]] = r
        top += r.shape[0] + 4
    path = viz.Picture(sheet).save(Path(out) / "task_segmentation.png")
    print(f"saved {path}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="folder for the picture")
    main(parser.parse_args().out)
