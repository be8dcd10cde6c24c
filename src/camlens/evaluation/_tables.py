"""The evaluation's tables, derived from its index: the mean of each (method, metric) over
the images scored, as Markdown and as CSV."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._catalog import EVAL_METRICS
from ..runner._index import read_index

Totals = dict[tuple[str, str], list[float]]  # (method, metric) -> [sum, count]


def totals(out: Path, methods: Sequence[str], chosen: Sequence[str]) -> tuple[Totals, int]:
    """(sum, count) per (method, metric) over the index's images, read line by line, and
    the number of images scored."""
    found: Totals = {}
    images = 0
    for record in read_index(out):
        if "error" in record:
            continue
        images += 1
        for m in methods:
            for k in chosen:
                v = record["results"].get(m, {}).get(k)
                if v is not None:
                    total = found.setdefault((m, k), [0.0, 0])
                    total[0] += v
                    total[1] += 1
    return found, images


def mean(total: list[float] | None) -> float | None:
    """The mean of a (sum, count) total; None when nothing was scored."""
    return total[0] / total[1] if total and total[1] else None


def rows(methods: Sequence[str], chosen: Sequence[str], values: Totals) -> list[dict[str, Any]]:
    """One row per method: ``{"method": m, metric: mean or None, ...}``."""
    return [{"method": m, **{k: mean(values.get((m, k))) for k in chosen}} for m in methods]


def markdown(methods: Sequence[str], chosen: Sequence[str], values: Totals) -> str:
    """The methods x metrics table, each metric's better direction in its heading."""
    arrows = {True: " (higher better)", False: " (lower better)"}
    head = "| method | " + " | ".join(f"{m}{arrows[EVAL_METRICS[m]]}" for m in chosen) + " |"
    lines = [head, "|---|" + "---:|" * len(chosen)]
    for m in methods:
        cells = []
        for k in chosen:
            v = mean(values.get((m, k)))
            cells.append("n/a" if v is None else f"{v:.3f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv(table: Sequence[dict[str, Any]], chosen: Sequence[str]) -> str:
    """The rows of :func:`rows` as CSV (an empty cell where nothing was scored)."""
    header = ["method", *chosen]
    return "\n".join([",".join(header)] + [
        ",".join([r["method"]] + ["" if r[k] is None else f"{r[k]:.6g}" for k in chosen])
        for r in table
    ]) + "\n"
