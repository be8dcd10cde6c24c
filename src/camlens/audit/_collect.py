"""Streaming a run's maps: each image's classes, object and statistics; per-class totals."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._inputs import class_of
from ._result import WEAK_RATIO, AuditResult, ClassRow
from ._stats import Region, Totals, Worst, map_stats, object_on_grid, outliers


def _within(file: str, roots: Sequence[Path]) -> bool:
    """Whether a run's image is one of the audited paths (a run folder may hold more)."""
    p = Path(file)
    return any(p == r or r in p.parents for r in roots)


def records(folder: Path, method: str, roots: Sequence[Path],
            ) -> Iterator[tuple[dict[str, Any], np.ndarray | None]]:
    """Each record of the run under ``roots`` with its map of ``method`` (``None`` for an
    image that failed or has no map), streamed from the index and the shards."""
    from ..runner import read_index, read_maps

    maps = read_maps(folder)
    for record in read_index(folder):
        entry = (record.get("maps") or {}).get(method) if "error" not in record else None
        cam = None
        for name, stored in (record.get("maps") or {}).items():
            if "npy" in stored or "shard" in stored:  # what read_maps yields, in this order
                _, _, value = next(maps)
                if name == method:
                    cam = value
        if not _within(record["file"], roots):
            continue
        yield record, (cam if entry is not None else None)


def region_of(file: str, ann: Mapping[str, Any], mask_map: Mapping[str, np.ndarray],
              cls: int | None) -> Region | None:
    """The annotated object of ``file`` (its mask, else its boxes); ``None`` without."""
    p = Path(file)
    mask = mask_map.get(p.stem)
    objects = ann.get(p.name)
    if mask is None and (objects is None or not objects.boxes):
        return None
    if mask is not None:
        return Region(mask=mask, cls=cls)
    return Region(boxes=list(objects.boxes),
                  box_classes=list(getattr(objects, "classes", None) or []), cls=cls)


def _true_class(file: str, ann: Mapping[str, Any], mask_map: Mapping[str, np.ndarray],
                truth: Mapping[str, int] | None, kind: str, names: Sequence[str]) -> int | None:
    """The image's true class: the truth file or folders when given, else the
    annotations' label (or their one class), else the one class of its mask."""
    p = Path(file)
    if kind == "folders":
        return class_of(p.parent.name, names, f"the folder of {file}")
    if truth is not None:
        return truth.get(p.name)
    objects = ann.get(p.name)
    if objects is not None:
        if objects.label is not None:
            return int(objects.label)
        present = getattr(objects, "present", None)
        if present is not None and len(present) == 1:
            return int(present[0])
    mask = mask_map.get(p.stem)
    if mask is not None:
        values = [int(v) for v in np.unique(mask) if 0 < v < 255]
        if len(values) == 1:
            return values[0] - 1
    return None


def image_record(record: dict[str, Any], cam: np.ndarray, ann: Mapping[str, Any],
                 mask_map: Mapping[str, np.ndarray], truth: Mapping[str, int] | None, kind: str,
                 names: Sequence[str], settings: Mapping[str, Any]) -> dict[str, Any]:
    """One image's record: its classes and the statistics of its map."""
    cam = cam[0] if cam.ndim == 3 else cam
    target = record["targets"][0]
    predicted = int(target["class"])
    true = _true_class(record["file"], ann, mask_map, truth, kind, names)
    region = region_of(record["file"], ann, mask_map, true)
    inside = ignore = None
    note = None
    if region is not None:
        try:
            inside, ignore = object_on_grid(region, cam.shape, record["crop"], record["size"])
        except ValueError as err:
            note = str(err)
            region = None
    stats = map_stats(cam, inside, ignore, tolerance=settings["tolerance"],
                      border=settings["border"])
    row: dict[str, Any] = {
        "file": record["file"], "stem": record.get("stem"),
        "true": true, "true_name": class_name(names, true),
        "predicted": predicted, "predicted_name": class_name(names, predicted),
        "probability": target.get("probability"),
        "correct": None if true is None else predicted == true,
        "region": region.kind if region is not None else None,
        **stats,
    }
    if note:
        row["note"] = note
    return row


def class_name(names: Sequence[str], cls: int | None) -> str | None:
    """The model's name of a class (numbered past the end of the names)."""
    if cls is None:
        return None
    return names[cls] if 0 <= cls < len(names) else f"class {cls}"


@dataclass
class State:
    """Running totals while the maps stream by."""

    worst_n: int
    images: int = 0
    failed: int = 0
    annotated: int = 0
    known: int = 0
    correct: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    by_true: dict[int, Totals] = field(default_factory=dict)
    by_predicted: dict[int, Totals] = field(default_factory=dict)
    worst: Worst = field(init=False)  # by true class (by predicted class without truth)
    worst_predicted: Worst = field(init=False)

    def __post_init__(self) -> None:
        self.worst = Worst(self.worst_n)
        self.worst_predicted = Worst(self.worst_n)

    def fail(self, record: dict[str, Any]) -> None:
        self.failed += 1
        if len(self.failures) < 20:
            self.failures.append({"file": record["file"],
                                  "error": record.get("error", "no map")})

    def add(self, row: dict[str, Any]) -> None:
        self.images += 1
        true, predicted = row["true"], row["predicted"]
        if true is not None:
            self.known += 1
            self.correct += bool(row["correct"])
            self.by_true.setdefault(true, Totals()).add(row, row["correct"], predicted)
        self.by_predicted.setdefault(predicted, Totals()).add(row, row["correct"], true)
        if row.get("energy_on") is not None:
            self.annotated += 1
            item = {k: row.get(k) for k in ("file", "stem", "true", "true_name", "predicted",
                                            "predicted_name", "probability", "energy_on",
                                            "object_area")}
            self.worst.add(true if true is not None else predicted, row["energy_on"], item)
            self.worst_predicted.add(predicted, row["energy_on"], item)


def _rows(totals: Mapping[int, Totals], names: Sequence[str], rule: Mapping[str, Any],
          base: Mapping[int, Mapping[str, Any]] | None) -> list[ClassRow]:
    """A row per class with its verdicts: energy on the object (lower is worse) and
    border energy (higher is worse)."""
    verdicts = outliers({c: (t.mean("energy_on"), t.se("energy_on"), t.n["energy_on"])
                         for c, t in totals.items()}, **rule)
    weak = outliers({c: (t.mean("border_energy"), t.se("border_energy"),
                         t.n["border_energy"]) for c, t in totals.items()},
                    higher_is_worse=True, **{**rule, "ratio": WEAK_RATIO})
    rows = []
    for c in sorted(totals):
        t = totals[c]
        b = (base or {}).get(c, {})
        rows.append(ClassRow(
            cls=c, name=class_name(names, c) or str(c), images=t.images, known=t.known,
            correct=t.correct, accuracy=t.correct / t.known if t.known else None,
            annotated=t.n["energy_on"], empty=t.empty, energy_on=t.mean("energy_on"),
            energy_on_se=t.se("energy_on"), energy_off=t.mean("energy_off"),
            object_area=t.mean("object_area"), pointing=t.mean("hit"),
            border_energy=t.mean("border_energy"), concentration=t.mean("concentration"),
            touches_border=t.mean("touches_border"),
            others=[(o, class_name(names, o) or str(o), n) for o, n in t.other.most_common(3)],
            verdict=verdicts[c], weak=weak[c], baseline_accuracy=b.get("accuracy"),
            baseline_energy_on=b.get("energy_on"),
        ))
    return rows


def build_result(state: State, out: Path, method: str, summary: Mapping[str, Any],
                 names: Sequence[str], truth_kind: str, base: Any, rule: dict[str, Any],
                 ) -> AuditResult:
    """The per-class rows, their verdicts and the worst images, from the running totals."""
    by_true = _rows(state.by_true, names, rule, base)
    by_predicted = _rows(state.by_predicted, names, rule, None if state.known else base)
    grouping = "true" if state.known else "predicted"
    rows = by_true if grouping == "true" else by_predicted
    flagged = [r.cls for r in rows if r.verdict.flagged]
    weak = [r.cls for r in rows if r.weak.flagged]
    worst = {r.cls: state.worst.of(r.cls) for r in rows if state.worst.of(r.cls)}
    worst_predicted = {r.cls: state.worst_predicted.of(r.cls) for r in by_predicted
                       if state.worst_predicted.of(r.cls)}
    return AuditResult(
        out=out, method=method, layer=list(summary.get("layer") or []), images=state.images,
        failed=state.failed, annotated=state.annotated, truth=truth_kind,
        accuracy=state.correct / state.known if state.known else None, grouping=grouping,
        by_true=by_true, by_predicted=by_predicted, flagged=flagged,
        flagged_predicted=[r.cls for r in by_predicted if r.verdict.flagged],
        weak_flagged=weak, rule=rule, worst=worst, worst_predicted=worst_predicted,
        worst_overall=state.worst.of(None), files={},
    )
