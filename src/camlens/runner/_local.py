"""The dataset runner on one machine: ``camlens explain`` and :func:`camlens.run`.

Streams: images are decoded by threads a batch ahead of the model, every batch gets one
shared forward/gradient pass for all methods, pictures are written by threads while the
model runs the next batch, and each finished image becomes one line of the folder's index
(:mod:`._index`). Nothing per image is kept: memory is flat however many images there are.
"""

from __future__ import annotations

import errno
import io
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._errors import UsageError, unknown_choice
from .._explainer import compare
from .._messages import Sink, to_log
from ._files import Run, collect, decode, inside, small_image_note
from ._index import INDEX, RunIndex
from ._memory import BatchSizer, PeakMemory
from ._setup import Methods, model_fingerprint, print_plan, probabilities
from ._spec import RunSpec
from ._threads import Helpers, Interrupted


@dataclass
class Job:
    """The settings of one ``explain`` run, shared by its batches."""

    args: RunSpec
    files: Sequence[tuple[Path, str, str]]
    names: Sequence[str]
    out: Path
    model: torch.nn.Module
    preprocess: Any
    labels: Sequence[str]
    target: Any
    layer: Any
    device: torch.device
    max_pixels: int
    methods: Methods
    show: bool = False
    index: Any = None
    planned: bool = False
    finished: int = 0
    layer_names: list[str] = field(default_factory=list)
    message: Sink = to_log  # where notes go (the caller's sink; a Ray actor collects them)
    plan_sink: Callable[..., None] | None = None  # the cost plan; None: to ``message``
    noted: dict[str, int] = field(default_factory=dict)
    batch: int = 0  # images per batch: --batch-size bounded by memory (0: --batch-size)
    map_bytes: int = 0  # the last batch's maps
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, kind: str, text: str) -> None:
        """Tell the user about one image; after ``NOTE_LIMIT`` notes of one kind the rest
        are only counted (each image's index record keeps its notes)."""
        with self._lock:
            n = self.noted[kind] = self.noted.get(kind, 0) + 1
        if n <= NOTE_LIMIT:
            self.message(text)
        if n == NOTE_LIMIT:
            self.message(f"further notes of this kind ({kind}) are not shown; the images' "
                         f"records in {INDEX} hold them")

    def note_totals(self) -> None:
        for kind, n in self.noted.items():
            if n > NOTE_LIMIT:
                self.message(f"{n} image(s) in all: {kind}")


NOTE_LIMIT = 5


SAVE_CHOICES = ("overlay", "grid", "npy", "shards", "mask")
DEFAULT_SAVE = ("overlay", "grid", "npy")


def parse_save(text: str | Sequence[str]) -> tuple[str, ...]:
    """``--save``: what to write for each image (the index records peaks and boxes always)."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    items = [t for t in items if t]
    for item in items:
        if item not in SAVE_CHOICES:
            raise UsageError(str(unknown_choice("--save item", item, SAVE_CHOICES)))
    if "npy" in items and "shards" in items:
        raise UsageError("--save: choose npy (a file per image) or shards (a few large files)")
    return tuple(dict.fromkeys(items))


def fingerprint(args: RunSpec, methods: Methods) -> dict[str, Any]:
    """The options that decide what an ``explain`` run's outputs are: a resumed run must
    match them."""
    return {
        **model_fingerprint(args, methods),
        "target": args.target,
        "counterfactual": bool(args.counterfactual),
        "save": list(args.save),
        "alpha": args.alpha,
        "colormap": args.colormap,
        "threshold": args.threshold,
        "max_pixels": args.max_pixels,
    }


class IndexedRun(Run):
    """Failures go to the index as they happen (nothing per image is held in memory)."""

    def __init__(self, index: RunIndex, message: Sink = to_log) -> None:
        super().__init__(message=message)
        self.index = index

    def fail(self, name: str, reason: str, retry: bool = False) -> None:
        self.errors.append({"file": name, "error": reason})
        if name not in self.index.done:
            record = {"key": name, "file": name, "error": reason}
            self.index.append({**record, "retry": True} if retry else record)
        self.message(f"skipped {name}: {reason}")


def remaining(paths: Sequence[str], run: IndexedRun) -> list[tuple[Path, str, str]]:
    """The images of ``paths`` still to do in the folder's run (all of them for a new
    run): those the index does not hold, and those that failed earlier because they were
    missing or could not be read. A resumed run says how many are done, failed and to go.
    The run's own output folder, and any other camlens output, is never walked."""
    index = run.index
    found = collect(paths, run, out=index.out)
    files = [f for f in found if f[1] not in index.done]
    retried = sum(f[1] in index.retry for f in files)
    failed = sum(f[1] in index.failed for f in found)
    if len(files) < len(found) or retried:
        said = [f"{len(found) - len(files) - failed} image(s) already done"]
        if failed:
            said.append(f"{failed} failed earlier, not tried again (see {INDEX}; --restart "
                        "redoes the run)")
        said.append(f"{len(files)} to go")
        if retried:
            said[-1] += (f" ({retried} of them failed earlier as missing or unreadable: "
                         "tried again)")
        run.message(f"resuming {index.out}: {', '.join(said)}")
    return files


def _loop(job: Job, run: IndexedRun, tqdm: Any) -> None:
    """Batches through the model; the next batch decodes (threads) while this one runs,
    and pictures are written by threads while the model runs the next."""
    total = len(job.files)
    # --batch-size bounded by memory: the first batch (of PROBE images) is measured
    try:
        sizer = BatchSizer(job.args.batch_size, total, job.device)
    except ValueError as err:  # CAMLENS_MEMORY is not an amount
        raise UsageError(str(err)) from None
    job.batch = size = sizer.size
    readers = Helpers(2, "camlens-decode")
    pool = Helpers(2, "camlens-write")
    pending: list[tuple[int, Future[dict[str, Any]]]] = []
    bar = tqdm(total=len(job.files), unit="img", desc="camlens explain", disable=not job.show,
               leave=False)

    def read(chunk: range) -> list[Future[list[Any]]]:  # one task per image: 2 decode at once
        return [readers.submit(decode, job.files, range(i, i + 1), job.preprocess,
                               job.max_pixels, run) for i in chunk]

    try:
        following = range(0, min(size, total))
        ahead = read(following) if following else None
        while ahead is not None:
            chunk = following
            loaded = [item for task in ahead for item in readers.wait(task)]
            following = range(chunk.stop, min(chunk.stop + size, total))
            ahead = read(following) if following else None
            with PeakMemory(job.device, active=sizer.probing) as peak:
                pending += _explain_batch(job, loaded, run, pool)
            if sizer.probing:
                sizer.measured(peak.peak, loaded, job.map_bytes)
                if sizer.message:
                    job.message(sizer.message)
                job.batch = size = sizer.size
            while len(pending) > 4 * size:  # bound the pictures held in memory
                _collect_result(job, pending.pop(0), run, pool)
            while pending and pending[0][1].done():
                _collect_result(job, pending.pop(0), run, pool)
            job.index.sync()  # one fsync per batch, not per image
            bar.update(len(chunk))
    except BaseException:  # Ctrl-C, a full disk: finish what is written, then stop
        bar.close()
        try:
            _drain(job, pending, run, pool)
        except Exception:  # already stopping: the first error (or the Ctrl-C) is raised
            pass
        finally:
            readers.shutdown(cancel=True)
            pool.shutdown()
        raise
    bar.close()
    try:
        _drain(job, pending, run, pool)
    finally:
        readers.shutdown(cancel=True)
        pool.shutdown()


def _drain(job: Job, pending: list[tuple[int, Future[dict[str, Any]]]], run: IndexedRun,
           pool: Helpers) -> None:
    """Collect every pending image in order. A full disk stops the run, but each image
    whose files are already in place still gets its index line (one drawn later than the
    image the disk cut short too); the first storage error is raised at the end."""
    stop: _StorageError | None = None
    while pending:
        try:
            _collect_result(job, pending.pop(0), run, pool)
        except _StorageError as err:
            stop = stop or err
    if stop is not None:
        raise stop


def _collect_result(job: Job, item: tuple[int, Future[dict[str, Any]]], run: IndexedRun,
                    pool: Helpers) -> None:
    """The image's files are in place: its index line makes it done. An image whose
    drawing a Ctrl-C cut short gets no line (a resumed run does it again)."""
    index, future = item
    try:
        record = pool.wait(future)
    except (Interrupted, CancelledError):
        return
    except OSError as err:
        if err.errno in _STORAGE_ERRNOS:  # the folder, not the image: stop, resumable
            raise _StorageError(err.errno, err.strerror) from err
        run.fail(job.files[index][1], f"could not write its outputs: {err}")
        return
    except ValueError as err:  # a failed write: report the image, go on
        run.fail(job.files[index][1], f"could not write its outputs: {err}")
        return
    try:
        job.index.append(record)
    except OSError as err:
        if err.errno in _STORAGE_ERRNOS:
            raise _StorageError(err.errno, err.strerror) from err
        raise
    job.finished += 1


class _StorageError(OSError):
    """The output folder cannot take more writes (full, read-only, failing)."""


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}


def _explain_batch(
    job: Job, loaded: list[tuple[int, np.ndarray, torch.Tensor]], run: Run,
    pool: Helpers,
) -> list[tuple[int, Future[dict[str, Any]]]]:
    """Explain one decoded batch; queue the writing of its pictures."""
    methods = job.methods.live()
    if not loaded or not methods:
        return []
    x = torch.stack([t for _, _, t in loaded]).to(job.device)

    def plan(rows: list[Any]) -> None:
        if not job.planned:
            job.planned = True
            if job.plan_sink is None:
                print_plan(rows, len(loaded), len(job.files), job.message)
            else:
                job.plan_sink(rows, len(loaded), len(job.files))

    try:
        result = compare(job.model, x, methods, job.layer, job.target,
                         counterfactual=job.args.counterfactual, errors="keep",
                         batch_size=max(job.batch or job.args.batch_size, 32),
                         progress=job.show, plan=plan, options=job.methods.options_for(methods))
    except ValueError as err:  # the pass itself failed (e.g. NaN scores): this batch only
        for i, _, _ in loaded:
            run.fail(job.files[i][1], str(err))
        return []
    job.layer_names[:] = result.layer_names or job.layer_names
    job.methods.record(result, job.message)
    batch = _Batch(probabilities(result.output),
                   {k: v.cpu() for k, v in result.items() if not isinstance(v, Exception)},
                   result.classes)
    job.map_bytes = sum(m.nelement() * m.element_size() for m in batch.maps.values())
    # each image's maps are taken apart and drawn by a writer thread, so the model can start
    # the next batch at once (the work moved off this thread is ~10 % of a batch's time)
    return [(i, pool.submit(_prepare_and_render, job, batch, b, i, rgb))
            for b, (i, rgb, _) in enumerate(loaded)]


@dataclass
class _Batch:
    """What the model computed for one batch, on the CPU: read (never changed) by the
    writer threads."""

    probs: torch.Tensor | None
    maps: dict[str, torch.Tensor]
    classes: torch.Tensor | None


def _prepare_and_render(job: Job, batch: _Batch, b: int, index: int,
                        rgb: np.ndarray) -> dict[str, Any]:
    return _render(job, _prepare(job, batch, b, index, rgb))


def _prepare(job: Job, batch: _Batch, b: int, index: int, rgb: np.ndarray) -> dict[str, Any]:
    """Image ``b`` of a batch, moved to numpy: its maps, boxes and peaks, probabilities."""
    from .._derive import boxes_numpy

    maps = {}
    for method, m in batch.maps.items():  # NumPy only: no torch (OpenMP) work in this thread
        m = m[b].numpy()
        m = m[None] if m.ndim == 2 else m  # (K, H, W)
        flat = m.reshape(m.shape[0], -1)
        maps[method] = (m, boxes_numpy(m, job.args.threshold).tolist(),
                        flat.argmax(1).tolist(), (flat.max(1) <= 0).tolist())
    return {
        "index": index,
        "rgb": rgb,
        "crop": job.preprocess.crop_box(*rgb.shape[:2]),
        "probs": batch.probs[b].numpy() if batch.probs is not None else None,
        "classes": batch.classes[b].tolist() if batch.classes is not None else [None],
        "maps": maps,
        "note": small_image_note(rgb, job.preprocess),
    }


def _render(job: Job, item: dict[str, Any]) -> dict[str, Any]:
    """Overlays, raw maps and the grid of one image, each written atomically; its summary."""
    from ..viz import atomic_write, compose_grid, compose_rows, overlay, save_image
    from ..viz._compose import panel_title

    args, labels = job.args, job.labels
    i, rgb, probs, cls = item["index"], item["rgb"], item["probs"], item["classes"]
    name, shown = job.names[i], job.files[i][1]
    x0, y0, x1, y1 = item["crop"]
    crop = rgb[y0:y1, x0:x1]
    size = job.preprocess.crop
    sx, sy = (x1 - x0) / size, (y1 - y0) / size
    top = np.argsort(-probs)[:5] if probs is not None else []
    save = args.save
    entry: dict[str, Any] = {
        "key": shown,
        "file": shown,
        "stem": name,
        "size": [rgb.shape[1], rgb.shape[0]],
        "crop": [x0, y0, x1, y1],
        "predictions": [
            {"class": int(c), "name": labels[int(c)], "probability": round(float(probs[c]), 6)}
            for c in top
        ],
        "targets": [
            {"class": c, "name": labels[c] if c is not None else None,
             "probability": round(float(probs[c]), 6) if c is not None and probs is not None
             else None}
            for c in cls
        ],
        "maps": {},
        "notes": [],
    }
    if item["note"]:
        entry["notes"].append(item["note"])
        job.note("upscaled small images", f"{shown}: {item['note']}")
    rows: list[tuple[list[np.ndarray], list[str]]] = [([], []) for _ in cls]
    for method, (m, bx, peaks, empty) in item["maps"].items():
        records = []
        for k in range(m.shape[0]):
            suffix = "" if m.shape[0] == 1 else f"_top{k + 1}"
            record: dict[str, Any] = {"class": cls[k]}
            picture = None
            if "overlay" in save or "grid" in save:
                picture = overlay(crop, m[k], args.alpha, args.colormap)
            if "overlay" in save:
                png = inside(job.out, f"{name}_{method}{suffix}.png")
                assert picture is not None
                picture.save(png)
                record["overlay"] = png.name
            if "mask" in save:  # the map at or above the box threshold, in the crop's pixels
                mask_png = inside(job.out, f"{name}_{method}{suffix}_mask.png")
                keep = m[k] >= args.threshold * max(float(m[k].max()), 1e-12)
                save_image(np.repeat((keep * 255).astype(np.uint8)[..., None], 3, -1),
                           mask_png)
                record["mask"] = mask_png.name
            if empty[k]:
                record.update(peak=None, box=None, empty=True)
                what = f"class {labels[cls[k]]!r}" if cls[k] is not None else "the target"
                side = "against" if args.counterfactual else "for"
                job.note(f"empty {method} maps",
                         f"{shown}: the {method} map of {what} is empty (all zero: nothing in "
                         f"the image argues {side} it at this layer); no peak or box")
            else:
                py, px = divmod(int(peaks[k]), m.shape[-1])
                record.update(
                    peak=[round(x0 + (px + 0.5) * sx), round(y0 + (py + 0.5) * sy)],
                    box=[round(x0 + bx[k][0] * sx), round(y0 + bx[k][1] * sy),
                         round(x0 + bx[k][2] * sx), round(y0 + bx[k][3] * sy)],
                    empty=False,
                )
            records.append(record)
            if picture is not None:
                rows[k][0].append(picture)
            rows[k][1].append(panel_title(
                method, labels[cls[k]] if cls[k] is not None else None,
                float(probs[cls[k]]) if cls[k] is not None and probs is not None else None,
                counterfactual=args.counterfactual, empty=empty[k]))
        raw = (m[0] if m.shape[0] == 1 else m).astype(np.float32)
        entry["maps"][method] = {"targets": records}
        if "npy" in save:
            npy = inside(job.out, f"{name}_{method}.npy")
            buf = io.BytesIO()
            np.save(buf, raw)
            atomic_write(npy, buf.getvalue())
            entry["maps"][method]["npy"] = npy.name
        elif "shards" in save:
            entry["maps"][method]["shard"] = job.index.shard().add(raw)
    entry["grids"] = []
    if "grid" in save and rows and rows[0][0]:
        path = inside(job.out, f"{name}_grid.png")
        if len(rows) == 1:
            compose_grid(crop, rows[0][0], rows[0][1]).save(path)
        else:  # one row per class: the image labelled with the class, then the methods
            heads = [_row_title(k, c, labels, probs) for k, c in enumerate(cls)]
            compose_rows(crop, [(heads[k], pics, titles)
                                for k, (pics, titles) in enumerate(rows)]).save(path)
        entry["grids"].append(path.name)
    return entry


def _row_title(k: int, cls: Any, labels: Sequence[str], probs: Any) -> str:
    if cls is None:
        return f"target {k + 1}"
    p = f" {float(probs[cls]):.1%}" if probs is not None else ""
    return f"top {k + 1}: {labels[cls]}{p}"
