"""What the commands share on the way in: exit codes, the CLI's error, run options, decision options, --rules / --lang.

Exit codes: 0 success; 1 the command finished but some images could not be read (each reported on stderr);
2 bad input or usage (one-line error on stderr, nothing half-written); 3 an internal error (a bug: traceback shown).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..errors import PhototagError

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR, EXIT_BUG = 0, 1, 2, 3


class CLIError(PhototagError):
    """A user-facing error of the command line: printed as one line, exit code 2."""


def add_global_options(parser: argparse.ArgumentParser, *, after_command: bool = False) -> None:
    """``--quiet`` / ``-q`` and ``--debug``: on the main parser, and again on each command (``after_command``) with
    SUPPRESS defaults, so ``phototag tag x.jpg -q`` works and a value given before the command is kept."""
    if after_command:
        parser.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info messages")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def run_options(args: argparse.Namespace):
    """The :class:`~phototag.runtime.RunOptions` of a command's ``--device`` / ``--workers`` / ``--batch-size`` /
    ``--precision`` / ``--cache-dir`` flags (unset flags keep the defaults)."""
    from ..runtime import RunOptions

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


def add_engine_options(parser: argparse.ArgumentParser, *, parts: bool = False) -> None:
    """``--engine local|ray`` and the Ray cluster's settings (``--ray-address``, ``--ray-actors``, ``--ray-cpus``;
    with ``parts``: ``--out DIR`` of Parquet parts)."""
    group = parser.add_argument_group("engine (see docs/cluster.md)")
    group.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help='local: this process (default); ray: a Ray cluster (pip install "phototag[ray]")',
    )
    group.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster HOST:PORT (default $RAY_ADDRESS, else a Ray instance on this machine)",
    )
    group.add_argument(
        "--ray-actors", type=int, default=None, metavar="N", help="backbone actors per backbone (default autoscale)"
    )
    group.add_argument(
        "--ray-cpus", type=float, default=None, metavar="C", help="CPUs per Ray decode task and actor (default 1)"
    )
    if parts:
        group.add_argument(
            "--out",
            default=None,
            metavar="DIR",
            help="--engine ray: write Parquet parts (image, tags, scores, model) here; a rerun resumes",
        )
        group.add_argument("--part-size", type=int, default=None, help="photos per Parquet part (default 10000)")


def cluster_options(args: argparse.Namespace):
    """The :class:`~phototag.distributed.ClusterOptions` of a command's ``--ray-*`` flags."""
    from ..distributed import ClusterOptions

    values = {
        "address": getattr(args, "ray_address", None),
        "actors": getattr(args, "ray_actors", None),
        "cpus": getattr(args, "ray_cpus", None),
        "part_size": getattr(args, "part_size", None),
    }
    return ClusterOptions(**{k: v for k, v in values.items() if v is not None})


def find_image_paths(paths: Sequence[str]) -> list[Path]:
    """The image files under ``paths`` (files and folders); a missing path or no image at all is a CLIError."""
    from ..images import find_images

    try:
        found = find_images(paths)
    except FileNotFoundError as err:
        raise CLIError(str(err)) from None
    if not found:
        raise CLIError(f"No image files found in {' '.join(map(str, paths))}.")
    return found


def add_balanced_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--balanced",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="top-k: keep each photo's best tag and choose the others by the model's balancing offsets, so rare "
        "tags get their share (2pknn models, ensembles trained with --set balance=P, the default model); "
        "--no-balanced takes the k best scores (default: the model's own choice: balanced for the default model "
        "and 2pknn and drel models, by score otherwise)",
    )


def resolved_rules(args: argparse.Namespace):
    """The rules in force for a command: ``--rules``, ``$PHOTOTAG_RULES`` or the per-user file (resolved once)."""
    from ..rules import Rules, resolve_rules

    rules = getattr(args, "rules", None)
    if not isinstance(rules, Rules):
        rules = resolve_rules(rules)
        args.rules = rules
    return rules


def use_rule_thresholds(model, args: argparse.Namespace) -> None:
    """The rules file's per-label thresholds become the model's own for this command (they may lower the bar)."""
    from ..rules import label_thresholds

    model.decision = model.decision_with(label_thresholds(resolved_rules(args), model.tags))


def _rules_argument(value: str):
    """``--rules FILE``: loaded and checked while parsing, so a bad file stops the command before any work."""
    from ..rules import NO_RULES, Rules, RulesError, load_rules

    if value.strip().lower() == NO_RULES:
        return Rules()
    try:
        return load_rules(value)
    except RulesError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _language_argument(value: str) -> str:
    from ..languages import UnknownLanguageError, check_language

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


def add_decision_options(parser: argparse.ArgumentParser) -> None:
    add_balanced_option(parser)
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
