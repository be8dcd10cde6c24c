"""Per-method cost of one image on the bundled model (EfficientNet-Lite0, chelsea, top-1).

For every registered method: its extra forwards (the cost plan camlens prints before a
heavy method starts), the time of ``camlens.explain`` for one 224 x 224 image, and that
time as a ratio to the bare forward + backward pass every gradient method needs. Also the
bundled model's forward in the layout camlens runs it in (channels-last) against the
default contiguous layout, batch 8, and both layouts' maps being equal.

    python bench/bench_methods.py               # every method (heavy ones take minutes)
    python bench/bench_methods.py --skip-heavy  # leave out sscam, iscam and rise
    python bench/bench_methods.py --threads 1

Prints a markdown table. Run on a quiet machine: the load average is printed first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from skimage import data

import camlens
from camlens._registry import method_class


def _bare(model: torch.nn.Module, x: torch.Tensor, layer: str) -> float:
    """One forward and the gradient of the top-1 logit at ``layer``: the floor."""
    module = model.get_submodule(layer)
    store = {}
    handle = module.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        started = time.perf_counter()
        with torch.enable_grad():
            out = model(x)
            score = out.gather(1, out.argmax(1, keepdim=True)).sum()
            torch.autograd.grad(score, store["a"])
        return time.perf_counter() - started
    finally:
        handle.remove()


def _forward_rate(model: torch.nn.Module, x: torch.Tensor, runs: int = 5) -> float:
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - started)
    return x.shape[0] / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-heavy", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f}, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}")
    model, preprocess, labels = camlens.load_model()
    x = preprocess(data.chelsea())[None]
    layer = "_swish"

    # the layout: channels-last (what load_model gives) against contiguous, batch 8
    xb = x.repeat(8, 1, 1, 1)
    fast = _forward_rate(model, xb)
    plain = camlens.load_model()[0].to(memory_format=torch.contiguous_format)
    slow = _forward_rate(plain, xb)
    a = camlens.explain(model, x, "gradcam")
    b = camlens.explain(plain, x, "gradcam")
    print(f"forward, batch 8: channels-last {fast:.1f} img/s, contiguous {slow:.1f} img/s "
          f"({fast / slow:.2f}x); Grad-CAM maps differ by {float((a - b).abs().max()):.1e}")

    bare = statistics.median(_bare(model, x, layer) for _ in range(5))
    print(f"bare forward + backward: {1000 * bare:.1f} ms\n")
    print("| method | extra forwards | time (s) | x bare |")
    print("|---|---:|---:|---:|")
    for name in camlens.available_methods():
        cls = method_class(name)
        if args.skip_heavy and cls.heavy:
            continue
        rows: list = []
        try:  # first run: warm-up, and the forwards from the cost plan
            started = time.perf_counter()
            camlens.compare(model, x, [name], plan=rows.extend)
            seconds = time.perf_counter() - started
            if not cls.heavy:  # timed again without the plan's timed forward
                started = time.perf_counter()
                camlens.compare(model, x, [name])
                seconds = time.perf_counter() - started
        except ValueError as err:
            print(f"| {name} | - | cannot apply: {str(err).split(';')[0]} | - |")
            continue
        forwards = sum(r.forwards for r in rows)
        tag = " (heavy)" if cls.heavy else ""
        print(f"| {name}{tag} | {forwards:,} | {seconds:.2f} | {seconds / bare:.1f} |")


if __name__ == "__main__":
    main()
