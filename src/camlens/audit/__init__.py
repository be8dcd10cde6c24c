"""Bias audit: does a model look at the object, or at what happens to come with it?

``camlens.audit`` runs the dataset runner over a folder of images (resumable, the maps in
shards), then streams the maps back and measures, per class, where they rest: with object
annotations (boxes or segmentation masks) the share of each map's energy on the object
and off it and the pointing game; without them, weaker evidence that needs no annotations
(energy on the image's border, how concentrated maps are). Classes whose maps rest on the
object far less than the other classes' are flagged, with the worst images as pictures,
in a report a person can read (``report.md``, ``report.html``) and in ``audit.csv``,
``audit.json`` and ``images.jsonl``.

>>> result = camlens.audit(["photos/"], "audit/", annotations="boxes.json")
>>> result.flagged                     # class ids whose maps rest on the background
>>> print(result.table())              # per true class: accuracy, energy on/off the object
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._errors import UsageError
from .._messages import Sink, sink_or_log
from ..runner import run
from ..runner._setup import path_items
from ._collect import State, build_result, image_record, records
from ._inputs import (
    AuditSpec,
    check_args,
    check_named,
    check_out,
    load,
    read_annotations,
    read_baseline,
    read_masks,
    read_truth,
)
from ._report import pictures, plain, write
from ._result import RUN_FOLDER, AuditResult, ClassRow

__all__ = ["AuditResult", "AuditSpec", "ClassRow", "audit", "audit_folder"]


def audit(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] = "camlens-audit",
    *,
    model: Any = "efficientnet-lite0",
    weights: str | None = None,
    trust_model: bool = False,
    preprocess: Any = None,
    labels: Sequence[str] | None = None,
    method: str = "gradcam",
    layer: str | None = None,
    annotations: Any = None,
    masks: Any = None,
    truth: Any = None,
    min_images: int = 10,
    z: float = 3.0,
    ratio: float = 0.8,
    floor: float = 0.05,
    worst: int = 8,
    tolerance: int | None = None,
    border: float = 0.1,
    baseline: Any = None,
    batch_size: int = 8,
    device: str = "auto",
    progress: str = "never",
    restart: bool = False,
    message: Sink | None = None,
) -> AuditResult:
    """Audit where a model's maps rest, class by class, over a folder of images.

    Runs :func:`camlens.run` into ``out/run`` (maps of the predicted class in shards;
    resumable: the same call again only redoes the statistics), then streams the maps.

    - ``model``: a spec for :func:`camlens.load_model` (with ``weights``, ``trust_model``,
      ``preprocess`` a convention name) or a model object (``preprocess`` a
      :class:`camlens.models.Preprocess` or a name, ``labels`` its class names).
    - ``annotations``: boxes as :func:`camlens.evaluate` reads them (COCO JSON, a folder
      of Pascal VOC XML, ``{"file.jpg": {"boxes": [...], "label": 3}}``), keyed by file
      name; ``masks``: a folder of single-channel PNG masks (class index + 1 on the object,
      0 background, 255 ignore), keyed by file stem. A mask wins over boxes.
    - ``truth``: each image's true class: ``"folders"`` (the image's folder is named after
      its class), a JSON ``{file name: class}`` or CSV ``file,class`` file, or a dict;
      classes are indices or names of ``labels``. By default the annotations' ``label``,
      their one class, or the one class of the image's mask.
    - The flag rule (:func:`camlens.audit._stats.outliers`): among classes with at least
      ``min_images`` annotated images, a class whose mean energy on the object has a
      robust z-score <= ``-z`` against the other classes and is <= ``ratio`` x their
      median. ``worst``: pictures of that many worst images per flagged class.
    - ``tolerance``: the pointing game's, in map pixels (default 15 px at 224, scaled);
      ``border``: the width of the border band, as a share of the shorter side.
    - ``baseline``: another audit's folder (or :class:`AuditResult`): accuracy and energy
      per class side by side with it (an accuracy drop on data where the background no
      longer goes with the class).

    Writes ``report.md``, ``report.html`` (self-contained), ``audit.csv``, ``audit.json``,
    ``images.jsonl`` (one record per image) and ``thumbs/`` into ``out``. Notes go to
    ``message`` (a ``Callable[[str], None]``; by default the ``camlens`` logger).
    """
    spec = AuditSpec(
        paths=path_items(paths), out=Path(out), model=model, weights=weights,
        trust_model=trust_model, preprocess=preprocess, labels=labels, method=method,
        layer=layer, annotations=annotations, masks=masks, truth=truth,
        min_images=min_images, z=z, ratio=ratio, floor=floor, worst=worst,
        tolerance=tolerance, border=border, baseline=baseline, batch_size=batch_size,
        device=device, progress=progress, restart=restart,
    )
    return audit_folder(spec, message)


def audit_folder(spec: AuditSpec, message: Sink | None = None) -> AuditResult:
    """The audit of ``spec`` (:func:`audit` for a Python caller, ``camlens audit`` for the
    command line): the run into ``out/run``, the statistics, the report."""
    method = check_args(spec.method, spec.min_images, spec.z, spec.ratio, spec.floor,
                        spec.worst, spec.tolerance, spec.border, spec.batch_size)
    message = sink_or_log(message)
    items, out = spec.paths, spec.out
    check_out(out, items)
    the_model, pre, names = load(spec.model, spec.weights, spec.trust_model, spec.preprocess,
                                 spec.labels, spec.device)
    ann = read_annotations(spec.annotations, names)
    mask_map = read_masks(spec.masks)
    truth_map, truth_kind = read_truth(spec.truth, names)
    for note in check_named(items, ann, mask_map, truth_map):
        message(note)  # as the runner's notes
    base = read_baseline(spec.baseline)
    summary = run(items, out / RUN_FOLDER, model=the_model, preprocess=pre, labels=names,
                  method=method, layer=spec.layer, save="shards", batch_size=spec.batch_size,
                  device="auto" if isinstance(spec.model, str) else spec.device,
                  progress=spec.progress, restart=spec.restart, message=message)
    folder = out / RUN_FOLDER
    roots = [Path(p) for p in items]
    settings = {"tolerance": spec.tolerance, "border": spec.border}
    state = State(spec.worst)
    images_path = out / "images.jsonl"
    tmp = out / ".images.jsonl.part"
    try:  # written to a temporary name and renamed: whole or not at all
        with open(tmp, "w", encoding="utf-8") as lines:
            for record, cam in records(folder, method, roots):
                if cam is None:
                    state.fail(record)
                    continue
                row = image_record(record, cam, ann, mask_map, truth_map, truth_kind,
                                   names, settings)
                lines.write(json.dumps(plain(row), ensure_ascii=False) + "\n")
                state.add(row)
        os.replace(tmp, images_path)
    finally:
        tmp.unlink(missing_ok=True)
    if not state.images:
        raise UsageError(f"no image of {', '.join(map(str, items))} was audited "
                         f"({state.failed} failed: see {folder / 'index.jsonl'})")
    if (ann or mask_map) and not state.annotated:
        raise UsageError("the annotations name none of the audited images (boxes are keyed "
                         "by file name, masks by file stem); check the names")
    result = build_result(state, out, method, summary, names, truth_kind, base,
                          dict(min_images=spec.min_images, z=spec.z, ratio=spec.ratio,
                               floor=spec.floor))
    pictures(result, folder, method, roots, ann, mask_map)
    write(result, state, bool(ann or mask_map), spec.border)
    return result
