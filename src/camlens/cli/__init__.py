"""The ``camlens`` command: explain images, evaluate maps, run the demo, list methods.

The parser, ``--help``, usage errors and the listings import nothing heavy (``camlens
methods`` reads the methods' source, see :mod:`camlens._catalog`); a command imports torch
when it runs, after OpenMP's wait policy is set (see :func:`main`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from .._catalog import DEFAULT_MODEL, EVAL_METHODS, MODEL_SPECS, method_listing
from ._app import add_parser as _add_app_parser
from ._args import (
    EVAL_METRICS,
    METHOD_GROUPS,
    QUICK_METRICS,
    CliError,
    library_notes,
    model_options,
    positive,
)
from ._audit import add_parser as _add_audit_parser
from ._explain import cmd_explain
from ._labels import add_parser as _add_labels_parser

DEMO_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
# six maps that differ on the bundled model, the source articles' guided pair included
# (xgradcam, hirescam and cam equal gradcam there: its layer feeds GAP + one linear layer)
DEMO_METHODS = ("gradcam", "gradcam++", "layercam", "eigencam", "guided-gradcam",
                "guided-backprop")

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``camlens`` console script; returns the exit code.

    Unless the user chose one, OpenMP's wait policy is ``PASSIVE`` (read once, when torch
    loads it): threads that wait for work sleep instead of spinning, which on a busy
    2-core machine took 200 images from 127 s to 67 s (``bench/bench_wait_policy.py``
    compares the two). ``--threads N`` sets torch's intra-op threads.
    """
    if "torch" not in sys.modules:  # too late once torch is loaded
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    library_notes()
    try:
        if getattr(args, "threads", None) is not None:
            import torch

            torch.set_num_threads(args.threads)
        return int(args.func(args))
    except CliError as err:
        print(f"camlens: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("camlens: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="camlens", description="Where does a vision model look?")
    p.add_argument("--version", action="version", version=f"camlens {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")
    groups = "; ".join(f"'{k}': {v}" for k, v in METHOD_GROUPS.items())

    e = sub.add_parser("explain", help="explain images: overlays, grids, raw maps, summary.json")
    e.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR")
    model_options(e, DEFAULT_MODEL)
    e.add_argument("--method", default="gradcam",
                   help=f"comma-separated method names and groups ({groups}); "
                        "default: gradcam")
    e.add_argument("--layer", default=None, help="layer name (default: picked automatically)")
    e.add_argument("--target", default="top1",
                   help="top1, topK (e.g. top5: one grid with a row per class), a class id "
                        "or a class name (default: top1)")
    e.add_argument("--counterfactual", action="store_true",
                   help="negated gradients: what argues against the class")
    _option_flag(e)
    e.add_argument("--out", default="camlens-out", help="output folder (default: camlens-out)")
    e.add_argument("--save", default="overlay,grid,npy",
                   help="what to write per image: overlay, grid, npy, shards (maps in a few "
                        "large files instead of .npy files), mask (default: overlay,grid,npy)"
                        "; index.jsonl always records the peaks and boxes")
    e.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: threads on this machine (default); ray: a pool of Ray actors "
                        "(camlens[ray]), a local Ray instance or --address's cluster")
    e.add_argument("--address", default=None,
                   help="with --engine ray: the address of a running Ray cluster to join")
    e.add_argument("--actors", type=positive, default=None,
                   help="with --engine ray: the number of model actors (default: one per GPU, "
                        "else one per 4 CPUs)")
    e.add_argument("--restart", action="store_true",
                   help="delete the outputs of the run in --out and start again (by default "
                        "a folder holding the same run is resumed, another run refused)")
    _picture_options(e)
    e.set_defaults(func=cmd_explain)

    d = sub.add_parser("demo", help="explain the photos that ship with scikit-image")
    d.add_argument("--out", default="camlens-demo", help="output folder (default: camlens-demo)")
    d.add_argument("--method", default=",".join(DEMO_METHODS))
    model_options(d, DEFAULT_MODEL)
    _picture_options(d)
    d.set_defaults(func=_cmd_demo, target="top1", layer=None, counterfactual=False, option=None,
                   save="overlay,grid,npy", restart=False, engine="local", address=None,
                   actors=None)

    ev = sub.add_parser("evaluate", help="score methods' maps: a methods x metrics table")
    ev.add_argument("paths", nargs="+", metavar="IMAGES")
    model_options(ev, DEFAULT_MODEL)
    ev.add_argument("--method", default=EVAL_METHODS,
                    help=f"comma-separated method names and groups ({groups}); "
                         f"default: {EVAL_METHODS}")
    ev.add_argument("--metric", default="quick",
                    help=f"comma-separated metrics, 'quick' (default: {', '.join(QUICK_METRICS)}"
                         " and, with --annotations, the box metrics) or 'all' (every metric, "
                         f"ROAD included): {', '.join(EVAL_METRICS)}")
    ev.add_argument("--full", action="store_true",
                    help="the full protocol: --metric all and deletion/insertion steps of "
                         "1 %% of the pixels (default: 5 %%, about 5x fewer forwards)")
    ev.add_argument("--annotations", default=None,
                    help="boxes: COCO JSON, a folder of Pascal VOC XML, or {file: boxes} JSON")
    ev.add_argument("--layer", default=None, help="layer name (default: picked automatically)")
    _option_flag(ev)
    ev.add_argument("--step", type=positive, default=None,
                    help="deletion/insertion: pixels per step (default: 5 %% of the image, "
                         "1 %% with --full)")
    ev.add_argument("--out", default="camlens-eval", help="output folder (default: camlens-eval)")
    ev.add_argument("--max-pixels", type=positive, default=None)
    ev.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                    help="progress bars on stderr (auto: only on a terminal)")
    ev.add_argument("--restart", action="store_true",
                    help="delete the evaluation in --out and start again (by default a "
                         "folder holding the same evaluation is resumed)")
    ev.set_defaults(func=_cmd_evaluate)

    _add_audit_parser(sub)
    _add_labels_parser(sub)
    _add_app_parser(sub)

    m = sub.add_parser("methods", help="list the methods and the method groups")
    m.set_defaults(func=_cmd_methods)
    mo = sub.add_parser("models", help="list the model specs")
    mo.set_defaults(func=_cmd_models)
    return p


def _option_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--option", action="append", metavar="[METHOD.]NAME=VALUE",
                   help="a method's own option, e.g. sscam.num_samples=8 or eps=1e-7 (every "
                        "chosen method that has it); repeat for more")


def _picture_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity (default 0.5)")
    p.add_argument("--colormap", default="jet", help="jet, turbo, viridis, inferno, ...")
    p.add_argument("--threshold", type=float, default=0.2,
                   help="box threshold, fraction of the map's maximum (default 0.2)")
    p.add_argument("--max-pixels", type=positive, default=None,
                   help="refuse images with more pixels (default 64 million)")
    p.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                   help="progress bars on stderr (auto: only on a terminal)")


def _cmd_methods(args: argparse.Namespace) -> int:
    try:
        entries = method_listing()
    except (OSError, SyntaxError):  # no method sources installed: ask the registry
        from .. import methods as _methods  # noqa: F401  (registers camlens's methods)
        from .._catalog import MethodEntry
        from .._registry import available_methods, describe, method_class

        entries = [MethodEntry(n, describe(n), method_class(n).heavy)
                   for n in available_methods()]
    width = max(len(e.name) for e in entries) + len(" [heavy]")
    for e in entries:
        tag = f"{e.name} [heavy]" if e.heavy else e.name
        print(f"{tag:<{width}}  {e.description}")
    print()
    for group, text in METHOD_GROUPS.items():
        print(f"--method {group:<10}  {text}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    for spec, text in MODEL_SPECS:
        print(f"{spec:<22}  {text}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ._evaluate import cmd_evaluate

    return cmd_evaluate(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from skimage import data
    except ImportError:
        raise CliError(
            "the demo photos come from scikit-image: pip install 'camlens[demo]'"
        ) from None
    from ..runner._files import output_folder
    from ..viz import save_image

    out = output_folder(args.out)
    folder = out / "images"
    for name in DEMO_PHOTOS:
        save_image(getattr(data, name)(), folder / f"{name}.png")
    args.paths = [str(folder)]
    code = cmd_explain(args)
    grids = sorted(out.glob("*_grid.png"))
    print(f"explained {len(DEMO_PHOTOS)} photos with {args.method}")
    for g in grids:
        print(f"  {g}")
    print(f"summary: {Path(out) / 'summary.json'}")
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
