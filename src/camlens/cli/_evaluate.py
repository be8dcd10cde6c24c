"""``camlens evaluate``: how faithful each method's maps are, as a methods x metrics table
(:mod:`camlens.evaluation` for the command line)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._args import say

if TYPE_CHECKING:
    from ..evaluation import EvaluationSpec


def evaluate_spec(args: argparse.Namespace) -> EvaluationSpec:
    """The evaluation ``camlens evaluate`` was asked for."""
    from ..evaluation import EvaluationSpec

    return EvaluationSpec(
        paths=list(args.paths), out=args.out, model=args.model, method=args.method,
        metric=args.metric, full=args.full, annotations=args.annotations, layer=args.layer,
        step=args.step, options=list(args.option or ()), weights=args.weights,
        trust_model=args.trust_model, preprocess=args.preprocess, batch_size=args.batch_size,
        device=args.device, max_pixels=args.max_pixels, progress=args.progress,
        restart=args.restart,
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run it; the notes are printed on stderr, the table on stdout. Exit code 1 when an
    image or a method failed or a metric scored nothing."""
    from ..evaluation import evaluate_files

    result = evaluate_files(evaluate_spec(args), say)
    print(result.table)
    return result.exit_code
