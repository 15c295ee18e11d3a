"""Photo-library keywords: ``phototag tag PATH... --write xmp|embedded`` and ``phototag untag PATH...``.

The library side is :mod:`phototag.xmp`; this module prints what changed (or would, with ``--dry-run``).
"""

from __future__ import annotations

import argparse
import sys

from ..xmp import SIDECAR_NAMINGS, WRITE_MODES


def _print_changes(changes, *, dry_run: bool, verb: str) -> None:
    prefix = "would change " if dry_run else ""
    for change in changes:
        if change.changed:
            print(prefix + change.describe())
    n_changed = sum(1 for c in changes if c.changed)
    what = "would be changed" if dry_run else verb
    print(f"{n_changed} of {len(changes)} photo(s) {what}" + ("  (dry run: nothing written)" if dry_run else ""))


def write_library_keywords(model, args: argparse.Namespace) -> int:
    """The ``tag --write`` branch: predict, then write the tags as keywords; returns the exit code."""
    from ..cli import EXIT_OK, EXIT_PARTIAL, CLIError, find_image_paths, finish_predictions
    from ..images import describe_failures
    from ..xmp import model_identity, write_keywords

    if args.examples:
        raise CLIError("--write changes the photos' metadata; give your own PATHs, not --examples.")
    paths = find_image_paths(args.paths)
    predictions, unreadable = model.predict(
        paths, top_k=args.top_k, threshold=args.threshold, balanced=args.balanced, progress=not args.quiet
    )
    predictions = finish_predictions(predictions, args)
    changes, failures = write_keywords(
        predictions, mode=args.write, model=model_identity(model), naming=args.sidecar, dry_run=args.dry_run
    )
    _print_changes(changes, dry_run=args.dry_run, verb="tagged")
    problems = list(unreadable) + failures
    if problems:
        print(describe_failures(problems, limit=50), file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def cmd_untag(args: argparse.Namespace) -> int:
    from ..cli import EXIT_OK, EXIT_PARTIAL, find_image_paths
    from ..images import describe_failures
    from ..xmp import remove_keywords

    paths = find_image_paths(args.paths)
    changes, failures = remove_keywords(paths, mode=args.write, naming=args.sidecar, dry_run=args.dry_run)
    _print_changes(changes, dry_run=args.dry_run, verb="untagged")
    if failures:
        print(describe_failures(failures, limit=50), file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def add_library_options(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """``--write``, ``--sidecar``, ``--dry-run`` (shared by ``tag`` and ``untag``)."""
    parser.add_argument(
        "--write",
        choices=WRITE_MODES,
        default="xmp" if required else None,
        help="write the tags as keywords: 'xmp' = sidecar files (photo.jpg.xmp), 'embedded' = into the image's own "
        "XMP/IPTC (needs exiftool); your own keywords are kept"
        + (" (untag: where to remove them from, default xmp)" if required else ""),
    )
    parser.add_argument(
        "--sidecar",
        choices=SIDECAR_NAMINGS,
        default="auto",
        help="sidecar name: full = photo.jpg.xmp (digiKam, darktable), stem = photo.xmp (Lightroom), "
        "auto = the existing one, else full",
    )
    parser.add_argument("--dry-run", action="store_true", help="show what would change, write nothing")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "untag",
        help="remove the keywords phototag added (XMP sidecars or embedded); your own keywords stay",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="photos or folders")
    add_library_options(p, required=True)
    p.set_defaults(func=cmd_untag)
