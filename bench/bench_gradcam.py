"""Grad-CAM speed benchmark: camlens against a hand-written bare limit and other libraries.

Setting: torchvision resnet50 with seeded random weights (no download), eval mode,
random 224x224 inputs, CPU, layer ``layer4``, target = top-1 class, maps at 224x224
min-max normalised to [0, 1]. Prints one markdown table plus the correctness checks.

    python bench/bench_gradcam.py             # full run (batch 8, 7 timed calls)
    python bench/bench_gradcam.py --quick     # smoke run (batch 2, 2 timed calls)
    python bench/bench_gradcam.py --profile   # also profile one camlens call

Every method gets its own deep copy of the same model, so that the hooks that
pytorch-grad-cam and torchcam keep registered between calls never fire during
another method's forward pass. Timed calls are interleaved round-robin (one call
of each method per round), so machine noise hits all methods alike.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

import camlens

SIZE = (224, 224)
TOL = 1e-4


# ----------------------------------------------------------------------------- helpers


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map (B, ..., H, W) over its last two dims; constant -> 0."""
    flat = maps.flatten(-2)
    lo = flat.amin(dim=-1, keepdim=True)
    hi = flat.amax(dim=-1, keepdim=True)
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-30), torch.zeros_like(flat))
    return out.view_as(maps)


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet50(weights=None).eval()


# ----------------------------------------------------------------------------- methods


def bare_limit(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The minimum work any Grad-CAM needs, written by hand (normal grad mode)."""
    captured: list[torch.Tensor] = []
    model.layer4.register_forward_hook(lambda m, a, out: captured.append(out))

    def run(x: torch.Tensor) -> torch.Tensor:
        captured.clear()
        logits = model(x)
        act = captured[0]
        top1 = logits.argmax(dim=1, keepdim=True)
        (grads,) = torch.autograd.grad(logits.gather(1, top1).sum(), act)
        with torch.no_grad():
            weights = grads.mean(dim=(2, 3))  # (B, C)
            cam = torch.relu(torch.bmm(weights.unsqueeze(1), act.flatten(2)))  # (B, 1, HW)
            cam = cam.view(act.shape[0], 1, *act.shape[2:])
            cam = F.interpolate(cam, size=SIZE, mode="bilinear", align_corners=False)
            return minmax(cam[:, 0])

    return run


def camlens_top1(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    explainer = camlens.Explainer(model, method="gradcam", layer="layer4")
    return lambda x: explainer(x, target=None, size="input", normalize=True)


def camlens_topk(model: torch.nn.Module, k: int = 5) -> Callable[[torch.Tensor], torch.Tensor]:
    explainer = camlens.Explainer(model, method="gradcam", layer="layer4")
    target = camlens.TopK(k)
    return lambda x: explainer(x, target=target, size="input", normalize=True)


def make_pytorch_grad_cam(model: torch.nn.Module):
    from pytorch_grad_cam import GradCAM

    cam = GradCAM(model=model, target_layers=[model.layer4])
    return (lambda x: cam(input_tensor=x, targets=None)), cam


def captum_gradcam(model: torch.nn.Module, top1: torch.Tensor):
    from captum.attr import LayerAttribution, LayerGradCam

    lgc = LayerGradCam(model, model.layer4)

    def run(x: torch.Tensor) -> torch.Tensor:
        attr = lgc.attribute(x, target=top1, relu_attributions=True)  # (B, 1, 7, 7)
        up = LayerAttribution.interpolate(attr, SIZE, "bilinear")
        return minmax(up.detach()[:, 0])

    return run


def torchcam_gradcam(model: torch.nn.Module):
    from torchcam.methods import GradCAM

    extractor = GradCAM(model, "layer4")

    def run(x: torch.Tensor) -> torch.Tensor:
        scores = model(x)
        class_idx = scores.argmax(dim=1).tolist()
        (cam,) = extractor(class_idx, scores, normalized=False)  # (B, 7, 7), ReLU applied
        with torch.no_grad():
            up = F.interpolate(cam.unsqueeze(1), size=SIZE, mode="bilinear", align_corners=False)
            return minmax(up[:, 0])

    return run, extractor


# ----------------------------------------------------------------------------- timing


def time_round_robin(
    fns: dict[str, Callable[[torch.Tensor], object]], x: torch.Tensor, warmup: int, repeats: int
) -> dict[str, list[float]]:
    for _ in range(warmup):
        for fn in fns.values():
            fn(x)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - t0)
    return times


def profile_camlens(model: torch.nn.Module, x: torch.Tensor, topk: bool) -> None:
    """torch.profiler (op-level) and cProfile (Python-level) of camlens calls."""
    import cProfile
    import pstats

    from torch.profiler import ProfilerActivity, profile, record_function

    run = camlens_topk(model) if topk else camlens_top1(model)
    label = "TopK(5)" if topk else "top-1"
    for _ in range(2):
        run(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            with record_function(f"camlens_{label}"):
                run(x)
    print(f"\n### torch.profiler, camlens {label}, 3 calls (self CPU time)\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(3):
        run(x)
    pr.disable()
    print(f"\n### cProfile, camlens {label}, 3 calls (cumulative)\n")
    pstats.Stats(pr, stream=sys.stdout).sort_stats("cumulative").print_stats(25)


# ----------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=7, help="timed calls per method (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: batch 2, repeats 2")
    p.add_argument("--profile", action="store_true", help="also profile camlens calls")
    args = p.parse_args()
    if args.quick:
        args.batch, args.repeats = 2, 2
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    from importlib.metadata import version

    import captum
    import pytorch_grad_cam  # noqa: F401
    import torchcam

    print("## Grad-CAM benchmark: resnet50 (random weights), layer4, top-1 target\n")
    print(f"- torch {torch.__version__}, torchvision {torchvision.__version__}, camlens "
          f"{camlens.__version__}, grad-cam {version('grad-cam')}, captum {captum.__version__}, "
          f"torchcam {torchcam.__version__}")
    print(f"- machine: {platform.processor() or platform.machine()} "
          f"({platform.platform()}), os.cpu_count() = {os.cpu_count()}, "
          f"torch threads = {torch.get_num_threads()}, load average (1 min) at start = "
          f"{os.getloadavg()[0]:.2f}")
    print(f"- batch {args.batch} x 3 x {SIZE[0]} x {SIZE[1]}, CPU, warm-up {args.warmup}, "
          f"median of {args.repeats} timed calls, round-robin\n")

    base = make_model(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, *SIZE, generator=gen)
    with torch.no_grad():
        top1 = base(x).argmax(dim=1)

    # one copy of the model per method (identical weights; hooks never cross methods)
    models = {name: copy.deepcopy(base) for name in ("bare", "cl1", "clk", "pgc", "captum", "tc")}
    pgc_run, pgc_obj = make_pytorch_grad_cam(models["pgc"])
    tc_run, tc_obj = torchcam_gradcam(models["tc"])
    fns: dict[str, Callable[[torch.Tensor], object]] = {
        "bare limit (hand-written)": bare_limit(models["bare"]),
        "camlens gradcam": camlens_top1(models["cl1"]),
        "camlens gradcam, TopK(5)": camlens_topk(models["clk"]),
        "pytorch-grad-cam GradCAM": pgc_run,
        "captum LayerGradCam": captum_gradcam(models["captum"], top1),
        "torchcam GradCAM": tc_run,
    }
    names = list(fns)
    BARE, CL, CLK, PGC, CAP, TC = names

    # ---- correctness: same maps, so the comparison is apples to apples
    ref = fns[BARE](x)
    maps = {
        CL: fns[CL](x),
        CLK: fns[CLK](x),
        PGC: minmax(torch.from_numpy(np.asarray(fns[PGC](x), dtype=np.float32))),
        CAP: fns[CAP](x),
        TC: fns[TC](x),
    }
    checks = [
        ("camlens vs bare limit", (maps[CL] - ref).abs().max().item(), True),
        ("pytorch-grad-cam (renormalised at 224) vs camlens",
         (maps[PGC] - maps[CL]).abs().max().item(), True),
        ("captum vs camlens", (maps[CAP] - maps[CL]).abs().max().item(), False),
        ("torchcam vs camlens", (maps[TC] - maps[CL]).abs().max().item(), False),
        ("camlens TopK(5)[:, 0] vs camlens top-1", (maps[CLK][:, 0] - maps[CL]).abs().max().item(),
         False),
    ]
    degenerate = int((ref.flatten(1).amax(1) == 0).sum())
    print("### Correctness (max |difference| of the [0, 1] maps)\n")
    ok_all = True
    for label, diff, required in checks:
        ok = diff <= TOL
        ok_all &= ok or not required
        tag = "OK" if ok else ("FAIL" if required else "differs")
        print(f"- {label}: {diff:.2e} ({tag}, tolerance {TOL:g})")
    print(f"- maps shape {tuple(maps[CL].shape)}, TopK(5) shape {tuple(maps[CLK].shape)}, "
          f"all-zero maps in the batch: {degenerate}\n")

    # ---- timing
    times = time_round_robin(fns, x, args.warmup, args.repeats)
    med = {n: statistics.median(t) for n, t in times.items()}
    print("### Speed (seconds per batch; lower is better)\n")
    print("| method | median s/batch | x bare limit | camlens speed-up (t_other / t_camlens) "
          "| min .. max s |")
    print("|---|---:|---:|---:|---:|")
    for n in names:
        speedup = "—" if n == CLK else f"{med[n] / med[CL]:.2f}x"
        print(f"| {n} | {med[n]:.4f} | {med[n] / med[BARE]:.2f}x | {speedup} "
              f"| {min(times[n]):.4f} .. {max(times[n]):.4f} |")
    ratio_k = med[CLK] / med[CL]
    print(f"\nTopK(5) time / top-1 time (camlens): {ratio_k:.2f}x\n")

    goals = [
        ("camlens <= 1.10x bare limit", med[CL] / med[BARE], med[CL] / med[BARE] <= 1.10),
        ("camlens >= 3x faster than pytorch-grad-cam", med[PGC] / med[CL], med[PGC] / med[CL] >= 3),
        ("camlens TopK(5) <= 1.5x top-1", ratio_k, ratio_k <= 1.5),
    ]
    print(f"(load average (1 min) at the end: {os.getloadavg()[0]:.2f}; with other busy "
          "processes and torch threads = cores, OpenMP threads wait on each other: "
          "try --threads 1)\n")
    print("### Goals\n")
    for label, value, ok in goals:
        print(f"- {label}: {value:.2f}x -> {'met' if ok else 'NOT met'}")

    # ---- clean up hooks of the libraries that keep them between calls
    tc_obj.remove_hooks()
    pgc_obj.activations_and_grads.release()

    if args.profile:
        profile_camlens(copy.deepcopy(base), x, topk=False)
        profile_camlens(copy.deepcopy(base), x, topk=True)
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
