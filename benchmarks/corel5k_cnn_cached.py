"""Choose the cached-trunk ``cnn`` settings for Corel5k on validation photos only.

Each candidate trains ``cnn`` with ``cached_trunk=true`` on the benchmark's training photos (the 4,000 left after
``benchmarks/corel5k.py`` carves its 500 held-out ones), with early stopping and metrics on the validation photos
carved from those (seeded). The held-out photos are never scored here. The table gives validation F1@5, N+@5 and
mAP, the time to fill the activation cache (zero once cached) and the seconds per epoch; pass the best candidate's
model (saved under ``WORK/models/cnn-cached-<candidate>-<backbone>``) to ``benchmarks/corel5k.py --trained cnn=DIR``
for its held-out row.

    python benchmarks/corel5k_cnn_cached.py --json benchmarks/results/corel5k_cnn_cached_tuning.json
    python benchmarks/corel5k_cnn_cached.py --candidates blocks2 blocks3 --backbone efficientnet_lite1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from corel5k import DEFAULT_DATA, REPO, heldout_dataset
from phototag.pipeline import train

#: On the shared 2-core CPU a Lite0 epoch from the cache took about a minute (3,600 photos, last 2 blocks + head).
#: The epoch kept is the best on validation (early stopping, patience 4).
BASE = {"cached_trunk": True, "optimizer": "adam", "lr": 1e-3, "transfer_epochs": 3, "finetune_epochs": 12}

#: Candidate settings (over BASE).
CANDIDATES: dict[str, dict] = {
    "blocks2-short": {"finetune_blocks": 2, "transfer_epochs": 2, "finetune_epochs": 4},
    "blocks2": {"finetune_blocks": 2},
    "blocks2-bce": {"finetune_blocks": 2, "loss": "bce"},
    "blocks2-asl": {"finetune_blocks": 2, "loss": "asymmetric"},
    "blocks3": {"finetune_blocks": 3},
    "blocks2-crops4": {"finetune_blocks": 2, "cache_crops": 4},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="raw Corel5k folder")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "corel5k", help="datasets go here")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "corel5k_cnn_cached_tuning.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    dataset = heldout_dataset(args.data, args.work, seed=args.seed)
    rows = []
    for name in args.candidates:
        config = {**BASE, **CANDIDATES[name], "backbone": args.backbone}
        start = time.perf_counter()
        out = args.work / "models" / f"cnn-cached-{name}-{args.backbone}"
        model = train(dataset, method="cnn", config=config, cache_dir=args.cache_dir, seed=args.seed, progress=False)
        # Saved with its training time, so that benchmarks/corel5k.py --trained cnn=DIR can report the chosen one.
        model.info["train_seconds"] = round(time.perf_counter() - start, 1)
        model.save(out)
        method = model.method
        validation = model.info["validation"]
        epochs = [h["seconds"] for h in method.history_]
        rows.append(
            {
                "candidate": name,
                "settings": config,
                "val_f1@5": validation["tag@5_f1"],
                "val_n_plus@5": validation["tag@5_n_plus"],
                "val_map": validation["map"],
                "val_image_f1": validation["image_f1_mean"],
                "best_epoch": method.best_epoch_,
                "epochs_run": len(epochs),
                "cache_seconds": method.trunk_cache_["seconds"],
                "cache_computed": method.trunk_cache_["computed"],
                "seconds_per_epoch": sum(epochs) / len(epochs),
                "train_seconds": model.info["train_seconds"],
                "model": str(out),
                "history": method.history_,
            }
        )
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"protocol": "corel5k-heldout500 validation carve", "rows": rows}, indent=2))
        print(
            f"{name:<16} val F1@5 {rows[-1]['val_f1@5']:.3f} N+ {rows[-1]['val_n_plus@5']:>3d} "
            f"mAP {rows[-1]['val_map']:.3f}  best epoch {method.best_epoch_}/{len(epochs)}  "
            f"cache {rows[-1]['cache_seconds']:.0f} s  {rows[-1]['seconds_per_epoch']:.0f} s/epoch",
            flush=True,
        )
    best = max(rows, key=lambda r: (r["val_f1@5"], r["val_map"]))
    print(f"best on validation: {best['candidate']} {best['settings']}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
