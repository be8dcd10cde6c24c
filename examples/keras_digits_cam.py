"""CAM on a small Keras CNN with a global-average-pooling head, with and without max pooling.

The article trains a small Keras CNN that ends ``Conv2D -> GlobalAveragePooling2D ->
Dense(10, softmax)`` on digits, draws class activation maps (CAM, Zhou et al. 2016: the
last convolution's channels weighted by the Dense weights of the class) and argues that
dropping the max-pooling layers, so that the last feature map keeps the input's
resolution, localises the digit better.

This example rebuilds that experiment with nothing downloaded: scikit-learn's bundled
8 x 8 digits are upscaled to 12 x 12 and put at random places on 32 x 32 canvases of
Gaussian noise, so the box of every digit is known. Two networks with the same four 3 x 3
convolutions (16, 32, 32, 32 filters, ReLU, "same" padding) are trained the same way
(same canvases, same seed, hence the same initial weights and batches, same epochs):

- ``pooling``: a 2 x 2 max pooling after each convolution but the last (last map 4 x 4);
- ``no pooling``: the same convolutions at stride 1 (last map 32 x 32).

Both are explained with ``camlens.compare(model, x, ["cam", "gradcam"], layer="conv4",
target=true_labels)`` on held-out canvases (digits never seen in training), scored with
the pointing game (is the map's maximum inside the digit's box?) and the energy pointing
game (the share of the map inside the box); a map that knows nothing scores about the
box's share of the canvas on both. On a GAP + Dense model CAM and Grad-CAM are the same
map up to a factor (H * W), so their normalised maps must agree: a sanity check of
camlens's Keras support. Prints a table and saves ``keras_digits_cam.png`` (a few
held-out canvases, the digit's box in green, the CAM of each network).

Run: ``python examples/keras_digits_cam.py [--out DIR] [--seeds 0 1 2] [--epochs 8]``
(default ``docs/images``; Keras's torch backend unless ``KERAS_BACKEND`` says otherwise).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CANVAS = 32  # canvas side in pixels
DIGIT = 12  # side of an upscaled digit
NOISE = 0.1  # std of the background noise (digits are in [0, 1])
FILTERS = (16, 32, 32, 32)  # the four 3 x 3 convolutions of both networks
LAYER = f"conv{len(FILTERS)}"  # the last convolution: CAM's layer
VARIANTS = {"pooling": True, "no pooling": False}
SHOW = 6  # canvases in the picture


def make_canvases(
    seed: int = 0, n_train: int = 1400, canvas: int = CANVAS, digit: int = DIGIT,
    noise: float = NOISE,
) -> dict[str, np.ndarray]:
    """Digits on noisy canvases, split by digit image: ``x_*`` (N, canvas, canvas, 1)
    float32, ``y_*`` (N,) labels, ``box_*`` (N, 4) pixel boxes x0, y0, x1, y1 (exclusive)
    around each digit's ink (pixels above 0.2 of full ink)."""
    from skimage.transform import resize
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, labels = bunch.images / 16.0, bunch.target
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    parts = {"train": order[:n_train], "test": order[n_train:]}
    out: dict[str, np.ndarray] = {}
    for part, idx in parts.items():
        x = rng.normal(0.0, noise, (len(idx), canvas, canvas)).astype(np.float32)
        boxes = np.empty((len(idx), 4), np.int64)
        for i, j in enumerate(idx):
            ink = resize(images[j], (digit, digit), order=1, anti_aliasing=False)
            y0, x0 = rng.integers(0, canvas - digit + 1, size=2)
            x[i, y0 : y0 + digit, x0 : x0 + digit] += ink.astype(np.float32)
            ys, xs = np.nonzero(ink > 0.2)
            boxes[i] = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
        out[f"x_{part}"], out[f"y_{part}"], out[f"box_{part}"] = x[..., None], labels[idx], boxes
    return out


def build_model(pooling: bool, canvas: int = CANVAS, filters: Sequence[int] = FILTERS) -> Any:
    """``[Conv2D(relu) (-> MaxPooling2D)] x n -> GlobalAveragePooling2D -> Dense(10,
    softmax)``; the pooling layers have no weights, so both variants draw the same
    initial weights from the same seed."""
    import keras
    from keras import layers

    stack: list[Any] = [keras.Input((canvas, canvas, 1))]
    for i, n in enumerate(filters, start=1):
        stack.append(layers.Conv2D(n, 3, padding="same", activation="relu",
                                   kernel_initializer="he_normal", name=f"conv{i}"))
        if pooling and i < len(filters):
            stack.append(layers.MaxPooling2D(2, name=f"pool{i}"))
    stack += [layers.GlobalAveragePooling2D(name="gap"),
              layers.Dense(10, activation="softmax", name="predictions")]
    return keras.Sequential(stack, name="pooling" if pooling else "no_pooling")


def train(
    pooling: bool, data: dict[str, np.ndarray], seed: int = 0, epochs: int = 8,
    batch_size: int = 16, learning_rate: float = 3e-3,
) -> tuple[Any, dict[str, Any]]:
    """A seeded model trained with ``model.fit`` (Adam, cross-entropy)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(pooling, data["x_train"].shape[1])
    initial = [np.array(w) for w in model.get_weights()]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(data["x_train"], data["y_train"], epochs=epochs,
                        batch_size=batch_size, verbose=0)
    seconds = time.perf_counter() - start
    return model, {"train_seconds": seconds, "initial_weights": initial,
                   "train_accuracy": float(history.history["accuracy"][-1]),
                   "loss": [float(v) for v in history.history["loss"]]}


def evaluate(model: Any, data: dict[str, np.ndarray]) -> dict[str, Any]:
    """Held-out accuracy, and CAM (true class) scored against the digits' boxes."""
    import keras
    import torch

    import camlens
    from camlens import metrics

    x, y, boxes = data["x_test"], data["y_test"], torch.as_tensor(data["box_test"])
    probs = keras.ops.convert_to_numpy(model.predict(x, batch_size=256, verbose=0))
    start = time.perf_counter()
    maps = camlens.compare(model, x, ["cam", "gradcam"], layer=LAYER, target=y.tolist())
    seconds = time.perf_counter() - start
    cam = maps["cam"]
    hits = metrics.pointing_game(cam, boxes, tolerance=0)
    energy = metrics.energy_pointing_game(cam, boxes)
    return {
        "accuracy": float((probs.argmax(1) == y).mean()),
        "pointing_game": float(hits.float().mean()),
        "energy_in_box": float(energy.mean()),
        "cam_vs_gradcam": float((cam - maps["gradcam"]).abs().max()),
        "cam_std": float(cam.std(dim=(1, 2)).mean()),
        "explain_seconds": seconds,
        "maps": cam,
        "predicted": probs.argmax(1),
    }


def box_share(boxes: np.ndarray, canvas: int = CANVAS) -> float:
    """The boxes' mean share of the canvas: the chance level of both games."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return float(area.mean() / canvas**2)


def run(
    out: str | os.PathLike[str] | None = None, seeds: Sequence[int] = (0,), epochs: int = 8,
    n_train: int = 1400, verbose: bool = False,
) -> dict[str, Any]:
    """Train and explain both variants for each seed. Returns ``{"chance": ..., "runs":
    [{"seed", "variant", "accuracy", "pointing_game", "energy_in_box", ...}], "mean":
    {variant: {number: mean over seeds}}}``; saves the picture (first seed) in ``out``."""
    import keras

    runs: list[dict[str, Any]] = []
    chance: list[float] = []
    shown: dict[str, Any] = {}
    for seed in seeds:
        data = make_canvases(seed, n_train)
        chance.append(box_share(data["box_test"], data["x_test"].shape[1]))
        initial = None
        for variant, pooling in VARIANTS.items():
            model, fit = train(pooling, data, seed, epochs)
            if initial is None:
                initial = fit["initial_weights"]
            same_start = all(np.array_equal(a, b)
                             for a, b in zip(initial, fit["initial_weights"]))
            scores = evaluate(model, data)
            row = {"seed": seed, "variant": variant, "same_initial_weights": same_start,
                   "layer_size": tuple(model.get_layer(LAYER).output.shape[1:3]),
                   **{k: v for k, v in fit.items() if k != "initial_weights"},
                   **{k: v for k, v in scores.items() if k not in ("maps", "predicted")}}
            runs.append(row)
            if verbose:
                print(_row_text(row), flush=True)
            if seed == seeds[0]:
                shown[variant] = (scores["maps"], scores["predicted"])
        if seed == seeds[0]:
            shown["data"] = data
    mean = {
        variant: {key: float(np.mean([r[key] for r in runs if r["variant"] == variant]))
                  for key in ("accuracy", "pointing_game", "energy_in_box", "train_seconds")}
        for variant in VARIANTS
    }
    result: dict[str, Any] = {"backend": keras.backend.backend(), "seeds": list(seeds),
                              "epochs": epochs, "chance": float(np.mean(chance)),
                              "runs": runs, "mean": mean}
    if out is not None:
        result["picture"] = str(save_picture(shown, out))
    return result


def _row_text(row: dict[str, Any]) -> str:
    return (f"seed {row['seed']}  {row['variant']:<10}  map {row['layer_size'][0]:>2} x "
            f"{row['layer_size'][1]:<2}  accuracy {row['accuracy']:6.1%}  pointing "
            f"{row['pointing_game']:6.1%}  energy in box {row['energy_in_box']:6.1%}  "
            f"|cam - gradcam| {row['cam_vs_gradcam']:.1g}  train {row['train_seconds']:.0f} s")


def _canvas_rgb(x: np.ndarray, scale: int) -> np.ndarray:
    grey = np.clip(x[..., 0], 0, 1) * 255
    big = np.kron(grey, np.ones((scale, scale)))
    return np.repeat(np.rint(big).astype(np.uint8)[..., None], 3, axis=2)


def _draw_box(rgb: np.ndarray, box: Sequence[int], scale: int) -> np.ndarray:
    out = np.array(rgb)
    x0, y0, x1, y1 = (int(v) * scale for v in box)
    green = (40, 220, 60)
    out[y0 : y0 + 2, x0:x1] = green
    out[y1 - 2 : y1, x0:x1] = green
    out[y0:y1, x0 : x0 + 2] = green
    out[y0:y1, x1 - 2 : x1] = green
    return out


def save_picture(shown: dict[str, Any], out: str | os.PathLike[str], scale: int = 4) -> Path:
    """A few held-out canvases: the canvas with the digit's box, then each variant's CAM."""
    from camlens import viz

    data = shown["data"]
    rows = []
    for i in range(min(SHOW, len(data["y_test"]))):
        box = data["box_test"][i]
        rgb = _canvas_rgb(data["x_test"][i], scale)
        pictures, titles = [], []
        for variant in VARIANTS:
            maps, predicted = shown[variant]
            pictures.append(_draw_box(np.asarray(viz.overlay(rgb, maps[i])), box, scale))
            titles.append(f"{variant} (says {int(predicted[i])})")
        rows.append(np.asarray(viz.compose_grid(
            _draw_box(rgb, box, scale), pictures, titles,
            image_title=f"digit {int(data['y_test'][i])}", panel_height=None, font_size=12)))
    # rows side by side in two columns of canvases
    half = (len(rows) + 1) // 2
    columns = [rows[:half], rows[half:]]
    heights = [sum(r.shape[0] for r in c) + 4 * (len(c) - 1) for c in columns if c]
    widths = [max(r.shape[1] for r in c) for c in columns if c]
    sheet = np.full((max(heights), sum(widths) + 12 * (len(widths) - 1), 3), 255, np.uint8)
    left = 0
    for column, width in zip(columns, widths):
        top = 0
        for r in column:
            sheet[top : top + r.shape[0], left : left + r.shape[1]] = r
            top += r.shape[0] + 4
        left += width + 12
    return viz.Picture(sheet).save(Path(out) / "keras_digits_cam.png", compress_level=9)


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="folder for the picture")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("KERAS_BACKEND", "torch")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = run(args.out, args.seeds, args.epochs, verbose=True)
    print(f"\nKeras {result['backend']} backend, {result['epochs']} epochs, seeds "
          f"{result['seeds']}; chance (box share of the canvas): {result['chance']:.1%}")
    print(f"{'variant':<12}{'accuracy':>10}{'pointing':>10}{'energy':>10}{'train s':>9}")
    for variant, m in result["mean"].items():
        print(f"{variant:<12}{m['accuracy']:>10.1%}{m['pointing_game']:>10.1%}"
              f"{m['energy_in_box']:>10.1%}{m['train_seconds']:>9.0f}")
    if "picture" in result:
        print(f"saved {result['picture']}")
    return result


if __name__ == "__main__":
    main()
