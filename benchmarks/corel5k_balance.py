"""How far the shipped ensemble's top-k balancing should go: a grid over ``balance`` (power) × ``balance_k``.

Trains the default model's ensemble (mlp heads on efficientnet_lite0/1/2, 5-fold out-of-fold scores) once on the
benchmark's 4,000 Corel5k training photos, then, for every grid point, fits the balancing offsets on the out-of-fold
``average`` scores and scores the 400 validation photos (where the setting is chosen) and the 500 held-out photos
(reported only). Balancing only reorders each photo's top k, so mAP and the 0.3 threshold rule are the same for every
row; the table shows the per-word Corel5k numbers (5 words per photo) it changes.

    python benchmarks/corel5k_balance.py                      # ~6 minutes on 2 CPU cores with cached features
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from corel5k import DEFAULT_DATA, REPO, heldout_dataset
from phototag.calibration import balanced_ranking, tag_balance_offsets
from phototag.metrics import per_tag_at_k
from phototag.pipeline import train
from report import write_json

POWERS = (1.0, 0.75, 0.5, 0.25, 0.0)
KS = (2, 3, 5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="raw Corel5k folder")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "corel5k", help="datasets go here")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "corel5k_balance.json")
    args = parser.parse_args(argv)
    if not (args.data / "corel5k_words.txt").exists():
        print(f"Corel5k not found at {args.data}; pass --data.", file=sys.stderr)
        return 2
    dataset = heldout_dataset(args.data, args.work)
    model = train(dataset, method="ensemble", config={"combiner": "average"}, seed=0, progress=False)
    ensemble = model.method
    train_records, val_records = dataset.train_val(val_fraction=0.1, seed=0)
    y_train = model.vocab.transform([r.tags for r in train_records])
    oof = ensemble._combine(ensemble.oof_scores_, "average")
    splits = {}
    for name, records in (("val", val_records), ("heldout", dataset.split("test"))):
        inputs = {"images": [str(dataset.image_path(r)) for r in records]}
        splits[name] = (model.vocab.transform([r.tags for r in records]), ensemble.score(inputs))

    def at5(offsets: np.ndarray | None) -> dict[str, dict[str, float]]:
        out = {}
        for name, (truth, scores) in splits.items():
            ranking = scores if offsets is None else balanced_ranking(scores, offsets)
            result = per_tag_at_k(truth, ranking, k=5)
            out[name] = {key: result[key] for key in ("mean_precision", "mean_recall", "f1", "n_plus", "n_tags")}
        return out

    rows = [{"balance": 0.0, "balance_k": None, **at5(None)}]
    for power in POWERS:
        for k in KS:
            rows.append({"balance": power, "balance_k": k, **at5(tag_balance_offsets(y_train, oof, k=k, power=power))})
    n_val, n_held = splits["val"][1].shape[0], splits["heldout"][1].shape[0]
    print(f"ensemble mlp@lite0/1/2 (average), top-5 balancing; {n_val} validation / {n_held} held-out Corel5k photos")
    print(f"{'balance':>8} {'k':>3} | {'val F1@5':>8} {'val N+':>6} | {'P@5':>6} {'R@5':>6} {'F1@5':>6} {'N+':>4}")
    for row in rows:
        k = "-" if row["balance_k"] is None else row["balance_k"]
        label = "off" if row["balance_k"] is None else f"{row['balance']:.2f}"
        val, held = row["val"], row["heldout"]
        print(
            f"{label:>8} {k:>3} | {val['f1']:>8.3f} {val['n_plus']:>6d} | {held['mean_precision']:>6.3f} "
            f"{held['mean_recall']:>6.3f} {held['f1']:>6.3f} {held['n_plus']:>4d}"
        )
    write_json(args.json, {"protocol": "corel5k-heldout500", "rows": rows}, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
