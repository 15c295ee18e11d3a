"""Photo-library keywords: ``phototag tag PATH... --write xmp|embedded`` and ``phototag untag PATH...``.

The library side is :mod:`phototag.library` (incremental tagging) and :mod:`phototag.xmp`; this module prints what
changed (or would, with ``--dry-run``) and the summary: written / unchanged / skipped / failed.
"""

from __future__ import annotations

import argparse
import sys

from ..xmp import SIDECAR_NAMINGS, WRITE_MODES
from .options import (
    EXIT_OK,
    EXIT_PARTIAL,
    CLIError,
    find_image_paths,
    resolved_rules,
    run_options,
    use_rule_thresholds,
)
from .output import finish_predictions


def _print_changes(changes, *, dry_run: bool, verb: str) -> None:
    prefix = "would change " if dry_run else ""
    for change in changes:
        if change.changed:
            print(prefix + change.describe())
    n_changed = sum(1 for c in changes if c.changed)
    what = "would be changed" if dry_run else verb
    print(f"{n_changed} of {len(changes)} photo(s) {what}" + ("  (dry run: nothing written)" if dry_run else ""))


def write_library_keywords(model, args: argparse.Namespace) -> int:
    """The ``tag --write`` branch: tag what needs it (see :func:`phototag.library.tag_library`); the exit code."""
    from ..images import describe_failures
    from ..library import tag_library

    if args.examples:
        raise CLIError("--write changes the photos' metadata; give your own PATHs, not --examples.")
    use_rule_thresholds(model, args)
    try:
        summary = tag_library(
            model,
            args.paths,
            mode=args.write,
            naming=args.sidecar,
            parent=args.keyword_parent,
            catalog=args.catalog,
            untagged_only=args.untagged_only,
            force=args.force,
            dry_run=args.dry_run,
            top_k=args.top_k,
            threshold=args.threshold,
            balanced=args.balanced,
            checkpoint_every=args.checkpoint_every,
            options=run_options(args),
            finish=lambda predictions: finish_predictions(predictions, args),
            finish_key=f"rules={resolved_rules(args)!r} lang={getattr(args, 'lang', None)}",
        )
    except FileNotFoundError as err:
        raise CLIError(str(err)) from None
    _print_changes(summary.changes, dry_run=args.dry_run, verb="tagged")
    print(("would be: " if args.dry_run else "") + summary.describe(), file=sys.stderr)
    if summary.scan is not None and summary.scan.skipped:
        print(summary.scan.describe_skipped(limit=10), file=sys.stderr)
    if summary.failed:
        print(describe_failures(summary.failed, limit=50), file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def cmd_untag(args: argparse.Namespace) -> int:
    from ..catalog import TagCatalog
    from ..images import describe_failures
    from ..xmp import remove_keywords

    paths = find_image_paths(args.paths)
    changes, failures = remove_keywords(paths, mode=args.write, naming=args.sidecar, dry_run=args.dry_run)
    if not args.dry_run:  # so the next `tag --write` writes them again
        with TagCatalog.open(args.catalog) as book:
            for change in changes:
                book.forget(change.image, args.write)
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
    parser.add_argument(
        "--catalog",
        default=None,
        metavar="PATH",
        help="the catalogue of photos already tagged (SQLite; default: catalog.sqlite in the cache folder)",
    )
    if required:  # untag
        return
    parser.add_argument(
        "--untagged-only", action="store_true", help="with --write: only photos that carry none of your keywords"
    )
    parser.add_argument(
        "--force", action="store_true", help="with --write: re-tag every photo, even those the catalogue says are done"
    )
    parser.add_argument(
        "--keyword-parent",
        default=None,
        metavar="PATH",
        help="with --write: put phototag's keywords under this parent in the keyword tree "
        "(lr:hierarchicalSubject / digiKam:TagsList), e.g. 'auto' or 'auto|scene'",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=64,
        metavar="N",
        help="with --write: score, write and record N photos at a time (an interrupted run keeps what is done)",
    )


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "untag",
        help="remove the keywords phototag added (XMP sidecars or embedded); your own keywords stay",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="photos or folders")
    add_library_options(p, required=True)
    p.set_defaults(func=cmd_untag)
