"""From what size of run does ``--engine ray`` pay off on one machine? Total time of the
local engine and of the Ray engine (one actor) for runs of several sizes, with Ray's
start-up (``ray.init``) and the pool's (actors loading the model) measured apart.

Usage: ``OMP_WAIT_POLICY=PASSIVE python bench/bench_ray.py [--sizes 20,80,200]``
(the images are JPEGs made from scikit-image's photos, as in ``bench_dataset.py``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

from _common import load, machine
from bench_dataset import make_jpegs

import camlens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20,80,200")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    import ray

    print(f"{machine()}\nload before: {load()}")
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        photos = make_jpegs(work / "all", max(sizes), (300, 500), 0.6, seed=0)
        camlens.run([photos[0]], work / "warm", save="npy")  # model files in the page cache
        start = time.perf_counter()
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
        init = time.perf_counter() - start
        print(f"ray.init: {init:.1f} s ({ray.cluster_resources().get('CPU')} CPUs)")
        first = work / "first"  # a new instance's first pool also waits for its workers
        first.mkdir()
        for p in photos[:8]:
            (first / p.name).symlink_to(p)
        start = time.perf_counter()
        camlens.run([first], work / "ray-first", engine="ray", method="gradcam", save="npy")
        print(f"first ray run in the new instance, 8 images: {time.perf_counter() - start:.1f} s")
        rows = []
        for n in sizes:
            folder = work / f"in{n}"
            folder.mkdir()
            for p in photos[:n]:
                (folder / p.name).symlink_to(p)
            common = dict(method="gradcam", save="npy", batch_size=args.batch_size)
            start = time.perf_counter()
            camlens.run([folder], work / f"local{n}", **common)
            local = time.perf_counter() - start
            start = time.perf_counter()
            camlens.run([folder], work / f"ray{n}", engine="ray", **common)
            on_ray = time.perf_counter() - start
            rows.append((n, local, on_ray))
            print(f"{n} images: local {local:.1f} s, ray {on_ray:.1f} s (+ ray.init "
                  f"{init:.1f} s once); load {load()}", flush=True)
        if len(rows) >= 2:  # time = fixed + n x per image, least squares over the sizes
            import numpy as np

            n = np.array([r[0] for r in rows], float)
            for k, name in ((1, "local"), (2, "ray")):
                per, fixed = np.polyfit(n, [r[k] for r in rows], 1)
                print(f"{name}: {per * 1000:.0f} ms per image, {fixed:.1f} s fixed per run")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(f"load after: {load()}")


if __name__ == "__main__":
    main()
