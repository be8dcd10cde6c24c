"""``camlens app``: a local web page to explore a model; a thin call of
:func:`camlens.app.build`."""

from __future__ import annotations

import argparse
import sys

from .._catalog import DEFAULT_MODEL
from ._args import CliError, model_options, positive

DEFAULT_PORT = 7860
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``camlens app`` on the ``camlens`` command's sub-parsers."""
    a = sub.add_parser(
        "app", help="a web page to explore a model: upload photos, pick a class, compare "
                    "methods, see faithfulness curves (camlens[app])",
        description="Serve a page on this machine: drop photos (or pick the samples), see the "
                    "top classes, click one to explain it, compare methods side by side, "
                    "change opacity and colormap, read each map's box and its deletion and "
                    "insertion curves, download the maps, overlays and grid. The model is "
                    "loaded once; requests run one after another.")
    model_options(a, DEFAULT_MODEL, batches=False)  # one request at a time
    a.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 "
                        "lets anyone on the network use the page, without a login)")
    a.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0 takes a free one)")
    a.add_argument("--max-upload-mb", type=positive, default=20,
                   help="largest photo upload in MB (default 20)")
    a.add_argument("--max-pixels", type=positive, default=40_000_000,
                   help="largest photo in pixels, width x height (default 40 million)")
    a.add_argument("--open", action="store_true",
                   help="open the page in this machine's web browser")
    a.set_defaults(func=cmd_app)


def cmd_app(args: argparse.Namespace) -> int:
    """Load the model once and serve the page until Ctrl-C."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise CliError("camlens app needs Pillow: pip install 'camlens[app]'") from None
    from ..app import Limits, build

    if not 0 <= args.port <= 65535:
        raise CliError(f"--port {args.port}: must be in 0..65535 (0 takes a free port)")
    limits = Limits(upload_bytes=args.max_upload_mb * 2**20, pixels=args.max_pixels)
    try:
        app = build(args.model, args.weights, preprocess=args.preprocess,
                    trust=args.trust_model, device=args.device, host=args.host,
                    port=args.port, limits=limits)
    except ImportError as err:
        raise CliError(f"{err} (everything the page needs: pip install 'camlens[app]')"
                       ) from None
    except (ValueError, TypeError, OSError) as err:
        raise CliError(str(err)) from None
    if args.host not in LOOPBACK:
        print(f"camlens app: serving on {args.host}: anyone who can reach this machine can "
              "use the page (there is no login); use --host 127.0.0.1 to keep it local",
              file=sys.stderr)
    print(f"camlens app: {args.model} at {app.url} (Ctrl-C to stop)", file=sys.stderr,
          flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(app.url)
    try:
        app.serve()
    except KeyboardInterrupt:
        print("camlens app: stopped", file=sys.stderr)
    return 0
