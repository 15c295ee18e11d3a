"""Corel5k annotation benchmark (Makadia et al. 2008 protocol) for phototag's methods.

The standard 499-photo test split is not in ../shared, so a held-out set of 500 photos is carved (seeded) from
the 4,500-photo train split; methods train on the other 4,000 (their early-stopping validation is carved from
those). Each held-out photo gets its 5 top-scored words; per-word precision and recall are averaged over the words
present in the held-out set; F1 of the two means; N+ = words with recall > 0. Per-image P/R/F1 under the seeds'
rule (threshold 0.3, at most 15 tags) and mAP/miAP/AUC are reported too.

Every first-level model gets a row, and an ``ensemble`` gets one row per combiner (average, vote, union,
intersection, stacker), all from one trained ensemble. Timing columns: training images/s (fit only, features
cached) and inference images/s (scoring the 500 held-out photos from cached features, or from image files for
``cnn``), measured on the machine the script runs on.

    python benchmarks/corel5k.py                       # knn + mlp on efficientnet_lite0 features
    python benchmarks/corel5k.py --methods knn --backbone efficientnet_lite2 --json runs/corel5k-lite2.json
    python benchmarks/corel5k.py --methods ensemble \\
        --set 'ensemble.members=[mlp@efficientnet_lite0, knn@efficientnet_lite0]'
    python benchmarks/corel5k.py --methods cnn --set cnn.finetune_epochs=20     # GPU
    python benchmarks/corel5k.py --methods mlp cnn \\
        --trained cnn=runs/corel5k/models/cnn-cached-blocks2-efficientnet_lite0
        # cnn from the cached-trunk candidate benchmarks/corel5k_cnn_cached.py chose on validation
    python benchmarks/corel5k.py --methods 2pknn tagprop --json benchmarks/results/corel5k_2pknn_tagprop.json
        # defaults = settings chosen on validation by benchmarks/corel5k_knn_tuning.py
    python benchmarks/corel5k.py --methods ensemble --preset ensemble=default-model --val-fraction 0 \
        --json benchmarks/results/corel5k_default_model_recipe.json
        # the shipped default model's Corel5k part (fixed epochs: no photo set aside for validation)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from phototag.data import Dataset
from phototag.importers import run_importer
from phototag.methods import create_method
from phototag.pipeline import evaluate, train

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "corel5k"

#: Published results on the standard split (../shared/data/README.md): P, R, F1, N+.
PUBLISHED = {
    "JEC (Makadia 2008)": (0.27, 0.32, 0.293, 139),
    "TagProp σML (Guillaumin 2009)": (0.33, 0.42, 0.370, 160),
    "2PKNN (Verma 2012)": (0.44, 0.46, 0.450, 191),
}


def heldout_dataset(src: Path, work: Path, *, n_heldout: int = 500, seed: int = 0) -> Dataset:
    """Import Corel5k (once) and move ``n_heldout`` seeded-random train photos into a 'test' split."""
    target = work / f"corel5k-heldout{n_heldout}-seed{seed}"
    if (target / "dataset.json").exists():
        return Dataset.load(target)
    full = run_importer("corel5k", src, work / "corel5k-imported")
    full.carve_test(n_heldout, seed=seed, name=f"corel5k-heldout{n_heldout}").save(target)
    return Dataset.load(target)


def ensemble_rows(model, dataset: Dataset, label: str, timing: dict, cache_dir) -> list[dict]:
    """Held-out rows of an ensemble: each member alone, each combiner, and each combiner whose top 5 follow its
    balancing offsets (when the ensemble has them; every other metric is the combiner's own). Member scores are
    computed once; inference speed is for all of it."""
    from phototag.calibration import balanced_ranking
    from phototag.inputs import build_inputs
    from phototag.metrics import evaluate_scores
    from phototag.runtime import RunOptions

    records = dataset.split("test")
    targets = model.vocab.transform([r.tags for r in records])
    start = time.perf_counter()
    batch = build_inputs(
        model.method, [dataset.image_path(r) for r in records], options=RunOptions(cache_dir=cache_dir, progress=False)
    )
    if not batch.ok.all():
        raise SystemExit(f"Held-out photos could not be read: {batch.failures[:3]}")
    members = model.method.member_scores(batch.inputs)
    infer = round(len(records) / (time.perf_counter() - start), 1)
    ensemble = model.method
    scored = {f"member {m}": (s, None) for m, s in zip(ensemble.config.members, members, strict=True)}
    for name in ensemble.combiners():
        scores = ensemble._combine(members, name)
        scored[f"{label} / {name}"] = (scores, None)
        offsets = getattr(ensemble, "offsets_", {}).get(name)
        if offsets is not None:
            scored[f"{label} / {name} + balance"] = (scores, balanced_ranking(scores, offsets))
    return [
        {
            "method": name,
            **timing,
            "infer_images_per_s": infer,
            **evaluate_scores(targets, scores, k=5, ranking_scores=ranking),
        }
        for name, (scores, ranking) in scored.items()
    ]


def trained_model(directory: str, method: str, dataset: Dataset, *, seed: int):
    """A model trained elsewhere on this benchmark's training photos; refused when it is not."""
    from phototag.model import TagModel

    model = TagModel.load(directory)
    same = model.method.name == method and model.info.get("dataset") == dataset.name and model.info.get("seed") == seed
    if not same or "train_seconds" not in model.info:
        raise SystemExit(
            f"--trained {method}={directory}: that model is a '{model.method.name}' trained on "
            f"'{model.info.get('dataset')}' (seed {model.info.get('seed')}), not a '{method}' trained on "
            f"'{dataset.name}' (seed {seed}) by corel5k_cnn_cached.py."
        )
    return model


def cnn_label(model) -> str:
    """``cnn (backbone, cached trunk: last N blocks + head)`` or ``cnn (backbone, end to end)``."""
    cache = getattr(model.method, "trunk_cache_", None)
    how = f"cached trunk, last {cache['tail_blocks']} blocks + head" if cache else "end to end"
    return f"cnn ({model.method.spec_.name}, {how})"


def cnn_timing(model) -> dict:
    """Seconds per epoch (mean over the epochs run), the epochs run and the one kept, and the cache fill time."""
    history = model.method.history_
    seconds = [h["seconds"] for h in history if "seconds" in h]
    out = {"epochs_run": len(history), "best_epoch": model.method.best_epoch_}
    if seconds:
        out["seconds_per_epoch"] = round(sum(seconds) / len(seconds), 1)
    cache = getattr(model.method, "trunk_cache_", None)
    if cache:
        out["trunk_cache_seconds"] = cache["seconds"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="raw Corel5k folder")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "corel5k", help="datasets and models go here")
    parser.add_argument("--methods", nargs="+", default=["knn", "mlp"])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "corel5k.json")
    parser.add_argument(
        "--set", action="append", default=[], metavar="METHOD.KEY=VALUE", help="a method setting, e.g. mlp.hidden=1024"
    )
    parser.add_argument(
        "--preset",
        action="append",
        default=[],
        metavar="METHOD=NAME",
        help="start METHOD's settings from a preset (phototag methods --presets), e.g. ensemble=default-model; "
        "--set changes single settings on top",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of the training photos set aside for validation"
    )
    parser.add_argument("--calibrate-thresholds", action="store_true", help="per-tag thresholds from validation")
    parser.add_argument(
        "--trained",
        action="append",
        default=[],
        metavar="METHOD=DIR",
        help="take METHOD's model from DIR (trained on this benchmark's training photos, e.g. the candidate "
        "benchmarks/corel5k_cnn_cached.py chose on validation) instead of training it here",
    )
    args = parser.parse_args(argv)
    trained = dict(item.split("=", 1) for item in args.trained)
    from phototag.presets import preset_config
    from phototag.settings import parse_set_options

    settings: dict[str, dict] = {}
    for item in args.preset:
        method, _, name = item.partition("=")
        settings[method] = preset_config(method, name)
    for key, value in parse_set_options(args.set).items():
        method, _, field = key.partition(".")
        settings.setdefault(method, {})[field] = value
    logging.basicConfig(level=logging.WARNING)
    if not (args.data / "corel5k_words.txt").exists():
        print(f"Corel5k not found at {args.data}; pass --data.", file=sys.stderr)
        return 2
    dataset = heldout_dataset(args.data, args.work, seed=args.seed)
    rows, validation_tables = [], []
    n_test = len(dataset.split("test"))
    for method in args.methods:
        start = time.perf_counter()
        if method in trained:
            model = trained_model(trained[method], method, dataset, seed=args.seed)
            fit_s = model.info["train_seconds"]
        else:
            reads_backbone = "features" in create_method(method, settings.get(method)).data_keys
            model = train(
                dataset,
                method=method,
                config=settings.get(method),
                backbone=args.backbone if reads_backbone else None,
                cache_dir=args.cache_dir,
                out=args.work / "models" / f"{method}-{args.backbone}",
                seed=args.seed,
                calibrate_thresholds=args.calibrate_thresholds,
                val_fraction=args.val_fraction,
            )
            fit_s = time.perf_counter() - start
        n_train = model.info["n_train"]
        reads = model.method.feature_backbones() if "backbone_features" in model.method.data_keys else None
        label = method if method in ("cnn", "ensemble") else f"{method} ({' + '.join(reads or [args.backbone])})"
        if method == "cnn":
            label = cnn_label(model)
        if method == "ensemble":
            label = f"ensemble [{', '.join(model.method.config.members)}]"
        timing = {"backbone": " + ".join(reads or [args.backbone]), "train_seconds": round(fit_s, 1)}
        if method == "cnn":
            timing.update(cnn_timing(model))
        timing["train_images_per_s"] = round(n_train / fit_s, 1)
        if method == "ensemble":
            rows += ensemble_rows(model, dataset, label, timing, args.cache_dir)
            if getattr(model.method, "validation_", None):  # none without validation photos (--val-fraction 0)
                validation_tables.append((label, model.method.validation_))
            continue
        start = time.perf_counter()
        result = evaluate(model, dataset, split="test", k=5, cache_dir=args.cache_dir, progress=False)
        infer_s = time.perf_counter() - start
        own = ", balanced top 5 (its default)" if model.decision.balanced else ""
        rows.append(
            {
                "method": label + own,
                **timing,
                "infer_images_per_s": round(n_test / infer_s, 1),
                "validation": model.info.get("validation"),
                **result,
            }
        )
        if model.method.rank_offset() is not None:  # the other top-5 decision (--balanced / --no-balanced)
            other = not model.decision.balanced
            result = evaluate(
                model, dataset, split="test", k=5, cache_dir=args.cache_dir, progress=False, balanced=other
            )
            rows.append({**rows[-1], **result, "method": f"{label}, {'balanced' if other else 'plain'} top 5"})
    width = max(len(name) for name in PUBLISHED) + 24
    width = max(width, *(len(row["method"]) + 1 for row in rows))
    header = (
        f"{'method':<{width}} {'P@5':>6} {'R@5':>6} {'F1@5':>6} {'N+':>5} {'mAP':>6} "
        f"{'img-P':>6} {'img-R':>6} {'img-F1':>6} {'train/s':>8} {'infer/s':>8}"
    )
    print(f"Corel5k, 500 held-out photos from the train split (seed {args.seed}), 5 words per photo;")
    print("img-P/R/F1: mean per-image precision/recall/F1 of tags scoring >= 0.3 (at most 15); speeds in images/s")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['method']:<{width}} {row['tag@5_mean_precision']:>6.3f} "
            f"{row['tag@5_mean_recall']:>6.3f} {row['tag@5_f1']:>6.3f} {row['tag@5_n_plus']:>5d} "
            f"{row['map']:>6.3f} {row['image_precision_mean']:>6.3f} {row['image_recall_mean']:>6.3f} "
            f"{row['image_f1_mean']:>6.3f} {row['train_images_per_s']:>8.1f} {row['infer_images_per_s']:>8.1f}"
        )
    for row in rows:
        if "epochs_run" in row:
            print(
                f"{row['method']}: {row['epochs_run']} epochs (best {row['best_epoch']}), "
                f"{row.get('seconds_per_epoch', float('nan')):.0f} s per epoch"
                + (
                    f", activation cache filled in {row['trunk_cache_seconds']:.0f} s"
                    if "trunk_cache_seconds" in row
                    else ""
                )
            )
    for name, (p, r, f1, n_plus) in PUBLISHED.items():
        print(f"{name + ' [published, std split]':<{width}} {p:>6.3f} {r:>6.3f} {f1:>6.3f} {n_plus:>5d}")
    for label, validation in validation_tables:
        print(f"\nValidation (carved from the training photos) of {label}: every member and every combiner")
        print(f"{'':<40} {'mAP':>6} {'F1@5':>6} {'N+':>5}")
        for name, values in validation.items():
            print(f"{name:<40} {values['map']:>6.3f} {values['f1@5']:>6.3f} {values['n_plus@5']:>5d}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "protocol": "corel5k-heldout500",
                "seed": args.seed,
                "results": rows,
                "ensemble_validation": dict(validation_tables),
                "published": PUBLISHED,
            },
            indent=2,
            default=float,
        )
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
