"""Grad-CAM on Keras's VGG16, written by hand as in the article, and with camlens.

The article writes Grad-CAM by hand for ``keras.applications.VGG16`` (the recipe of
Keras's code example "Grad-CAM class activation visualization", which uses Xception): it
makes the last Dense layer linear (``model.layers[-1].activation = None``), builds
``keras.Model(model.inputs, [model.get_layer("block5_conv3").output, model.output])``,
records the class score under ``tf.GradientTape``, averages the gradients over the feature
map's positions to weight its channels, sums the weighted channels, keeps the positive
part and divides it by its maximum before drawing it over the photo.

This example runs that recipe (with ``tf.GradientTape`` on the TensorFlow backend, with
torch autograd on Keras's torch backend) next to ``camlens.explain(model, x,
method="gradcam", layer="block5_conv3")`` and prints how far apart the two maps are: the
14 x 14 raw maps and the 224 x 224 maps after bilinear upsampling (pixel centres,
``align_corners=False``) and min-max normalisation. Small differences from the article's
code, all so that the two sides compute the same thing: the gradients are averaged per
image (the article averages over the batch axis too, which only agrees for one image),
and the map is upsampled first, then min-max normalised (camlens's order; the article
divides by the maximum, which differs from min-max only where the map's minimum is not 0).
``tf.image.resize(..., "bilinear")`` and ``torch.nn.functional.interpolate(...,
align_corners=False)`` agree (both sample at pixel centres); the example checks that too.
The top class's map of a random VGG16 is positive everywhere, so the ReLU does nothing
there; a class from the middle of the logit ranking, whose map the ReLU cuts, is
compared as well.

Weights: ``--weights FILE`` loads your VGG16 weights (the ``.h5`` or ``.weights.h5`` file
of ``keras.applications.VGG16``); nothing is downloaded. Without it the network keeps its
seeded random (Glorot) initialisation: its logits are tiny and its maps mean nothing
about cats, but hand-written and camlens Grad-CAM must still agree to float32 round-off,
which is what this example checks. The photos are scikit-image's bundled ``chelsea`` and
``coffee``, centre-cropped, resized to 224 x 224 and passed through
``keras.applications.vgg16.preprocess_input``. Saves ``keras_vgg16_gradcam.png``.

Run: ``python examples/keras_vgg16_gradcam.py [--backend torch|tensorflow]
[--weights FILE] [--out DIR]`` (default ``docs/images``). Keras reads its backend once, at
its first import: ``--backend`` sets ``KERAS_BACKEND`` before that (default: the
environment's ``KERAS_BACKEND``, else torch).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

LAYER = "block5_conv3"  # VGG16's last convolution (14 x 14 x 512 at 224 x 224)
SIZE = 224
PHOTOS = ("chelsea", "coffee")
PANEL = 192  # picture panels' height in pixels


def photos(names: tuple[str, ...] = PHOTOS) -> np.ndarray:
    """scikit-image's bundled photos, centre-cropped square and resized: (N, 224, 224, 3)
    uint8 RGB."""
    from skimage import data
    from skimage.transform import resize

    out = []
    for name in names:
        rgb = getattr(data, name)()
        h, w = rgb.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        crop = rgb[top : top + s, left : left + s]
        small = resize(crop, (SIZE, SIZE), order=1, anti_aliasing=True, preserve_range=True)
        out.append(np.clip(np.rint(small), 0, 255).astype(np.uint8))
    return np.stack(out)


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """VGG16's own preprocessing (RGB -> BGR, ImageNet means subtracted), float32."""
    from keras.applications.vgg16 import preprocess_input

    return np.ascontiguousarray(preprocess_input(rgb.astype(np.float32)), dtype=np.float32)


def build_vgg16(weights: str | os.PathLike[str] | None = None, seed: int = 0) -> Any:
    """``keras.applications.VGG16`` with your weights file, or seeded random weights."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.applications.VGG16(weights=None if weights is None else str(weights))


@contextmanager
def linear_head(model: Any) -> Iterator[None]:
    """The article's ``model.layers[-1].activation = None`` (logits, not probabilities),
    undone afterwards."""
    head = model.layers[-1]
    saved = head.activation
    head.activation = None
    try:
        yield
    finally:
        head.activation = saved


def _minmax(maps: np.ndarray) -> np.ndarray:
    flat = maps.reshape(len(maps), -1)
    lo = flat.min(1, keepdims=True)
    span = flat.max(1, keepdims=True) - lo
    out = np.where(span > 0, (flat - lo) / np.where(span > 0, span, 1), 0.0)
    return out.reshape(maps.shape)


def _upsample_torch(raw: np.ndarray, size: int = SIZE) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))[:, None]
    up = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return up[:, 0].numpy()


def hand_gradcam(
    model: Any, x: np.ndarray, layer: str = LAYER, classes: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The article's Grad-CAM, per image: ``{"raw": (B, h, w), "maps": (B, 224, 224) in
    [0, 1], "classes": (B,), "logits": (B, 1000)}``.

    TensorFlow backend: ``tf.GradientTape`` and ``tf.image.resize`` (bilinear, half-pixel
    centres, as ``torch.nn.functional.interpolate(..., align_corners=False)``); torch
    backend: ``torch.autograd.grad`` and ``F.interpolate``.
    """
    import keras

    grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])
    with linear_head(model):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                conv, preds = grad_model(tf.convert_to_tensor(x), training=False)
                if classes is None:
                    classes = np.argmax(preds.numpy(), axis=1)
                score = tf.gather(preds, tf.constant(classes), axis=1, batch_dims=1)
            grads = tape.gradient(score, conv)  # (B, h, w, C): each image's own score
            weights = tf.reduce_mean(grads, axis=(1, 2))  # (B, C)
            raw = tf.nn.relu(tf.einsum("bhwc,bc->bhw", conv, weights))
            up = tf.image.resize(raw[..., None], (SIZE, SIZE), method="bilinear")[..., 0]
            raw_np, up_np, logits = raw.numpy(), up.numpy(), preds.numpy()
        else:
            import torch
            import torch.nn.functional as F

            conv, preds = grad_model(torch.from_numpy(x), training=False)
            if classes is None:
                classes = preds.detach().argmax(1).cpu().numpy()
            score = preds[torch.arange(len(x)), torch.as_tensor(classes)]
            (grads,) = torch.autograd.grad(score.sum(), conv)
            weights = grads.mean(dim=(1, 2))
            raw = torch.relu(torch.einsum("bhwc,bc->bhw", conv.detach(), weights))
            up = F.interpolate(raw[:, None], size=(SIZE, SIZE), mode="bilinear",
                               align_corners=False)[:, 0]
            raw_np, up_np = raw.cpu().numpy(), up.cpu().numpy()
            logits = preds.detach().cpu().numpy()
    return {"raw": raw_np, "maps": _minmax(up_np), "up": up_np,
            "classes": np.asarray(classes), "logits": logits}


def run(
    out: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    seed: int = 0,
    n_images: int = 2,
) -> dict[str, Any]:
    """Hand-written and camlens Grad-CAM on ``n_images`` photos (Keras's current backend);
    returns the differences and timings; saves the picture in ``out`` when given."""
    import keras

    import camlens

    t0 = time.perf_counter()
    model = build_vgg16(weights, seed)
    t_build = time.perf_counter() - t0
    rgb = photos(PHOTOS[:n_images] if n_images <= len(PHOTOS) else PHOTOS)
    x = preprocess(rgb)

    t0 = time.perf_counter()
    hand = hand_gradcam(model, x)
    t_hand = time.perf_counter() - t0
    classes = hand["classes"].tolist()

    t0 = time.perf_counter()
    ours = camlens.explain(model, x, method="gradcam", layer=LAYER).numpy()
    ours_raw = camlens.explain(model, x, method="gradcam", layer=LAYER, target=classes,
                               size=None, normalize=False).numpy()
    t_camlens = (time.perf_counter() - t0) / 2
    # ``ours`` was not told the classes: camlens explains the top-1 logit, as the article
    assert ours.shape == hand["maps"].shape == (len(x), SIZE, SIZE), ours.shape

    # a class from the middle of the ranking: its map is partly negative before the ReLU
    # (the top class's map of a random VGG16 is positive everywhere, so the ReLU is idle)
    middle = np.argsort(hand["logits"], axis=1)[:, hand["logits"].shape[1] // 2]
    hand_mid = hand_gradcam(model, x, classes=middle)
    ours_mid = camlens.explain(model, x, method="gradcam", layer=LAYER,
                               target=middle.tolist()).numpy()

    raw_scale = hand["raw"].reshape(len(x), -1).max(1)
    raw_rel = np.abs(ours_raw - hand["raw"]).reshape(len(x), -1).max(1) / raw_scale
    resize_diff = float(np.abs(_upsample_torch(hand["raw"]) - hand["up"]).max() / raw_scale.max())
    result: dict[str, Any] = {
        "backend": keras.backend.backend(),
        "weights": f"random (seed {seed})" if weights is None else str(weights),
        "classes": classes,
        "max_abs_logit": float(np.abs(hand["logits"]).max()),
        "raw_map_max": raw_scale.tolist(),
        "max_diff": float(np.abs(ours - hand["maps"]).max()),
        "max_rel_diff_raw": float(raw_rel.max()),
        "resize_vs_torch": resize_diff,
        "map_std": [float(m.std()) for m in ours],
        "map_positive_share": [float((m > 0).mean()) for m in hand["raw"]],
        "middle_classes": middle.tolist(),
        "middle_max_diff": float(np.abs(ours_mid - hand_mid["maps"]).max()),
        "middle_positive_share": [float((m > 0).mean()) for m in hand_mid["raw"]],
        "seconds": {"build": t_build, "hand": t_hand, "camlens": t_camlens},
    }
    if out is not None:
        result["picture"] = str(save_picture(rgb, hand["maps"], ours, classes, weights, out,
                                             result["backend"]))
    return result


def _class_names(classes: list[int], weights: Any) -> list[str]:
    if weights is None:
        return [f"class {c} (random weights)" for c in classes]
    from camlens.models import imagenet_labels

    labels = imagenet_labels()
    return [f"{labels[c]} ({c})" for c in classes]


def save_picture(
    rgb: np.ndarray, hand: np.ndarray, ours: np.ndarray, classes: list[int], weights: Any,
    out: str | os.PathLike[str], backend: str = "torch",
) -> Path:
    """One row per photo: the photo, the hand-written map, camlens's map."""
    from camlens import viz

    names = _class_names(classes, weights)
    tool = "tf.GradientTape" if backend == "tensorflow" else "torch autograd"
    rows = []
    for i in range(len(rgb)):
        diff = float(np.abs(hand[i] - ours[i]).max())
        pictures = [viz.overlay(rgb[i], hand[i]), viz.overlay(rgb[i], ours[i])]
        titles = [f"by hand ({tool})", f"camlens: max diff {diff:.1g}"]
        rows.append(np.asarray(viz.compose_grid(rgb[i], pictures, titles, image_title=names[i],
                                                panel_height=PANEL)))
    width = max(r.shape[1] for r in rows)
    sheet = np.full((sum(r.shape[0] for r in rows) + 4 * (len(rows) - 1), width, 3), 255,
                    np.uint8)
    top = 0
    for r in rows:
        sheet[top : top + r.shape[0], : r.shape[1]] = r
        top += r.shape[0] + 4
    return viz.Picture(sheet).save(Path(out) / "keras_vgg16_gradcam.png", compress_level=9)


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="folder for the picture")
    parser.add_argument("--weights", default=None,
                        help="VGG16 weights file (.h5 / .weights.h5); default: random")
    parser.add_argument("--backend", choices=("torch", "tensorflow"), default=None,
                        help="Keras backend (default: $KERAS_BACKEND, else torch)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("KERAS_BACKEND", "torch")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = run(args.out, args.weights, args.seed)
    if args.weights is None:
        print("VGG16 with seeded RANDOM weights (pass --weights FILE for trained ones): "
              "the maps say nothing about the photos; the check is that both sides agree.")
    print(f"backend {result['backend']}, classes {result['classes']}, "
          f"|logit| <= {result['max_abs_logit']:.3g}")
    print(f"max |hand - camlens| (224 x 224, normalised): {result['max_diff']:.3g}")
    print(f"max |hand - camlens| / max (14 x 14 raw):     {result['max_rel_diff_raw']:.3g}")
    print(f"classes {result['middle_classes']} (middle of the ranking; the ReLU cuts "
          f"{', '.join(f'{1 - s:.0%}' for s in result['middle_positive_share'])} of the "
          f"map): max diff {result['middle_max_diff']:.3g}")
    if result["backend"] == "tensorflow":
        print(f"tf.image.resize vs torch interpolate (relative): {result['resize_vs_torch']:.3g}")
    print(f"map std {', '.join(f'{s:.3f}' for s in result['map_std'])}; seconds "
          + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items()))
    if "picture" in result:
        print(f"saved {result['picture']}")
    return result


if __name__ == "__main__":
    main()
