"""Whole datasets: streaming, resumable runs (``camlens explain``, :func:`run`).

>>> camlens.run(["photos/"], "out/", method="gradcam,layercam")   # resumes if interrupted
>>> for record in camlens.read_index("out/"): ...                 # one record per image
>>> for file, method, maps in camlens.read_maps("out/"): ...
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._index import read_index, read_maps

__all__ = ["read_index", "read_maps", "run"]


def run(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] = "camlens-out",
    *,
    model: str = "efficientnet-lite0",
    method: str = "gradcam",
    layer: str | None = None,
    target: str | int = "top1",
    counterfactual: bool = False,
    save: str | Sequence[str] = "overlay,grid,npy",
    options: Sequence[str] = (),
    weights: str | None = None,
    trust_model: bool = False,
    preprocess: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    alpha: float = 0.5,
    colormap: str = "jet",
    threshold: float = 0.2,
    max_pixels: int | None = None,
    progress: str = "never",
    restart: bool = False,
    engine: str = "local",
    address: str | None = None,
) -> dict[str, Any]:
    """Explain every image of ``paths`` (files and folders) into ``out``, as
    ``camlens explain`` does: the same outputs, index and resumption, in a notebook.

    Returns the run's summary (``images`` done and ``failed`` counts, methods, layer);
    the per-image records are in :func:`read_index`. A folder holding a finished part of
    the same run is resumed; one holding a run with other options raises ``ValueError``
    (``restart=True`` deletes that run's outputs first). ``save``: any of ``overlay``,
    ``grid``, ``npy``, ``shards`` (maps in a few large files, see :func:`read_maps`),
    ``mask``. ``options``: method options as ``"[METHOD.]NAME=VALUE"``. ``engine="ray"``
    runs the batches on a pool of Ray actors (a local Ray instance, or the cluster at
    ``address``), writing the same outputs and index.
    """
    from ..cli._common import CliError
    from ._local import run_explain

    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ValueError("paths is empty; give image files or folders")
    args = argparse.Namespace(
        paths=[str(p) for p in items], out=str(out), model=model, method=method,
        layer=layer, target=str(target), counterfactual=counterfactual,
        save=save, option=list(options), weights=weights, trust_model=trust_model,
        preprocess=preprocess, batch_size=batch_size, device=device, alpha=alpha,
        colormap=colormap, threshold=threshold, max_pixels=max_pixels, progress=progress,
        restart=restart, engine=engine, address=address,
    )
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    try:
        code = run_explain(args)
    except CliError as err:
        raise ValueError(str(err)) from None
    summary: dict[str, Any] = json.loads((Path(out) / "summary.json").read_text("utf-8"))
    summary["exit_code"] = code
    return summary
