"""``phototag predict MODEL_DIR PATH...``: tag photos with a trained model (and the printing ``tag`` shares)."""

from __future__ import annotations

import argparse
import sys

from .options import (
    EXIT_OK,
    EXIT_PARTIAL,
    CLIError,
    add_decision_options,
    add_engine_options,
    add_run_options,
    cluster_options,
    find_image_paths,
    run_options,
    use_rule_thresholds,
)
from .output import finish_predictions, format_predictions, write_output


def predict_and_print(model, args: argparse.Namespace) -> int:
    """Tag ``args.paths`` (or the rows of ``--input``) with ``model`` and print them; the exit code."""
    from ..images import describe_failures

    use_rule_thresholds(model, args)
    on_ray = getattr(args, "engine", "local") == "ray"
    out = getattr(args, "out", None)
    if out is not None and not on_ray:
        raise CLIError("--out DIR (Parquet parts) goes with --engine ray; use --output FILE for one file.")
    if getattr(args, "input", None) is not None:
        if on_ray:
            raise CLIError("--input CSV is read by the local engine only; give PATHs with --engine ray.")
        return _predict_batch_and_print(model, args)
    if not args.paths:
        raise CLIError("Give image files or folders to tag, or --input CSV (columns file,user_tags).")
    if out is not None and args.output is not None:
        raise CLIError("Give --out DIR (Parquet parts) or --output FILE, not both.")
    paths = find_image_paths(args.paths)
    given_tags = args.user_tags.split() if getattr(args, "user_tags", None) is not None else None
    decision = {"top_k": args.top_k, "threshold": args.threshold, "balanced": args.balanced}
    if on_ray:
        from ..distributed import predict_on_ray

        predictions, failures = predict_on_ray(
            model,
            paths,
            **decision,
            user_tags=given_tags,
            options=run_options(args),
            cluster=cluster_options(args),
            out=out,
        )
    else:
        user_tags = None if given_tags is None else [given_tags] * len(paths)
        predictions, failures = model.predict(paths, **decision, user_tags=user_tags, options=run_options(args))
    if out is None:
        predictions = finish_predictions(predictions, args)
        write_output(format_predictions(predictions, args.format), args.output)
    else:
        print(f"Tagged {len(paths) - len(failures)} of {len(paths)} photos into Parquet parts in {out}")
    if failures:
        print(describe_failures(failures, limit=50), file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _predict_batch_and_print(model, args: argparse.Namespace) -> int:
    """Predict for the rows of a batch-input CSV (see :mod:`phototag.batch_input`)."""
    from ..batch_input import read_batch_input
    from ..images import describe_failures

    if args.paths or getattr(args, "user_tags", None) is not None:
        raise CLIError("--input reads the images and user tags from the CSV; give no PATH or --user-tags with it.")
    reads_images = any(key in model.data_keys for key in ("features", "images"))
    batch = read_batch_input(args.input, need_files=reads_images, need_user_tags="user_tags" in model.data_keys)
    # A model that reads no image only uses the names to label its output.
    scored = model.score_images(batch.paths or batch.names, user_tags=batch.user_tags, options=run_options(args))
    failed = {path for path, _ in scored.failures}
    names = [name for name, path in zip(batch.names, batch.paths or batch.names, strict=True) if path not in failed]
    predictions = model.format_predictions(
        names, scored.scores, top_k=args.top_k, threshold=args.threshold, balanced=args.balanced
    )
    predictions = finish_predictions(predictions, args)
    write_output(format_predictions(predictions, args.format), args.output)
    if scored.failures:
        print(describe_failures(scored.failures, limit=50), file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def load_with_combiner(path: str | None, combiner: str | None):
    """Load a model; ``combiner`` switches an ensemble's combiner (other methods refuse it)."""
    from ..methods.ensemble import EnsembleTagger
    from ..model import load_model

    model = load_model(path)
    if combiner is not None:
        if not isinstance(model.method, EnsembleTagger):
            raise CLIError(f"--combiner applies to ensemble models; this model's method is '{model.method.name}'.")
        model.method.set_combiner(combiner)
    return model


def add_combiner_option(parser: argparse.ArgumentParser) -> None:
    # No argparse choices: they would import the ensemble module (and scipy) for every command; an unknown name
    # is refused by EnsembleTagger.set_combiner, which lists the valid ones.
    parser.add_argument(
        "--combiner",
        default=None,
        metavar="NAME",
        help="ensemble models: how members' scores combine (average, vote, union, intersection, stacker)",
    )


def cmd_predict(args: argparse.Namespace) -> int:
    return predict_and_print(load_with_combiner(args.model, args.combiner), args)


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="tag images with a trained model")
    p.add_argument("model")
    p.add_argument("paths", nargs="*", metavar="PATH")
    add_decision_options(p)
    add_combiner_option(p)
    add_run_options(p)
    add_engine_options(p, parts=True)
    p.set_defaults(func=cmd_predict)
