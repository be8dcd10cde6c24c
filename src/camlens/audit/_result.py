"""What an audit found: a row per class, the whole result, and its per-class table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._doc import Doc, num, pct
from ._stats import Verdict

RUN_FOLDER = "run"  # the runner's folder inside the audit's: index, run.json, map shards

TRUTH_SOURCES = {"annotations": "the annotations", "folders": "the images' folder names",
          "the truth mapping": "the truth mapping"}

WEAK_RATIO = 0.8  # border energy: flagged at >= 1 / 0.8 = 1.25x the other classes' median


@dataclass
class ClassRow:
    """One class of the audit, by true class or by predicted class.

    ``images``: images in the group; ``accuracy``: correct / images whose true class is
    known (by predicted class: the precision); ``annotated``: images with the object
    annotated and a non-empty map; ``energy_on`` (``energy_on_se`` its standard error),
    ``energy_off``, ``object_area`` (the share a uniform map would put on the object),
    ``pointing``: means over those; ``border_energy``, ``concentration``,
    ``touches_border``: means that need no annotations. ``others``: the most frequent
    predicted classes (by true class) or true classes (by predicted class): ``(class, name,
    images)``.
    ``verdict`` / ``weak``: the flag rule on ``energy_on`` / ``border_energy``.
    """

    cls: int
    name: str
    images: int
    known: int
    correct: int
    accuracy: float | None
    annotated: int
    empty: int
    energy_on: float | None
    energy_on_se: float | None
    energy_off: float | None
    object_area: float | None
    pointing: float | None
    border_energy: float | None
    concentration: float | None
    touches_border: float | None
    others: list[tuple[int, str, int]]
    verdict: Verdict = field(default_factory=Verdict)
    weak: Verdict = field(default_factory=Verdict)
    baseline_accuracy: float | None = None
    baseline_energy_on: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["class"] = data.pop("cls")
        data["others"] = [{"class": c, "name": name, "images": n} for c, name, n in self.others]
        return data


@dataclass
class AuditResult:
    """What :func:`audit` found; the same numbers are in the folder's files.

    ``by_true`` / ``by_predicted``: a :class:`ClassRow` per class; ``flagged``: the classes
    (by true class, or by predicted class when no true class is known) whose maps rest on
    the object far less than the others' (needs annotations); ``flagged_predicted``: the
    same rule over the images grouped by predicted class (a class that attracts images by
    their background); ``weak_flagged``: classes whose maps put far more energy on the
    image's border (needs no annotations: weaker evidence). ``worst`` /
    ``worst_predicted``: per class, the images with the least energy on the object;
    ``worst_overall``: over all images.
    """

    out: Path
    method: str
    layer: list[str]
    images: int
    failed: int
    annotated: int
    truth: str
    accuracy: float | None
    grouping: str
    by_true: list[ClassRow]
    by_predicted: list[ClassRow]
    flagged: list[int]
    flagged_predicted: list[int]
    weak_flagged: list[int]
    rule: dict[str, Any]
    worst: dict[int, list[dict[str, Any]]]
    worst_predicted: dict[int, list[dict[str, Any]]]
    worst_overall: list[dict[str, Any]]
    files: dict[str, Path]

    def rows(self) -> list[ClassRow]:
        """The rows the flags are decided on (by true class where true classes are known)."""
        return self.by_true if self.grouping == "true" else self.by_predicted

    def table(self) -> str:
        """The per-class table (Markdown) of :meth:`rows`."""
        return class_table_md(self.rows(), self.grouping)

    def __str__(self) -> str:
        names = {r.cls: r.name for r in self.rows()}
        flagged = ", ".join(label(c, names.get(c)) for c in self.flagged) or "none"
        return (f"camlens audit of {self.images} image(s) in {self.out}: flagged {flagged}\n"
                + self.table())


def label(cls: int, name: str | None) -> str:
    """``3`` where the class is named by its number, else ``281 (tabby)``."""
    return str(cls) if name in (None, str(cls)) else f"{cls} ({name})"


def class_table_md(rows: Sequence[ClassRow], grouping: str) -> str:
    """The per-class table alone, as Markdown."""
    doc = Doc("")
    header, body, numeric = class_table(rows, grouping)
    doc.table(header, body, numeric)
    return doc.markdown().split("\n", 2)[2].strip()


def _others(row: ClassRow) -> str:
    """The two most frequent other-side classes with their share of the row's images."""
    total = row.images or 1
    return ", ".join(f"{label(c, name)}: {100 * n / total:.0f} %"
                     for c, name, n in row.others[:2]) or "-"


def class_table(rows: Sequence[ClassRow], grouping: str,
                ) -> tuple[list[str], list[list[str]], list[bool]]:
    """The per-class table's header, cells and which columns are numbers."""
    true = grouping == "true"
    header = ["class", "images", "accuracy" if true else "precision", "annotated",
              "energy on object", "off object", "object area", "pointing game",
              "predicted as" if true else "true classes", "z", "flagged"]
    body = []
    for r in rows:
        v = r.verdict
        body.append([
            label(r.cls, r.name), str(r.images), pct(r.accuracy), str(r.annotated),
            pct(r.energy_on), pct(r.energy_off), pct(r.object_area), pct(r.pointing),
            _others(r), num(v.z, 1) if v.compared else "-", "**yes**" if v.flagged else "",
        ])
    return header, body, [False, True, True, True, True, True, True, True, False, True, False]
