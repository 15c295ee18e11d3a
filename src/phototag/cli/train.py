"""``phototag train DATASET --out MODEL_DIR``: fit a tagging method and save the model."""

from __future__ import annotations

import argparse

from .options import EXIT_OK, CLIError, add_run_options, run_options


def cmd_train(args: argparse.Namespace) -> int:
    from ..pipeline import train
    from ..settings import method_settings

    config = {}
    if args.preset is not None:
        from ..presets import preset_config

        if args.method is None:
            raise CLIError(
                "--preset needs --method (a preset belongs to one method; see `phototag methods --presets`)."
            )
        config.update(preset_config(args.method, args.preset))
    config.update(method_settings(args.config, args.set))
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


def register(subparsers) -> None:
    from ..methods import method_names

    p = subparsers.add_parser("train", help="train a tagger on a dataset directory")
    p.add_argument("dataset")
    p.add_argument(
        "--method",
        default=None,
        choices=method_names(),
        metavar="METHOD",
        help="registered method (see `phototag methods`): %(choices)s; default: best for the data",
    )
    p.add_argument(
        "--backbone", default=None, help="timm model name for image features (default efficientnet_lite0, offline)"
    )
    p.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="start from a named configuration of the method, e.g. 'paper' (see `phototag methods --presets`); "
        "--config and --set override it",
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
