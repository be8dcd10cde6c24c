"""Label files: single-channel PNG masks in the Pascal VOC palette and COCO JSON weak
boxes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor


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


def save_voc_png(mask: Any, path: str | os.PathLike[str]) -> Path:
    """Write a label mask (H, W) as a palette PNG with the VOC colours, atomically.

    Values are written as they are (0 background, class + 1, 255 ignore); the palette only
    colours them, so the file reads back as the same values (``camlens._annotations.
    load_masks``, Pillow's ``np.array(Image.open(path))``).
    """
    from ..viz import atomic_write
    from ..viz._image import _pil

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
