"""How faithful each method's maps are, over a folder of images: a methods x metrics table
(``camlens evaluate``, :func:`evaluate_folder`).

>>> result = camlens.evaluate_folder(["photos/"], "eval/", method="gradcam,layercam")
>>> print(result.table)                       # Markdown: a row per method
>>> result.results                            # the same means, as dicts

Each image's scores stream into ``index.jsonl`` as it is scored, so an interrupted
evaluation resumes like a run; the tables are derived from the index at the end.
``_scores`` holds the metrics (which, the objects in the model's pixels, the per-image
values, the cost plan), ``_tables`` the means and their Markdown and CSV, this module the
typed description (:class:`EvaluationSpec`), the loop and the result.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._catalog import EVAL_METHODS, EVAL_METRICS
from .._errors import UsageError
from .._explainer import compare
from .._messages import Sink, sink_or_log
from ..runner._files import Run, check_matches, collect, decode, output_folder, show_progress
from ..runner._index import INDEX, RunIndex
from ..runner._local import IndexedRun, remaining
from ..runner._setup import Methods, load, model_fingerprint, model_spec, parse_methods, path_items
from ..runner._spec import ModelSettings, Outcome
from . import _tables
from ._scores import (
    BOX_METRICS,
    FULL_STEP,
    QUICK_STEP,
    parse_metrics,
    plan_text,
    regions,
    score,
)

__all__ = ["EvaluationResult", "EvaluationSpec", "evaluate_folder"]


@dataclass
class EvaluationSpec(ModelSettings):
    """Everything an evaluation over files needs: what :func:`evaluate_folder` takes and
    ``camlens evaluate`` parses (see :func:`evaluate_folder` for each field; the model's
    are those of :class:`camlens.runner.ModelSettings`)."""

    paths: Sequence[str]
    out: str = "camlens-eval"
    method: str = EVAL_METHODS
    metric: str = "quick"
    full: bool = False
    annotations: str | None = None
    step: int | None = None
    options: Sequence[str] = ()  # "[METHOD.]NAME=VALUE"
    batch_size: int = 8
    max_pixels: int | None = None
    progress: str = "never"
    restart: bool = False


@dataclass
class EvaluationResult(Outcome):
    """What an evaluation found, built in memory: ``summary`` is what ``evaluation.json``
    holds (it reads as that dict too), ``table`` the Markdown of ``evaluation.md``,
    ``exit_code`` 1 when an image or a method failed or a metric scored nothing."""

    table: str = ""

    @property
    def results(self) -> list[dict[str, Any]]:
        """One row per method: ``{"method": name, metric: mean or None, ...}``."""
        return list(self.summary["results"])

    @property
    def methods(self) -> list[str]:
        return [r["method"] for r in self.summary["results"]]


def evaluate_folder(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] = "camlens-eval",
    *,
    model: Any = "efficientnet-lite0",
    method: str = EVAL_METHODS,
    metric: str = "quick",
    full: bool = False,
    annotations: str | os.PathLike[str] | None = None,
    layer: str | None = None,
    step: int | None = None,
    options: Sequence[str] = (),
    weights: str | None = None,
    trust_model: bool = False,
    preprocess: Any = None,
    labels: Sequence[str] | None = None,
    batch_size: int = 8,
    device: str = "auto",
    max_pixels: int | None = None,
    progress: str = "never",
    restart: bool = False,
    message: Sink | None = None,
) -> EvaluationResult:
    """Score the maps of each ``method`` on every image of ``paths`` with each ``metric``,
    as ``camlens evaluate`` does: writes ``evaluation.md``, ``.csv``, ``.json`` and the
    per-image ``index.jsonl`` into ``out`` and returns an :class:`EvaluationResult`.

    ``metric``: names of :data:`camlens._catalog.EVAL_METRICS`, ``"quick"`` (deletion,
    insertion, average drop, increase, and with ``annotations`` the box metrics) or
    ``"all"``; ``full=True``: every metric and deletion/insertion steps of 1 % of the
    pixels (``step`` pixels when given; by default 5 %). ``annotations``: object boxes
    (COCO JSON, a folder of Pascal VOC XML, or ``{file: boxes}`` JSON). ``model``,
    ``preprocess``, ``labels``, ``options`` as in :func:`camlens.run`. A folder holding
    the same evaluation is resumed, one holding another raises
    :class:`camlens.RunFolderError`; bad settings raise :class:`camlens.UsageError`.
    Notes go to ``message`` (by default the ``camlens`` logger).
    """
    given, name = model_spec(model, labels)
    spec = EvaluationSpec(
        paths=[str(p) for p in path_items(paths)], out=str(out), model=name, method=method,
        metric=metric, full=full, annotations=None if annotations is None else str(annotations),
        layer=layer, step=step, options=list(options), weights=weights,
        trust_model=trust_model, preprocess=preprocess, batch_size=batch_size, device=device,
        max_pixels=max_pixels, progress=progress, restart=restart, model_object=given,
        labels=labels,
    )
    return evaluate_files(spec, message)


def evaluate_files(spec: EvaluationSpec, message: Sink | None = None) -> EvaluationResult:
    """The evaluation of ``spec``: scores streamed into ``index.jsonl`` (resumable like
    ``explain``), then the tables. Usage errors come before the folder is touched."""
    from .._annotations import load_annotations

    message = sink_or_log(message)
    methods = parse_methods(spec.method, spec.options)
    chosen = parse_metrics("all" if spec.full else spec.metric, spec.annotations is not None)
    annotations = {}
    if spec.annotations:
        try:
            annotations = load_annotations(spec.annotations)
        except ValueError as err:
            raise UsageError(str(err)) from None
    # only to check the annotations against the files: the scoring pass walks the paths
    # again with the run's sink, which tells the user what was left out, once
    found = collect(spec.paths, Run(message=lambda _: None), out=spec.out)
    if annotations and found:
        check_matches(annotations, found, message)
    model, preprocess, labels, layer, device = load(spec)
    side = preprocess.crop
    step = spec.step or math.ceil(side * side * (FULL_STEP if spec.full else QUICK_STEP))
    out = output_folder(spec.out)
    index = RunIndex(out, _fingerprint(spec, methods, chosen, step, annotations),
                     restart=spec.restart)
    with index:
        run = IndexedRun(index, message)
        _score_files(spec, run, methods, chosen, annotations,
                     (model, preprocess, labels, layer, device), step)
        return _finish(spec, index, out, methods, chosen, step, message)


def _fingerprint(spec: EvaluationSpec, methods: Methods, chosen: Sequence[str], step: int,
                 annotations: dict[str, Any]) -> dict[str, Any]:
    """What decides an evaluation's numbers: a resumed run must match it."""
    return {"command": "evaluate", **model_fingerprint(spec, methods),
            "metrics": list(chosen), "step": step,
            "annotations": json.dumps(annotations, sort_keys=True, default=str),
            "max_pixels": spec.max_pixels}


def _score_files(spec: EvaluationSpec, run: IndexedRun, methods: Methods,
                 chosen: list[str], annotations: dict[str, Any], loaded_model: tuple,
                 step: int) -> None:
    """The streaming part: one index line per image as it is scored."""
    from tqdm import tqdm

    from ..viz import DEFAULT_MAX_PIXELS

    model, preprocess, labels, layer, device = loaded_model
    files = remaining(spec.paths, run)
    show = show_progress(spec.progress)
    bar = None
    for start in range(0, len(files), spec.batch_size):
        chunk = range(start, min(start + spec.batch_size, len(files)))
        loaded = decode(files, chunk, preprocess, spec.max_pixels or DEFAULT_MAX_PIXELS, run)
        live = methods.live()
        if not loaded or not live:
            continue
        x = torch.stack([t for _, _, t in loaded]).to(device)
        try:
            result = compare(model, x, live, layer, None, errors="keep",
                             batch_size=max(spec.batch_size, 32),
                             options=methods.options_for(live))
        except ValueError as err:
            for i, _, _ in loaded:
                run.fail(files[i][1], str(err))
            continue
        methods.record(result, run.message)
        live = methods.live()
        if bar is None:
            run.message(plan_text(model, x, len(files), len(live), chosen, step,
                                  preprocess.crop, spec.batch_size))
            bar = tqdm(total=len(files) * len(live), unit="map", desc="camlens evaluate",
                       disable=not show, leave=False)
        classes = result.classes[:, 0]
        masks, truth, keep = regions(loaded, files, annotations, preprocess, run,
                                     bool(set(chosen) & set(BOX_METRICS)))
        rows = [{"key": files[i][1], "file": files[i][1], "class": int(classes[b]),
                 "label": labels[int(classes[b])], "results": {}}
                for b, (i, _, _) in enumerate(loaded)]
        for name in live:
            got = score(chosen, model, x, result[name], classes, masks, truth, keep, step)
            for metric, vals in got.items():
                for b, v in enumerate(vals):
                    rows[b]["results"].setdefault(name, {})[metric] = v
            bar.update(len(loaded))
        for row in rows:
            run.index.append(row)
        run.index.sync()  # one fsync per batch, as the explain runner does
    if bar is not None:
        bar.close()


def _finish(spec: EvaluationSpec, index: RunIndex, out: Path, methods: Methods,
            chosen: list[str], step: int, message: Sink) -> EvaluationResult:
    """The tables from the whole index (a resumed run's images included), written and
    returned."""
    from ..viz import atomic_write

    evaluated = methods.live()
    values, scored_images = _tables.totals(out, evaluated, chosen)
    table = _tables.markdown(evaluated, chosen, values)
    rows_out = _tables.rows(evaluated, chosen, values)
    empty = [k for k in chosen if all(values.get((m, k)) is None for m in evaluated)]
    failed = index.counts["failed"]
    summary = {
        "model": spec.model, "metrics": chosen, "step": step, "full": bool(spec.full),
        "higher_is_better": {k: EVAL_METRICS[k] for k in chosen}, "results": rows_out,
        "index": INDEX, "images": scored_images, "failed": failed,
        "method_errors": methods.failed, "skipped_methods": methods.skipped,
        "unscored_metrics": empty,
    }
    atomic_write(out / "evaluation.csv", _tables.csv(rows_out, chosen).encode("utf-8"))
    atomic_write(out / "evaluation.json", json.dumps(summary, indent=2, ensure_ascii=False)
                 .encode("utf-8"))
    atomic_write(out / "evaluation.md", (table + "\n").encode("utf-8"))
    for k in empty:
        why = " (no image has an annotated box inside the model's crop)" \
            if k in BOX_METRICS else ""
        message(f"error: {k} was computed for no image{why}")
    if not scored_images or not evaluated:
        message("error: nothing was evaluated")
    message(f"evaluated {scored_images} image(s) with {len(evaluated)} method(s); tables in "
            f"{out}" + (f"; {failed} failed (see {INDEX})" if failed else ""))
    scored = bool(scored_images) and bool(evaluated) and not empty
    code = 1 if failed or methods.failed or not scored else 0
    return EvaluationResult(out, summary, code, table=table)
