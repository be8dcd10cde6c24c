"""Perturbation and guided methods: camlens against pytorch-grad-cam, torchcam and captum.

Setting: torchvision resnet18 with seeded random weights (``weights=None``,
``torch.manual_seed(seed)``, no download), eval mode, one seeded random 224x224 image,
CPU, layer ``layer4``, target = top-1 class. Prints markdown tables:

1. Score-CAM: camlens vs pytorch-grad-cam ``ScoreCAM`` (batch 32 and its default 16) vs
   torchcam ``ScoreCAM`` (batch 32); time and max |map difference|.
2. Ablation-CAM: camlens vs pytorch-grad-cam ``AblationCAM`` (batch 32).
3. RISE with N = 4000 masks (batch 64); no reference library implements RISE.
4. Guided backpropagation, batch 8: camlens vs pytorch-grad-cam
   ``GuidedBackpropReLUModel`` vs captum ``GuidedBackprop``; raw per-channel gradients.
5. Peak RSS growth of camlens Score-CAM for batch_size 8 and 64, one fresh child process
   per setting.

    python bench/bench_perturbation.py             # full run (several minutes on 2 cores)
    python bench/bench_perturbation.py --quick     # smoke run (96x96 image, N = 500, ...)
    python bench/bench_perturbation.py --sections 1,4

Every method gets its own deep copy of the model (pytorch-grad-cam and torchcam keep hooks
registered between calls; pytorch-grad-cam's guided backprop swaps the model's ReLUs). The
first call of every method is an untimed warm-up that also gives the maps compared; the
timed calls are interleaved round-robin (one call of each method per round), median.
Where camlens is slower than a reference, one camlens call is profiled with cProfile.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from _common import load, machine, profile_call  # noqa: E402

import camlens  # noqa: E402

TOL = 1e-4
ISSUE_PGC_S, ISSUE_TC_S = 18.9, 22.3  # the issue's Score-CAM times, before camlens existed


# ----------------------------------------------------------------------------- helpers


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map (..., H, W) over its last two dims; constant -> 0."""
    flat = maps.flatten(-2).double()
    lo = flat.amin(dim=-1, keepdim=True)
    span = flat.amax(dim=-1, keepdim=True) - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-300), torch.zeros_like(flat))
    return out.view_as(maps).float()


def as_tensor(maps: object) -> torch.Tensor:
    if isinstance(maps, torch.Tensor):
        return maps.detach().float()
    return torch.from_numpy(np.asarray(maps, dtype=np.float32))


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def make_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).eval()


def make_inputs(seed: int, batch: int, size: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def round_robin(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def spread(ts: list[float]) -> str:
    return f"{min(ts):.3f} .. {max(ts):.3f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# ----------------------------------------------------------------------------- 1. Score-CAM


def section_scorecam(args: argparse.Namespace, base: torch.nn.Module, x: torch.Tensor) -> None:
    from pytorch_grad_cam import ScoreCAM as PgcScoreCAM
    from torchcam.methods import ScoreCAM as TcScoreCAM

    b = args.batch
    size = x.shape[-1]
    print(f"## 1. Score-CAM ({x.shape[0]} image {size}x{size}, layer4: 512 channels, "
          f"batch_size {b})\n")
    print(f"load average at start: {load()}\n")

    m_cl, m_cln, m_pgc, m_pgc16, m_tc = (copy.deepcopy(base) for _ in range(5))
    pgc = PgcScoreCAM(m_pgc, [m_pgc.layer4])
    pgc.batch_size = b
    pgc16 = PgcScoreCAM(m_pgc16, [m_pgc16.layer4])  # no batch_size attribute: its default, 16
    tc = TcScoreCAM(m_tc, "layer4", batch_size=b, input_shape=tuple(x.shape[1:]))

    def run_tc() -> torch.Tensor:
        with torch.no_grad():
            scores = m_tc(x)
        (cam,) = tc(scores.argmax(1).tolist(), scores)  # (B, h, w), min-max at layer size
        up = F.interpolate(cam.unsqueeze(1), size=x.shape[2:], mode="bilinear",
                           align_corners=False)
        return minmax(up[:, 0])

    CL = "camlens scorecam (align_corners=True)"
    CLN = 'camlens scorecam (mask_order="normalize", align_corners=False)'
    PGC = f"pytorch-grad-cam ScoreCAM (batch_size={b})"
    PGC16 = "pytorch-grad-cam ScoreCAM (default batch 16)"
    TC = f"torchcam ScoreCAM (batch_size={b})"

    def cl() -> torch.Tensor:
        return camlens.explain(m_cl, x, method="scorecam", layer="layer4", batch_size=b,
                               align_corners=True)

    fns: dict[str, Callable[[], object]] = {
        CL: cl,
        CLN: lambda: camlens.explain(m_cln, x, method="scorecam", layer="layer4", batch_size=b,
                                     mask_order="normalize", align_corners=False),
        PGC: lambda: pgc(input_tensor=x, targets=None),
        PGC16: lambda: pgc16(input_tensor=x, targets=None),
        TC: run_tc,
    }
    # warm-up call of each method = the maps compared (all min-max normalised at full size)
    first = {}
    warm = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        first[name] = minmax(as_tensor(fn()))
        warm[name] = time.perf_counter() - t0
    times = round_robin(fns, args.repeats)
    med = {n: statistics.median(t) for n, t in times.items()}
    ref = {PGC: CL, PGC16: CL, TC: CLN}

    print(f"median of {args.repeats} timed calls (round-robin, after one warm-up call each)\n")
    print("| method | median s | min .. max s | first call s | camlens speed-up "
          "(t / t_camlens) | vs |")
    print("|---|---:|---:|---:|---:|---|")
    for n in fns:
        if n in ref:
            su, vs = f"{med[n] / med[ref[n]]:.2f}x", ref[n].replace("camlens scorecam ", "")
        else:
            su, vs = "—", ""
        print(f"| {n} | {med[n]:.3f} | {spread(times[n])} | {warm[n]:.3f} | {su} | {vs} |")

    d_pgc = maxdiff(first[CL], first[PGC])
    d_pgc16 = maxdiff(first[CL], first[PGC16])
    d_tc = maxdiff(first[CLN], first[TC])
    d_tc_up = maxdiff(first[CL], first[TC])
    d_cl = maxdiff(first[CL], first[CLN])
    print("\nmax |difference| of the [0, 1] maps at full size (pytorch-grad-cam renormalised "
          "at full size: it normalises at 7x7 before resizing):\n")
    print("| compared | max abs diff | within 1e-4 |")
    print("|---|---:|---|")
    for label, d in [
        (f"{CL} vs {PGC}", d_pgc),
        (f"{CL} vs {PGC16}", d_pgc16),
        (f"{CLN} vs {TC}", d_tc),
        (f"{CL} vs {TC} (different mask definitions, information)", d_tc_up),
        (f"{CL} vs {CLN} (information)", d_cl),
    ]:
        print(f"| {label} | {d:.2e} | {'yes' if d <= TOL else 'no'} |")
    s_pgc, s_pgc16, s_tc = med[PGC] / med[CL], med[PGC16] / med[CL], med[TC] / med[CLN]
    print("\nGoals and the issue's numbers:\n")
    print(f"- camlens >= 2x faster than pytorch-grad-cam (batch {b}) with the same map: "
          f"{s_pgc:.2f}x, max diff {d_pgc:.1e} -> {verdict(s_pgc >= 2 and d_pgc <= TOL)}")
    print(f"- against pytorch-grad-cam's default batch 16: {s_pgc16:.2f}x")
    print(f"- camlens (normalize) vs torchcam: {s_tc:.2f}x, max diff {d_tc:.1e}")
    if x.shape[-1] == 224:
        print(f"- the issue measured pytorch-grad-cam {ISSUE_PGC_S} s and torchcam {ISSUE_TC_S} s "
              f"(its machine); here pytorch-grad-cam {med[PGC16]:.2f} s (batch 16) / "
              f"{med[PGC]:.2f} s (batch {b}), torchcam {med[TC]:.2f} s, camlens {med[CL]:.2f} s")
    print(f"\nload average at end: {load()}\n")

    pgc.activations_and_grads.release()
    pgc16.activations_and_grads.release()
    tc.remove_hooks()

    if args.profile == "always" or (args.profile == "auto" and (s_pgc < 1 or s_tc < 1)):
        profile_call(CL, cl)


# ----------------------------------------------------------------------------- 2. Ablation-CAM


def section_ablation(args: argparse.Namespace, base: torch.nn.Module, x: torch.Tensor) -> None:
    from pytorch_grad_cam import AblationCAM as PgcAblationCAM
    from pytorch_grad_cam.ablation_layer import AblationLayer

    b = args.batch
    print(f"## 2. Ablation-CAM (layer4, batch_size {b})\n")
    print(f"load average at start: {load()}\n")
    m_cl, m_pgc = copy.deepcopy(base), copy.deepcopy(base)
    pgc = PgcAblationCAM(m_pgc, [m_pgc.layer4], ablation_layer=AblationLayer(), batch_size=b)
    CL, PGC = "camlens ablationcam", f"pytorch-grad-cam AblationCAM (batch_size={b})"

    def cl() -> torch.Tensor:
        return camlens.explain(m_cl, x, method="ablationcam", layer="layer4", batch_size=b)

    fns: dict[str, Callable[[], object]] = {CL: cl,
                                             PGC: lambda: pgc(input_tensor=x, targets=None)}
    first, warm = {}, {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        first[name] = minmax(as_tensor(fn()))
        warm[name] = time.perf_counter() - t0
    times = round_robin(fns, args.repeats)
    med = {n: statistics.median(t) for n, t in times.items()}
    d = maxdiff(first[CL], first[PGC])
    print("| method | median s | min .. max s | first call s | camlens speed-up |")
    print("|---|---:|---:|---:|---:|")
    print(f"| {CL} | {med[CL]:.3f} | {spread(times[CL])} | {warm[CL]:.3f} | — |")
    print(f"| {PGC} | {med[PGC]:.3f} | {spread(times[PGC])} | {warm[PGC]:.3f} "
          f"| {med[PGC] / med[CL]:.2f}x |")
    print(f"\nmax |difference| of the [0, 1] maps (pytorch-grad-cam renormalised at full size): "
          f"{d:.2e} ({'within' if d <= TOL else 'NOT within'} 1e-4). layer4 is a ReLU output "
          "(min 0), so pytorch-grad-cam ablates with 0 too, as the paper and camlens do.")
    print(f"\nload average at end: {load()}\n")
    pgc.activations_and_grads.release()
    if args.profile == "always" or (args.profile == "auto" and med[PGC] < med[CL]):
        profile_call(CL, cl)


# ----------------------------------------------------------------------------- 3. RISE


def section_rise(args: argparse.Namespace, base: torch.nn.Module, x: torch.Tensor) -> None:
    import captum.attr
    import pytorch_grad_cam
    import torchcam.methods

    n, b = args.n_masks, args.rise_batch
    print(f"## 3. RISE (N = {n} masks, grid 7, p = 0.5, batch_size {b})\n")
    print(f"load average at start: {load()}\n")
    m = copy.deepcopy(base)
    t0 = time.perf_counter()
    sal = camlens.explain(m, x, method="rise", n_masks=n, batch_size=b)
    t = time.perf_counter() - t0
    print("| method | s (one call) | forwards | forwards/s |")
    print("|---|---:|---:|---:|")
    print(f"| camlens rise | {t:.3f} | {n * x.shape[0]} | {n * x.shape[0] / t:.0f} |")
    refs = {
        "captum.attr": [a for a in dir(captum.attr) if "rise" in a.lower() and a != "NoiseTunnel"],
        "pytorch_grad_cam": [a for a in dir(pytorch_grad_cam) if "rise" in a.lower()],
        "torchcam.methods": [a for a in dir(torchcam.methods) if "rise" in a.lower()],
    }
    found = {k: v for k, v in refs.items() if v}
    print(f"\nmap shape {tuple(sal.shape)}, finite: {bool(torch.isfinite(sal).all())}. "
          "No reference: no RISE in the venv's libraries "
          f"(captum {captum.__version__} has no RISE; pytorch-grad-cam and torchcam neither)"
          + (f"; names found: {found}" if found else "") + ".")
    print(f"\nload average at end: {load()}\n")
    if args.profile == "always":
        profile_call("camlens rise", lambda: camlens.explain(m, x, method="rise", n_masks=n,
                                                             batch_size=b))


# ----------------------------------------------------------------------------- 4. guided backprop


def section_guided(args: argparse.Namespace, base: torch.nn.Module, xb: torch.Tensor) -> None:
    from captum.attr import GuidedBackprop
    from pytorch_grad_cam import GuidedBackpropReLUModel

    bsz = xb.shape[0]
    print(f"## 4. Guided backpropagation (batch {bsz}, raw per-channel input gradients of the "
          "top-1 score)\n")
    print(f"load average at start: {load()}\n")
    m_cl, m_pgc, m_cap = (copy.deepcopy(base) for _ in range(3))
    with torch.no_grad():
        top1 = base(xb).argmax(1)
    gbp = GuidedBackpropReLUModel(m_pgc, device="cpu")  # swaps m_pgc's ReLUs during calls
    cap = GuidedBackprop(m_cap)

    def cl() -> torch.Tensor:
        return camlens.explain(m_cl, xb, method="guided-backprop", channels=True,
                               normalize=False)

    def run_pgc() -> torch.Tensor:
        # one image per call: it backpropagates output[0, target] and returns image 0 (HWC)
        out = [gbp(xb[i : i + 1].clone(), target_category=int(top1[i])) for i in range(bsz)]
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)

    def run_cap() -> torch.Tensor:
        return cap.attribute(xb, target=top1).detach()

    CL = "camlens guided-backprop (channels=True)"
    PGC = f"pytorch-grad-cam GuidedBackpropReLUModel ({bsz} calls of 1 image)"
    CAP = "captum GuidedBackprop"
    fns: dict[str, Callable[[], object]] = {CL: cl, PGC: run_pgc, CAP: run_cap}
    first, warm = {}, {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        first[name] = as_tensor(fn())
        warm[name] = time.perf_counter() - t0
    reps = max(args.repeats, 5)
    times = round_robin(fns, reps)
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"median of {reps} timed calls, round-robin\n")
    print("| method | median s/batch | min .. max s | first call s | camlens speed-up |")
    print("|---|---:|---:|---:|---:|")
    for n in fns:
        su = "—" if n == CL else f"{med[n] / med[CL]:.2f}x"
        print(f"| {n} | {med[n]:.3f} | {spread(times[n])} | {warm[n]:.3f} | {su} |")
    scale = first[CL].abs().max().item()
    shapes = {n: tuple(v.shape) for n, v in first.items()}
    print(f"\nmax |difference| of the raw gradients (B, 3, H, W) (largest |gradient| in camlens's "
          f"output: {scale:.3e}):\n")
    print("| compared | max abs diff | relative to max |g| |")
    print("|---|---:|---:|")
    for n in (PGC, CAP):
        d = maxdiff(first[CL], first[n]) if first[n].shape == first[CL].shape else float("nan")
        print(f"| {CL} vs {n} | {d:.2e} | {d / scale if scale else float('nan'):.2e} |")
    print(f"\nshapes: {shapes}")
    print(f"\nload average at end: {load()}\n")
    if args.profile == "always" or (args.profile == "auto" and min(med[PGC], med[CAP]) < med[CL]):
        profile_call(CL, cl)


# ----------------------------------------------------------------------------- 5. memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_memory(args: argparse.Namespace) -> None:
    """Runs in a fresh process: one explain call, prints JSON with the RSS figures.

    The peak is VmHWM (the peak RSS of this process image), reset just before the call.
    ``ru_maxrss`` is not used: Linux carries it over fork + exec, so a child started by a
    large parent reports the parent's peak.
    """
    torch.set_num_threads(args.threads)
    model = make_model(args.seed)
    x = make_inputs(args.seed, 1, args.size)
    with torch.no_grad():
        model(x)  # allocator and one-time library setup, outside the measurement
    which, bs = args.child_memory.split(":")
    if which != "camlens":
        from pytorch_grad_cam import ScoreCAM  # import outside the measurement
    reset = _reset_peak()
    rss0, hwm0 = _status_kib("VmRSS"), _status_kib("VmHWM")
    t0 = time.perf_counter()
    if which == "camlens":
        camlens.explain(model, x, method="scorecam", layer="layer4", batch_size=int(bs),
                        align_corners=True)
    else:
        cam = ScoreCAM(model, [model.layer4])
        cam.batch_size = int(bs)
        cam(input_tensor=x, targets=None)
    t = time.perf_counter() - t0
    print(json.dumps({"rss_before_kib": rss0, "hwm_before_kib": hwm0, "reset": reset,
                      "hwm_after_kib": _status_kib("VmHWM"), "seconds": t,
                      "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def section_memory(args: argparse.Namespace) -> None:
    print(f"## 5. Peak memory of Score-CAM (one fresh child process per row, {args.size}x"
          f"{args.size} image)\n")
    print(f"load average at start: {load()}\n")
    print("peak growth = peak RSS (VmHWM, reset just before the call) - RSS just before the "
          "call (model built, one plain forward done). Not ru_maxrss: Linux carries it over "
          "fork + exec, so every child would report this parent's peak.\n")
    print("| setting | peak RSS growth MiB | RSS before MiB | peak RSS MiB | s (one call, "
          "first in its process) |")
    print("|---|---:|---:|---:|---:|")
    rows = [("camlens", 8), ("camlens", 64), ("pytorch-grad-cam", 32)]
    for which, bs in rows:
        cmd = [sys.executable, os.path.abspath(__file__), "--child-memory", f"{which}:{bs}",
               "--size", str(args.size), "--seed", str(args.seed), "--threads",
               str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        label = (f"camlens scorecam batch_size={bs}" if which == "camlens"
                 else f"pytorch-grad-cam ScoreCAM batch_size={bs} (information)")
        try:
            r = json.loads(res.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            print(f"| {label} | child failed (rc {res.returncode}): "
                  f"{res.stderr.strip().splitlines()[-1:]} | | | |")
            continue
        growth = (r["hwm_after_kib"] - r["rss_before_kib"]) / 1024
        note = "" if r["reset"] else " (peak not reset: includes the set-up)"
        print(f"| {label}{note} | {growth:.0f} | {r['rss_before_kib'] / 1024:.0f} "
              f"| {r['hwm_after_kib'] / 1024:.0f} | {r['seconds']:.3f} |")
    print(f"\nload average at end: {load()}\n")


# ----------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="timed calls per method (median)")
    p.add_argument("--batch", type=int, default=32, help="Score-CAM / Ablation-CAM batch_size")
    p.add_argument("--n-masks", type=int, default=4000, help="RISE masks")
    p.add_argument("--rise-batch", type=int, default=64)
    p.add_argument("--guided-batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224, help="image side")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sections", default="1,2,3,4,5", help="comma-separated, e.g. 1,4")
    p.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                   help="cProfile one camlens call: where it is slower (auto), always, never")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 96x96 image, 1 repeat, N = 500, guided batch 2")
    p.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.size, args.repeats, args.n_masks, args.guided_batch = 96, 1, 500, 2
    warnings.filterwarnings("ignore")
    if args.child_memory:
        child_memory(args)
        return 0
    torch.set_num_threads(args.threads)
    sections = {int(s) for s in args.sections.split(",") if s.strip()}

    from importlib.metadata import version

    print("# Perturbation and guided methods: resnet18 (random weights), layer4, top-1, CPU\n")
    print(f"- torch {torch.__version__}, torchvision {torchvision.__version__}, camlens "
          f"{camlens.__version__}, grad-cam {version('grad-cam')}, torchcam "
          f"{version('torchcam')}, captum {version('captum')}")
    print(f"- machine: {machine()}")
    print(f"- torch threads = {torch.get_num_threads()}, load average (1/5/15 min) at start = "
          f"{load()}")
    print(f"- image {args.size}x{args.size} (seed {args.seed}), repeats {args.repeats}"
          f"{' (--quick)' if args.quick else ''}\n")

    base = make_model(args.seed)
    x = make_inputs(args.seed, 1, args.size)
    t_start = time.perf_counter()
    if 1 in sections:
        section_scorecam(args, base, x)
    if 2 in sections:
        section_ablation(args, base, x)
    if 3 in sections:
        section_rise(args, base, x)
    if 4 in sections:
        section_guided(args, base, make_inputs(args.seed + 1, args.guided_batch, args.size))
    if 5 in sections:
        section_memory(args)
    print(f"total {time.perf_counter() - t_start:.0f} s; load average at the end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
