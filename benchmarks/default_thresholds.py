"""Per-word thresholds for the default model, or one threshold for all? Decided on the validation photos only.

The default model's own rule shows a photo's words scoring at least 0.3 (at most 15). This compares, by mean
per-photo F1 under that rule, the global 0.3 with thresholds fitted per word (the one maximising each word's F1,
:func:`phototag.calibration.per_tag_thresholds`, as ``train --calibrate-thresholds`` sets them), cross-validated on
the 400 Corel5k validation photos the default model's heads stopped on: fit on a random half, score on the other,
both ways, ``--repeats`` random halvings. Variants: only words with at least N validation photos get their own
threshold; fitted thresholds clipped to [0.15, 0.6]. The 500 held-out photos are not used.

    python benchmarks/default_thresholds.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from corel5k import heldout_dataset
from phototag.calibration import per_tag_thresholds
from phototag.metrics import per_image_prf, threshold_mask
from phototag.model import load_model
from report import write_json

REPO = Path(__file__).resolve().parents[1]
MIN_POSITIVES = (1, 3, 5, 8)


def mean_f1(y: np.ndarray, scores: np.ndarray, threshold: float | np.ndarray, max_tags: int | None) -> float:
    return float(per_image_prf(y, threshold_mask(scores, threshold, max_tags))["f1"].mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "corel5k")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "corel5k", help="imported datasets go here")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "default_thresholds.json")
    args = parser.parse_args(argv)
    if not (args.data / "corel5k_words.txt").exists():
        raise SystemExit(f"Corel5k not found at {args.data}; pass --data.")
    model = load_model()
    dataset = heldout_dataset(args.data, args.work)
    _, val = dataset.train_val(val_fraction=0.1, seed=0)  # the carve the build stopped the heads on
    scored = model.score_images([dataset.image_path(r) for r in val], progress=False)
    y = model.vocab.transform([r.tags for r in val])[scored.ok] > 0
    scores, max_tags, base = scored.scores, model.decision.max_tags, model.decision.threshold
    rows: dict[str, list[float]] = {"one threshold (0.3)": []}
    rows |= {f"per word, words with >= {m} photos": [] for m in MIN_POSITIVES}
    rows |= {f"per word, >= {m} photos, clipped to [0.15, 0.6]": [] for m in MIN_POSITIVES}
    rng = np.random.default_rng(0)
    for _ in range(args.repeats):
        order = rng.permutation(len(y))
        halves = order[: len(y) // 2], order[len(y) // 2 :]
        for fit, held in (halves, halves[::-1]):
            fitted = per_tag_thresholds(y[fit], scores[fit], default=base)
            positives = y[fit].sum(axis=0)
            rows["one threshold (0.3)"].append(mean_f1(y[held], scores[held], base, max_tags))
            for m in MIN_POSITIVES:
                own = np.where(positives >= m, fitted, base)
                rows[f"per word, words with >= {m} photos"].append(mean_f1(y[held], scores[held], own, max_tags))
                clipped = np.clip(own, 0.15, 0.6)
                key = f"per word, >= {m} photos, clipped to [0.15, 0.6]"
                rows[key].append(mean_f1(y[held], scores[held], clipped, max_tags))
    print(f"{len(y)} Corel5k validation photos, {args.repeats} random halvings (fit on one half, score the other)")
    print(f"{'thresholds':<48} {'mean per-photo F1':>18}")
    for name, values in rows.items():
        print(f"{name:<48} {np.mean(values):>12.4f} ± {np.std(values):.4f}")
    payload = {
        "photos": len(y),
        "repeats": args.repeats,
        "mean_f1": {k: float(np.mean(v)) for k, v in rows.items()},
        "std_f1": {k: float(np.std(v)) for k, v in rows.items()},
    }
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
