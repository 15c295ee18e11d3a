"""Choose the settings of ``2pknn`` and ``tagprop`` on Corel5k validation photos only, then (``--heldout``) score
the chosen settings once on the 500 held-out photos.

Same data as ``benchmarks/corel5k.py``: 500 seeded-random photos of the train split are held out; the pipeline's
validation carve (10 %, seed 0) of the remaining 4,000 is the validation set, and methods are fitted on the other
3,600 — exactly what ``phototag.pipeline.train`` does, so a held-out row here equals that method's row in
``benchmarks/corel5k.py`` for the same settings. Each grid point is scored on validation (F1@5 of per-word P/R,
N+, mAP); the best by validation F1@5 (ties: N+) is the choice. Several ``--backbones`` are concatenated, one
feature block per backbone (the methods' ``blocks`` setting).

    python benchmarks/corel5k_knn_tuning.py                                   # lite0, validation grid only
    python benchmarks/corel5k_knn_tuning.py --heldout                         # ... and the chosen ones held out
    python benchmarks/corel5k_knn_tuning.py --backbones efficientnet_lite0 efficientnet_lite1 efficientnet_lite2 \\
        --heldout --json benchmarks/results/corel5k_knn_tuning_lite012.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corel5k import DEFAULT_DATA, REPO, heldout_dataset  # noqa: E402
from phototag.methods import create_method  # noqa: E402
from phototag.metrics import evaluate_scores  # noqa: E402
from report import write_json

#: Validation grids (the paper's ranges: 2PKNN's K1 is small; TagProp uses K = 200 on Corel5k).
GRIDS: dict[str, dict[str, list]] = {
    "2pknn": {"k1": [1, 2, 3, 5, 8], "weight": [5.0, 10.0, 20.0, 40.0], "metric_learning": [False]},
    "tagprop": {"k": [50, 100, 200], "weighting": ["distance"], "sigmoid": [True]},
}
#: Tried after the grid at its best point, each chosen only if better on validation: 2PKNN-ML (starts from the
#: best weight and learns the blocks'), features without standardisation; TagProp with rank-based weights, and
#: without the per-word sigmoids (the paper's plain ML).
VARIANTS: dict[str, list[dict]] = {
    "2pknn": [{"metric_learning": True}, {"standardize": False}],
    "tagprop": [{"weighting": "rank"}, {"sigmoid": False}],
}


def features_for(dataset, records, backbones: list[str], cache_dir) -> np.ndarray:
    from phototag.features import FeatureStore

    paths = [str(dataset.image_path(r)) for r in records]
    parts = []
    for name in backbones:
        result = FeatureStore(name, cache_dir).extract(paths, progress=False)
        if not result.ok.all():
            raise RuntimeError(f"{(~result.ok).sum()} Corel5k photos could not be read: {result.failures[:3]}")
        parts.append(result.features)
    return np.concatenate(parts, axis=1)


def run(method: str, config: dict, data: dict) -> dict:
    start = time.perf_counter()
    tagger = create_method(method, config).fit({"features": data["x_train"]}, data["y_train"], progress=False)
    fit_s = time.perf_counter() - start
    out = {"config": config, "fit_seconds": round(fit_s, 1)}
    if hasattr(tagger, "weights_") and len(tagger.weights_) <= 8:
        out["learned_weights"] = [round(float(w), 3) for w in tagger.weights_]
    for part in ("val", "test"):
        if f"x_{part}" in data:
            scores = tagger.score({"features": data[f"x_{part}"]})
            m = evaluate_scores(data[f"y_{part}"], scores, k=5)
            out[part] = {
                "f1@5": m["tag@5_f1"],
                "p@5": m["tag@5_mean_precision"],
                "r@5": m["tag@5_mean_recall"],
                "n_plus@5": m["tag@5_n_plus"],
                "map": m["map"],
                "image_f1": m["image_f1_mean"],
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="raw Corel5k folder")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "corel5k")
    parser.add_argument("--methods", nargs="+", default=["2pknn", "tagprop"])
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0"])
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--heldout", action="store_true", help="score the chosen settings on the held-out photos")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "corel5k_knn_tuning.json")
    args = parser.parse_args(argv)
    if not (args.data / "corel5k_words.txt").exists():
        print(f"Corel5k not found at {args.data}; pass --data.", file=sys.stderr)
        return 2
    dataset = heldout_dataset(args.data, args.work, seed=0)
    train_records, val_records = dataset.train_val(val_fraction=0.1, seed=0)
    vocab = dataset.vocab
    data = {}
    for part, records in (("train", train_records), ("val", val_records)):
        data[f"x_{part}"] = features_for(dataset, records, args.backbones, args.cache_dir)
        data[f"y_{part}"] = vocab.transform([r.tags for r in records])
    blocks: list[int] = []
    if len(args.backbones) > 1:
        blocks = [features_for(dataset, train_records[:1], [b], args.cache_dir).shape[1] for b in args.backbones]
    label = "+".join(b.replace("efficientnet_", "") for b in args.backbones)
    report: dict = {"backbones": args.backbones, "n_train": len(train_records), "n_val": len(val_records)}
    # Reference: plain knn with its default settings on the same features and validation photos.
    report["knn_reference"] = run("knn", {}, data)
    v = report["knn_reference"]["val"]
    print(f"knn [{label}] defaults: val F1@5 {v['f1@5']:.3f} N+ {v['n_plus@5']} mAP {v['map']:.3f}")
    for method in args.methods:
        grid = GRIDS[method]
        rows = []
        for values in itertools.product(*grid.values()):
            config = dict(zip(grid, values, strict=True)) | ({"blocks": blocks} if blocks else {})
            rows.append(run(method, config, data))
            v = rows[-1]["val"]
            print(f"{method} [{label}] {config}: val F1@5 {v['f1@5']:.3f} N+ {v['n_plus@5']} mAP {v['map']:.3f}")
        best = max(rows, key=lambda r: (r["val"]["f1@5"], r["val"]["n_plus@5"]))
        grid_best = best["config"]
        for variant in VARIANTS.get(method, []):
            config = grid_best | variant
            rows.append(run(method, config, data))
            v = rows[-1]["val"]
            print(f"{method} [{label}] {config}: val F1@5 {v['f1@5']:.3f} N+ {v['n_plus@5']} mAP {v['map']:.3f}")
        best = max(rows, key=lambda r: (r["val"]["f1@5"], r["val"]["n_plus@5"]))
        report[method] = {"grid": rows, "chosen": best["config"]}
        print(f"chosen for {method} [{label}] on validation: {best['config']}")
    if args.heldout:
        records = dataset.split("test")
        data["x_test"] = features_for(dataset, records, args.backbones, args.cache_dir)
        data["y_test"] = vocab.transform([r.tags for r in records])
        del data["x_val"], data["y_val"]
        for method in args.methods:
            result = run(method, report[method]["chosen"], data)
            report[method]["heldout"] = result["test"]
            t = result["test"]
            print(
                f"held out: {method} [{label}] {result['config']}: P@5 {t['p@5']:.3f} R@5 {t['r@5']:.3f} "
                f"F1@5 {t['f1@5']:.3f} N+ {t['n_plus@5']} mAP {t['map']:.3f} img-F1 {t['image_f1']:.3f}"
            )
    write_json(args.json, report, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
