"""``phototag update MODEL_DIR [DATASET_DIR] [--feedback DB]``: teach a model new images and new tags online."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from .options import EXIT_OK, CLIError

log = logging.getLogger("phototag")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "update",
        help="teach a trained model new images and new tags without retraining (methods: drel, knn)",
        description=(
            "Learn the images of DATASET_DIR (from `phototag import`) and any tags the model does not know yet. "
            "The model is replaced atomically in place unless --out is given."
        ),
    )
    p.add_argument("model", metavar="MODEL_DIR")
    p.add_argument("dataset", metavar="DATASET_DIR", nargs="?", help="dataset directory of new photos")
    p.add_argument(
        "--feedback",
        metavar="DB",
        default=None,
        help="learn the tags accepted on the web page (the SQLite file of `phototag serve --feedback-db`)",
    )
    p.add_argument("--out", default=None, metavar="NEW_MODEL_DIR", help="write the updated model here instead")
    p.add_argument(
        "--splits", nargs="+", default=["train", "val"], choices=("train", "val", "test"), help="records to learn from"
    )
    p.add_argument("--min-count", type=int, default=1, help="images a new tag must occur on to be learned")
    p.add_argument("--cache-dir", default=None, help="feature cache root (default ~/.cache/phototag)")
    p.set_defaults(func=cmd_update)


def cmd_update(args: argparse.Namespace) -> int:
    from ..model import TagModel
    from ..online import update_from_dataset

    if args.dataset is None and args.feedback is None:
        raise CLIError("Give DATASET_DIR, --feedback DB, or both: what should the model learn from?")
    model = TagModel.load(args.model)
    n_tags_before = len(model.vocab)
    sources = [args.dataset] if args.dataset is not None else []
    with tempfile.TemporaryDirectory(prefix="phototag-feedback-") as tmp:
        if args.feedback is not None:
            from ..feedback import feedback_to_dataset

            if not Path(args.feedback).is_file():
                raise CLIError(f"Feedback database '{args.feedback}' does not exist (phototag serve --feedback-db).")
            # The export holds the stored photos; it must live until the update has read them.
            feedback_dataset, report = feedback_to_dataset(args.feedback, Path(tmp) / "feedback")
            log.info("feedback: %s", report)
            sources.append(feedback_dataset)
        for source in sources:
            update_from_dataset(
                model,
                source,
                splits=args.splits,
                cache_dir=args.cache_dir,
                min_new_tag_count=args.min_count,
                progress=not args.quiet,
            )
    out = args.out or args.model
    model.save(out)
    last = model.info["updates"][-1]
    new = last["new_tags"]
    shown = ", ".join(new[:20]) + (f", ... ({len(new) - 20} more)" if len(new) > 20 else "")
    print(
        f"Updated {model.method.name} model with {last['n_images']} images; {len(model.vocab)} tags "
        f"({len(model.vocab) - n_tags_before} new{': ' + shown if new else ''}); saved to {out}"
    )
    return EXIT_OK
