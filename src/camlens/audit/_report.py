"""The audit's files: the report (one :class:`Doc`, written as Markdown and as
self-contained HTML), the per-class CSV, the JSON, and thumbnails of the worst cases (the
map over the image, the object outlined)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._collect import State, records, region_of
from ._doc import Doc, Image, csv_text, num, pct
from ._result import (
    RUN_FOLDER,
    TRUTH_SOURCES,
    WEAK_RATIO,
    AuditResult,
    ClassRow,
    class_table,
    label,
)
from ._stats import Region, border_width, object_on_grid

OUTLINE = (255, 0, 255)  # the object's outline on thumbnails (magenta: not in the jet colours)


# ---------------------------------------------------------------- thumbnails
def thumbnail(rgb: np.ndarray, cam: np.ndarray, crop: Sequence[int], region: Region | None,
              side: int = 160) -> np.ndarray:
    """The map over the part of the photo the model saw, ``side`` px on its longer side,
    with the annotated object outlined in magenta: (h, w, 3) uint8."""
    from PIL import Image as PILImage

    from ..viz import overlay

    x0, y0, x1, y1 = (int(v) for v in crop)
    shown = np.asarray(overlay(rgb, cam, region=(x0, y0, x1, y1)))[y0:y1, x0:x1]
    h, w = shown.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = PILImage.NEAREST if scale >= 2 else PILImage.BILINEAR
    small = np.array(PILImage.fromarray(np.ascontiguousarray(shown)).resize(size, resample))
    if region is not None and region.kind is not None:
        inside, _ = object_on_grid(region, (size[1], size[0]), crop,
                                   (rgb.shape[1], rgb.shape[0]))
        small[outline(inside)] = OUTLINE
    return small


def outline(inside: np.ndarray) -> np.ndarray:
    """The pixels of a region that touch a pixel outside it (4-neighbours; the image's
    edge counts as outside)."""
    padded = np.pad(inside, 1, constant_values=False)
    core = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return inside & ~core


# ---------------------------------------------------------------- the audit's files
def pictures(result: AuditResult, folder: Path, method: str, roots: Sequence[Path],
             ann: Mapping[str, Any], mask_map: Mapping[str, np.ndarray]) -> None:
    """Thumbnails of the worst images of each flagged class (by true and by predicted
    class; over all images when none is flagged, so that the report always shows where
    maps rest most on the background)."""
    from ..viz import ImageError, load_image, save_image

    wanted: dict[str, list[dict[str, Any]]] = {}
    for group in _shown(result):
        for item in group[2]:
            wanted.setdefault(item["file"], []).append(item)
    thumbs = result.out / "thumbs"
    written: set[str] = set()
    for record, cam in records(folder, method, roots) if wanted else ():
        items = wanted.get(record["file"])
        if cam is None or not items:
            continue
        cam = cam[0] if cam.ndim == 3 else cam
        true = items[0]["true"]
        region = region_of(record["file"], ann, mask_map, true)
        try:
            rgb = load_image(record["file"])
            picture = thumbnail(rgb, cam, record["crop"], region)
        except (ImageError, OSError, ValueError) as err:
            for item in items:
                item["thumbnail_error"] = str(err)
            continue
        name = f"{record.get('stem') or Path(record['file']).stem}.png"
        save_image(picture, thumbs / name)
        written.add(name)
        for item in items:
            item["thumbnail"] = f"thumbs/{name}"
    if thumbs.is_dir():  # pictures of an earlier audit in this folder that are not shown now
        for old in thumbs.glob("*.png"):
            if old.name not in written:
                old.unlink()


def _shown(result: AuditResult) -> list[tuple[str, int | None, list[dict[str, Any]]]]:
    """The worst-case lists the report shows: ``(grouping, class, images)``."""
    shown: list[tuple[str, int | None, list[dict[str, Any]]]] = [
        (result.grouping, c, result.worst.get(c, [])) for c in result.flagged]
    if result.grouping == "true":  # unless the same images are shown already
        seen = [[i["file"] for i in g[2]] for g in shown]
        shown += [("predicted", c, result.worst_predicted.get(c, []))
                  for c in result.flagged_predicted
                  if [i["file"] for i in result.worst_predicted.get(c, [])] not in seen]
    if not shown and result.worst_overall:
        shown = [("all", None, result.worst_overall)]
    return [g for g in shown if g[2]]


def write(result: AuditResult, state: State, annotated: bool, border: float) -> None:
    """``report.md``, ``report.html``, ``audit.csv`` and ``audit.json``, each atomically."""
    from ..viz import atomic_write

    out = result.out
    doc = _document(result, state, annotated, border)
    files = {"report_md": out / "report.md", "report_html": out / "report.html",
             "csv": out / "audit.csv", "json": out / "audit.json",
             "images": out / "images.jsonl", "run": out / RUN_FOLDER}
    atomic_write(files["report_md"], (doc.markdown() + "\n").encode("utf-8"))
    atomic_write(files["report_html"], doc.html(out).encode("utf-8"))
    header = ["grouping", "class", "name", "images", "accuracy", "annotated", "energy_on",
              "energy_on_se", "energy_off", "object_area", "pointing", "border_energy",
              "concentration", "touches_border", "empty_maps", "reference", "z", "ratio",
              "flagged", "border_z", "weak_flagged", "baseline_accuracy",
              "baseline_energy_on"]
    rows = []
    for grouping, group in (("true", result.by_true), ("predicted", result.by_predicted)):
        for r in group:
            rows.append([grouping, r.cls, r.name, r.images, r.accuracy, r.annotated,
                         r.energy_on, r.energy_on_se, r.energy_off, r.object_area, r.pointing,
                         r.border_energy, r.concentration, r.touches_border, r.empty,
                         r.verdict.reference, r.verdict.z, r.verdict.ratio,
                         int(r.verdict.flagged), r.weak.z, int(r.weak.flagged),
                         r.baseline_accuracy, r.baseline_energy_on])
    atomic_write(files["csv"], csv_text(header, rows).encode("utf-8"))
    result.files = files
    data = {
        "method": result.method, "layer": result.layer, "images": result.images,
        "failed": result.failed, "failures": state.failures, "annotated": result.annotated,
        "truth": result.truth, "accuracy": result.accuracy, "grouping": result.grouping,
        "flagged": result.flagged, "flagged_predicted": result.flagged_predicted,
        "weak_flagged": result.weak_flagged,
        "rule": {**result.rule, "statistic": "energy_on", "weak_statistic": "border_energy",
                 "weak_ratio": WEAK_RATIO, "border": border},
        "by_true": [r.as_dict() for r in result.by_true],
        "by_predicted": [r.as_dict() for r in result.by_predicted],
        "worst": {str(c): items for c, items in result.worst.items()},
        "worst_predicted": {str(c): items for c, items in result.worst_predicted.items()},
        "worst_overall": result.worst_overall,
        "files": {k: str(v.relative_to(out)) for k, v in files.items()},
    }
    atomic_write(files["json"], (json.dumps(plain(data), indent=2, ensure_ascii=False,
                                            allow_nan=False) + "\n").encode("utf-8"))


def plain(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python numbers, non-finite floats as null."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _flag_text(r: ClassRow, grouping: str) -> str:
    who = "images of" if grouping == "true" else "images predicted as"
    text = (f"**{label(r.cls, r.name)}** ({who} it): {pct(r.energy_on)} of the map energy on "
            f"the object against a median of {pct(r.verdict.reference)} for the other classes "
            f"({num(r.verdict.ratio)}x; robust z = {num(r.verdict.z, 1)}), over {r.annotated} "
            f"image(s) whose object covers {pct(r.object_area)} of the image on average. ")
    if grouping == "true":
        text += (f"Accuracy {pct(r.accuracy)}. " if r.accuracy is not None else "")
    elif r.accuracy is not None:
        text += f"Precision {pct(r.accuracy)}. "
    return text + ("The maps rest on the background: the model may have learned something "
                   "that comes with the class rather than the object.")


def _document(result: AuditResult, state: State, annotated: bool, border: float) -> Doc:
    doc = Doc("Bias audit")
    rows = result.rows()
    by = "true class" if result.grouping == "true" else "predicted class"
    rule = result.rule
    layer = ", ".join(result.layer) or "auto"
    doc.para(
        f"{result.images} image(s) audited with `{result.method}` maps of the predicted class "
        f"(layer `{layer}`); {result.failed} could not be used. "
        + (f"{result.annotated} image(s) have their object annotated and a non-empty map. "
           if annotated else "No object annotations were given. ")
        + (f"True classes come from {TRUTH_SOURCES.get(result.truth, result.truth)}; accuracy over "
           f"them: **{pct(result.accuracy)}**." if result.grouping == "true"
           else "No true classes are known: classes are the predicted ones.")
    )
    doc.heading("Flagged classes")
    if not annotated:
        doc.para("Nothing can be flagged without object annotations (boxes or masks); see "
                 "the weaker evidence below.")
    else:
        items = [_flag_text(r, result.grouping) for r in rows if r.verdict.flagged]
        if result.grouping == "true":
            items += [_flag_text(r, "predicted") for r in result.by_predicted
                      if r.verdict.flagged]
        if items:
            doc.bullets(items)
        else:
            compared = sum(r.verdict.compared for r in rows)
            doc.para(f"No class flagged ({compared} class(es) had at least "
                     f"{rule['min_images']} annotated images to compare).")
    doc.para(
        "**Rule.** E = a class's mean share of map energy on the annotated object, per "
        f"{by}" + (" and again per predicted class" if result.grouping == "true" else "")
        + f". Among classes with at least {rule['min_images']} annotated images, a class is "
        f"flagged when z = (E - m) / sqrt(s² + se²) <= -{num(rule['z'], 1)} and E <= "
        f"{num(rule['ratio'])} x m, where m is the median of the other classes' E, s = 1.4826 x "
        f"their median absolute deviation (at least {num(rule['floor'])}) and se the class's "
        "own standard error: far below the other classes both against their spread and in "
        "plain size."
    )
    header, body, numeric = class_table(rows, result.grouping)
    doc.heading(f"By {by}")
    doc.table(header, body, numeric)
    if result.grouping == "true":
        doc.heading("By predicted class")
        doc.para("The same statistics over the images grouped by what the model predicted "
                 "(the maps explain the predicted class): a class that attracts images by "
                 "their background shows here, with a low precision.")
        header, body, numeric = class_table(result.by_predicted, "predicted")
        doc.table(header, body, numeric)
    if any(r.baseline_accuracy is not None for r in rows):
        doc.heading("Against the baseline")
        doc.para("Accuracy and energy on the object per class, here and in the baseline "
                 "audit (for example: the same classes where the background no longer goes "
                 "with the class).")
        doc.table(
            ["class", "accuracy", "baseline", "change", "energy on object", "baseline",
             "change"],
            [[label(r.cls, r.name), pct(r.accuracy), pct(r.baseline_accuracy),
              _change(r.accuracy, r.baseline_accuracy), pct(r.energy_on),
              pct(r.baseline_energy_on), _change(r.energy_on, r.baseline_energy_on)]
             for r in rows],
            [False, True, True, True, True, True, True])
    band = border_width((100, 100), border)
    uniform = 1 - (1 - 2 * band / 100) ** 2
    doc.heading("Without annotations (weaker evidence)")
    doc.para(
        "These need no annotations, so they cannot say whether a map is on the object, only "
        f"where it sits: **border energy**, the share of map energy in the outer "
        f"{pct(border, 0)} band of the image (a uniform map puts about {pct(uniform, 0)} "
        "there); **concentration**, the share in the map's hottest 10 % of pixels (uniform: "
        "10 %); how often the hot region (at least half the peak) **touches the border**. A "
        "class is marked when its border energy stands out upward by the same rule (z >= "
        f"{num(rule['z'], 1)} and >= {num(1 / WEAK_RATIO)}x the other classes' median). A "
        "mark is a reason to look at the pictures, not a finding: an object that fills the "
        "image or sits at its edge puts maps on the border too."
    )
    doc.table(
        ["class", "images", "border energy", "concentration", "touches border", "z", "marked"],
        [[label(r.cls, r.name), str(r.images), pct(r.border_energy), pct(r.concentration),
          pct(r.touches_border), num(r.weak.z, 1) if r.weak.compared else "-",
          "yes" if r.weak.flagged else ""] for r in rows],
        [False, True, True, True, True, True, False])
    _worst_section(doc, result)
    if state.failures:
        doc.heading("Images that could not be used")
        doc.bullets([f"`{f['file']}`: {f['error']}" for f in state.failures]
                    + ([f"... {result.failed - len(state.failures)} more in "
                        f"`{RUN_FOLDER}/index.jsonl`"]
                       if result.failed > len(state.failures) else []))
    doc.heading("Files")
    doc.bullets(["`audit.csv`: the per-class tables (both groupings)",
                 "`audit.json`: everything on this page, with the worst images per class",
                 "`images.jsonl`: one record per image (classes, every statistic)",
                 f"`{RUN_FOLDER}/`: the run's index and maps (`camlens.read_index`, "
                 "`camlens.read_maps`); running the audit again resumes it"])
    return doc


def _change(now: float | None, before: float | None) -> str:
    if now is None or before is None:
        return "n/a"
    return f"{100 * (now - before):+.1f} pts"


def _worst_section(doc: Doc, result: AuditResult) -> None:
    groups = _shown(result)
    if not groups:
        return
    names = {r.cls: r.name for r in result.by_true + result.by_predicted}
    doc.heading("Where maps rest most on the background")
    doc.para("The images with the least map energy on the object"
             + (" over all images (no class is flagged)" if groups[0][0] == "all"
                else " of each flagged class")
             + ": the map of the predicted class over the part of the image the model saw, "
             "the annotated object outlined in magenta.")
    for grouping, c, items in groups:
        if c is not None:
            who = "true class" if grouping == "true" else "predicted as"
            doc.para(f"**{who} {label(c, names.get(c))}** (flagged)")
        body = []
        for item in items:
            pic: Any = Image(item["thumbnail"], Path(item["file"]).name) \
                if item.get("thumbnail") else "-"
            body.append([pic, f"`{Path(item['file']).name}`", pct(item["energy_on"]),
                         pct(item.get("object_area")),
                         label(item["predicted"], item["predicted_name"]),
                         "-" if item["true"] is None
                         else label(item["true"], item["true_name"])])
        doc.table(["map", "file", "energy on object", "object area", "predicted", "true"],
                  body, [False, False, True, True, False, False])
