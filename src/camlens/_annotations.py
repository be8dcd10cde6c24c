"""Reading object annotations: COCO JSON, Pascal VOC XML folders, or a simple JSON."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Objects:
    """The objects of one image: pixel boxes ``x0, y0, x1, y1`` (x1, y1 exclusive)."""

    boxes: list[list[float]] = field(default_factory=list)
    label: int | None = None  # the image's class id, where the annotations give one


def load_annotations(path: str | Path) -> dict[str, Objects]:
    """``{file name: Objects}`` from a COCO JSON file, a folder of Pascal VOC XML files, or
    a simple JSON ``{"cat.jpg": [[x0, y0, x1, y1], ...]}`` (or ``{"boxes": [...],
    "label": 281}`` per file). VOC's inclusive 1-based corners become 0-based exclusive."""
    p = Path(path)
    if p.is_dir():
        found = {}
        for xml in sorted(p.rglob("*.xml")):
            name, objects = _voc(xml)
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
        found = _coco(data)
    elif isinstance(data, dict):
        found = {str(k): _simple(k, v) for k, v in data.items()}
    else:
        raise ValueError(f"{p}: expected COCO JSON or {{file: boxes}}, got {type(data).__name__}")
    if not found or not any(o.boxes for o in found.values()):
        raise ValueError(f"{p} holds no boxes")
    return found


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


def _simple(name: str, value: object) -> Objects:
    if isinstance(value, dict):
        label = value.get("label")
        boxes = value.get("boxes", [])
    else:
        label, boxes = None, value
    if not isinstance(boxes, list):
        raise ValueError(f"{name}: boxes must be a list of [x0, y0, x1, y1]")
    return Objects([_box(b, name) for b in boxes], int(label) if label is not None else None)


def _coco(data: dict) -> dict[str, Objects]:
    names = {img["id"]: Path(img["file_name"]).name for img in data["images"]}
    found = {name: Objects() for name in names.values()}
    for ann in data["annotations"]:
        x, y, w, h = _box(ann["bbox"], f"annotation {ann.get('id')}")
        name = names.get(ann["image_id"])
        if name is None:
            raise ValueError(f"annotation {ann.get('id')} names an unknown image id")
        found[name].boxes.append([x, y, x + w, y + h])
    return found


def _voc(xml: Path) -> tuple[str, Objects]:
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
        objects.boxes.append(_box([xmin - 1, ymin - 1, xmax, ymax], str(xml)))
    return name, objects
