"""The parser's pieces that import nothing heavy: ``camlens --help``, the listings and usage
errors never import torch (the commands import it when they run)."""

from __future__ import annotations

import argparse
import logging
import sys

from .._catalog import (  # noqa: F401  (METHOD_GROUPS and the metrics re-exported)
    EVAL_METRICS,
    METHOD_GROUPS,
    PREPROCESSING,
    QUICK_METRICS,
)
from .._errors import UsageError

CliError = UsageError  # a usage problem: printed as one line, exit code 2


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def model_options(p: argparse.ArgumentParser, default_model: str, batches: bool = True) -> None:
    """--model, --weights, --trust-model, --preprocess, --device, --threads (and
    --batch-size, for the commands that walk many images)."""
    p.add_argument("--model", default=default_model,
                   help=f"model spec (default: {default_model})")
    p.add_argument("--weights", default=None, help="state dict file for the architecture")
    p.add_argument("--trust-model", action="store_true",
                   help="allow loading a fully pickled model file, or a Keras file's Python "
                        "lambdas (runs code from the file)")
    p.add_argument("--preprocess", default=None, choices=sorted(PREPROCESSING),
                   help="the model's pixel convention (default: the model's own; Keras files: "
                        "raw 0..255; caffe = BGR minus the ImageNet mean, as Keras's VGG16)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--threads", type=positive, default=None, metavar="N",
                   help="threads torch runs the model on (default: torch's own choice, one "
                        "per core); on a shared machine, fewer leave cores to the other work")
    if batches:
        p.add_argument("--batch-size", type=positive, default=8)


def say(text: str) -> None:
    """One message on stderr, without breaking a progress bar that is showing."""
    from tqdm import tqdm

    tqdm.write(f"camlens: {text}", file=sys.stderr)


class _SayHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        say(record.getMessage())


def library_notes() -> None:
    """The library's warnings (logger ``camlens``, e.g. the pixels a Keras file is fed)
    printed as the command line's own lines, once each."""
    logger = logging.getLogger("camlens")
    if not any(isinstance(h, _SayHandler) for h in logger.handlers):
        logger.addHandler(_SayHandler(logging.WARNING))
