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
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .targets import ClassTarget, _check_classes, find_logits

__all__ = [
    "ClassSet",
    "coco_json",
    "make_labels",
    "pseudo_masks",
    "save_voc_png",
    "voc_palette",
    "weak_boxes",
]

IGNORE = 255
MAX_CLASSES = 254  # values 1..254 in an 8-bit mask; 0 is background and 255 ignore


def voc_palette() -> np.ndarray:
    """The Pascal VOC colour palette (256, 3) uint8: colour ``i`` spreads the bits of ``i``
    over R, G, B (bit 0 -> R, bit 1 -> G, bit 2 -> B, from the most significant bit down),
    so 0 is black, 1 (aeroplane) dark red (128, 0, 0), 15 (person) (192, 128, 128) and 255
    (ignore) cream (224, 224, 192)."""
    index = np.arange(256)
    colours = np.zeros((256, 3), np.int64)
    for shift in range(8):  # three bits of the index per step, into ever lower bits
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            colours[:, channel] |= bit << (7 - shift)
    return colours.astype(np.uint8)


def _as_maps(maps: Any) -> Tensor:
    if isinstance(maps, np.ndarray):
        maps = torch.from_numpy(maps)
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps must be a tensor or array (B, K, H, W), got {type(maps).__name__}")
    if maps.ndim != 4:
        raise ValueError(f"maps must be (B, K, H, W): a map per image and class, got "
                         f"{tuple(maps.shape)}; add the class axis with maps[:, None]")
    if not maps.is_floating_point():
        maps = maps.double()
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("maps contain NaN or inf")
    if maps.shape[1] > MAX_CLASSES:
        raise ValueError(f"{maps.shape[1]} classes do not fit an 8-bit VOC mask (at most "
                         f"{MAX_CLASSES}: 0 is background and 255 ignore); label fewer classes")
    return maps.detach()


def _as_present(present: Any, b: int, k: int) -> Tensor:
    """(B, K) bool from a (B, K) bool tensor/array or a list of B lists of class positions."""
    if isinstance(present, (Tensor, np.ndarray)):
        t = torch.as_tensor(present)
        if t.shape != (b, k) or t.dtype != torch.bool:
            raise ValueError(f"present must be (B, K) = ({b}, {k}) bool, got "
                             f"{tuple(t.shape)} {t.dtype}; or give a list of class positions "
                             "per image")
        return t.cpu()
    if not isinstance(present, Sequence) or len(present) != b:
        raise ValueError(f"present must give the classes of each of the {b} images: a (B, K) "
                         "bool tensor or a list of B lists of class positions")
    out = torch.zeros(b, k, dtype=torch.bool)
    for i, classes in enumerate(present):
        for c in classes:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < k:
                raise ValueError(f"image {i}: class {c!r} is not a position 0..{k - 1} of the "
                                 "maps' class axis")
            out[i, int(c)] = True
    return out


def _normalised(maps: Tensor, keep: Tensor) -> Tensor:
    """``ReLU(M) / max ReLU(M)`` per map, 0 for classes not present and all-zero maps."""
    s = maps.clamp_min(0)
    peak = s.flatten(2).amax(-1)[..., None, None]
    s = torch.where(peak > 0, s / torch.where(peak > 0, peak, 1), 0)
    return s * keep.to(s.device)[..., None, None]


def _band(bg_threshold: float, ignore_band: Any) -> tuple[float, float]:
    if ignore_band is None:
        if (isinstance(bg_threshold, bool) or not isinstance(bg_threshold, (int, float))
                or not 0 <= bg_threshold <= 1):
            raise ValueError(f"bg_threshold is the background's score in [0, 1] (0.15 is "
                             f"usual), got {bg_threshold!r}")
        return float(bg_threshold), float(bg_threshold)
    try:
        lo, hi = (float(v) for v in ignore_band)
    except (TypeError, ValueError):
        raise ValueError(f"ignore_band must be two numbers (low, high), got {ignore_band!r}"
                         ) from None
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"ignore_band must satisfy 0 <= low <= high <= 1, got {ignore_band!r}")
    return lo, hi


def _assign(scores: Tensor, values: Tensor, lo: float, hi: float) -> Tensor:
    """Labels (..., H, W) from normalised scores (..., P, H, W): the value of the best class
    where its score is above ``hi``, 0 at or below ``lo``, ignore in between."""
    if scores.shape[-3] == 0:
        return torch.zeros(scores.shape[:-3] + scores.shape[-2:], dtype=torch.uint8)
    best = scores.amax(-3)
    arg = scores.argmax(-3)  # the first of equal scores: the lower class
    label = values.to(arg.device)[arg]
    out = torch.where(best > hi, label, torch.where(best > lo, IGNORE, 0))
    return out.to(torch.uint8).cpu()


def pseudo_masks(
    maps: Any, present: Any, bg_threshold: float = 0.15,
    ignore_band: tuple[float, float] | None = None,
) -> np.ndarray:
    """Pseudo-label masks (B, H, W) uint8 in the Pascal VOC convention from class maps.

    ``s_k = ReLU(M_k) / max ReLU(M_k)`` for each class ``k`` the image has (``present``), 0
    for the others; the background scores ``bg_threshold`` everywhere; each pixel takes
    ``argmax`` over ``(bg_threshold, s_0, ..., s_{K-1})``, written as 0 (background) or
    ``k + 1``, i.e. ``k + 1`` where ``max_k s_k > bg_threshold``. With ``ignore_band=(lo,
    hi)``, two thresholds: ``k + 1`` where ``max_k s_k > hi``, 0 where it is ``<= lo``, 255
    (ignore) in between (``bg_threshold`` is then not used). 0.15 is the usual background
    threshold for evaluating CAM seeds (IRN, Ahn et al. 2019,
    https://arxiv.org/abs/1904.05044).

    ``maps``: (B, K, H, W), a map per image and class (K <= 254); ``present``: (B, K) bool
    or a list of B lists of class positions ``k``.

    >>> pseudo_masks(maps, [[0, 2]], bg_threshold=0.15)   # image 0 has classes 0 and 2
    """
    m = _as_maps(maps)
    b, k = m.shape[:2]
    keep = _as_present(present, b, k)
    lo, hi = _band(bg_threshold, ignore_band)
    scores = _normalised(m, keep)
    return _assign(scores, torch.arange(1, k + 1), lo, hi).numpy()


def weak_boxes(
    maps: Any, present: Any, threshold: float = 0.2,
) -> list[list[tuple[int, tuple[int, int, int, int], float]]]:
    """Weak boxes per image: ``[(k, (x0, y0, x1, y1), score), ...]``, x1 and y1 exclusive.

    For each class ``k`` of an image, the map ``s_k = ReLU(M_k) / max ReLU(M_k)`` is cut at
    ``s_k >= threshold`` (and ``s_k > 0``); every 8-connected component gives one box (all
    of them, as MaxBoxAccV2 scores them), with ``score = max s_k`` inside it (1 for the
    component that holds the map's peak). Sorted by class, then score. The CAM paper boxes
    at 0.2 (Zhou et al. 2016, https://arxiv.org/abs/1512.04150).
    """
    from .metrics import _component_boxes

    m = _as_maps(maps)
    b, k = m.shape[:2]
    keep = _as_present(present, b, k)
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            or not 0 <= threshold <= 1):
        raise ValueError(f"threshold is a fraction of each map's maximum in [0, 1], got "
                         f"{threshold!r}")
    found: list[list[tuple[int, tuple[int, int, int, int], float]]] = [[] for _ in range(b)]
    pairs = keep.nonzero().tolist()
    if not pairs:
        return found
    rows = torch.tensor([i for i, _ in pairs])
    cols = torch.tensor([c for _, c in pairs])
    s = _normalised(m, keep)[rows, cols].cpu()
    owner, boxes, peak = _component_boxes((s >= threshold) & (s > 0), s)
    assert peak is not None
    for o, box, score in zip(owner.tolist(), boxes.tolist(), peak.tolist()):
        found[pairs[o][0]].append((pairs[o][1], tuple(box), float(score)))  # type: ignore[arg-type]
    for items in found:
        items.sort(key=lambda item: (item[0], -item[2], item[1]))
    return found


def save_voc_png(mask: Any, path: str | os.PathLike[str]) -> Path:
    """Write a label mask (H, W) as a palette PNG with the VOC colours, atomically.

    Values are written as they are (0 background, class + 1, 255 ignore); the palette only
    colours them, so the file reads back as the same values (``camlens._annotations.
    load_masks``, Pillow's ``np.array(Image.open(path))``).
    """
    from .viz import atomic_write
    from .viz._image import _pil

    a = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if a.ndim != 2:
        raise ValueError(f"a mask is (H, W), got {a.shape}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"a mask holds integer class values 0..255, got {a.dtype}; write "
                        "class + 1 (0 background, 255 ignore) as uint8")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise ValueError(f"mask values {a.min()}..{a.max()} do not fit 0..255")
    image = _pil().fromarray(np.ascontiguousarray(a.astype(np.uint8)), mode="P")
    image.putpalette(voc_palette().flatten().tolist())
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return atomic_write(path, buf.getvalue())


def coco_json(
    images: Sequence[dict[str, Any]],
    boxes: Sequence[Sequence[tuple[int, Sequence[float], float]]],
    names: Sequence[str],
    description: str = "camlens weak boxes",
) -> dict[str, Any]:
    """A COCO detection dict of weak boxes (a results file with the dataset's image list).

    ``images[i]``: ``{"file_name", "width", "height"}``; ``boxes[i]``: ``(k, (x0, y0, x1,
    y1), score)`` as :func:`weak_boxes` gives them; ``names[k]``: the name of class
    position ``k``. Category ids are ``k + 1``, the values of the VOC masks (0 is the
    background); each annotation has ``bbox = [x, y, width, height]``, ``area``, ``score``
    and ``iscrowd = 0``. Image ids count from 1.
    """
    if len(images) != len(boxes):
        raise ValueError(f"got {len(images)} images and box lists for {len(boxes)}")
    out_images, annotations = [], []
    for i, (info, items) in enumerate(zip(images, boxes), start=1):
        out_images.append({"id": i, "file_name": str(info["file_name"]),
                           "width": int(info["width"]), "height": int(info["height"])})
        for k, (x0, y0, x1, y1), score in items:
            if not 0 <= k < len(names):
                raise ValueError(f"image {i}: class position {k} has no name ({len(names)} "
                                 "names)")
            w, h = float(x1) - float(x0), float(y1) - float(y0)
            annotations.append({"id": len(annotations) + 1, "image_id": i,
                                "category_id": k + 1, "bbox": [float(x0), float(y0), w, h],
                                "area": w * h, "score": round(float(score), 6),
                                "iscrowd": 0})
    return {"info": {"description": description}, "images": out_images,
            "annotations": annotations,
            "categories": [{"id": k + 1, "name": str(n)} for k, n in enumerate(names)]}


# ---------------------------------------------------------------- a folder of images
class ClassSet(ClassTarget):
    """Target: the logits of several classes per image, maps (B, K, H, W) in one pass.

    ``ClassSet([3, 5, 7])`` explains the same classes for every image; ``ClassSet(index)``
    with an (B, K) tensor of class indices gives each image its own. Like
    :class:`camlens.TopK` it names its classes, so CAM applies, and every method keeps
    image ``i``'s classes for image ``i`` (also in the perturbation methods' forwards).

    >>> maps = camlens.compare(model, x, ["gradcam", "cam"], target=ClassSet(range(10)))
    >>> masks = pseudo_masks(maps["gradcam"], present)   # present: (B, 10) bool
    """

    single = False

    def __init__(self, classes: Any) -> None:
        index = torch.as_tensor(list(classes) if not isinstance(classes, (Tensor, np.ndarray))
                                else classes)
        if index.is_floating_point() or index.dtype == torch.bool or index.ndim not in (1, 2) \
                or index.numel() == 0:
            raise ValueError(f"ClassSet takes class indices: a list (K,) for every image or a "
                             f"(B, K) tensor, got {tuple(index.shape)} {index.dtype}")
        self.index = index.long()  # type: ignore[assignment]  (a tensor here)

    def classes(self, output: Any) -> Tensor:
        logits = find_logits(output)
        b, n = logits.shape
        index = self.index.to(logits.device)
        if index.ndim == 1:
            index = index[None].expand(b, -1)
        elif index.shape[0] != b:
            raise ValueError(f"ClassSet holds classes for {index.shape[0]} images, the batch "
                             f"has {b}; give one row per image")
        _check_classes(index, n)
        return index.contiguous()

    def __repr__(self) -> str:
        return f"ClassSet({self.index.tolist()})"


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
) -> dict[str, Any]:
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
    :class:`camlens.models.Preprocess`), as in :func:`camlens.run`. Returns the summary
    written to ``labels.json`` and its ``exit_code`` (1 when an image or a named method
    failed: those are listed and skipped, the others written).
    """
    from .cli._common import CliError, model_spec, path_items

    items = path_items(paths)
    given, model = model_spec(model, labels)
    if classes is not None and not isinstance(classes, str):
        classes = list(classes)
    band = None
    if ignore_band is not None:
        band = ",".join(str(v) for v in ignore_band)
    args = argparse.Namespace(
        model_object=given, labels=labels, paths=[str(p) for p in items], out=str(out),
        model=model, method=method, layer=layer, classes=classes,
        annotations=None if annotations is None else str(annotations),
        multilabel=multilabel, bg_threshold=bg_threshold, ignore_band=band,
        box_threshold=box_threshold,
        true_masks=None if true_masks is None else str(true_masks), option=list(options),
        weights=weights, trust_model=trust_model, preprocess=preprocess,
        batch_size=batch_size, device=device, max_pixels=max_pixels, progress=progress,
    )
    try:
        code, summary = label_folder(args)
    except CliError as err:
        raise ValueError(str(err)) from None
    summary["exit_code"] = code  # 1 when an image or a named method failed, as camlens.run
    return summary


def _label_set(text: Any, names: Sequence[str]) -> list[int]:
    """Model class indices of ``--classes`` (names or indices, comma-separated, or a list)."""
    from .cli._common import CliError

    if text is None or (isinstance(text, str) and not text.strip()):
        if len(names) > MAX_CLASSES:
            raise CliError(
                f"the model has {len(names)} classes and a VOC mask holds {MAX_CLASSES}: name "
                "the classes to label with --classes (classes=), e.g. --classes "
                f"'{names[0]},{names[1]}'"
            )
        return list(range(len(names)))
    from ._annotations import _Names

    resolve = _Names(names)
    chosen: list[int] = []
    parts = str(text).split(",") if isinstance(text, str) else list(text)
    for part in parts:
        if isinstance(part, str):
            part = part.strip()
            if not part:
                continue
        try:
            index = resolve.index(part, "--classes")
        except ValueError as err:
            raise CliError(str(err)) from None
        assert index is not None
        if index in chosen:
            raise CliError(f"--classes names {names[index]!r} twice")
        chosen.append(index)
    if not chosen:
        raise CliError("--classes is empty; name the classes to label")
    if len(chosen) > MAX_CLASSES:
        raise CliError(f"--classes names {len(chosen)} classes; a VOC mask holds {MAX_CLASSES}")
    return chosen


def _parse_band(text: Any) -> tuple[float, float] | None:
    from .cli._common import CliError

    if text is None:
        return None
    parts = [p for p in str(text).replace(" ", "").split(",") if p]
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise CliError(f"--ignore-band takes LOW,HIGH (e.g. 0.1,0.3), got {text!r}") from None
    if not 0 <= lo <= hi <= 1:
        raise CliError(f"--ignore-band needs 0 <= LOW <= HIGH <= 1, got {text!r}")
    return lo, hi


def _placed(maps: Tensor, box: tuple[int, int, int, int], height: int, width: int) -> Tensor:
    """Maps (P, h, w) of the model's input, resized bilinearly onto ``box`` of an image of
    ``height`` x ``width`` pixels (zero outside it)."""
    x0, y0, x1, y1 = box
    full = torch.zeros(maps.shape[0], height, width, dtype=torch.float64)
    if maps.shape[0] == 0:
        return full
    inner = F.interpolate(maps[None].double(), size=(y1 - y0, x1 - x0), mode="bilinear",
                          align_corners=False)[0]
    full[:, y0:y1, x0:x1] = inner
    return full


def label_folder(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """``camlens labels`` and :func:`make_labels`: returns (exit code, summary)."""
    from . import __version__
    from . import metrics as M
    from ._annotations import load_classes, load_masks
    from ._explainer import compare
    from .cli._common import (
        CliError,
        Run,
        collect,
        decode,
        inside,
        load,
        output_folder,
        output_names,
        parse_methods,
        print_plan,
        say,
        show_progress,
    )
    from .viz import DEFAULT_MAX_PIXELS, atomic_write

    methods = parse_methods(args.method, args.option)
    band = _parse_band(args.ignore_band)
    try:
        lo, hi = _band(args.bg_threshold, band)
    except ValueError as err:
        raise CliError(str(err)) from None
    if not 0 <= args.box_threshold <= 1:
        raise CliError(f"--box-threshold must be in [0, 1], got {args.box_threshold}")
    model, preprocess, names, layer, device = load(args)
    chosen = _label_set(args.classes, names)
    position = {c: k for k, c in enumerate(chosen)}
    given: dict[str, list[int]] | None = None
    if args.annotations:
        try:
            given = load_classes(args.annotations, names)
        except ValueError as err:
            raise CliError(str(err)) from None
    truth: dict[str, np.ndarray] | None = None
    if args.true_masks:
        try:
            truth = load_masks(args.true_masks)
        except ValueError as err:
            raise CliError(str(err)) from None
    run = Run()
    files = collect(args.paths, run, out=args.out)
    if given is not None and files and not {f[0].name for f in files} & set(given):
        keys = ", ".join(sorted(given)[:3])
        raise CliError(f"the annotations name none of the {len(files)} image(s): they are "
                       f"keyed by file name ({keys}, ...)")
    out = output_folder(args.out)
    stems = output_names(files)
    source = (f"annotations {args.annotations}" if given is not None else
              "predictions: classes with sigmoid > 0.5" if args.multilabel else
              "predictions: the top-1 class (softmax), when it is one of the classes")
    say(f"classes from {source}")
    show = show_progress(args.progress)
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    boxes: dict[str, list[list[Any]]] = {m: [] for m in methods.names}
    entries: list[dict[str, Any]] = []
    confusion: dict[str, Tensor] = {}
    scored: set[str] = set()
    planned = False
    layer_names: list[str] = []
    from tqdm import tqdm

    bar = tqdm(total=len(files), unit="img", disable=not show)
    for start in range(0, len(files), args.batch_size):
        chunk = range(start, min(start + args.batch_size, len(files)))
        loaded = decode(files, chunk, preprocess, max_pixels, run)
        bar.update(len(chunk) - len(loaded))
        live = methods.live()
        if given is not None:
            kept = []
            for item in loaded:
                name = files[item[0]][0].name
                if name not in given:
                    run.fail(files[item[0]][1], "not named in the annotations")
                else:
                    kept.append(item)
            bar.update(len(loaded) - len(kept))
            loaded = kept
        if not loaded or not live:
            continue
        x = torch.stack([t for _, _, t in loaded]).to(device)
        present = _present_classes(model, x, loaded, files, given, chosen, position,
                                   args.multilabel)
        width = max(1, max(len(p) for p in present))
        index = torch.tensor([[chosen[k] for k in p] + [chosen[0]] * (width - len(p))
                              if p else [chosen[0]] * width for p in present])

        def plan(rows: list[Any], n: int = len(loaded)) -> None:
            nonlocal planned
            if not planned:
                planned = True
                print_plan(rows, n, len(files))

        try:
            result = compare(model, x, live, layer, ClassSet(index), normalize=False,
                             errors="keep", batch_size=max(args.batch_size, 32),
                             progress=show, plan=plan, options=methods.options_for(live))
        except ValueError as err:
            for i, _, _ in loaded:
                run.fail(files[i][1], str(err))
            bar.update(len(loaded))
            continue
        methods.record(result)
        layer_names = list(result.layer_names or layer_names)
        good = {m: v for m, v in result.items() if not isinstance(v, Exception)}
        for b, (i, rgb, _) in enumerate(loaded):
            path, shown, rel = files[i]
            height, width_px = rgb.shape[:2]
            crop = preprocess.crop_box(height, width_px)
            entry: dict[str, Any] = {
                "file": shown, "width": width_px, "height": height,
                "classes": [names[chosen[k]] for k in present[b]], "masks": {},
            }
            mask_truth = None
            if truth is not None:
                mask_truth = truth.get(path.stem)
                if mask_truth is None:
                    entry["true_mask"] = "missing"
                elif mask_truth.shape != (height, width_px):
                    entry["true_mask"] = (f"size {mask_truth.shape[1]}x{mask_truth.shape[0]} "
                                          f"is not the image's {width_px}x{height}")
                    say(f"{shown}: true mask {entry['true_mask']}; not scored")
                    mask_truth = None
            try:
                made = _label_image(good, b, present[b], crop, height, width_px, lo, hi,
                                    args.box_threshold, mask_truth, len(chosen) + 1)
            except ValueError as err:  # a true mask holding values that are not classes
                run.fail(shown, str(err))
                bar.update(1)
                continue
            for method, (mask, found, part) in made.items():
                target = inside(out, f"{method}/{stems[i]}.png")
                save_voc_png(mask, target)
                entry["masks"][method] = f"{method}/{target.name}"
                boxes[method].append(found)
                if part is not None:
                    confusion[method] = confusion.get(method, 0) + part
                    scored.add(shown)
            suffix = path.suffix
            entry["file_name"] = str(Path(rel).with_suffix(suffix)) if suffix else rel
            entries.append(entry)
            bar.update(1)
    bar.close()
    class_names = [names[c] for c in chosen]
    for method, per_image in boxes.items():
        if method not in good_methods(methods):
            continue
        coco = coco_json([{"file_name": e["file_name"], "width": e["width"],
                           "height": e["height"]} for e in entries if method in e["masks"]],
                         per_image, class_names,
                         f"camlens weak boxes: {method}, threshold {args.box_threshold}")
        atomic_write(inside(out, f"{method}/boxes.json"),
                     json.dumps(coco, indent=1).encode("utf-8"))
    summary: dict[str, Any] = {
        "camlens": __version__, "model": args.model, "layer": layer_names,
        "methods": good_methods(methods),
        "classes": [{"value": k + 1, "index": c, "name": names[c]}
                    for k, c in enumerate(chosen)],
        "classes_from": source,
        "bg_threshold": None if band is not None else float(args.bg_threshold),
        "ignore_band": list(band) if band is not None else None,
        "box_threshold": float(args.box_threshold),
        "images": len(entries), "failed": len(run.errors),
        "skipped_methods": methods.skipped, "failed_methods": methods.failed,
        "errors": run.errors, "records": entries,
    }
    if truth is not None:
        summary["miou"] = {}
        for method, conf in confusion.items():
            score = M._from_confusion(conf)
            summary["miou"][method] = {
                "miou": round(score.miou, 4),
                "per_class": {("background" if v == 0 else class_names[v - 1]):
                              (None if bool(score.iou[v].isnan()) else
                               round(float(score.iou[v]), 4))
                              for v in range(len(chosen) + 1)},
                "labelled": round(score.labelled, 4),
            }
        summary["scored_images"] = len(scored)
        missing = sum(1 for e in entries if e.get("true_mask") == "missing")
        if missing:
            say(f"{missing} image(s) have no true mask in {args.true_masks}; not scored")
        for method, score in summary["miou"].items():
            say(f"{method}: mIoU {score['miou']} % over {len(scored)} image(s)")
    atomic_write(inside(out, "labels.json"), json.dumps(summary, indent=1).encode("utf-8"))
    say(f"labelled {len(entries)} image(s) into {out}")
    failed = bool(run.errors) or bool(methods.failed)
    return (1 if failed else 0), summary


def _label_image(
    good: dict[str, Tensor], b: int, present: list[int], crop: tuple[int, int, int, int],
    height: int, width: int, lo: float, hi: float, box_threshold: float,
    truth: np.ndarray | None, classes: int,
) -> dict[str, tuple[Tensor, list[Any], Tensor | None]]:
    """Image ``b`` of a batch, for every method: (mask (H, W) uint8 in the image's pixels,
    weak boxes, confusion against the true mask or None)."""
    from .metrics import _confusion

    p = len(present)
    values = torch.tensor([k + 1 for k in present], dtype=torch.long)
    outside = torch.ones(height, width, dtype=torch.bool)
    outside[crop[1]:crop[3], crop[0]:crop[2]] = False
    made = {}
    for method, maps in good.items():
        m = maps[b] if maps[b].ndim == 3 else maps[b][None]
        full = _placed(m[:p].cpu(), crop, height, width)
        scores = _normalised(full[None], torch.ones(1, p, dtype=torch.bool))[0]
        mask = _assign(scores, values, lo, hi)
        mask[outside] = IGNORE
        found = weak_boxes(full[None], [list(range(p))], box_threshold)[0]
        part = None
        if truth is not None:
            part = _confusion(mask, torch.from_numpy(truth), classes, IGNORE)
        made[method] = (mask, [(present[k], box, score) for k, box, score in found], part)
    return made


def good_methods(methods: Any) -> list[str]:
    return [m for m in methods.names if m not in methods.skipped and m not in methods.failed]


@torch.no_grad()
def _present_classes(model: Any, x: Tensor, loaded: Sequence[Any], files: Sequence[Any],
                     given: dict[str, list[int]] | None, chosen: list[int],
                     position: dict[int, int], multilabel: bool) -> list[list[int]]:
    """The classes (positions in ``chosen``) of each image of a batch: from the annotations
    or from one forward of the model (top-1 if in ``chosen``; sigmoid > 0.5 if
    ``multilabel``)."""
    if given is not None:
        return [sorted(position[c] for c in given[files[i][0].name] if c in position)
                for i, _, _ in loaded]
    from ._guard import ModelGuard

    with ModelGuard(model, eval_mode=True):
        logits = find_logits(model(x)).float().cpu()
    if multilabel:
        on = torch.sigmoid(logits[:, chosen]) > 0.5
        return [torch.nonzero(row).flatten().tolist() for row in on]
    top = logits.argmax(1).tolist()
    return [[position[t]] if t in position else [] for t in top]
