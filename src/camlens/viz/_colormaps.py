"""Colormaps as 256-entry lookup tables, without matplotlib or OpenCV.

The tables were sampled once from matplotlib's colormaps (viridis, inferno, magma and
plasma are CC0; turbo is Apache-2.0, by Google) and ship in ``camlens/data/colormaps.npz``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

from .._errors import unknown_choice


@lru_cache(maxsize=1)
def _tables() -> dict[str, np.ndarray]:
    with resources.files("camlens").joinpath("data/colormaps.npz").open("rb") as f:
        data = np.load(f, allow_pickle=False)
        return {name: data[name] for name in data.files}


def available_colormaps() -> list[str]:
    """Names accepted by ``colormap=``."""
    return sorted(_tables())


def colormap(values: np.ndarray, name: str = "jet") -> np.ndarray:
    """Map values in [0, 1] (any shape) to RGB uint8 (..., 3). NaN counts as 0."""
    tables = _tables()
    if name not in tables:
        raise unknown_choice("colormap", name, tables)
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    index = np.clip(np.rint(v * 255), 0, 255).astype(np.intp)
    return tables[name][index]
