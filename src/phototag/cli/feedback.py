"""``phototag feedback summary|export DB``: the web page's accept / reject clicks (see :mod:`phototag.feedback`)."""

from __future__ import annotations

import argparse
import json

from .options import EXIT_OK, CLIError


def cmd_feedback(args: argparse.Namespace) -> int:
    from ..feedback import FeedbackStore, default_feedback_path, existing_feedback_db, feedback_to_dataset

    db = args.db or default_feedback_path()
    if args.action == "summary":
        with FeedbackStore(existing_feedback_db(db)) as store:
            print(json.dumps({"db": str(db), **store.summary()}))
        return EXIT_OK
    if args.out is None:
        raise CLIError("feedback export needs --out DATASET_DIR (the dataset directory to write).")
    dataset, report = feedback_to_dataset(db, args.out)
    print(
        f"Wrote dataset '{dataset.name}' to {args.out}: {report['exported']} photo(s) with "
        f"{report['accepted_tags']} accepted tag(s); {report['skipped_no_accepted']} photo(s) without an accepted "
        f"tag left out. Learn from it: phototag update MODEL_DIR {args.out}  (or phototag train {args.out})"
    )
    return EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "feedback", help="summarise the web page's feedback database, or export it as a training dataset"
    )
    p.add_argument("action", choices=("summary", "export"))
    p.add_argument(
        "db", nargs="?", default=None, help="feedback database (default: the one `phototag serve` uses by default)"
    )
    p.add_argument("--out", default=None, help="export: the dataset directory to write")
    p.set_defaults(func=cmd_feedback)
