"""Weak labels from class activation maps: pseudo-label masks (Pascal VOC PNGs) and weak boxes
(COCO JSON) for a folder of images, from classes given by annotations or by the model.

>>> import camlens.labels as L
>>> masks = L.pseudo_masks(maps, present, bg_threshold=0.15)      # (B, H, W) uint8
>>> L.save_voc_png(masks[0], "out/cat.png")                        # VOC palette PNG
>>> boxes = L.weak_boxes(maps, present, threshold=0.2)             # [(k, box, score), ...]
>>> L.make_labels(["photos/"], "weak/", classes=["tabby", "tiger cat"])   # a whole folder

The recipe is the usual one of weakly supervised segmentation (the CAM "seeds" of SEC,
AffinityNet and IRN; Ahn & Kwak 2018, https://arxiv.org/abs/1803.10464): each labelled
class's map is divided by its maximum, a constant background score competes with them,
and every pixel takes the best-scoring one.

Shaped like :mod:`camlens.audit`; each module imports only from those listed before it:
``_writers`` (VOC PNGs, COCO JSON), ``_rule`` (maps to masks and boxes, with
:mod:`camlens.metrics`), ``_inputs`` (``ClassSet``, the classes to label and those of each
image), ``_folder`` (the batch loop over a folder), and this module (:func:`make_labels`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

# also importable from here, as when labels was one module: the folder run behind
# `camlens labels` (camlens.cli._labels), the mask values and the methods that gave maps
from .._messages import Sink, sink_or_log
from ..runner._setup import model_spec, path_items
from ._folder import LabelsResult as LabelsResult
from ._folder import LabelsSpec as LabelsSpec
from ._folder import good_methods as good_methods
from ._folder import label_folder
from ._inputs import ClassSet
from ._rule import IGNORE as IGNORE
from ._rule import MAX_CLASSES as MAX_CLASSES
from ._rule import pseudo_masks, weak_boxes
from ._writers import coco_json, save_voc_png, voc_palette

__all__ = [
    "ClassSet",
    "coco_json",
    "make_labels",
    "pseudo_masks",
    "save_voc_png",
    "voc_palette",
    "weak_boxes",
]


def make_labels(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] = "camlens-labels",
    *,
    model: Any = "efficientnet-lite0",
    method: str = "gradcam",
    layer: str | None = None,
    classes: Sequence[str | int] | str | None = None,
    annotations: str | os.PathLike[str] | None = None,
    multilabel: bool = False,
    bg_threshold: float = 0.15,
    ignore_band: tuple[float, float] | None = None,
    box_threshold: float = 0.2,
    true_masks: str | os.PathLike[str] | None = None,
    options: Sequence[str] = (),
    weights: str | None = None,
    trust_model: bool = False,
    preprocess: Any = None,
    labels: Sequence[str] | None = None,
    batch_size: int = 8,
    device: str = "auto",
    max_pixels: int | None = None,
    progress: str = "never",
    message: Sink | None = None,
) -> LabelsResult:
    """Pseudo-label masks and weak boxes for every image of ``paths`` (files and folders).

    Writes into ``out``: ``METHOD/STEM.png`` per image (single-channel palette PNGs, the VOC
    convention: 0 background, class position + 1, 255 ignore, the VOC colours; the same
    size as the image), ``METHOD/boxes.json`` (COCO JSON of :func:`weak_boxes`, in the
    image's pixels) and ``labels.json`` (the classes and where they came from, per image,
    the failures, and with ``true_masks`` the mIoU); every file atomically.

    - ``classes``: the classes to label (names or indices of the model's classes; a
      comma-separated string works); mask value ``v`` is ``classes[v - 1]``. Default: all of
      the model's classes, which must then be at most 254.
    - Which classes an image has: from ``annotations`` (COCO JSON, VOC XML folder or a
      simple JSON ``{"cat.jpg": {"classes": ["tabby"]}}``, as ``camlens evaluate`` reads
      them; an image it does not name is reported and skipped), else from the model's
      prediction: its top-1 class when that is one of ``classes`` (softmax models; none
      otherwise, and the mask is all background), or with ``multilabel=True`` every class of
      ``classes`` whose sigmoid is above 0.5. ``labels.json`` says which was used.
    - Maps (``method``: one or several, comma-separated, all from one pass per batch) are
      computed on the model's input (the crop ``preprocess`` makes) for the image's
      classes only, upsampled bilinearly onto the part of the image the crop covers;
      pixels outside the crop are ignore (255) in the masks and have no boxes.
    - :func:`pseudo_masks` with ``bg_threshold`` / ``ignore_band``; :func:`weak_boxes` at
      ``box_threshold``. ``true_masks``: a folder of VOC PNGs named like the images (same
      values as the output), to score the pseudo-labels (mIoU over all images,
      :func:`camlens.metrics.miou`).

    ``model`` is a spec for :func:`camlens.load_model` or a model object (with ``labels``
    its class names and ``preprocess`` a convention name or a
    :class:`camlens.models.Preprocess`), as in :func:`camlens.run`. Returns a
    :class:`LabelsResult` built in memory: ``summary`` is what ``labels.json`` holds, and
    the result reads as that dict with its ``exit_code`` (1 when an image or a named method
    failed: those are listed and skipped, the others written). Notes go to ``message`` (a
    ``Callable[[str], None]``; by default the ``camlens`` logger); bad settings raise
    :class:`camlens.UsageError`.
    """
    items = path_items(paths)
    given, model = model_spec(model, labels)
    if classes is not None and not isinstance(classes, str):
        classes = list(classes)
    band = None
    if ignore_band is not None:
        band = ",".join(str(v) for v in ignore_band)
    spec = LabelsSpec(
        model_object=given, labels=labels, paths=[str(p) for p in items], out=str(out),
        model=model, method=method, layer=layer, classes=classes,
        annotations=None if annotations is None else str(annotations),
        multilabel=multilabel, bg_threshold=bg_threshold, ignore_band=band,
        box_threshold=box_threshold,
        true_masks=None if true_masks is None else str(true_masks), options=list(options),
        weights=weights, trust_model=trust_model, preprocess=preprocess,
        batch_size=batch_size, device=device, max_pixels=max_pixels, progress=progress,
    )
    return label_folder(spec, sink_or_log(message))
