"""``phototag tag PATH...``: tag photos with the model shipped with phototag (``--write`` into their keywords)."""

from __future__ import annotations

import argparse

from .library import add_library_options, write_library_keywords
from .options import CLIError, add_decision_options, add_engine_options, add_run_options
from .predict import predict_and_print


def cmd_tag(args: argparse.Namespace) -> int:
    from ..model import load_model
    from ..samples import example_images

    if args.input is not None:
        return predict_and_print(load_model(args.model), args)
    if args.examples:
        args.paths = [str(p) for p in example_images()] + list(args.paths)
        if not args.paths:
            raise CLIError("No example photos found: install scikit-image or scikit-learn, or give PATH arguments.")
    if not args.paths:
        raise CLIError("Give image files or folders to tag (or --examples to tag the bundled sample photos).")
    if args.dry_run and not args.write:
        raise CLIError("--dry-run shows what --write would change; add --write xmp or --write embedded.")
    if args.write:
        if args.engine == "ray":
            raise CLIError("--write runs with the local engine only (it edits files on this machine).")
        return write_library_keywords(load_model(args.model), args)
    return predict_and_print(load_model(args.model), args)


def register(subparsers) -> None:
    p = subparsers.add_parser("tag", help="tag images with the default model shipped with phototag")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument(
        "--examples", action="store_true", help="also tag the sample photos bundled with scikit-image / scikit-learn"
    )
    p.add_argument("--model", default=None, help="use this model directory instead of the default")
    add_decision_options(p)
    add_library_options(p, required=False)
    add_run_options(p)
    add_engine_options(p, parts=True)
    p.set_defaults(func=cmd_tag)
