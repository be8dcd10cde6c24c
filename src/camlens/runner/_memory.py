"""A batch bounded by memory: what one image costs, measured on the first batch, against
what the machine has available.

A batch of B images holds about ``B x (pass + pictures)`` bytes: the pass (the model's
activations and the graph from the layer to the score) and the pictures in flight (the
decoded photo, its model input and its maps, for the batch being explained, the batch
decoding ahead and up to four batches being written). ``--batch-size`` larger than
:data:`PROBE` starts with a batch of :data:`PROBE` images whose peak is measured; if the
asked size would need more than the budget, the run goes on with the largest batch that
fits and says so once. The maps do not depend on the batch (one image's map is computed
from that image alone), so a bounded run writes the same outputs.
"""

from __future__ import annotations

import math
import os
import re
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

PROBE = 8  # images in the first, measured batch when a larger one is asked
IN_FLIGHT = 6  # batches whose pictures are held at once (explained, decoding, 4 writing)
SHARE = 0.5  # of the memory the system reports available, what a run plans to use
ENV = "CAMLENS_MEMORY"  # a budget of your own, e.g. 4G (then used whole)


def parse_bytes(text: str) -> int:
    """``"4G"``, ``"512M"``, ``"300k"`` or a plain number of bytes (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text, re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise ValueError(
            f"{ENV}={text!r} is not an amount of memory; write it as e.g. 4G, 512M or a "
            "number of bytes"
        )
    power = " kmgt".index(match[2].lower() or " ")
    return int(float(match[1]) * 1024**power)


def available_memory() -> int | None:
    """The bytes of host memory a run may plan for (``None``: unknown).

    ``CAMLENS_MEMORY`` if set; else :data:`SHARE` of the smaller of ``MemAvailable``
    (``/proc/meminfo``) and the container's limit less its usage (cgroup v2), or of the
    free physical pages where there is no ``/proc``. On a CUDA device, the GPU's free
    memory (``torch.cuda.mem_get_info``) is a second bound, see :class:`BatchSizer`.
    """
    given = os.environ.get(ENV)
    if given:
        return parse_bytes(given)
    found = [n for n in (_meminfo(), _cgroup_room()) if n is not None]
    if not found:
        try:
            found = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (ValueError, OSError, AttributeError):
            return None
    return int(SHARE * min(found))


def _meminfo() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((root / "memory.current").read_text()))
    except (OSError, ValueError):
        return None


class PeakMemory:
    """The peak increase of memory in use during a block, in bytes (``peak``).

    On the CPU: the process's resident set, its high-water mark reset on entry (Linux
    ``/proc/self/clear_refs``; elsewhere the growth of ``ru_maxrss``, which may miss
    memory reused from earlier work). On CUDA: the allocator's peak on the device.
    """

    def __init__(self, device: torch.device, active: bool = True) -> None:
        self.device = device
        self.active = active  # False: measures nothing (peak stays 0)
        self.peak = 0
        self._start = 0
        self._read: Callable[[], int] = _maxrss

    def __enter__(self) -> PeakMemory:
        if not self.active:
            return self
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._read = lambda: torch.cuda.max_memory_allocated(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif _reset_high_water():
            self._read = lambda: _status("VmHWM")
            self._start = _status("VmRSS")
        else:
            self._read = _maxrss
            self._start = _maxrss()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.active:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.peak = max(0, self._read() - self._start)


def _reset_high_water() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status("VmHWM") > 0
    except OSError:
        return False


def _status(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _maxrss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS


@dataclass
class BatchSizer:
    """The runner's batch size: ``requested`` (``--batch-size``), bounded by memory.

    ``size`` is :data:`PROBE` (or less) until :meth:`measured` has seen the first batch,
    then the asked size or the largest that fits; ``message`` says what was decided.
    ``available``: the host's budget in bytes (``None``: from :func:`available_memory`),
    ``gpu``: the device's (``None``: its free memory, on CUDA only).
    """

    requested: int
    images: int
    device: torch.device
    available: int | None = None
    gpu: int | None = None
    size: int = 0
    message: str | None = None
    per_image: float = 0.0

    def __post_init__(self) -> None:
        self.probing = self.requested > PROBE and self.images > PROBE
        self.size = PROBE if self.probing else self.requested
        if self.probing and self.available is None:
            self.available = available_memory()  # a bad CAMLENS_MEMORY: before any work

    def measured(self, peak: int, loaded: list[tuple[int, Any, torch.Tensor]],
                 map_bytes: int) -> None:
        """Bound the batch from the first batch's ``peak`` (bytes, measured around its
        pass) and what its pictures hold (decoded photos, inputs, ``map_bytes`` of maps)."""
        if not self.probing or not loaded:
            return
        self.probing = False
        n = len(loaded)
        held = sum(getattr(rgb, "nbytes", 0) + t.nelement() * t.element_size()
                   for _, rgb, t in loaded) + map_bytes
        pass_cost, picture_cost = peak / n, IN_FLIGHT * held / n
        batch = min(self.requested, self.images)
        pools = []  # (bytes per image, bytes available, where)
        if self.device.type == "cuda":
            free = self.gpu if self.gpu is not None else int(
                SHARE * torch.cuda.mem_get_info(self.device)[0])
            pools.append((pass_cost, free, "GPU memory"))
            pools.append((picture_cost, self.available, "memory"))
        else:
            pools.append((pass_cost + picture_cost, self.available, "memory"))
        self.size = batch
        for cost, room, where in pools:
            if room is None or cost <= 0 or batch * cost <= room:
                continue
            fits = max(1, math.floor(room / cost))
            if fits < self.size:
                self.size = fits
                self.per_image = cost
                self.message = (
                    f"--batch-size {self.requested} needs about {_gb(batch * cost)} of "
                    f"{where} for {batch} images ({_mb(cost)} per image) and "
                    f"{_gb(room)} is available to this run, so it uses batches of "
                    f"{fits} (about {_gb(fits * cost)}); the maps are the same"
                )


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else _mb(n)


def _mb(n: float) -> str:
    return f"{n / 2**20:.0f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"
