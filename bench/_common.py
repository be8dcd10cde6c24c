"""Helpers shared by the benchmark scripts: the machine and its load, a cProfile of one call."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable


def profile_call(label: str, fn: Callable[[], object], lines: int = 22) -> None:
    """cProfile of one call: where the time goes (cumulative, then own time)."""
    import cProfile
    import io
    import pstats

    pr = cProfile.Profile()
    t0 = time.perf_counter()
    pr.enable()
    fn()
    pr.disable()
    total = time.perf_counter() - t0
    print(f"\n#### cProfile of one call: {label} ({total:.3f} s)\n")
    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).strip_dirs().sort_stats(key).print_stats(lines)
        text = buf.getvalue()
        start = text.find("   ncalls")
        print(f"sorted by {key}:\n```\n{text[start:].rstrip()}\n```")


def machine() -> str:
    """The CPU's model name, the platform and the number of CPUs."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({platform.platform()}), os.cpu_count() = {os.cpu_count()}"


def load() -> str:
    """Load average (1/5/15 min) and, where Linux reports it, the CPU pressure: the share of
    the last 10 s in which some runnable task waited for a CPU (other processes, or a
    host that overcommits the virtual CPUs)."""
    text = "{:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg())
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()
        text += f" (cpu pressure {some[1].replace('avg10=', 'some avg10 = ')} %)"
    except (OSError, IndexError):
        pass
    return text
