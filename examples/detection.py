"""Explain an object detector's detection with ``camlens.BoxTarget``.

The detector is built from the bundled *pretrained* ImageNet classifier, so its boxes mean
something without any download: a sliding-window detector in the style of OverFeat
(Sermanet et al. 2014). At every cell of EfficientNet-Lite0's last feature map (stride 32)
and for windows of 3, 5 and 7 cells centred on it, the features inside the window are
averaged and classified by the pretrained linear layer. Its output is YOLO-style raw
predictions (B, N, 5 + 1000): box (cx, cy, w, h) in input pixels, objectness (the
window's highest class probability) and the class probabilities (softmax).

``BoxTarget(label, box)`` explains the score (objectness x class score) of the detection of
``label`` that overlaps ``box`` most; here the box is the detector's own best cat
detection on scikit-image's ``chelsea``. Prints the detection and the share of each map's
energy inside its box; saves ``task_detection.png``.

torchvision detectors return one dict per image; explain them at ``backbone.body.layer4``
(the last layer whose output still has the batch as first dimension)::

    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    model.load_state_dict(torch.load("frcnn.pth", weights_only=True))
    maps = camlens.explain(model, x, layer="backbone.body.layer4",    # x in [0, 1]
                           target=camlens.targets.BoxTarget(17, box))   # 17 = cat (COCO)

``--weights FILE`` does exactly that with a Faster R-CNN state dict read from FILE.

Run: ``python examples/detection.py [--out DIR] [--weights FILE]`` (default ``docs/images``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _lite import Features, resized, to_input  # examples/_lite.py
from skimage import data
from torch import Tensor, nn

import camlens
from camlens import metrics, viz
from camlens.targets import BoxTarget

METHODS = ["gradcam", "hirescam", "layercam"]
CATS = range(281, 286)  # ImageNet's domestic cats: tabby, tiger, Persian, Siamese, Egyptian


class WindowDetector(nn.Module):
    """Sliding-window detector: (B, N, 5 + 1000) = (cx, cy, w, h, objectness, class probs).

    ``N = len(windows) x h x w``; a window of ``k`` cells is centred on its cell and clipped
    to the image, and its box is the clipped window in input pixels.
    """

    def __init__(self, classifier: nn.Module, windows: tuple[int, ...] = (3, 5, 7)) -> None:
        super().__init__()
        self.backbone = Features(classifier)
        self.fc = classifier._fc  # shared with the classifier, not copied
        self.windows = windows

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x)
        b, _, h, w = features.shape
        stride_y, stride_x = x.shape[-2] / h, x.shape[-1] / w
        # linear classifier of averaged features = average of the per-cell logits
        logits = F.conv2d(features, self.fc.weight[:, :, None, None], self.fc.bias)
        rows = torch.arange(h, dtype=x.dtype, device=x.device)
        cols = torch.arange(w, dtype=x.dtype, device=x.device)
        out = []
        for k in self.windows:
            pooled = F.avg_pool2d(logits, k, stride=1, padding=k // 2, count_include_pad=False)
            probs = pooled.softmax(1).flatten(2).transpose(1, 2)  # (B, h * w, 1000)
            y0 = (rows - k // 2).clamp_min(0) * stride_y
            y1 = (rows + k // 2 + 1).clamp_max(h) * stride_y
            x0 = (cols - k // 2).clamp_min(0) * stride_x
            x1 = (cols + k // 2 + 1).clamp_max(w) * stride_x
            yy0, xx0 = torch.meshgrid(y0, x0, indexing="ij")
            yy1, xx1 = torch.meshgrid(y1, x1, indexing="ij")
            boxes = torch.stack([(xx0 + xx1) / 2, (yy0 + yy1) / 2, xx1 - xx0, yy1 - yy0], -1)
            boxes = boxes.reshape(1, h * w, 4).expand(b, -1, -1)
            objectness = probs.max(-1, keepdim=True).values
            out.append(torch.cat([boxes, objectness, probs], -1))
        return torch.cat(out, 1)


def rgb_of(x: Tensor, mean: Any = (0.0,) * 3, std: Any = (1.0,) * 3) -> np.ndarray:
    """(1, 3, H, W) input back to an RGB uint8 (H, W, 3) array."""
    rgb = x[0] * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def draw_box(picture: np.ndarray, box: Any, colour: tuple[int, int, int] = (255, 255, 255),
             width: int = 3) -> np.ndarray:
    """A copy of ``picture`` with ``box`` (x1, y1, x2, y2, input pixels) drawn on it."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.asarray(picture, dtype=np.uint8))
    x1, y1, x2, y2 = (float(v) for v in box)
    ImageDraw.Draw(canvas).rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour, width=width)
    return np.asarray(canvas)


def save_row(rgb: np.ndarray, maps: dict[str, Tensor], box: Any, title: str,
             energies: dict[str, float], path: Path) -> Path:
    pictures = [draw_box(viz.overlay(rgb, maps[m][0]), box) for m in maps]
    titles = [f"{m}: {energies[m]:.0%} in box" for m in maps]
    sheet = viz.compose_grid(draw_box(rgb, box), pictures, titles, image_title=title,
                             panel_height=224)
    return sheet.save(path)


def scene(preprocess: Any) -> tuple[Tensor, np.ndarray]:
    """A 512 x 288 picture with two objects: chelsea the cat (left) and an espresso (right)."""
    canvas = np.full((288, 512, 3), 128, np.uint8)
    canvas[16:272, 8:264] = resized(data.chelsea()[:, 60:360], (256, 256))
    canvas[32:256, 280:504] = resized(data.coffee()[:, 100:500], (224, 224))
    return to_input(canvas, canvas.shape[:2], preprocess), canvas


def object_box(pred: Tensor, classes: range) -> tuple[int, list[float]]:
    """(label, box) of one object from the detector's own detections of ``classes``.

    The label is that of the best-scoring detection; the box merges every detection of that
    label scoring at least half as much (small windows score highest, a merged box covers
    the whole object, as weighted box fusion would).
    """
    label_of = pred[:, 5:].argmax(1)
    score = pred[:, 4] * pred[:, 5:].max(1).values
    wanted = (label_of >= classes.start) & (label_of < classes.stop)
    best = int(torch.where(wanted, score, torch.full_like(score, -1.0)).argmax())
    label = int(label_of[best])
    keep = (label_of == label) & (score >= score[best] / 2)
    cx, cy, w, h = pred[keep, :4].unbind(1)
    box = [float((cx - w / 2).min()), float((cy - h / 2).min()),
           float((cx + w / 2).max()), float((cy + h / 2).max())]
    return label, box


def explain_grid_detector(out: Path) -> dict[str, Any]:
    classifier, preprocess, labels = camlens.load_model()
    detector = WindowDetector(classifier).eval()
    x, rgb = scene(preprocess)
    with torch.no_grad():
        pred = detector(x)
    print(f"{pred.shape[1]} detections (windows of 3, 5, 7 cells on a {pred.shape[1] // 3} "
          f"cell grid); input {x.shape[-1]} x {x.shape[-2]}")
    rows, results = [], {}
    for name, classes in (("cat", CATS), ("espresso", range(967, 968))):
        label, box = object_box(pred[0], classes)
        target = BoxTarget(label, box)
        score = float(target(pred)[0])  # objectness x class score of the matched detection
        maps = camlens.compare(detector, x, METHODS, layer="backbone", target=target)
        energies = {m: float(metrics.energy_pointing_game(maps[m], torch.tensor([box]))[0])
                    for m in METHODS}
        share = (box[2] - box[0]) * (box[3] - box[1]) / (x.shape[-1] * x.shape[-2])
        print(f"{name}: '{labels[label]}' box {[round(v) for v in box]} (x1, y1, x2, y2), "
              f"matched detection's score {score:.3f}; the box covers {share:.1%} of the image")
        for m in METHODS:
            print(f"  {m:<9} map energy inside the box: {energies[m]:.1%}")
        pictures = [draw_box(viz.overlay(rgb, maps[m][0]), box) for m in METHODS]
        titles = [f"{m}: {energies[m]:.0%} in box" for m in METHODS]
        rows.append(viz.compose_grid(draw_box(rgb, box), pictures, titles,
                                     image_title=f"{labels[label]} {score:.2f}",
                                     panel_height=200))
        results[name] = {"label": label, "score": score, "box": box, "box_share": share,
                         **{f"energy_in_box_{m}": e for m, e in energies.items()}}
    path = viz.Picture(np.concatenate(rows, 0)).save(out / "task_detection.png")
    print(f"saved {path}")
    return results


def explain_faster_rcnn(out: Path, weights: str | Path, **options: Any) -> dict[str, Any]:
    """Explain the top detection of torchvision's Faster R-CNN read from ``weights``."""
    from torchvision.models.detection import (
        FasterRCNN_ResNet50_FPN_Weights,
        fasterrcnn_resnet50_fpn,
    )

    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, **options)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    names = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    x = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255  # [0, 1]
    with torch.no_grad():
        det = model(x)[0]
    if len(det["scores"]) == 0:
        print("Faster R-CNN found nothing above its box_score_thresh; nothing to explain")
        return {"label": None}
    label, box = int(det["labels"][0]), det["boxes"][0].tolist()
    name = names[label] if label < len(names) else str(label)
    print(f"top detection: '{name}' score {float(det['scores'][0]):.3f} at box "
          f"{[round(v) for v in box]}")
    maps = camlens.compare(model, x, METHODS, layer="backbone.body.layer4",
                           target=BoxTarget(label, box))
    boxes = torch.tensor([box])
    energies = {m: float(metrics.energy_pointing_game(maps[m], boxes)[0]) for m in METHODS}
    for m in METHODS:
        print(f"  {m:<9} map energy inside the box: {energies[m]:.1%}")
    path = save_row(rgb_of(x), maps, box, f"'{name}' {float(det['scores'][0]):.2f}",
                    energies, out / "task_detection_fasterrcnn.png")
    print(f"saved {path}")
    return {"label": label, "score": float(det["scores"][0]), "box": box,
            **{f"energy_in_box_{m}": e for m, e in energies.items()}}


def main(out: str | Path = "docs/images", weights: str | Path | None = None,
         **detector_options: Any) -> dict[str, Any]:
    """Explain the grid detector's best cat, or (``weights``) Faster R-CNN's top detection.

    ``detector_options`` go to ``fasterrcnn_resnet50_fpn`` (e.g. ``min_size=160``).
    """
    out = Path(out)
    if weights is not None:
        return explain_faster_rcnn(out, weights, **detector_options)
    return explain_grid_detector(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="folder for the picture")
    parser.add_argument("--weights", help="a fasterrcnn_resnet50_fpn state dict (.pth)")
    args = parser.parse_args()
    main(args.out, args.weights)
