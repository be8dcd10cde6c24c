"""An ``explain`` run over files, whichever engine runs its batches: the checks, the
output folder and its index, the engine (:mod:`._local` or :mod:`._ray`), the summary."""

from __future__ import annotations

import dataclasses
import json

from .. import __version__
from .._errors import UsageError, unknown_choice
from .._messages import Sink, sink_or_log
from ._files import output_folder, output_names, show_progress
from ._index import INDEX, RunIndex
from ._local import IndexedRun, Job, _loop, _StorageError, fingerprint, parse_save, remaining
from ._setup import load, parse_methods, parse_target
from ._spec import RunResult, RunSpec


def explain_files(spec: RunSpec, message: Sink | None = None) -> RunResult:
    """The dataset runner: decode (threads) -> one pass per batch -> pictures written by
    threads -> one index line per image, on this machine or on Ray (``spec.engine``).

    Resumes a folder that holds the same run. Bad settings raise :class:`UsageError`
    before the folder is touched; a folder holding another run raises
    :class:`RunFolderError`. Notes go to ``message`` (default: the ``camlens`` logger).
    """
    from tqdm import tqdm

    from ..viz import DEFAULT_MAX_PIXELS, atomic_write, available_colormaps

    if not isinstance(spec, RunSpec):
        raise TypeError(f"explain_files takes a RunSpec, got {type(spec).__name__}; build "
                        "one with RunSpec(paths=[...], ...)")
    message = sink_or_log(message)
    if spec.engine not in ("local", "ray"):
        raise UsageError(f"engine must be 'local' or 'ray', got {spec.engine!r}")
    methods = parse_methods(spec.method, spec.options)
    if spec.colormap not in available_colormaps():
        raise UsageError(str(unknown_choice("colormap", spec.colormap, available_colormaps())))
    if not 0 <= spec.alpha <= 1:
        raise UsageError(f"--alpha must be in [0, 1], got {spec.alpha}")
    if not 0 <= spec.threshold <= 1:
        raise UsageError(f"--threshold must be in [0, 1], got {spec.threshold}")
    spec = dataclasses.replace(spec, save=parse_save(spec.save))  # the caller's stays
    # usage errors first: the folder is touched only by a run that can start
    model, preprocess, labels, layer, device = load(spec)
    target = parse_target(spec.target, labels)
    out = output_folder(spec.out)
    index = RunIndex(out, fingerprint(spec, methods), restart=spec.restart)
    with index:
        run = IndexedRun(index, message)
        files = remaining(spec.paths, run)
        job = Job(spec, files, output_names(files, index.stems), out, model, preprocess,
                  labels, target, layer, device, spec.max_pixels or DEFAULT_MAX_PIXELS,
                  methods, show=show_progress(spec.progress), index=index, message=message)
        try:
            if spec.engine == "ray":
                from ._ray import run_ray

                run_ray(job, run)
            else:
                _loop(job, run, tqdm)
        except _StorageError as err:
            raise UsageError(
                f"could not write to {out}: {err.strerror or err}. Every image finished so "
                "far is in its index; free space (or fix the folder) and run the same "
                "command again to resume"
            ) from None
        summary = {
            "camlens": __version__,
            "model": spec.model,
            "layer": job.layer_names,
            "methods": methods.live(),
            "target": spec.target,
            "counterfactual": bool(spec.counterfactual),
            "index": INDEX,
            "images": index.counts["done"],
            "failed": index.counts["failed"],
            "method_errors": methods.failed,
            "skipped_methods": methods.skipped,
        }
        atomic_write(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False)
                     .encode("utf-8"))
    job.note_totals()
    failed = index.counts["failed"]  # of the whole run, resumed parts included
    message(f"explained {job.finished} image(s) into {out}"
            + (f"; {failed} failed (see {INDEX})" if failed else ""))
    return RunResult(out, summary, 1 if failed or methods.failed else 0,
                     finished=job.finished, errors=run.errors)


def run_explain(spec: RunSpec, message: Sink | None = None) -> int:
    """:func:`explain_files`, answered with the run's exit code (1 if an image or a
    method failed, else 0)."""
    return explain_files(spec, message).exit_code
