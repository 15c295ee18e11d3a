"""Choose the settings of ``2pknn`` and ``tagprop`` on Corel5k validation photos only, then (``--heldout``) score
the chosen settings once on the 500 held-out photos.

Same data as ``benchmarks/corel5k.py``: 500 seeded-random photos of the train split are held out; the pipeline's
validation carve (10 %, seed 0) of the remaining 4,000 is the validation set, and methods are fitted on the other
3,600 — exactly what ``phototag.pipeline.train`` does, so a held-out row here equals that method's row in
``benchmarks/corel5k.py`` for the same settings. Each grid point is scored on validation (F1@5 of per-word P/R,
N+, mAP); the best by validation F1@5 (ties: N+) is the choice. For ``2pknn`` the balancing offsets are then
chosen at that point by the default model's rule (:func:`choose_balance`). Several ``--backbones`` are
concatenated, one feature block per backbone (what 2pknn's ``backbones`` setting does).

    python benchmarks/corel5k_knn_tuning.py                                   # lite0, validation grid only
    python benchmarks/corel5k_knn_tuning.py --heldout                         # ... and the chosen ones held out
    python benchmarks/corel5k_knn_tuning.py --backbones efficientnet_lite1 efficientnet_lite2 \\
        --heldout --json benchmarks/results/corel5k_knn_tuning_lite12.json      # 2pknn's defaults
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
from phototag.calibration import balanced_ranking  # noqa: E402
from phototag.methods import create_method  # noqa: E402
from phototag.methods.base import pooled_parts  # noqa: E402
from phototag.metrics import evaluate_scores  # noqa: E402
from report import write_json

#: Validation grids (the paper's ranges: 2PKNN's K1 is small; TagProp uses K = 200 on Corel5k). Joined backbones
#: average their blocks' cosines, so their distances are smaller and need larger weights than one backbone.
GRIDS: dict[str, dict[str, list]] = {
    "2pknn": {"k1": [1, 2, 3, 5, 8], "weight": [5.0, 10.0, 20.0, 40.0, 80.0], "metric_learning": [False]},
    "tagprop": {"k": [50, 100, 200], "weighting": ["distance"], "sigmoid": [True]},
}
#: Tried after the grid at its best point, each chosen only if better on validation: 2PKNN-ML (starts from the
#: best weight and learns the blocks'), features without standardisation; TagProp with rank-based weights, and
#: without the per-word sigmoids (the paper's plain ML).
VARIANTS: dict[str, list[dict]] = {
    "2pknn": [{"metric_learning": True}, {"standardize": True}],
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


#: 2pknn's balancing offsets (balanced top-k decisions), tried at the chosen settings: power x top-k (power 0, every
#: tag the same share, is not a 2pknn setting: balance 0 turns the offsets off).
BALANCE_GRID = {"balance": [1.0, 0.75, 0.5, 0.25], "balance_k": [2, 3, 5]}


def run(method: str, config: dict, data: dict) -> dict:
    """Fit on the arrays (``backbones`` off: the features are already joined, one block per backbone) and score
    each split; with balancing offsets, the balanced top-5 too (``val_balanced``, ``test_balanced``)."""
    start = time.perf_counter()
    if method in ("2pknn", "tagprop"):
        config = {"backbones": []} | ({"balance": 0.0} if method == "2pknn" else {}) | config
    tagger = create_method(method, config).fit({"features": data["x_train"]}, data["y_train"], progress=False)
    fit_s = time.perf_counter() - start
    out = {"config": config, "fit_seconds": round(fit_s, 1)}
    if hasattr(tagger, "weights_") and len(tagger.weights_) <= 8:
        out["learned_weights"] = [round(float(w), 3) for w in tagger.weights_]
    offsets = tagger.rank_offset()
    for part in ("val", "test"):
        if f"x_{part}" in data:
            scores = tagger.score({"features": data[f"x_{part}"]})
            rankings = {part: None} | (
                {f"{part}_balanced": balanced_ranking(scores, offsets)} if offsets is not None else {}
            )
            for key, ranking in rankings.items():
                m = evaluate_scores(data[f"y_{part}"], scores, k=5, ranking_scores=ranking)
                out[key] = {
                    "f1@5": m["tag@5_f1"],
                    "p@5": m["tag@5_mean_precision"],
                    "r@5": m["tag@5_mean_recall"],
                    "n_plus@5": m["tag@5_n_plus"],
                    "map": m["map"],
                    "image_f1": m["image_f1_mean"],
                }
    return out


def choose_balance(base: dict, rows: list[dict]) -> dict:
    """The balancing rule of the default model (docs/default_model.md), on validation only: the most validation N+
    among settings whose balanced validation F1@5 is at least the unbalanced one, preferring the higher F1@5 when
    N+ is within 2."""
    floor = base["val"]["f1@5"]
    fair = [r for r in rows if r["val_balanced"]["f1@5"] >= floor]
    if not fair:
        return {"balance": 0.0}
    top = max(r["val_balanced"]["n_plus@5"] for r in fair)
    near = [r for r in fair if r["val_balanced"]["n_plus@5"] >= top - 2]
    best = max(near, key=lambda r: (r["val_balanced"]["f1@5"], r["val_balanced"]["n_plus@5"]))
    return {k: best["config"][k] for k in BALANCE_GRID}


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
    # One block per backbone, and one per earlier stage a "+sN" name pools: what the methods' backbones setting does.
    blocks = [
        size
        for b in args.backbones
        for size in pooled_parts(b, features_for(dataset, train_records[:1], [b], args.cache_dir).shape[1])
    ]
    blocks = blocks if len(blocks) > 1 else []
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
        if method == "2pknn":
            balanced_rows = []
            for values in itertools.product(*BALANCE_GRID.values()):
                config = best["config"] | dict(zip(BALANCE_GRID, values, strict=True))
                balanced_rows.append(run(method, config, data))
                v = balanced_rows[-1]["val_balanced"]
                print(f"{method} [{label}] {config}: balanced val F1@5 {v['f1@5']:.3f} N+ {v['n_plus@5']}")
            report[method]["balance_grid"] = balanced_rows
            report[method]["chosen"] = best["config"] | choose_balance(best, balanced_rows)
        print(f"chosen for {method} [{label}] on validation: {report[method]['chosen']}")
    if args.heldout:
        records = dataset.split("test")
        data["x_test"] = features_for(dataset, records, args.backbones, args.cache_dir)
        data["y_test"] = vocab.transform([r.tags for r in records])
        del data["x_val"], data["y_val"]
        for method in args.methods:
            result = run(method, report[method]["chosen"], data)
            for key in ("test", "test_balanced"):
                if key not in result:
                    continue
                report[method]["heldout" if key == "test" else "heldout_balanced"] = result[key]
                t = result[key]
                print(
                    f"held out{' (balanced top 5)' if key != 'test' else ''}: {method} [{label}] {result['config']}: "
                    f"P@5 {t['p@5']:.3f} R@5 {t['r@5']:.3f} F1@5 {t['f1@5']:.3f} N+ {t['n_plus@5']} "
                    f"mAP {t['map']:.3f} img-F1 {t['image_f1']:.3f}"
                )
    write_json(args.json, report, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
