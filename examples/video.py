"""Explain a video classifier: maps (B, T, H, W), one per frame, from a 5-D layer.

The "video" is 8 frames of a camera panning across scikit-image's ``chelsea`` (the cat
moves left in the frame as the camera moves right). The classifier is a TSN-style wrapper
(Wang et al. 2016) around the bundled *pretrained* EfficientNet-Lite0: frames (B, C, T, H,
W) are folded into the batch, run through the network's features and unfolded to
(B, 1280, T, h, w), a 5-D layer; then averaged over time and space and classified. camlens
explains that layer like any other and upsamples the maps trilinearly to (B, T, H, W).
Prints the class and how far the map's centre of mass moves against how far the cat moves;
saves ``task_video.png`` (the frames, and their maps below).

3-D CNNs work the same way; with torchvision's R(2+1)D / R3D, explain ``layer4``::

    from torchvision.models.video import r3d_18
    model = r3d_18(weights=None)                       # load your weights
    clip = torch.randn(1, 3, 8, 112, 112)              # (B, C, T, H, W)
    maps = camlens.explain(model, clip, layer="layer4")   # (1, 8, 112, 112)
    # layer4's output is (1, 512, 1, 7, 7): time is strided to 1, so the maps of the
    # 8 frames are alike; explain layer3 (T = 2) for more temporal detail

Run: ``python examples/video.py [--out DIR]`` (default ``docs/images``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data
from torch import Tensor, nn

import camlens
from camlens import viz

FRAMES = 8
SIZE = 192  # each frame: a 300 x 300 window of the 300 x 451 photo, resized to 192 x 192


class FrameFeatures(nn.Module):
    """(B, C, T, H, W) video -> (B, 1280, T, h, w): the 2-D network on every frame."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, video: Tensor) -> Tensor:
        b, c, t, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * t, c, h, w)
        features = self.classifier.extract_features(frames)
        return features.view(b, t, *features.shape[1:]).transpose(1, 2)


class TemporalSegmentNetwork(nn.Module):
    """Per-frame features, averaged over time and space, then the pretrained classifier."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.features = FrameFeatures(classifier)
        self.fc = classifier._fc  # shared with the classifier, not copied

    def forward(self, video: Tensor) -> Tensor:
        return self.fc(self.features(video).mean((2, 3, 4)))


def panning_clip(image: np.ndarray, frames: int = FRAMES, size: int = SIZE
                 ) -> tuple[np.ndarray, list[int]]:
    """(T, size, size, 3) uint8 frames of a square window panning left to right, and the
    window's left edge in the photo's pixels for each frame."""
    h, w = image.shape[:2]
    lefts = [round(i * (w - h) / (frames - 1)) for i in range(frames)]
    clip = torch.stack([torch.from_numpy(image[:, x : x + h]) for x in lefts])
    clip = clip.permute(0, 3, 1, 2).float()
    clip = F.interpolate(clip, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)
    return clip.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy(), lefts


def to_input(clip: np.ndarray, preprocess: Any) -> Tensor:
    """(T, H, W, 3) uint8 frames -> normalised (1, 3, T, H, W)."""
    x = torch.from_numpy(clip).permute(3, 0, 1, 2).float()[None] / 255
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1, 1)
    return (x - mean) / std


def centre_x(maps: Tensor) -> Tensor:
    """Horizontal centre of mass (T,) of (T, H, W) maps, in pixels."""
    cols = torch.arange(maps.shape[-1], dtype=maps.dtype)
    mass = maps.sum(1)  # (T, W)
    return (mass * cols).sum(1) / mass.sum(1).clamp_min(1e-12)


def main(out: str | Path = "docs/images") -> dict[str, Any]:
    """Explain the clip's top class; returns the class, the maps' shape and the motion."""
    classifier, preprocess, labels = camlens.load_model()
    model = TemporalSegmentNetwork(classifier).eval()
    photo = data.chelsea()
    clip, lefts = panning_clip(photo)
    x = to_input(clip, preprocess)  # (1, 3, 8, 192, 192)
    explainer = camlens.Explainer(model, "gradcam", layer="features")
    maps = explainer(x)[0]  # (T, H, W)
    probs = explainer.last_output.softmax(1)[0]
    c = int(probs.argmax())
    print(f"clip {tuple(x.shape)} -> maps {tuple(maps.shape)}; top class '{labels[c]}' "
          f"{float(probs[c]):.1%}")
    centres = centre_x(maps)
    scale = SIZE / photo.shape[0]
    camera = (lefts[-1] - lefts[0]) * scale  # the cat moves this far left in the frame
    moved = float(centres[0] - centres[-1])
    print("map centre of mass per frame (x, px): "
          + " ".join(f"{float(v):.0f}" for v in centres))
    shift = torch.tensor([-v * scale for v in lefts])  # where the cat is, up to a constant
    r = float(torch.corrcoef(torch.stack([centres, shift]))[0, 1])
    print(f"the camera pans {camera:.0f} px; the map's centre moves {moved:.0f} px the "
          f"other way ({moved / camera:.0%} of the pan; correlation with the cat's "
          f"position r = {r:.2f})")
    overlays = [viz.overlay(frame, m) for frame, m in zip(clip, maps)]
    row = np.concatenate([np.pad(f, ((0, 0), (0, 4), (0, 0)), constant_values=255)
                          for f in clip], 1)
    heat = np.concatenate([np.pad(np.asarray(o), ((0, 0), (0, 4), (0, 0)),
                                  constant_values=255) for o in overlays], 1)
    sheet = np.concatenate([row, np.full((4, row.shape[1], 3), 255, np.uint8), heat], 0)
    path = viz.Picture(sheet[:, :-4]).save(Path(out) / "task_video.png")
    print(f"saved {path}")
    return {"class": c, "probability": float(probs[c]), "maps_shape": tuple(maps.shape),
            "camera_px": camera, "map_moved_px": moved, "correlation": r}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="folder for the picture")
    main(parser.parse_args().out)
