"""``camlens audit``: where each class's maps rest (on the object or on the background), as a
report; a thin call of :func:`camlens.audit.audit`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .._catalog import DEFAULT_MODEL
from ._args import CliError, model_options, positive

if TYPE_CHECKING:
    from ..audit import AuditSpec

DEFAULT_OUT = "camlens-audit"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``camlens audit`` on the ``camlens`` command's sub-parsers."""
    a = sub.add_parser(
        "audit", help="bias audit: per class, map energy on the object or off it, the "
                      "worst images; report.md/.html, audit.csv/.json",
        description="Per class: the share of map energy on the annotated object and off it, "
                    "the pointing game, accuracy and the images whose maps rest most on the "
                    "background; classes far below the others are flagged. Without "
                    "annotations: border energy and concentration (weaker evidence).")
    a.add_argument("paths", nargs="+", metavar="IMAGE_OR_DIR")
    model_options(a, DEFAULT_MODEL)
    a.add_argument("--method", default="gradcam",
                   help="one method (default: gradcam); maps explain the predicted class")
    a.add_argument("--layer", default=None, help="layer name (default: picked automatically)")
    a.add_argument("--annotations", default=None, metavar="FILE|DIR",
                   help="object boxes, keyed by file name: COCO JSON, a folder of Pascal VOC "
                        "XML, or {file: {\"boxes\": [...], \"label\": CLASS}} JSON")
    a.add_argument("--masks", default=None, metavar="DIR",
                   help="segmentation masks, keyed by file stem: single-channel PNGs with "
                        "class index + 1 on the object, 0 background, 255 ignore")
    a.add_argument("--truth", default=None, metavar="FILE|folders",
                   help="true classes: a JSON {file: class} or CSV file,class file, or "
                        "'folders' (each image's folder is named after its class); default: "
                        "the annotations' label, or the one class of the image's mask")
    a.add_argument("--min-images", type=positive, default=10,
                   help="annotated images a class needs to be compared (default 10)")
    a.add_argument("--z", type=float, default=3.0,
                   help="flag a class whose robust z-score is <= -Z (default 3)")
    a.add_argument("--ratio", type=float, default=0.8,
                   help="... and whose energy on the object is <= RATIO x the other "
                        "classes' median (default 0.8)")
    a.add_argument("--worst", type=int, default=8,
                   help="pictures of the worst images per flagged class (default 8)")
    a.add_argument("--baseline", default=None, metavar="DIR",
                   help="an earlier audit's folder: accuracy and energy per class against it")
    a.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    a.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                   help="progress bars on stderr (auto: only on a terminal)")
    a.add_argument("--restart", action="store_true",
                   help="explain every image again (by default the audit's run is resumed)")
    a.set_defaults(func=cmd_audit)


def audit_spec(args: argparse.Namespace) -> AuditSpec:
    """The audit ``camlens audit`` was asked for."""
    from pathlib import Path

    from ..audit import AuditSpec
    from ..runner._setup import path_items

    return AuditSpec(
        paths=path_items(args.paths), out=Path(args.out), model=args.model,
        weights=args.weights, trust_model=args.trust_model, preprocess=args.preprocess,
        method=args.method, layer=args.layer, annotations=args.annotations,
        masks=args.masks, truth=args.truth, min_images=args.min_images, z=args.z,
        ratio=args.ratio, worst=args.worst, baseline=args.baseline,
        batch_size=args.batch_size, device=args.device, progress=args.progress,
        restart=args.restart,
    )


def cmd_audit(args: argparse.Namespace) -> int:
    """Run the audit; print the flagged classes and the per-class table. Exit code 1 when
    an image could not be used, 0 otherwise (a flag is a finding, not an error)."""
    from ..audit import audit_folder
    from ._args import say

    if args.worst < 0:
        raise CliError(f"--worst must be 0 or more, got {args.worst}")
    try:
        result = audit_folder(audit_spec(args), message=say)
    except (ValueError, TypeError, ImportError) as err:
        raise CliError(str(err)) from None
    print(result.table())
    found = [(r, "") for r in result.rows() if r.verdict.flagged]
    if result.grouping == "true":
        found += [(r, " (images predicted as it)") for r in result.by_predicted
                  if r.verdict.flagged]
    for r, how in found:
        name = str(r.cls) if r.name == str(r.cls) else f"{r.cls} ({r.name})"
        say(f"flagged class {name}{how}: {100 * (r.energy_on or 0):.1f} % of the map energy "
            f"on the object against {100 * (r.verdict.reference or 0):.1f} % for the other "
            "classes")
    if not found:
        say("no class flagged" if result.annotated else
            "no object annotations: nothing can be flagged; see the weaker evidence in the "
            "report")
    rows = {r.cls: r for r in result.rows()}
    for c in result.weak_flagged:
        say(f"class {c} ({rows[c].name}): maps put far more energy on the image border than "
            "other classes' (weaker evidence, no annotations needed)")
    say(f"audited {result.images} image(s); report: {result.files['report_md']} and "
        f"{result.files['report_html']}"
        + (f"; {result.failed} image(s) could not be used" if result.failed else ""))
    return 1 if result.failed else 0
