"""``phototag refine DATASET_DIR --out REFINED_DIR``: learn from noisy user tags and write the refined dataset."""

from __future__ import annotations

import argparse
import json

from ..settings import method_settings
from .options import EXIT_OK, EXIT_PARTIAL
from .output import write_output


def cmd_refine(args: argparse.Namespace) -> int:
    from ..refinement import refine_dataset

    config = method_settings(args.config, args.set)
    result = refine_dataset(
        args.dataset,
        args.out,
        method=args.method,
        config=config,
        backbone=args.backbone,
        cache_dir=args.cache_dir,
        threshold=args.threshold,
        max_tags=None if args.max_tags == 0 else args.max_tags,
        progress=not args.quiet,
    )
    r = result.report
    print(
        f"Refined the user tags of {r['records_refined']} of {r['records_in']} records with {r['method']} "
        f"({r['vocabulary']} tags) and wrote {r['records_out']} records to {args.out}\n"
        f"user tags in: {r['user_tags']} = kept {r['kept']} + removed {r['removed']} + passed through "
        f"{r['passed_through']} (outside the vocabulary)\n"
        f"tags out:     {r['tags_out']} = kept {r['kept']} + added {r['added']} + passed through {r['passed_through']}"
    )
    if r["duplicates_or_empty"]:
        print(f"{r['duplicates_or_empty']} raw user tags were duplicates or empty after normalisation.")
    if args.report:
        write_output(json.dumps(r, indent=2, ensure_ascii=False, default=str) + "\n", args.report)
    if r["records_skipped"]:
        print(f"{r['records_skipped']} records were not refined (unreadable images; kept their user tags).")
        return EXIT_PARTIAL
    return EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "refine",
        help="refine a dataset's noisy user tags; write the dataset with the refined tags as its targets",
        description=(
            "Learn from the records' noisy user_tags (method 'refine' by default, or a baseline) and write the "
            "dataset with tags = refined tags; user_tags stay, the previous tags move to meta.original_tags, and "
            "meta.refine lists kept/added/removed tags with their scores. Counts in = counts out (see the report)."
        ),
    )
    p.add_argument("dataset", help="dataset directory (from `phototag import`) whose user_tags to refine")
    p.add_argument("--out", required=True, help="refined dataset directory to write (atomically)")
    p.add_argument("--method", default="refine", help="registered method that learns from the noisy tags")
    p.add_argument("--config", default=None, help="YAML file of method settings")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method setting (repeatable)")
    p.add_argument("--threshold", type=float, default=0.5, help="keep tags whose refined score is at least T")
    p.add_argument("--max-tags", type=int, default=15, help="at most N refined tags per image (0 = no cap)")
    p.add_argument("--backbone", default=None, help="timm model for image features (default efficientnet_lite0)")
    p.add_argument("--cache-dir", default=None, help="feature cache root (default ~/.cache/phototag)")
    p.add_argument("--report", default=None, help="also write the refinement report (JSON) to this file")
    p.set_defaults(func=cmd_refine)
