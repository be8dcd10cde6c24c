"""Reading annotations: object boxes and classes (COCO JSON, Pascal VOC XML folders, a simple
JSON) and segmentation masks (a folder of single-channel PNGs in the Pascal VOC convention)."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IGNORE = 255
"""The mask value of pixels that are left out of scoring (Pascal VOC's object borders)."""


@dataclass
class Objects:
    """The objects of one image: pixel boxes ``x0, y0, x1, y1`` (x1, y1 exclusive).

    ``classes[i]`` is the class index of ``boxes[i]`` (``None`` where the file gives none, or
    gives a name and no label names were passed to resolve it); ``image_classes`` are classes
    given for the whole image without boxes (image-level labels); ``label`` is the image's
    one class id where the annotations give one. :attr:`present` joins them.
    """

    boxes: list[list[float]] = field(default_factory=list)
    label: int | None = None  # the image's class id, where the annotations give one
    # left out of repr: `camlens evaluate` fingerprints a run with str(Objects), and these
    # do not change its numbers
    classes: list[int | None] = field(default_factory=list, repr=False)
    image_classes: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if len(self.classes) > len(self.boxes):
            raise ValueError(
                f"got {len(self.classes)} classes for {len(self.boxes)} boxes; give one class "
                "per box (or image_classes= for classes without boxes)"
            )
        self.classes = list(self.classes) + [None] * (len(self.boxes) - len(self.classes))

    def add(self, box: list[float], cls: int | None = None) -> None:
        """Append a box and its class, keeping ``boxes`` and ``classes`` aligned."""
        self.boxes.append(box)
        self.classes.append(cls)

    @property
    def present(self) -> list[int]:
        """The distinct classes of the image, sorted: of its boxes, image-level, ``label``."""
        found = {c for c in self.classes if c is not None} | set(self.image_classes)
        if self.label is not None:
            found.add(self.label)
        return sorted(found)


def match_keys(what: str, keys: Collection[str], images: Collection[str],
               how: str) -> str | None:
    """Check per-image entries (``what``: annotations, masks, truth) against the images'
    ``how`` (file name or stem). None naming an image is a mistake in the keys: a
    ``ValueError`` naming a few of each. Otherwise a note saying how many entries name no
    image and the first few of them (they are left out), or ``None`` when all do."""
    if not keys or not images:
        return None
    missing = sorted(set(keys) - set(images))
    if len(missing) == len(set(keys)):
        shown = ", ".join(sorted(keys)[:3])
        have = ", ".join(sorted(images)[:3])
        raise ValueError(f"the {what} name none of the {len(images)} image(s): they are "
                         f"keyed by {how} ({shown}{', ...' if len(keys) > 3 else ''}), the "
                         f"images are {have}{', ...' if len(images) > 3 else ''}; check the "
                         f"{how}s")
    if not missing:
        return None
    return (f"{len(missing)} of the {len(set(keys))} entries in the {what} name no image "
            f"(they are keyed by {how}) and are left out: {', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}")


def load_annotations(
    path: str | Path, labels: Sequence[str] | None = None
) -> dict[str, Objects]:
    """``{file name: Objects}`` from a COCO JSON file, a folder of Pascal VOC XML files, or
    a simple JSON ``{"cat.jpg": [[x0, y0, x1, y1], ...]}`` (or ``{"boxes": [...],
    "classes": [...], "label": 281}`` per file). VOC's inclusive 1-based corners become
    0-based exclusive.

    Classes of boxes: COCO's ``category_id`` (its category's name resolved against
    ``labels`` when they are given), VOC's ``<name>`` resolved against ``labels`` (``None``
    without them), the simple JSON's ``classes`` (indices, or names resolved against
    ``labels``). Raises ``ValueError`` when the file holds no boxes.
    """
    found = _read(path, labels)
    if not found or not any(o.boxes for o in found.values()):
        raise ValueError(f"{path} holds no boxes")
    return found


def load_classes(
    path: str | Path, labels: Sequence[str] | None = None
) -> dict[str, list[int]]:
    """``{file name: sorted class indices present}`` from any file :func:`load_annotations`
    reads; the simple JSON may also give classes without boxes (``{"cat.jpg": {"classes":
    ["tabby", 285]}}``, names resolved against ``labels``). An image named in the file
    without classes maps to ``[]``. Raises ``ValueError`` when no image has a class."""
    found = _read(path, labels)
    classes = {name: objects.present for name, objects in found.items()}
    if not any(classes.values()):
        hint = (" (VOC names classes by name: pass the label names)"
                if labels is None and Path(path).is_dir() else "")
        raise ValueError(f"{path} gives no classes for any image{hint}")
    return classes


def _read(path: str | Path, labels: Sequence[str] | None) -> dict[str, Objects]:
    p = Path(path)
    names = _Names(labels)
    if p.is_dir():
        found = {}
        for xml in sorted(p.rglob("*.xml")):
            name, objects = _voc(xml, names)
            found[name] = objects
        if not found:
            raise ValueError(f"no Pascal VOC .xml files in {p}")
        return found
    try:
        data = json.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        raise ValueError(f"annotation file {p} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{p} is not valid JSON ({err})") from None
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        return _coco(data, names)
    if isinstance(data, dict):
        return {str(k): _simple(k, v, names) for k, v in data.items()}
    raise ValueError(f"{p}: expected COCO JSON or {{file: boxes}}, got {type(data).__name__}")


class _Names:
    """Class names or indices -> class indices, against the model's label names if given."""

    def __init__(self, labels: Sequence[str] | None) -> None:
        self.labels = list(labels) if labels is not None else None
        if self.labels is not None:
            self.exact = {name: i for i, name in reversed(list(enumerate(self.labels)))}
            self.loose = {_norm(name): i for i, name in reversed(list(enumerate(self.labels)))}

    def index(self, value: object, where: str) -> int | None:
        """An int stays (checked against the number of labels); a name is resolved, or
        ``None`` without labels."""
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # COCO files written by some tools hold 3.0
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"{where}: a class is an index or a name, got {value!r}")
        if isinstance(value, int):
            if value < 0 or (self.labels is not None and value >= len(self.labels)):
                top = f" and {len(self.labels) - 1}" if self.labels is not None else ""
                raise ValueError(f"{where}: class {value} is out of range; use an index "
                                 f"between 0{top}, or a class name")
            return value
        if self.labels is None:
            return None
        if value in self.exact:
            return self.exact[value]
        if _norm(value) in self.loose:
            return self.loose[_norm(value)]
        if value.strip().isdigit():  # "3": an index written as text
            return self.index(int(value), where)
        from ._errors import unknown_choice

        raise unknown_choice("class name", value, self.labels,
                             f"({where}; names are matched against the model's labels)")


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", " ")


def _box(values: list[float], where: str) -> list[float]:
    if (not isinstance(values, (list, tuple)) or len(values) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise ValueError(f"{where}: a box needs four numbers, got {values!r}")
    box = [float(v) for v in values]
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"{where}: box {values!r} has a value that is not finite")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(
            f"{where}: box {values!r} is empty or inverted; boxes are [x0, y0, x1, y1] with "
            "x1 > x0 and y1 > y0 (COCO's bbox is [x, y, width, height])"
        )
    return box


def _coco_box(values: object, where: str) -> list[float]:
    """COCO's ``bbox = [x, y, width, height]``, checked (width and height above 0)."""
    if (not isinstance(values, (list, tuple)) or len(values) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise ValueError(f"{where}: a COCO bbox needs four numbers [x, y, width, height], got "
                         f"{values!r}")
    box = [float(v) for v in values]
    if not all(math.isfinite(v) for v in box):
        raise ValueError(f"{where}: bbox {values!r} has a value that is not finite")
    if box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"{where}: bbox {values!r} is empty; COCO's bbox is [x, y, width, "
                         "height] with width > 0 and height > 0")
    return box


def _simple(name: str, value: object, names: _Names) -> Objects:
    classes: object = None
    if isinstance(value, dict):
        label = value.get("label")
        boxes = value.get("boxes", [])
        classes = value.get("classes")
    else:
        label, boxes = None, value
    if not isinstance(boxes, list):
        raise ValueError(f"{name}: boxes must be a list of [x0, y0, x1, y1]")
    if isinstance(label, str) and names.labels is not None and not label.strip().isdigit():
        label = names.index(label, name)
    objects = Objects([_box(b, name) for b in boxes],
                      int(label) if label is not None else None)
    if classes is not None:
        if not isinstance(classes, list):
            raise ValueError(f"{name}: classes must be a list of class indices or names")
        resolved = [names.index(c, name) for c in classes]
        if boxes:
            if len(resolved) != len(boxes):
                raise ValueError(
                    f"{name}: {len(classes)} classes for {len(boxes)} boxes; give one class "
                    "per box, or only classes (image-level labels) without boxes"
                )
            objects.classes = resolved
        else:
            objects.image_classes = sorted({c for c in resolved if c is not None})
    return objects


def _coco(data: dict, names: _Names) -> dict[str, Objects]:
    files = {img["id"]: Path(img["file_name"]).name for img in data["images"]}
    categories = {c.get("id"): c.get("name") for c in data.get("categories", [])
                  if isinstance(c, dict)}
    found = {name: Objects() for name in files.values()}
    for ann in data["annotations"]:
        where = f"annotation {ann.get('id')}"
        x, y, w, h = _coco_box(ann.get("bbox"), where)
        name = files.get(ann["image_id"])
        if name is None:
            raise ValueError(f"{where} names an unknown image id")
        cls = ann.get("category_id")
        if cls is not None:
            named = categories.get(cls)
            if names.labels is not None and isinstance(named, str):
                cls = names.index(named, where)
            else:
                cls = names.index(cls, where)
        found[name].add([x, y, x + w, y + h], cls)
    return found


def _voc(xml: Path, names: _Names) -> tuple[str, Objects]:
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{xml} is not valid XML ({err})") from None
    name = Path(root.findtext("filename") or xml.with_suffix(".jpg").name).name
    objects = Objects()
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        xmin, ymin, xmax, ymax = (float(box.findtext(k) or "nan")
                                  for k in ("xmin", "ymin", "xmax", "ymax"))
        title = (obj.findtext("name") or "").strip()
        cls = names.index(title, str(xml)) if title else None
        objects.add(_box([xmin - 1, ymin - 1, xmax, ymax], str(xml)), cls)
    return name, objects


# ---------------------------------------------------------------- segmentation masks
def load_masks(folder: str | Path) -> dict[str, np.ndarray]:
    """``{file stem: mask (H, W) uint8}`` from a folder of single-channel PNG masks.

    The Pascal VOC convention: a pixel's value is its class index + 1, 0 is background,
    255 is ignore (left out of scoring); values are returned as stored. Palette images
    (mode ``P``, VOC's own files: the value is the palette index, the colours only draw
    it), greyscale (``L``), 1-bit and 16-bit greyscale with values up to 255 are read. Keys
    are file stems, so ``cat.png`` is the mask of ``cat.jpg``. Only the folder itself is
    read (not sub-folders). RGB colour masks are refused: their colours are not classes.

    >>> masks = load_masks("VOC2012/SegmentationClass")   # {"2007_000032": (281, 500)}
    """
    from .viz._image import DEFAULT_MAX_PIXELS, _open

    p = Path(folder)
    if not p.exists():
        raise ValueError(f"mask folder {p} does not exist")
    if not p.is_dir():
        raise ValueError(f"{p} is a file; give the folder that holds the .png masks")
    files = sorted(f for f in p.iterdir()
                   if f.is_file() and f.suffix.lower() == ".png" and not f.name.startswith("."))
    if not files:
        raise ValueError(f"no .png masks in {p} (masks are single-channel PNGs, one per image)")
    found: dict[str, np.ndarray] = {}
    where: dict[str, Path] = {}
    for f in files:
        if f.stem in found:
            raise ValueError(f"{where[f.stem].name} and {f.name} are both masks of {f.stem!r}")
        found[f.stem], where[f.stem] = _mask(_open(f, DEFAULT_MAX_PIXELS), f), f
    return found


def _mask(image: object, path: Path) -> np.ndarray:
    mode = image.mode  # type: ignore[attr-defined]
    if mode in ("P", "L"):
        return np.array(image, dtype=np.uint8)
    if mode == "1":
        return np.array(image, dtype=np.uint8)
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.array(image).astype(np.int64)
        if values.min() < 0 or values.max() > 255:
            raise ValueError(
                f"{path}: a {mode} mask with values {values.min()}..{values.max()}; VOC masks "
                "hold 0 (background), class index + 1 and 255 (ignore) in 8 bits"
            )
        return values.astype(np.uint8)
    if mode in ("RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "HSV", "LAB", "RGBX"):
        raise ValueError(
            f"{path}: a colour mask (mode {mode}); masks must be single-channel PNGs whose "
            "pixel values are the classes (0 background, class index + 1, 255 ignore): save "
            "the class values as mode 'P' (with the VOC palette, as VOC's SegmentationClass "
            "files) or 'L', e.g. camlens.labels.save_voc_png(mask, path)"
        )
    raise ValueError(f"{path}: unsupported mask mode {mode}; save it as mode 'P' or 'L'")
