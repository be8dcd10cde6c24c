"""``camlens explain``: the dataset runner (:mod:`camlens.runner`) for the command line."""

from __future__ import annotations

import argparse


def cmd_explain(args: argparse.Namespace) -> int:
    from ..runner._local import run_explain

    return run_explain(args)
