"""ROAD's noisy linear imputation: camlens against pytorch-grad-cam, and what ROAD costs.

Setting: CPU, ``torch.set_num_threads(2)`` (``--threads``), N = 4 seeded 224x224x3 images
in [0, 1] (uniform noise smoothed by a 5x5 box filter), each with a saliency map of three
wide Gaussian blobs (a CAM-like map); the 90 % most salient pixels are removed (ROAD's
MoRF at 90 %: large connected holes, the hardest case for an iterative solver).

1. Imputation, noise off, one image set, side by side in one run:
   ``camlens.metrics.noisy_linear_impute`` (all N images in one batched call) vs
   pytorch-grad-cam's ``NoisyLinearImputer(noise=0.0)`` (scipy ``spsolve``, one image at
   a time). Seconds per image (median over the timed rounds, the two run round-robin
   after one untimed warm-up each), the ratio, and max |camlens - spsolve| (the
   pytorch-grad-cam result is the exact sparse solve, in float64, cast to float32).
2. ROAD's 9 percentiles (10 .. 90 %, MoRF) for the N images in one batched call: 9 N
   imputations, seconds per imputation and per image.
3. What the CLI's ``--metric`` would pay per image with torchvision ``resnet18``
   (``weights=None``, seeded): ``road_morf`` + ``road_lerf`` (default percentiles:
   18 imputations and 18 forwards per image) next to the metrics ``all`` already runs
   without boxes (deletion, insertion, average_drop/increase).

    python bench/bench_road.py            # full run (a few minutes on 2 cores)
    python bench/bench_road.py --quick    # 1 timed round, no section 3
    python bench/bench_road.py --threads 4

On a shared machine whose other processes keep the cores busy, 2 OpenMP threads wait on
each other in every small torch operation and camlens's time grows several-fold (scipy's
spsolve is single-threaded); the script prints the load average: compare with
``--threads 1`` there.

Exits with status 1 when camlens exceeds 1 s per image in section 1 or differs from
spsolve by more than 1e-4.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from camlens import metrics  # noqa: E402

TOL = 1e-4
GOAL_S = 1.0


def blob_maps(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """CAM-like saliency: three wide Gaussian blobs per map."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    maps = torch.zeros(n, h, w)
    for i in range(n):
        for _ in range(3):
            cy, cx = torch.rand(2, generator=g) * torch.tensor([h, w])
            sigma = (0.15 + 0.2 * torch.rand(1, generator=g)) * max(h, w)
            maps[i] += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return maps / maps.flatten(1).amax(1)[:, None, None]


def images(n: int, size: int, seed: int) -> torch.Tensor:
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return F.avg_pool2d(x, 5, 1, 2, count_include_pad=False)


def top_removed(maps: torch.Tensor, percent: float) -> torch.Tensor:
    q = torch.quantile(maps.flatten(1).double(), 1 - percent / 100, dim=1)
    return maps.double() >= q[:, None, None]


def median_time(fn, repeats: int) -> list[float]:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    n, size = args.n, args.size
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    x = images(n, size, seed=1)
    maps = blob_maps(n, size, size, seed=0)
    removed = top_removed(maps, 90)
    print(f"{n} images {size}x{size}x3, removed {100 * removed.float().mean():.1f} % "
          "(CAM-like blobs, MoRF 90 %)\n")

    # ---------------------------------------------------------------- 1. imputation
    imputer = NoisyLinearImputer(noise=0.0)

    def ours() -> torch.Tensor:
        return metrics.noisy_linear_impute(x, removed, noise=0.0)

    def pgc() -> torch.Tensor:
        return torch.stack([imputer(x[i], (~removed[i]).float()) for i in range(n)])

    mine, ref = ours(), pgc()  # warm-up, and the results compared
    times: dict[str, list[float]] = {"camlens": [], "pytorch-grad-cam": []}
    for _ in range(repeats):
        times["camlens"] += median_time(ours, 1)
        times["pytorch-grad-cam"] += median_time(pgc, 1)
    per_image = {k: statistics.median(v) / n for k, v in times.items()}
    diff = (mine.double() - ref.double()).abs().max().item()
    ratio = per_image["pytorch-grad-cam"] / per_image["camlens"]
    print("## 1. Noisy linear imputation, noise off\n")
    print("| implementation | s/image (median) | min .. max s/image |")
    print("|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {per_image[k]:.4f} | {min(v) / n:.4f} .. {max(v) / n:.4f} |")
    print(f"\ncamlens speed-up over pytorch-grad-cam: {ratio:.1f}x")
    print(f"max |camlens - spsolve| = {diff:.2e} (goal <= {TOL:g}); "
          f"camlens {per_image['camlens']:.3f} s/image (goal <= {GOAL_S:g})\n")
    ok = diff <= TOL and per_image["camlens"] <= GOAL_S

    # ---------------------------------------------------------------- 2. 9 percentiles
    ps = range(10, 100, 10)
    many = torch.cat([top_removed(maps, p) for p in ps])  # (9 N, H, W), percentile-major
    xs = x.repeat(len(ps), 1, 1, 1)
    metrics.noisy_linear_impute(xs[:n], many[:n])
    t = statistics.median(median_time(lambda: metrics.noisy_linear_impute(xs, many), repeats))
    print("## 2. ROAD's 9 percentiles (10 .. 90 % removed, MoRF), one batched call\n")
    print(f"{len(many)} imputations in {t:.3f} s: {t / len(many):.4f} s per imputation, "
          f"{t / n:.3f} s per image for all 9 percentiles\n")

    # ---------------------------------------------------------------- 3. CLI cost
    if not args.quick:
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
        xn = (x - 0.45) / 0.225
        target = model(xn).argmax(1).tolist()
        calls = {
            "deletion": lambda: metrics.deletion(model, xn, maps, target),
            "insertion": lambda: metrics.insertion(model, xn, maps, target),
            "average_drop + increase": lambda: metrics.confidence_change(model, xn, maps, target),
            "road_morf": lambda: metrics.road(model, xn, maps, target, order="morf"),
            "road_lerf": lambda: metrics.road(model, xn, maps, target, order="lerf"),
        }
        print("## 3. Per-image cost of the CLI's metrics (resnet18, batch of "
              f"{n}, {size}x{size})\n")
        print("| metric | s/image |")
        print("|---|---|")
        cost = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, fn in calls.items():
                fn()
                cost[name] = statistics.median(median_time(fn, repeats)) / n
                print(f"| {name} | {cost[name]:.3f} |")
        base = cost["deletion"] + cost["insertion"] + cost["average_drop + increase"]
        road = cost["road_morf"] + cost["road_lerf"]
        print(f"\n`all` today (no boxes): {base:.3f} s/image; road_morf + road_lerf add "
              f"{road:.3f} s/image ({100 * road / base:.0f} % more)\n")

    print("goals", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
