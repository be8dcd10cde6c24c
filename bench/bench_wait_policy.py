"""OpenMP's wait policy for the command line: ``camlens explain`` with OpenMP's default
(``OMP_WAIT_POLICY`` unset: threads spin a while before they sleep) against ``PASSIVE``
(they sleep at once), the policy the CLI now sets when the user has not chosen one.

Each run is a fresh ``camlens explain`` process on the four demo photos (scikit-image's
chelsea, coffee, astronaut, rocket), the two settings alternating round by round so that
the machine's noise hits both alike; the table gives the median wall and CPU seconds (the
process's user + system time). torch is imported before the CLI's ``main`` in both, so the
CLI leaves the variable as each row sets it. Print the load with the figures: on a busy
machine PASSIVE is much faster; on a quiet one the two should be equal.

Run: ``.venv/bin/python bench/bench_wait_policy.py`` (``--rounds``, ``--method``,
``--threads`` for ``camlens explain --threads``).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import load, machine

CLI = "import sys, torch; from camlens.cli import main; sys.exit(main(sys.argv[1:]))"
SETTINGS = {"OpenMP default (unset)": None, "PASSIVE": "PASSIVE"}


def one_run(policy: str | None, photos: Path, out: Path, method: str,
            threads: int | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``camlens explain`` process."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    args = ["explain", str(photos), "--out", str(out), "--restart", "--method", method,
            "--progress", "never"]
    if threads:
        args += ["--threads", str(threads)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CLI, *args], env=env, capture_output=True,
                         text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        sys.exit(f"camlens explain failed:\n{res.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--method", default="gradcam")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    from skimage import data

    from camlens.cli import DEMO_PHOTOS
    from camlens.viz import save_image

    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        for name in DEMO_PHOTOS:
            save_image(getattr(data, name)(), photos / f"{name}.png")
        print(f"machine: {machine()}\nload at start: {load()}")
        one_run("PASSIVE", photos, Path(tmp) / "warm", args.method, args.threads)  # caches
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in SETTINGS}
        for r in range(args.rounds):
            order = list(SETTINGS.items())
            for label, policy in order if r % 2 == 0 else order[::-1]:
                times[label].append(one_run(policy, photos, Path(tmp) / "out", args.method,
                                            args.threads))
        print(f"load at end: {load()}")
    print(f"\n`camlens explain` of {len(DEMO_PHOTOS)} photos, --method {args.method}"
          f"{f', --threads {args.threads}' if args.threads else ''}, {args.rounds} runs "
          "each (alternating), median seconds\n")
    print("| OMP_WAIT_POLICY | wall s | CPU s | runs (wall) |\n|---|---|---|---|")
    base = statistics.median(w for w, _ in times["OpenMP default (unset)"])
    for label, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        shown = " ".join(f"{w:.1f}" for w, _ in runs)
        print(f"| {label} | {wall:.2f} ({wall / base:.2f}x) | {cpu:.2f} | {shown} |")


if __name__ == "__main__":
    main()
