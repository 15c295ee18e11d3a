"""``phototag evaluate MODEL_DIR DATASET``: every metric of a model on a dataset split."""

from __future__ import annotations

import argparse
import json

from .options import EXIT_OK, add_balanced_option, add_run_options, run_options
from .output import write_output
from .predict import add_combiner_option, load_with_combiner


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..pipeline import evaluate

    result = evaluate(
        load_with_combiner(args.model, args.combiner),
        args.dataset,
        split=args.split,
        k=args.k,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
        balanced=args.balanced,
        options=run_options(args),
        against=args.against,
        all_words=args.all_words,
    )
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if args.json:
        write_output(json.dumps(result, indent=2) + "\n", args.json)
    return EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="all metrics of a model on a dataset split")
    p.add_argument("model")
    p.add_argument("dataset")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--k", type=int, default=5, help="tags per image for the per-tag protocol (Corel5k: 5)")
    p.add_argument(
        "--against",
        choices=("labels", "labels-r1"),
        default=None,
        help="score on the dataset's label lists (MIRFLICKR: 24 potential / 14 relevant), each label by the "
        "model's tag of the same name",
    )
    p.add_argument(
        "--all-words",
        action="store_true",
        help="rank every word of the model; by default only the words the dataset's vocabulary knows are scored and "
        "compete for each photo's k places (as in a benchmark's protocol)",
    )
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    add_run_options(p)
    add_combiner_option(p)
    add_balanced_option(p)
    p.set_defaults(func=cmd_evaluate)
