"""End-to-end speed: ``camlens explain`` on a folder of 64 photos vs a pytorch-grad-cam script.

Both sides do the same job on the same files, in this one process, interleaved:
decode each JPEG, preprocess (the same EfficientNet-Lite0 preprocessing), run the bundled
pretrained model in batches, compute Grad-CAM at the same layer, overlay the map on the
region the model saw, and write the overlay PNG. camlens additionally writes a comparison
grid, the raw map (.npy), a box and the summary.json; the reference script writes only
the overlay, with pytorch-grad-cam's ``GradCAM`` and ``show_cam_on_image`` and OpenCV, on
the model as its package gives it (contiguous layout; camlens runs the bundled model
channels-last, and a third row shows camlens with the contiguous model).

Run: ``.venv/bin/python bench/bench_cli.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from skimage import data

import camlens
from camlens.cli import main as camlens_main
from camlens.runner import _setup as runner_setup

LAYER = "_bn1"  # a layer called once: pytorch-grad-cam cannot target the shared _swish module
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
          "immunohistochemistry", "colorwheel", "cat"]


def make_photos(folder: Path, count: int) -> list[Path]:
    """``count`` JPEG photos: the scikit-image photos, cropped and flipped in 8 ways."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        img = getattr(data, PHOTOS[i % len(PHOTOS)])()
        h, w = img.shape[:2]
        top, left = rng.integers(0, h // 6 + 1), rng.integers(0, w // 6 + 1)
        img = img[top : h - rng.integers(0, h // 6 + 1), left : w - rng.integers(0, w // 6 + 1)]
        if i % 2:
            img = img[:, ::-1]
        path = folder / f"photo_{i:03d}.jpg"
        Image.fromarray(np.ascontiguousarray(img)).save(path, quality=90)
        paths.append(path)
    return paths


def run_camlens(photos: Path, out: Path, batch: int, contiguous: bool = False) -> None:
    """``camlens explain``; ``contiguous=True`` runs the bundled model in the default
    contiguous layout instead of channels-last, to measure what the layout gives."""
    original = runner_setup.load_model

    def contiguous_model(*args, **kwargs):
        model, preprocess, labels = original(*args, **kwargs)
        return model.to(memory_format=torch.contiguous_format), preprocess, labels

    if contiguous:
        runner_setup.load_model = contiguous_model
    try:
        code = camlens_main(["explain", str(photos), "--out", str(out), "--method", "gradcam",
                             "--layer", LAYER, "--batch-size", str(batch), "--progress",
                             "never"])
    finally:
        runner_setup.load_model = original
    assert code == 0


def run_reference(paths: list[Path], out: Path, batch: int, model, preprocess, cam) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        rgbs = [np.asarray(Image.open(p).convert("RGB")) for p in chunk]
        x = torch.stack([preprocess(r) for r in rgbs])
        with torch.no_grad():
            top1 = model(x).argmax(1).tolist()
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in top1])
        for p, rgb, m in zip(chunk, rgbs, maps):
            x0, y0, x1, y1 = preprocess.crop_box(*rgb.shape[:2])
            crop = np.float32(rgb[y0:y1, x0:x1]) / 255
            m = cv2.resize(m, (crop.shape[1], crop.shape[0]))
            picture = show_cam_on_image(crop, m, use_rgb=True)
            bgr = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(out / f"{p.stem}_gradcam.png"), bgr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.images, args.repeats = 8, 1
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="camlens-bench-"))
    try:
        photos = work / "photos"
        photos.mkdir()
        paths = make_photos(photos, args.images)
        model, preprocess, _ = camlens.load_model()
        # the script's user loads the model as the package gives it: contiguous
        model = model.to(memory_format=torch.contiguous_format)
        cam = GradCAM(model=model, target_layers=[model.get_submodule(LAYER)])
        times: dict[str, list[float]] = {"camlens explain": [],
                                         "camlens explain, contiguous model": [],
                                         "pytorch-grad-cam script": []}
        run_camlens(photos, work / "warm", args.batch_size)  # warm-up both
        run_reference(paths[: args.batch_size], work / "warm-ref", args.batch_size, model,
                      preprocess, cam)
        for r in range(args.repeats):
            t = time.perf_counter()
            run_camlens(photos, work / f"c{r}", args.batch_size)
            times["camlens explain"].append(time.perf_counter() - t)
            t = time.perf_counter()
            run_camlens(photos, work / f"k{r}", args.batch_size, contiguous=True)
            times["camlens explain, contiguous model"].append(time.perf_counter() - t)
            t = time.perf_counter()
            run_reference(paths, work / f"g{r}", args.batch_size, model, preprocess, cam)
            times["pytorch-grad-cam script"].append(time.perf_counter() - t)
        print(f"load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}, "
              f"{args.threads} threads, {platform.machine()} "
              f"{platform.processor() or ''}, {args.images} JPEG photos, batch {args.batch_size}, "
              f"EfficientNet-Lite0, Grad-CAM at {LAYER}, median of {args.repeats} runs\n")
        base = statistics.median(times["camlens explain"])
        print("| pipeline | seconds | images/s | camlens speed-up |")
        print("|---|---|---|---|")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"| {name} | {med:.2f} | {args.images / med:.1f} | {med / base:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
