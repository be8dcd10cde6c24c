"""``camlens explain``: the dataset runner (:mod:`camlens.runner`) for the command line."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._args import say

if TYPE_CHECKING:
    from ..runner import RunSpec


def explain_spec(args: argparse.Namespace) -> RunSpec:
    """The run ``camlens explain`` (or ``camlens demo``) was asked for."""
    from ..runner import RunSpec

    return RunSpec(
        paths=list(args.paths), out=args.out, model=args.model, method=args.method,
        layer=args.layer, target=args.target, counterfactual=args.counterfactual,
        save=args.save, options=list(args.option or ()), weights=args.weights,
        trust_model=args.trust_model, preprocess=args.preprocess,
        batch_size=args.batch_size, device=args.device, alpha=args.alpha,
        colormap=args.colormap, threshold=args.threshold, max_pixels=args.max_pixels,
        progress=args.progress, restart=args.restart, engine=args.engine,
        address=args.address, actors=args.actors, threads=getattr(args, "threads", None),
    )


def cmd_explain(args: argparse.Namespace) -> int:
    """Run it; the notes are printed, the exit code is the run's."""
    from ..runner._explain import explain_files

    return explain_files(explain_spec(args), say).exit_code
