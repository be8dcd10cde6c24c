"""Whole datasets: streaming, resumable runs (``camlens explain``, :func:`run`).

>>> camlens.run(["photos/"], "out/", method="gradcam,layercam")   # resumes if interrupted
>>> for record in camlens.read_index("out/"): ...                 # one record per image
>>> for file, method, maps in camlens.read_maps("out/"): ...
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .._errors import UsageError
from .._messages import Sink
from ._explain import explain_files
from ._index import RunFolderError, read_index, read_maps
from ._setup import model_spec, path_items
from ._spec import ModelSettings, RunResult, RunSpec

__all__ = ["ModelSettings", "RunFolderError", "RunResult", "RunSpec", "read_index", "read_maps",
           "run"]


def run(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] = "camlens-out",
    *,
    model: Any = "efficientnet-lite0",
    method: str = "gradcam",
    layer: str | None = None,
    target: str | int = "top1",
    counterfactual: bool = False,
    save: str | Sequence[str] = "overlay,grid,npy",
    options: Sequence[str] = (),
    weights: str | None = None,
    trust_model: bool = False,
    preprocess: Any = None,
    labels: Sequence[str] | None = None,
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
    actors: int | None = None,
    message: Sink | None = None,
) -> RunResult:
    """Explain every image of ``paths`` (files and folders) into ``out``, as
    ``camlens explain`` does: the same outputs, index and resumption, in a notebook.

    Returns a :class:`RunResult`, built in memory: ``images`` done and ``failed`` counts,
    methods, layer, the output folder and ``summary`` (what ``summary.json`` holds); it
    reads as that dict too (``result["images"]``, ``result["exit_code"]``). The per-image
    records are in :func:`read_index`. A folder holding a finished part of the same run
    is resumed; one holding a run with other options raises
    :class:`camlens.RunFolderError` (``restart=True`` deletes that run's outputs first).
    Bad settings raise :class:`camlens.UsageError` (a ``ValueError``). Notes (skipped
    files, resumption, the cost plan) go to ``message`` (a ``Callable[[str], None]``),
    by default to the ``camlens`` logger at level INFO. ``save``: any of ``overlay``,
    ``grid``, ``npy``, ``shards`` (maps in a few large files, see :func:`read_maps`),
    ``mask``. ``options``: method options as ``"[METHOD.]NAME=VALUE"``. ``engine="ray"``
    runs the batches on a pool of Ray actors (a local Ray instance, or the cluster at
    ``address``; ``actors`` of them, by default one per GPU, else one per 4 CPUs),
    writing the same outputs and index.

    ``model`` is a spec for :func:`camlens.load_model` or a model object (PyTorch or
    Keras), used where it is and left as it was. For an object, ``preprocess`` is a
    :class:`camlens.models.Preprocess` (e.g. ``preprocessing("unit", crop=64,
    resize=64)``) or a convention name (224 px; ImageNet's by default), and ``labels`` its
    class names (numbered by default). A resumed run checks the object's weights too.
    """
    items = path_items(paths)
    given, model = model_spec(model, labels)
    if given is not None and engine == "ray":
        raise UsageError(
            "engine='ray' loads the model inside each actor from a spec; save the model "
            "(a TorchScript file, or a state dict for a known architecture) and pass that"
        )
    spec = RunSpec(
        paths=[str(p) for p in items], out=str(out), model=model, method=method,
        layer=layer, target=str(target), counterfactual=counterfactual, save=save,
        options=list(options), weights=weights, trust_model=trust_model,
        preprocess=preprocess, batch_size=batch_size, device=device, alpha=alpha,
        colormap=colormap, threshold=threshold, max_pixels=max_pixels, progress=progress,
        restart=restart, engine=engine, address=address, actors=actors,
        model_object=given, labels=labels,
    )
    return explain_files(spec, message)
