"""Peak memory per image of a Grad-CAM batch of the bundled model, against a bare forward.

Each figure comes from a fresh process (``ru_maxrss`` never goes down): the growth of the
peak resident set over the call, divided by the batch. Torch on one thread.

    .venv/bin/python bench/bench_memory.py            # batches 8, 32 and 64
    .venv/bin/python bench/bench_memory.py --batches 8 16
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys

from _common import load, machine


def measure(batch: int, what: str) -> float:
    """MB per image of one call (``gradcam``: ``camlens.explain``; ``forward``: the model
    under ``no_grad``), in this process."""
    import torch

    import camlens

    torch.set_num_threads(1)
    model, _, _ = camlens.load_model()
    x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if what == "forward":
        with torch.no_grad():
            model(x)
    else:
        camlens.explain(model, x)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # batch, what: in a child
    args = parser.parse_args()
    if args.one:
        print(measure(int(args.one[0]), args.one[1]))
        return
    print(f"{machine()}; load {load()}")
    print("| batch | Grad-CAM, MB per image | bare no-grad forward, MB per image |")
    print("|---|---|---|")
    for batch in args.batches:
        row = [subprocess.run([sys.executable, __file__, "--one", str(batch), what],
                              capture_output=True, text=True, check=True).stdout.strip()
               for what in ("gradcam", "forward")]
        print(f"| {batch} | {float(row[0]):.1f} | {float(row[1]):.1f} |")


if __name__ == "__main__":
    main()
