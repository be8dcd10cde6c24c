"""``camlens labels``: pseudo-label masks (VOC PNGs) and weak boxes (COCO JSON) for images."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .._catalog import DEFAULT_MODEL
from ._args import CliError, model_options, positive, say

if TYPE_CHECKING:
    from ..labels import LabelsSpec


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``camlens labels`` on the ``camlens`` command's sub-parsers."""
    p = sub.add_parser(
        "labels",
        help="weak labels: pseudo-label masks (VOC PNGs) and weak boxes (COCO JSON)",
        description="For every image: a pseudo-label mask (single-channel PNG, Pascal VOC "
                    "convention: 0 background, class position in --classes + 1, 255 ignore, "
                    "VOC colours) and weak boxes (one per connected component, COCO JSON), "
                    "from class activation maps of the classes the image has (from "
                    "--annotations, else from the model's prediction).",
    )
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR")
    model_options(p, DEFAULT_MODEL)
    p.add_argument("--out", default="camlens-labels",
                   help="output folder (default: camlens-labels)")
    p.add_argument("--method", default="gradcam",
                   help="method(s), comma-separated, one pass per batch (default: gradcam); "
                        "each gets its own sub-folder")
    p.add_argument("--layer", default=None, help="layer name (default: picked automatically)")
    p.add_argument("--option", action="append", metavar="[METHOD.]NAME=VALUE",
                   help="a method's own option; repeat for more")
    p.add_argument("--classes", default=None,
                   help="the classes to label, names or indices, comma-separated; mask value "
                        "v is the v-th of them (default: all the model's classes, at most 254)")
    p.add_argument("--annotations", default=None,
                   help="which classes each image has: COCO JSON, a folder of VOC XML, or "
                        "JSON {\"cat.jpg\": {\"classes\": [\"tabby\"]}} (default: the model's "
                        "prediction)")
    p.add_argument("--multilabel", action="store_true",
                   help="without --annotations: every class whose sigmoid is above 0.5 "
                        "(default: the top-1 class, when it is one of --classes)")
    p.add_argument("--bg-threshold", type=_fraction, default=0.15,
                   help="background score against the maps divided by their maximum "
                        "(default 0.15)")
    p.add_argument("--ignore-band", default=None, metavar="LOW,HIGH",
                   help="two thresholds instead: class above HIGH, background at or below "
                        "LOW, 255 (ignore) between")
    p.add_argument("--box-threshold", type=_fraction, default=0.2,
                   help="weak boxes: components at or above this fraction of the map's "
                        "maximum (default 0.2)")
    p.add_argument("--true-masks", default=None, metavar="DIR",
                   help="a folder of true VOC PNG masks named like the images: also score "
                        "the pseudo-labels (mIoU)")
    p.add_argument("--max-pixels", type=positive, default=None,
                   help="refuse images with more pixels (default 64 million)")
    p.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                   help="a progress bar on stderr (auto: only on a terminal)")
    p.set_defaults(func=cmd_labels)


def labels_spec(args: argparse.Namespace) -> LabelsSpec:
    """The weak labels ``camlens labels`` was asked for."""
    from ..labels import LabelsSpec

    return LabelsSpec(
        paths=list(args.paths), out=args.out, model=args.model, method=args.method,
        layer=args.layer, options=list(args.option or ()), classes=args.classes,
        annotations=args.annotations, multilabel=args.multilabel,
        bg_threshold=args.bg_threshold, ignore_band=args.ignore_band,
        box_threshold=args.box_threshold, true_masks=args.true_masks,
        weights=args.weights, trust_model=args.trust_model, preprocess=args.preprocess,
        batch_size=args.batch_size, device=args.device, max_pixels=args.max_pixels,
        progress=args.progress,
    )


def cmd_labels(args: argparse.Namespace) -> int:
    """Run ``camlens labels``: exit code 0, 1 when an image or a named method failed (the
    others are still written), 2 for a usage error."""
    from ..labels import label_folder

    try:
        result = label_folder(labels_spec(args), say)
    except ValueError as err:
        raise CliError(str(err)) from None
    return result.exit_code
