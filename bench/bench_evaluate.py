"""Where ``camlens evaluate`` spends its time: the four bundled photos, three methods.

Times, on the bundled EfficientNet-Lite0 (channels-last, as ``load_model`` gives it), the
maps of each method and every metric separately, for the quick protocol (the default:
deletion/insertion in steps of 5 % of the pixels, average drop and increase) and the full
one (``--full``: steps of 1 %, ROAD MoRF and LeRF), and the forwards each one runs.

    python bench/bench_evaluate.py
    python bench/bench_evaluate.py --methods gradcam,scorecam --threads 1

Prints the load average first: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from skimage import data

import camlens
from camlens import metrics as M

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="gradcam,gradcam++,layercam")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} thread(s)")
    model, preprocess, _ = camlens.load_model()
    x = torch.stack([preprocess(getattr(data, p)()) for p in PHOTOS])
    methods = args.methods.split(",")
    started = time.perf_counter()
    maps = camlens.compare(model, x, methods)
    classes = maps.classes[:, 0].tolist()
    t_maps = time.perf_counter() - started
    print(f"maps of {len(methods)} methods for {len(PHOTOS)} photos: {t_maps:.2f} s\n")
    side = 224 * 224
    totals = {"quick": t_maps, "full": t_maps}
    print("| metric | protocol | forwards per map | s for all maps |")
    print("|---|---|---:|---:|")
    rows = [
        ("deletion", "quick", math.ceil(side * 0.05)),
        ("insertion", "quick", math.ceil(side * 0.05)),
        ("deletion", "full", math.ceil(side * 0.01)),
        ("insertion", "full", math.ceil(side * 0.01)),
        ("confidence change", "both", None), ("road_morf", "full", None),
        ("road_lerf", "full", None),
    ]
    for metric, protocol, step in rows:
        started = time.perf_counter()
        for name in methods:
            m = maps[name]
            if metric in ("deletion", "insertion"):
                getattr(M, metric)(model, x, m, classes, step=step)
            elif metric == "confidence change":
                M.confidence_change(model, x, m, classes)
            else:
                M.road(model, x, m, classes, order=metric[5:])
        seconds = time.perf_counter() - started
        forwards = {"confidence change": 2, "road_morf": 9, "road_lerf": 9}.get(
            metric, math.ceil(side / step) + 1 if step else 0)
        print(f"| {metric} | {protocol} | {forwards} | {seconds:.2f} |")
        for p in ("quick", "full"):
            if protocol in (p, "both"):
                totals[p] += seconds
    print(f"\nquick protocol (default): {totals['quick']:.1f} s; full protocol (--full): "
          f"{totals['full']:.1f} s")


if __name__ == "__main__":
    main()
