"""``phototag features DATASET``: fill the feature store with a dataset's backbone features (locally or on a Ray
cluster), so that ``phototag train`` on it reads every feature from the store and runs no backbone."""

from __future__ import annotations

import argparse
import sys

from .options import EXIT_OK, EXIT_PARTIAL, CLIError, add_engine_options, add_run_options, cluster_options, run_options


def compute_dataset_features(args: argparse.Namespace):
    """Extract the features of ``args.dataset``'s photos for every ``--backbone``; returns
    ``(n_photos, stores, failures)``."""
    from ..backbones import DEFAULT_BACKBONE
    from ..data import Dataset
    from ..features import FeatureStore, extract_features

    dataset = Dataset.load(args.dataset)
    records = [r for r in dataset.records if args.split is None or r.split == args.split]
    paths = [str(dataset.image_path(r)) for r in records if r.file is not None]
    if not paths:
        raise CLIError(f"Dataset '{args.dataset}' has no photos{f' in split {args.split!r}' if args.split else ''}.")
    options = run_options(args)
    stores = [FeatureStore(name, options.cache_dir, options=options) for name in args.backbone or [DEFAULT_BACKBONE]]
    if args.engine == "ray":
        from ..distributed import extract_features_on_ray

        report = extract_features_on_ray(paths, stores, options=options, cluster=cluster_options(args))
        return paths, stores, report.failures
    return paths, stores, extract_features(paths, stores, options=options, desc="features").failures


def cmd_features(args: argparse.Namespace) -> int:
    from ..backbone_spec import backbone_label
    from ..images import describe_failures

    paths, stores, failures = compute_dataset_features(args)
    names = ", ".join(backbone_label(store.spec) for store in stores)
    print(
        f"Features of {len(paths) - len(failures)} of {len(paths)} photos ({names}) are in the feature store "
        f"{stores[0].dir.parent}"
    )
    if failures:
        print(describe_failures(failures, limit=50), file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "features",
        help="compute a dataset's backbone features into the feature store (locally or on a Ray cluster)",
        description=(
            "Extract the pooled features of a dataset's photos for each --backbone into the content-keyed feature "
            "store, so that `phototag train` on the dataset starts from them and runs no backbone."
        ),
    )
    p.add_argument("dataset", help="dataset directory (from `phototag import`)")
    p.add_argument(
        "--backbone",
        action="append",
        default=None,
        metavar="NAME",
        help=(
            "timm backbone name, optionally with +sN for earlier stages (efficientnet_lite1+s16); repeatable; "
            "default efficientnet_lite0, the default for training"
        ),
    )
    p.add_argument("--split", choices=("train", "val", "test"), default=None, help="only this split (default all)")
    add_run_options(p)
    add_engine_options(p)
    p.set_defaults(func=cmd_features)
