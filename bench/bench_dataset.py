"""The dataset runner (``camlens explain`` / ``camlens.run``) on whole folders.

1. Memory: peak RSS of ``camlens explain --save shards`` (a subprocess) over ``--n`` and
   ``--big`` small JPEGs (64-160 px): flat means the ratio stays within 10 %.
2. Throughput on ``--n`` JPEG photos of 300-600 px: the engine (``camlens.run`` with the
   default ``--save``, and ``--save npy`` only) against the model's own limit, the forward
   + gradient pass alone on the same batches pre-decoded in memory (hand-written Grad-CAM,
   interleaved batch by batch with ``camlens.explain``), and a pytorch-grad-cam loop doing
   the same job. The photos are split into ``--segments`` folders and every row runs on
   one segment in turn, so that the load of a shared machine hits all rows alike.
   Goal: the engine >= 0.8x the limit's images/s.
3. Resume: one run over all the photos, then the same run again on its finished folder
   (in this process and as a CLI).
4. Ray: ``--engine ray`` (1 actor) against the local engine, when Ray and
   ``camlens.runner._ray`` are there; otherwise the reason is printed.

Run: ``OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_dataset.py`` (``--quick`` for a
smoke run, ``--big 0`` to skip the large memory run, ``--json PATH`` for the numbers).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import json
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from _common import load, machine
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from skimage import data

import camlens
from camlens.viz import load_image

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
          "immunohistochemistry", "cat"]
PGC_LAYER = "_bn1"  # pytorch-grad-cam cannot target _swish: one module called 17 times
DEFAULT_SAVE = "overlay,grid,npy"
GOAL_THROUGHPUT = 0.8  # engine img/s over the limit's
GOAL_MEMORY = 1.10  # peak RSS of the big run over the small one


# ---------------------------------------------------------------- inputs
_SOURCES: dict[str, Image.Image] = {}


def _source(name: str) -> Image.Image:
    if name not in _SOURCES:
        _SOURCES[name] = Image.fromarray(np.ascontiguousarray(getattr(data, name)()[..., :3]))
    return _SOURCES[name]


def _variant(i: int, folder: Path, sides: tuple[int, int], crop: float, seed: int) -> Path:
    """JPEG ``i``: a random crop of a scikit-image photo (each side ``crop``..100 %),
    resized so that its long side is in ``sides``, flipped half the time, quality 80-95."""
    rng = np.random.default_rng([seed, i])
    src = _source(PHOTOS[i % len(PHOTOS)])
    w, h = src.size
    cw, ch = (max(8, int(s * rng.uniform(crop, 1.0))) for s in (w, h))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    scale = int(rng.integers(sides[0], sides[1] + 1)) / max(cw, ch)
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    img = src.resize(size, Image.BILINEAR, box=(left, top, left + cw, top + ch),
                     reducing_gap=2.0)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    path = folder / f"img_{i:05d}.jpg"
    img.save(path, quality=int(rng.integers(80, 96)))
    return path


def make_jpegs(folder: Path, count: int, sides: tuple[int, int], crop: float,
               seed: int) -> list[Path]:
    """``count`` JPEGs in ``folder`` (two threads: Pillow releases the GIL to encode)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        _source(name)
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda i: _variant(i, folder, sides, crop, seed), range(count)))


def link_first(paths: list[Path], folder: Path) -> None:
    """``folder`` with hard links to ``paths`` (copies where links are refused)."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        try:
            os.link(p, folder / p.name)
        except OSError:
            shutil.copy2(p, folder / p.name)


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


# ---------------------------------------------------------------- a CLI run in a subprocess
_WRAPPER = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[2:]).returncode; "
            "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN)"
            ".ru_maxrss)); sys.exit(rc)")


def cli_run(args: list[str], log: Path) -> dict[str, Any]:
    """``python -m camlens ARGS`` in a subprocess: wall seconds and peak RSS (MiB).

    The peak comes from ``/usr/bin/time -v`` or, without it, from ``RUSAGE_CHILDREN`` of a
    small Python wrapper: either way the CLI is forked by a small process, so its peak is
    its own (Linux carries ``ru_maxrss`` over fork + exec: a child forked by this large
    process would report this process's peak)."""
    report = log.with_suffix(".rss")
    cmd = [sys.executable, "-m", "camlens", *args]
    gnu_time = shutil.which("time", path="/usr/bin:/bin")
    cmd = ([gnu_time, "-v", "-o", str(report), *cmd] if gnu_time
           else [sys.executable, "-c", _WRAPPER, str(report), *cmd])
    with open(log, "wb") as f:
        t = time.perf_counter()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - t
    text = report.read_text() if report.exists() else ""
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    kib = int(m.group(1)) if m else int(text) if text.strip().isdigit() else 0
    return {"seconds": seconds, "peak_mib": kib / 1024, "rc": rc,
            "rss_tool": "/usr/bin/time -v" if gnu_time else "getrusage(RUSAGE_CHILDREN)"}


def tail(path: Path, lines: int = 8) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------- Grad-CAM: limit, reference
def limit_gradcam(model: torch.nn.Module, x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """The least Grad-CAM needs, by hand: one forward with a hook keeping the layer's last
    output, ``autograd.grad`` of the top-1 logits, channel weights, ReLU, bilinear
    upsampling to the input, per-map min-max."""
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        with torch.enable_grad():
            out = model(x)
            score = out.gather(1, out.argmax(1, keepdim=True)).sum()
            (grad,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
    act = store["a"].detach()
    cam = (grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True).relu()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo = cam.amin((1, 2), keepdim=True)
    hi = cam.amax((1, 2), keepdim=True)
    return (cam - lo) / (hi - lo).clamp_min(1e-12)


def pgc_script(paths: list[Path], out: Path, batch: int, preprocess: Any, cam: GradCAM) -> None:
    """What a user writes with pytorch-grad-cam (bench_cli.py's script, plus the .npy):
    decode with PIL, preprocess, GradCAM (top-1 picked by pytorch-grad-cam from its own
    forward), the map resized to the crop the model saw, ``show_cam_on_image``, PNG with
    OpenCV, the map as .npy."""
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        rgbs = [np.asarray(Image.open(p).convert("RGB")) for p in chunk]
        x = torch.stack([preprocess(r) for r in rgbs])
        maps = cam(input_tensor=x, targets=None)
        for p, rgb, m in zip(chunk, rgbs, maps):
            x0, y0, x1, y1 = preprocess.crop_box(*rgb.shape[:2])
            crop = np.float32(rgb[y0:y1, x0:x1]) / 255
            picture = show_cam_on_image(crop, cv2.resize(m, (crop.shape[1], crop.shape[0])),
                                        use_rgb=True)
            cv2.imwrite(str(out / f"{p.stem}_gradcam.png"),
                        cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            np.save(out / f"{p.stem}_gradcam.npy", m.astype(np.float32))


# ---------------------------------------------------------------- measuring
class Timed:
    """Wall and process CPU time of a block (CPU / wall = cores kept busy)."""

    def __enter__(self) -> Timed:
        self.load_before = load()
        self.t, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t
        self.cpu = time.process_time() - self.c
        self.load_after = load()


def profile_threads(label: str, fn: Callable[[], object], lines: int = 18) -> None:
    """cProfile of one call in every thread: the main thread (cumulative: where it waits),
    then the threads it starts, grouped by name prefix (own time)."""
    profiles: list[tuple[str, cProfile.Profile]] = []

    def start(frame: Any, event: str, arg: Any) -> None:  # first event of a new thread
        p = cProfile.Profile()
        profiles.append((threading.current_thread().name, p))
        p.enable()

    main = cProfile.Profile()
    threading.setprofile(start)
    t = time.perf_counter()
    main.enable()
    try:
        fn()
    finally:
        main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    total = time.perf_counter() - t
    for _, p in profiles:
        p.disable()
    print(f"\n#### cProfile of {label} ({total:.1f} s wall)\n")
    groups: dict[str, list[cProfile.Profile]] = {}
    for name, p in profiles:
        groups.setdefault(re.sub(r"_\d+$", "", name), []).append(p)
    for title, profs, key in [("main thread", [main], "cumulative"),
                              *((f"threads {g} ({len(ps)})", ps, "tottime")
                                for g, ps in groups.items())]:
        buf = io.StringIO()
        stats = pstats.Stats(*profs, stream=buf).strip_dirs().sort_stats(key)
        stats.print_stats(lines)
        text = buf.getvalue()
        print(f"{title}, sorted by {key} (wall time in the thread, GIL waits included):\n```\n"
              f"{text[text.find('   ncalls'):].rstrip()}\n```")


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| row | images | seconds | img/s | x limit | CPU cores busy | peak RSS MiB | note |")
    print("|---|---|---|---|---|---|---|---|")
    def f(r: dict[str, Any], key: str, fmt: str) -> str:
        v = r.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    for r in rows:
        print(f"| {r['row']} | {r.get('images', '-')} | {f(r, 'seconds', '.1f')} | "
              f"{f(r, 'img_s', '.2f')} | {f(r, 'x_limit', '.2f')} | {f(r, 'cores', '.2f')} | "
              f"{f(r, 'peak_mib', '.0f')} | {r.get('note', '')} |")


# ---------------------------------------------------------------- sections
def section_memory(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    print(f"\n## 1. Memory: peak RSS of `camlens explain --save shards`, {args.n} vs "
          f"{args.big} JPEGs of 64-160 px (load {load()})\n")
    t = time.perf_counter()
    big = make_jpegs(work / "small-big", max(args.big, args.n), (64, 160), 0.3, args.seed + 1)
    link_first(big[: args.n], work / "small-n")
    print(f"made {len(big)} JPEGs in {time.perf_counter() - t:.1f} s (the first {args.n} "
          "hard-linked into the small folder)")
    rows = []
    for count, folder in ((args.n, "small-n"), (args.big, "small-big")):
        out = work / f"mem-out-{count}"
        r = cli_run(["explain", str(work / folder), "--out", str(out), "--save", "shards",
                     "--batch-size", str(args.batch_size), "--progress", "never"],
                    work / f"mem-{count}.log")
        lines = count_lines(out / "index.jsonl") if (out / "index.jsonl").exists() else 0
        shards = sorted((out / "maps").glob("shard-*.bin")) if (out / "maps").is_dir() else []
        log_lines = count_lines(work / f"mem-{count}.log")
        print(f"{count} images: {r['seconds']:.1f} s ({count / r['seconds']:.2f} img/s), "
              f"peak RSS {r['peak_mib']:.0f} MiB ({r['rss_tool']}), exit code {r['rc']}, "
              f"{lines} index lines, {len(shards)} shard file(s) of "
              f"{sum(s.stat().st_size for s in shards) / 2**20:.1f} MiB, {log_lines} lines on "
              f"stdout/stderr; load {load()}")
        if r["rc"] != 0 or lines != count:
            print("  the run did not finish cleanly; its log ends with:\n"
                  + tail(work / f"mem-{count}.log"))
        rows.append({"row": f"memory: explain --save shards, {count} small JPEGs",
                     "images": count, "seconds": r["seconds"], "img_s": count / r["seconds"],
                     "peak_mib": r["peak_mib"], "rc": r["rc"], "index_lines": lines,
                     "log_lines": log_lines})
        shutil.rmtree(out, ignore_errors=True)
    ratio = rows[1]["peak_mib"] / rows[0]["peak_mib"] if rows[0]["peak_mib"] else float("nan")
    rows[1]["note"] = (f"peak RSS {ratio:.3f}x the {args.n}-image run "
                       f"({'meets' if ratio <= GOAL_MEMORY else 'misses'} the goal <= "
                       f"{GOAL_MEMORY:.2f}x)")
    rows[1]["rss_ratio"] = ratio
    print(f"\npeak RSS {args.big} / {args.n} images: {ratio:.3f} (goal <= {GOAL_MEMORY:.2f})")
    return rows


def section_throughput(args: argparse.Namespace, work: Path,
                       segments: list[list[Path]]) -> list[dict[str, Any]]:
    n, bs = sum(len(s) for s in segments), args.batch_size
    print(f"\n## 2. Throughput: {n} JPEG photos of 300-600 px in {len(segments)} segments, "
          f"batch {bs} (load {load()})\n")
    t = time.perf_counter()
    model, preprocess, _ = camlens.load_model()
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    camlens.load_model()
    print(f"camlens.load_model(): {load_s:.2f} s first, {time.perf_counter() - t:.2f} s again "
          "(every engine run loads the model once)")
    layer = model.get_submodule("_swish")  # camlens' auto layer: the last call of _swish
    pgc_model = camlens.load_model()[0].to(memory_format=torch.contiguous_format)
    cam = GradCAM(model=pgc_model, target_layers=[pgc_model.get_submodule(PGC_LAYER)])

    # warm-up of every row, and the maps of the limit against camlens'
    x0 = torch.stack([preprocess(load_image(p)) for p in segments[0][:bs]])
    diff = float((limit_gradcam(model, x0, layer) - camlens.explain(model, x0)).abs().max())
    print(f"camlens.explain vs the hand-written limit on one batch: max |difference| {diff:.1e}")
    link_first(segments[0][:bs], work / "warm-in")
    camlens.run(work / "warm-in", work / "warm-out", save="npy", batch_size=bs)
    pgc_script(segments[0][:bs], work / "pgc-warm", bs, preprocess, cam)

    keys = ["limit", "core", "default", "npy", "pgc"]
    secs: dict[str, list[float]] = {k: [] for k in keys}
    cpu: dict[str, float] = dict.fromkeys(keys, 0.0)
    batch_s: dict[str, list[float]] = {"limit": [], "core": []}
    decode_s = 0.0
    for k, seg in enumerate(segments):
        folder = seg[0].parent
        t = time.perf_counter()
        batches = [torch.stack([preprocess(load_image(p)) for p in seg[s : s + bs]])
                   for s in range(0, len(seg), bs)]
        decode_s += time.perf_counter() - t
        seg_s = {"limit": 0.0, "core": 0.0}
        before = load()
        for x in batches:  # the limit and camlens.explain interleaved batch by batch
            for key, fn in (("limit", lambda x=x: limit_gradcam(model, x, layer)),
                            ("core", lambda x=x: camlens.explain(model, x))):
                t, c = time.perf_counter(), time.process_time()
                fn()
                batch_s[key].append(time.perf_counter() - t)
                seg_s[key] += batch_s[key][-1]
                cpu[key] += time.process_time() - c
        del batches
        for key in ("limit", "core"):
            secs[key].append(seg_s[key])
        for key, save in (("default", DEFAULT_SAVE), ("npy", "npy")):
            out = work / f"engine-{key}" / folder.name
            with Timed() as tm:
                summary = camlens.run(folder, out, save=save, batch_size=bs)
            secs[key].append(tm.seconds)
            cpu[key] += tm.cpu
            if summary["images"] != len(seg) or summary["failed"] or summary["exit_code"]:
                print(f"  engine --save {save} on {folder.name}: {summary['images']} done, "
                      f"{summary['failed']} failed, exit code {summary['exit_code']}")
            shutil.rmtree(out, ignore_errors=True)
        with Timed() as tm:
            pgc_script(seg, work / "pgc" / folder.name, bs, preprocess, cam)
        secs["pgc"].append(tm.seconds)
        cpu["pgc"] += tm.cpu
        shutil.rmtree(work / "pgc" / folder.name, ignore_errors=True)
        rates = "  ".join(f"{key} {len(seg) / secs[key][-1]:.1f}" for key in keys)
        print(f"segment {k + 1}/{len(segments)} ({len(seg)} photos), img/s: {rates}; "
              f"engine/limit {secs['limit'][-1] / secs['default'][-1]:.2f}; load {before} -> "
              f"{load()}")
    print(f"pre-decoding for the limit rows (load_image + preprocess, one thread): "
          f"{1000 * decode_s / n:.1f} ms per image")

    names = {"limit": "limit: hand-written Grad-CAM, pre-decoded",
             "core": "camlens.explain, pre-decoded",
             "default": f"camlens.run, --save {DEFAULT_SAVE}",
             "npy": "camlens.run, --save npy",
             "pgc": f"pytorch-grad-cam script (PNG + .npy; {PGC_LAYER}, contiguous)"}
    rows: list[dict[str, Any]] = []
    for key in keys:
        total = sum(secs[key])
        ratios = [lim / sec for lim, sec in zip(secs["limit"], secs[key])]
        rows.append({"row": names[key], "key": key, "images": n, "seconds": total,
                     "img_s": n / total, "x_limit": sum(secs["limit"]) / total,
                     "x_limit_median": statistics.median(ratios), "cores": cpu[key] / total,
                     "segment_s": secs[key]})
    byk = {r["key"]: r for r in rows}
    for key in ("limit", "core"):
        med = statistics.median(batch_s[key])
        byk[key]["median_batch_s"] = med
        byk[key]["note"] = f"median {med:.3f} s/batch"
    byk["core"]["note"] += f"; max diff to the limit {diff:.1e}"
    engine = byk["default"]["x_limit"]
    for key in ("default", "npy"):
        r = byk[key]
        r["note"] = f"median of the segments' ratios {r['x_limit_median']:.2f}x"
    byk["default"]["note"] += (f"; {'meets' if engine >= GOAL_THROUGHPUT else 'misses'} the "
                               f"goal >= {GOAL_THROUGHPUT}x")
    byk["pgc"]["note"] = f"camlens.run {byk['default']['img_s'] / byk['pgc']['img_s']:.2f}x faster"
    print(f"\nengine (--save {DEFAULT_SAVE}) / limit: {engine:.2f}x (median of the segments "
          f"{byk['default']['x_limit_median']:.2f}x; goal >= {GOAL_THROUGHPUT}); --save npy / "
          f"limit: {byk['npy']['x_limit']:.2f}x")
    if args.profile == "always" or (args.profile == "auto" and engine < GOAL_THROUGHPUT):
        folder = segments[0][0].parent
        profile_threads(f"camlens.run on {folder.name} ({len(segments[0])} photos), --save "
                        f"{DEFAULT_SAVE}",
                        lambda: camlens.run(folder, work / "profile-out", save=DEFAULT_SAVE,
                                            batch_size=bs))
        shutil.rmtree(work / "profile-out", ignore_errors=True)
    return rows


def section_resume(args: argparse.Namespace, work: Path, photos: Path, n: int,
                   ) -> list[dict[str, Any]]:
    print(f"\n## 3. Resume: one run over all {n} photos, then the same run again on its "
          f"finished folder (load {load()})\n")
    finished = work / "engine-full"
    with Timed() as full:
        summary = camlens.run(photos, finished, save=DEFAULT_SAVE, batch_size=args.batch_size)
    lines = count_lines(finished / "index.jsonl")
    print(f"full run, --save {DEFAULT_SAVE}: {full.seconds:.1f} s ({n / full.seconds:.2f} "
          f"img/s, {full.cpu / full.seconds:.2f} cores busy), {summary['images']} done, "
          f"{lines} index lines; load {full.load_before} -> {full.load_after}")
    with Timed() as tm:
        summary = camlens.run(photos, finished, save=DEFAULT_SAVE, batch_size=args.batch_size)
    after = count_lines(finished / "index.jsonl")
    print(f"camlens.run again: {tm.seconds:.2f} s, {summary['images']} images in the summary, "
          f"index {lines} -> {after} lines")
    r = cli_run(["explain", str(photos), "--out", str(finished), "--batch-size",
                 str(args.batch_size), "--progress", "never"], work / "resume.log")
    after_cli = count_lines(finished / "index.jsonl")
    print(f"camlens explain (CLI; interpreter start and imports included): {r['seconds']:.2f} s, "
          f"exit code {r['rc']}, peak RSS {r['peak_mib']:.0f} MiB, index -> {after_cli} lines; "
          f"it said: {tail(work / 'resume.log', 2)!r}")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import camlens; camlens.load_model()"], check=True)
    start_s = time.perf_counter() - t
    print(f"for scale: `python -c 'import camlens; camlens.load_model()'` takes {start_s:.2f} s")
    if args.profile == "always":
        profile_threads("the resume (camlens.run)", lambda: camlens.run(
            photos, finished, save=DEFAULT_SAVE, batch_size=args.batch_size))
    ok = after == lines == after_cli == n
    return [{"row": f"full run, {n} photos, one camlens.run --save {DEFAULT_SAVE}",
             "images": n, "seconds": full.seconds, "img_s": n / full.seconds,
             "cores": full.cpu / full.seconds},
            {"row": f"resume {n} finished: camlens.run", "images": n, "seconds": tm.seconds,
             "note": f"{100 * tm.seconds / full.seconds:.1f} % of the full run"
                     + ("" if ok else "; THE INDEX CHANGED")},
            {"row": f"resume {n} finished: CLI", "images": n, "seconds": r["seconds"],
             "peak_mib": r["peak_mib"],
             "note": f"python + import + load_model alone {start_s:.2f} s"}]


def section_ray(args: argparse.Namespace, work: Path, photos: Path, n: int) -> list[dict]:
    print(f"\n## 4. Ray: --engine ray, 1 actor (load {load()})\n")
    reasons = []
    try:
        import ray  # noqa: F401
    except Exception as err:  # ImportError, or a broken install
        reasons.append(f"import ray failed ({type(err).__name__}: {err})")
    if importlib.util.find_spec("camlens.runner._ray") is None:
        reasons.append("camlens.runner._ray does not exist")
    helptext = subprocess.run([sys.executable, "-m", "camlens", "explain", "--help"],
                              capture_output=True, text=True).stdout
    if "--engine" not in helptext:
        reasons.append("`camlens explain` has no --engine flag")
    if reasons:
        print(f"ray: not available ({'; '.join(reasons)})")
        return [{"row": "ray engine", "note": "not available: " + "; ".join(reasons)}]
    actors = re.search(r"--(actors|num-actors|workers|num-workers)\b", helptext)
    extra = [f"--{actors.group(1)}", "1"] if actors else []
    if not extra:  # no flag: the engine sizes its pool from the CPUs Ray sees
        from camlens.runner._ray import pool_size

        pool = pool_size(float(os.cpu_count() or 1), 0.0)
        print(f"no actor-count flag; on {os.cpu_count()} CPUs the engine's pool is {pool}")
        if pool["size"] != 1:
            print(f"  (not 1 actor: {pool['size']} actors)")
    common = ["explain", str(photos), "--save", DEFAULT_SAVE, "--batch-size",
              str(args.batch_size), "--progress", "never"]
    local = cli_run([*common, "--out", str(work / "cli-local")], work / "cli-local.log")
    rayr = cli_run([*common, "--out", str(work / "cli-ray"), "--engine", "ray", *extra],
                   work / "cli-ray.log")
    lines = (count_lines(work / "cli-ray" / "index.jsonl")
             if (work / "cli-ray" / "index.jsonl").exists() else 0)
    print(f"CLI local: {local['seconds']:.1f} s; CLI --engine ray {' '.join(extra)}: "
          f"{rayr['seconds']:.1f} s, exit code {rayr['rc']}, {lines} index lines; overhead "
          f"{rayr['seconds'] - local['seconds']:+.1f} s "
          f"({rayr['seconds'] / local['seconds']:.2f}x)")
    if rayr["rc"] != 0:
        print(tail(work / "cli-ray.log"))
    note = (f"{rayr['seconds'] / local['seconds']:.2f}x the local CLI "
            f"({' '.join(extra) or 'pool: the engine default'}); peak RSS: the driver only")
    return [{"row": "CLI, local engine", "images": n, "seconds": local["seconds"],
             "img_s": n / local["seconds"], "peak_mib": local["peak_mib"]},
            {"row": "CLI, --engine ray", "images": n, "seconds": rayr["seconds"],
             "img_s": n / rayr["seconds"], "peak_mib": rayr["peak_mib"], "note": note,
             "rc": rayr["rc"]}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="photos for throughput and resume; "
                    "the small memory run (default 1000)")
    ap.add_argument("--big", type=int, default=10000,
                    help="JPEGs of the large memory run (default 10000; 0 skips section 1)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--segments", type=int, default=5,
                    help="section 2 runs every row on one segment of the photos in turn "
                         "(default 5)")
    ap.add_argument("--sections", default="1,2,3,4", help="which sections (default 1,2,3,4)")
    ap.add_argument("--profile", choices=["auto", "always", "never"], default="auto",
                    help="cProfile an engine run (every thread) when it misses the goal")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 16 and 48 images")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch's threads for every row (default: torch's own choice); 1 "
                         "on a 2-core machine leaves the decoding and drawing a core, as a "
                         "machine with more cores than the model uses would")
    args = ap.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.quick:
        args.n, args.big, args.segments = 16, 48 if args.big else 0, 2
    sections = {s.strip() for s in args.sections.split(",")}
    print(f"camlens {camlens.__version__}, torch {torch.__version__}, Python "
          f"{platform.python_version()}, {torch.get_num_threads()} torch threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    print(f"machine: {machine()}")
    print(f"load average: {load()}")
    print(f"EfficientNet-Lite0 (bundled, channels-last), gradcam, auto layer, batch "
          f"{args.batch_size}, --n {args.n}, --big {args.big}")
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="camlens-bench-dataset-"))
    started = time.perf_counter()
    try:
        if "1" in sections and args.big > 0:
            rows += section_memory(args, work)
        elif "1" in sections:
            print("\n## 1. Memory: skipped (--big 0)")
        photos = work / "photos"
        segments: list[list[Path]] = []
        if sections & {"2", "3", "4"}:
            t = time.perf_counter()
            paths = make_jpegs(photos, args.n, (300, 600), 0.6, args.seed)
            size = -(-args.n // max(1, args.segments))
            for k in range(0, args.n, size):  # photos/seg-K/: one folder per segment
                seg = photos / f"seg-{k // size}"
                seg.mkdir()
                segments.append([p.rename(seg / p.name) for p in paths[k : k + size]])
            print(f"\nmade {args.n} JPEG photos of 300-600 px in {time.perf_counter() - t:.1f} "
                  f"s ({sum(p.stat().st_size for s in segments for p in s) / 2**20:.1f} MiB)")
        if "2" in sections:
            rows += section_throughput(args, work, segments)
        if "3" in sections:
            rows += section_resume(args, work, photos, args.n)
        if "4" in sections:
            rows += section_ray(args, work, photos, args.n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - started
    print(f"\n## Summary ({total / 60:.1f} min; load average at the end {load()})\n")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "torch": torch.__version__, "machine": machine(),
             "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "minutes": total / 60,
             "load_end": load(), "rows": rows}, indent=2, default=str))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
