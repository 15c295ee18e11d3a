"""The ``phototag`` command line: thin commands over the library (``main(argv)`` is callable from tests).

Exit codes: 0 success; 1 the command finished but some images could not be read (each reported on stderr);
2 bad input or usage (one-line error on stderr, nothing half-written); 3 an internal error (a bug: traceback shown).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .errors import PhototagError
from .fileio import atomic_write_text

log = logging.getLogger("phototag")

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR, EXIT_BUG = 0, 1, 2, 3


class CLIError(PhototagError):
    """A user-facing error of the command line: printed as one line, exit code 2."""


def example_images() -> list[Path]:
    """Sample photos bundled with installed packages (see :func:`phototag.samples.example_images`)."""
    from .samples import example_images as samples

    return samples()


def run_options(args: argparse.Namespace):
    """The :class:`~phototag.runtime.RunOptions` of a command's ``--device`` / ``--workers`` / ``--batch-size`` /
    ``--precision`` / ``--cache-dir`` flags (unset flags keep the defaults)."""
    from .runtime import RunOptions

    return RunOptions(progress=not getattr(args, "quiet", False)).replace(
        device=getattr(args, "device", None),
        workers=getattr(args, "workers", None),
        batch_size=getattr(args, "batch_size", None),
        precision=getattr(args, "precision", None),
        cache_dir=getattr(args, "cache_dir", None),
    )


def add_run_options(parser: argparse.ArgumentParser, *, cache: bool = True) -> None:
    """``--device``, ``--workers``, ``--batch-size``, ``--precision`` (and ``--cache-dir``): how to run, never saved."""
    group = parser.add_argument_group("how to run (never saved with a model)")
    group.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default=None, help="where backbones run (default auto)"
    )
    group.add_argument(
        "--workers",
        type=int,
        default=None,
        help="threads decoding photos while the network runs (default: one per core)",
    )
    group.add_argument("--batch-size", type=int, default=None, help="photos per network call (default 32)")
    group.add_argument(
        "--precision",
        choices=("fp32", "int8"),
        default=None,
        help="backbone precision: fp32 (default) or int8 (quantised, faster on some CPUs; see docs/benchmarks.md)",
    )
    if cache:
        group.add_argument("--cache-dir", default=None, help="feature cache root (default ~/.cache/phototag)")


# --- output -----------------------------------------------------------------------------------------------------
def format_predictions(predictions: list[dict[str, Any]], fmt: str) -> str:
    """Render predictions as ``table``, ``jsonl`` (one object per image) or ``csv`` (image,rank,tag,score)."""
    if fmt == "jsonl":
        return "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["image", "rank", "tag", "score"])
        for p in predictions:
            for rank, t in enumerate(p["tags"], 1):
                writer.writerow([p["image"], rank, t["tag"], f"{t['score']:.4f}"])
        return buffer.getvalue()
    lines = []
    for p in predictions:
        tags = "  ".join(f"{t['tag']} ({t['score']:.2f})" for t in p["tags"]) or "(no tag above the threshold)"
        lines.append(f"{p['image']}\n    {tags}")
    return "\n".join(lines) + ("\n" if lines else "")


def resolved_rules(args: argparse.Namespace):
    """The rules in force for a command: ``--rules``, ``$PHOTOTAG_RULES`` or the per-user file (resolved once)."""
    from .rules import Rules, resolve_rules

    rules = getattr(args, "rules", None)
    if not isinstance(rules, Rules):
        rules = resolve_rules(rules)
        args.rules = rules
    return rules


def finish_predictions(predictions: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rules file (``--rules``, ``$PHOTOTAG_RULES`` or the per-user file), then ``--lang``, on the predictions."""
    from .languages import translate_predictions
    from .rules import apply_rules

    return translate_predictions(apply_rules(predictions, resolved_rules(args)), getattr(args, "lang", None))


def write_output(text: str, output: str | None) -> None:
    """Print, or write atomically to ``output`` (temp file + rename: never a half-written file)."""
    if output is None or output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write_text(output, text)


# --- commands ---------------------------------------------------------------------------------------------------
def cmd_import(args: argparse.Namespace) -> int:
    from .importers import run_importer

    settings = {
        "min_count": args.min_count,
        "max_size": args.max_vocab,
        "tag_limit": args.tag_limit,
        "lemmatize": args.lemmatize or None,
    }
    dataset = run_importer(
        args.kind, args.src, args.out, vocab_settings={k: v for k, v in settings.items() if v is not None}
    )
    summary = dataset.summary()
    print(f"Wrote dataset '{dataset.name}' to {args.out}: {json.dumps(summary)}")
    if args.kind == "library":
        from .library import describe_import

        print(describe_import(dataset.info))
    return EXIT_OK


def parse_set_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["k=10", "lr=1e-3", "pos_weight=auto"]`` -> ``{"k": 10, "lr": 0.001, "pos_weight": "auto"}`` (YAML values)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--set expects key=value. Got {pair!r} instead.")
        try:
            values[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            values[key.strip()] = raw
    return values


def load_config_file(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise CLIError(f"Config file not found: '{path}'.") from None
    except yaml.YAMLError as err:
        raise CLIError(f"Config file '{path}' is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CLIError(f"Config file '{path}' must hold a mapping of setting: value. Got {type(data).__name__}.")
    return data


def cmd_train(args: argparse.Namespace) -> int:
    from .pipeline import train

    config = load_config_file(args.config)
    config.update(parse_set_options(args.set or []))
    model = train(
        args.dataset,
        method=args.method,
        config=config,
        backbone=args.backbone,
        cache_dir=args.cache_dir,
        out=args.out,
        val_fraction=args.val_fraction,
        seed=args.seed,
        progress=not args.quiet,
        calibrate_thresholds=args.calibrate_thresholds,
        options=run_options(args),
    )
    val = model.info.get("validation")
    print(
        f"Saved {model.method.name} model ({len(model.vocab)} tags, {model.info['n_train']} training images) "
        f"to {args.out}"
    )
    if val:
        print(
            f"validation: mAP {val['map']:.4f}  tag@5 F1 {val['tag@5_f1']:.4f}  N+ {val['tag@5_n_plus']}  "
            f"image F1 (threshold rule) {val['image_f1_mean']:.4f}"
        )
    return EXIT_OK


def find_image_paths(paths: Sequence[str]) -> list[Path]:
    """The image files under ``paths`` (files and folders); a missing path or no image at all is a CLIError."""
    from .images import find_images

    try:
        found = find_images(paths)
    except FileNotFoundError as err:
        raise CLIError(str(err)) from None
    if not found:
        raise CLIError(f"No image files found in {' '.join(map(str, paths))}.")
    return found


def _predict_and_print(model, args: argparse.Namespace) -> int:
    from .images import describe_failures

    if getattr(args, "input", None) is not None:
        return _predict_batch_and_print(model, args)
    if not args.paths:
        raise CLIError("Give image files or folders to tag, or --input CSV (columns file,user_tags).")
    paths = find_image_paths(args.paths)
    user_tags = None
    if getattr(args, "user_tags", None) is not None:
        user_tags = [args.user_tags.split()] * len(paths)
    predictions, failures = model.predict(
        paths,
        top_k=args.top_k,
        threshold=args.threshold,
        balanced=args.balanced,
        user_tags=user_tags,
        options=run_options(args),
    )
    predictions = finish_predictions(predictions, args)
    write_output(format_predictions(predictions, args.format), args.output)
    if failures:
        print(describe_failures(failures, limit=50), file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _predict_batch_and_print(model, args: argparse.Namespace) -> int:
    """Predict for the rows of a batch-input CSV (see :mod:`phototag.batch_input`)."""
    from .batch_input import read_batch_input
    from .images import describe_failures

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


def _load_with_combiner(path: str | None, combiner: str | None):
    """Load a model; ``combiner`` switches an ensemble's combiner (other methods refuse it)."""
    from .model import load_model

    model = load_model(path)
    if combiner is not None:
        if not hasattr(model.method, "set_combiner"):
            raise CLIError(f"--combiner applies to ensemble models; this model's method is '{model.method.name}'.")
        model.method.set_combiner(combiner)
    return model


def cmd_predict(args: argparse.Namespace) -> int:
    return _predict_and_print(_load_with_combiner(args.model, args.combiner), args)


def cmd_tag(args: argparse.Namespace) -> int:
    from .model import load_model

    if args.input is not None:
        return _predict_and_print(load_model(args.model), args)
    if args.examples:
        args.paths = [str(p) for p in example_images()] + list(args.paths)
        if not args.paths:
            raise CLIError("No example photos found: install scikit-image or scikit-learn, or give PATH arguments.")
    if not args.paths:
        raise CLIError("Give image files or folders to tag (or --examples to tag the bundled sample photos).")
    if args.dry_run and not args.write:
        raise CLIError("--dry-run shows what --write would change; add --write xmp or --write embedded.")
    if args.write:
        from .commands.library import write_library_keywords

        return write_library_keywords(load_model(args.model), args)
    return _predict_and_print(load_model(args.model), args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .pipeline import evaluate

    result = evaluate(
        _load_with_combiner(args.model, args.combiner),
        args.dataset,
        split=args.split,
        k=args.k,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
        balanced=args.balanced,
        options=run_options(args),
    )
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if args.json:
        write_output(json.dumps(result, indent=2) + "\n", args.json)
    return EXIT_OK


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import get_method_class, method_descriptions

    descriptions = method_descriptions()
    width = max(map(len, descriptions))
    for name, text in descriptions.items():
        needs = ", ".join(get_method_class(name).data_keys)
        print(f"{name:<{width}}  {text}  [inputs: {needs}]")
    return EXIT_OK


# --- parser -----------------------------------------------------------------------------------------------------
def _add_balanced_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--balanced",
        action="store_true",
        default=None,
        help="top-k: rank by the model's balancing offsets, so rare tags get their share (ensembles trained with "
        "--set balance=P; the default model has them)",
    )


def _rules_argument(value: str):
    """``--rules FILE``: loaded and checked while parsing, so a bad file stops the command before any work."""
    from .rules import NO_RULES, Rules, RulesError, load_rules

    if value.strip().lower() == NO_RULES:
        return Rules()
    try:
        return load_rules(value)
    except RulesError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _language_argument(value: str) -> str:
    from .languages import UnknownLanguageError, check_language

    try:
        return check_language(value)
    except UnknownLanguageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_rules_and_language_options(parser: argparse.ArgumentParser) -> None:
    """``--rules FILE`` and ``--lang CODE`` (predict, tag, serve)."""
    parser.add_argument(
        "--rules",
        type=_rules_argument,
        default=None,
        metavar="FILE",
        help="rules file: per-tag thresholds, renames (see:), parents, priority, blocklist (default $PHOTOTAG_RULES "
        "or ~/.config/phototag/rules.yml when it exists; 'none' = no rules; see docs/default_vocabulary.md)",
    )
    parser.add_argument(
        "--lang",
        type=_language_argument,
        default=None,
        metavar="CODE",
        help="keywords in this language: en (default), de, fr, es, it, nl, ja",
    )


def _add_decision_options(parser: argparse.ArgumentParser) -> None:
    _add_balanced_option(parser)
    parser.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="return exactly the K best tags (with --threshold: the best K among those above it)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="keep tags scoring at least T (default rule: 0.3, at most 15 tags)",
    )
    parser.add_argument(
        "--user-tags",
        default=None,
        metavar="TAGS",
        help='the user\'s own tags, space-separated, for every PATH (contextual models; "" = none)',
    )
    parser.add_argument(
        "--input", default=None, metavar="CSV", help="batch input: a CSV with columns file,user_tags (and optional id)"
    )
    add_rules_and_language_options(parser)
    parser.add_argument("--format", choices=("table", "jsonl", "csv"), default="table")
    parser.add_argument("--output", "-o", default=None, help="write to this file (atomically) instead of stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phototag", description="Recommend tags for photos; train, evaluate and refine taggers."
    )
    parser.add_argument("--version", action="version", version=f"phototag {__version__}")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info messages")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("import", help="convert a raw dataset into a phototag dataset directory")
    p.add_argument("kind", choices=("corel5k", "csv", "harrison", "library", "mirflickr"))
    p.add_argument("src", help="source folder (or CSV file for 'csv')")
    p.add_argument("out", help="dataset directory to write")
    p.add_argument("--min-count", type=int, default=None, help="keep tags on at least N training images (default 1)")
    p.add_argument("--max-vocab", type=int, default=None, help="keep the N most frequent tags")
    p.add_argument("--tag-limit", type=int, default=None, help="use only the first N tags of each image")
    p.add_argument("--lemmatize", action="store_true", help="lemmatise tags (walking -> walk; extra 'lemma')")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("train", help="train a tagger on a dataset directory")
    p.add_argument("dataset")
    p.add_argument(
        "--method", default=None, help="registered method (see `phototag methods`); default: best for the data"
    )
    p.add_argument(
        "--backbone", default=None, help="timm model name for image features (default efficientnet_lite0, offline)"
    )
    p.add_argument("--config", default=None, help="YAML file of method settings")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="method setting (repeatable)")
    p.add_argument("--out", required=True, help="model directory to write")
    add_run_options(p)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--calibrate-thresholds", action="store_true", help="per-tag thresholds maximising F1 on the validation images"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="tag images with a trained model")
    p.add_argument("model")
    p.add_argument("paths", nargs="*", metavar="PATH")
    _add_decision_options(p)
    p.add_argument("--combiner", default=None, help="ensemble models: average, vote, union, intersection or stacker")
    add_run_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("tag", help="tag images with the default model shipped with phototag")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument(
        "--examples", action="store_true", help="also tag the sample photos bundled with scikit-image / scikit-learn"
    )
    p.add_argument("--model", default=None, help="use this model directory instead of the default")
    _add_decision_options(p)
    from .commands.library import add_library_options

    add_library_options(p, required=False)
    add_run_options(p)
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("evaluate", help="all metrics of a model on a dataset split")
    p.add_argument("model")
    p.add_argument("dataset")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--k", type=int, default=5, help="tags per image for the per-tag protocol (Corel5k: 5)")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    add_run_options(p)
    p.add_argument("--combiner", default=None, help="ensemble models: average, vote, union, intersection or stacker")
    _add_balanced_option(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("methods", help="list the registered tagging methods")
    p.set_defaults(func=cmd_methods)
    _register_command_modules(sub)
    # Global options work after the command too (`phototag tag x.jpg -q`); SUPPRESS keeps a value given before it.
    for command in sub.choices.values():
        command.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _register_command_modules(sub) -> None:
    """Add the subcommands of every module in :mod:`phototag.commands`."""
    import importlib
    import pkgutil

    from . import commands

    for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{module.name}").register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 some images unreadable, 2 error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr
    )
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("phototag: interrupted", file=sys.stderr)
        return 130
    except (PhototagError, CLIError, ValueError, OSError, ImportError) as err:
        # Bad input, damaged files, a missing package: one line, exit 2. Anything else is a bug (below).
        if args.debug:
            raise
        print(f"phototag {args.command}: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except Exception:
        import traceback

        traceback.print_exc()
        print(
            f"phototag {args.command}: internal error (a bug in phototag {__version__}); please report it with the "
            "traceback above.",
            file=sys.stderr,
        )
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
