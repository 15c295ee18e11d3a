"""Experiments of the contextualised tagger (issue 5): do the user's own tags help?

Each experiment is one command; every number is the mean ± std over 3 seeds (the seed changes the data split or
noise, and the model's initialisation). Tables are printed; everything is written to
``benchmarks/results/contextual_<experiment>.json``.

    python benchmarks/contextual.py mirflickr   # 24 MIRFLICKR-25K labels from the user-tag bag only
    python benchmarks/contextual.py harrison    # HARRISON hashtag completion: hidden hashtags from the others
    python benchmarks/contextual.py corel5k     # Corel5k + simulated noisy user tags: image vs tags vs image+tags

1. **mirflickr**: MIRFLICKR-25K (20,015 images, 1,386 anonymous user-tag columns, 24 human labels), seeded 80/10/10
   split per seed. ``contextual`` in mode ``tags`` vs the ``most_likely`` baseline: mAP and per-label AP; max vs
   average pooling; user-tag threshold and tag-limit sweep. The source ships the bag without tag order, so
   ``tag_limit`` keeps the first N tags in column order (the source's frequency ranking), not the user's order.
2. **harrison**: HARRISON posts (57,383, 997 hashtags), seeded 80/10/10 split. In every post with at least two
   hashtags a fraction (default half, at least one, never all) is hidden; the model reads the visible ones and ranks
   the 997 hashtags; visible hashtags are excluded from the ranking. Metrics per test post: P@1, P@5, R@5, and mAP
   over hashtags. Baselines: popularity (``most_likely`` with ``scores=prior``) and tag co-occurrence
   (score(t) = Σ over visible v of P(t hidden | v visible), counted on the training posts).
3. **corel5k**: Corel5k train split, 500 photos held out (seed 0, as ``benchmarks/corel5k.py``), efficientnet_lite0
   features from the feature cache. Simulated user tags for every photo (train, val and test alike): each true word
   is dropped with probability ``drop``, and Poisson(``add``) random words from the 50 most frequent training words
   (not already true) are added. ``contextual`` in modes image / tags / image+tags on the same split; the noisy tags
   alone as a ranking (1 if given) for reference. Metrics: the Corel5k protocol (5 words per photo: per-word P, R,
   F1, N+) and mAP.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from phototag.methods import create_method
from phototag.metrics import average_precision, evaluate_scores, mean_average_precision
from phototag.presets import preset_config
from phototag.vocab import TagVocabulary

REPO = Path(__file__).resolve().parents[1]
#: ../shared/data beside the repository (one level further up from a git worktree under wt/).
DATA = next(
    (p for p in (REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data") if p.is_dir()),
    REPO.parent / "shared" / "data",
)
RESULTS = REPO / "benchmarks" / "results"
SEEDS = (0, 1, 2)
#: Shared 2-core CPU: training settings per experiment (early stopping on validation mAP throughout).
TRAINING = {
    "mirflickr": {"max_epochs": 30, "patience": 5, "batch_size": 256},
    "harrison": {"max_epochs": 30, "patience": 5, "batch_size": 256},
    # image_dropout 0.8 for every mode with an image (image-only is also run without it): without it the image
    # pathway memorises the 3,600 training photos and the joint model barely uses the user tags (see docs).
    "corel5k": {"max_epochs": 60, "patience": 10, "batch_size": 128, "image_dropout": 0.8},
}


def mean_std(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def show(stat: dict[str, float], digits: int = 3) -> str:
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def fit_contextual(config: dict[str, Any], seed: int, train: dict, y: np.ndarray, val: dict, yv: np.ndarray, names):
    method = create_method("contextual", {**config, "seed": seed})
    start = time.perf_counter()
    method.fit(train, y, val_inputs=val, val_targets=yv, progress=False, tag_names=names)
    return method, time.perf_counter() - start


def write(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"contextual_{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {path.relative_to(REPO)}")
    return path


# --- 1. MIRFLICKR-25K ---------------------------------------------------------------------------------------------
MIRFLICKR_CONFIGS: dict[str, dict[str, Any] | None] = {
    "most_likely": None,
    "contextual max (threshold 2)": {"mode": "tags", "pooling": "max"},
    "contextual avg (threshold 2)": {"mode": "tags", "pooling": "avg"},
    "contextual max, threshold 20": {"mode": "tags", "pooling": "max", "tag_threshold": 20},
    "contextual max, tag limit 5": {"mode": "tags", "pooling": "max", "tag_limit": 5},
}


def run_mirflickr(args: argparse.Namespace) -> dict[str, Any]:
    from phototag.importers import import_mirflickr

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in MIRFLICKR_CONFIGS}
    labels: list[str] = []
    for seed in args.seeds:
        dataset = import_mirflickr(args.data / "mirflickr25k", seed=seed, layout="matrices")
        vocab = dataset.fit_vocab()
        labels = list(vocab.tags_)
        parts = {s: dataset.split(s) for s in ("train", "val", "test")}
        inputs = {s: {"user_tags": [r.user_tags for r in recs]} for s, recs in parts.items()}
        targets = {s: vocab.transform([r.tags for r in recs]) for s, recs in parts.items()}
        for name, config in MIRFLICKR_CONFIGS.items():
            start = time.perf_counter()
            if config is None:
                method = create_method("most_likely").fit(inputs["train"], targets["train"], progress=False)
                extra = {}
            else:
                method, _ = fit_contextual(
                    {**TRAINING["mirflickr"], **config},
                    seed,
                    inputs["train"],
                    targets["train"],
                    inputs["val"],
                    targets["val"],
                    labels,
                )
                extra = {"user_vocabulary": len(method.user_vocab_), "best_epoch": method.best_epoch_}
            scores = method.score(inputs["test"])
            per_label = [average_precision(targets["test"][:, j], scores[:, j]) for j in range(len(labels))]
            runs[name].append(
                {
                    "seed": seed,
                    "map": mean_average_precision(targets["test"], scores),
                    "per_label_ap": per_label,
                    "seconds": time.perf_counter() - start,
                    **extra,
                }
            )
            print(f"  seed {seed} {name:<32} mAP {runs[name][-1]['map']:.4f}", file=sys.stderr, flush=True)
    summary = {
        name: {
            "map": mean_std([r["map"] for r in rs]),
            "per_label_ap": {lab: mean_std([r["per_label_ap"][j] for r in rs]) for j, lab in enumerate(labels)},
            **({"user_vocabulary": mean_std([r["user_vocabulary"] for r in rs])} if "user_vocabulary" in rs[0] else {}),
            "seconds": mean_std([r["seconds"] for r in rs]),
        }
        for name, rs in runs.items()
    }
    print(f"\nMIRFLICKR-25K, 24 labels from the user-tag bag only ({len(args.seeds)} seeds: split + init)")
    header = f"{'method':<32} {'mAP':>15} {'user-tag vocab':>15} {'train s':>8}"
    print(header + "\n" + "-" * len(header))
    for name, s in summary.items():
        vocab_size = f"{s['user_vocabulary']['mean']:.0f}" if "user_vocabulary" in s else "-"
        print(f"{name:<32} {show(s['map']):>15} {vocab_size:>15} {s['seconds']['mean']:>8.1f}")
    best, base = summary["contextual max (threshold 2)"], summary["most_likely"]
    print(f"\nper-label AP: {'label':<12} {'most_likely':>15} {'contextual max':>15}")
    for lab in labels:
        print(f"              {lab:<12} {show(base['per_label_ap'][lab]):>15} {show(best['per_label_ap'][lab]):>15}")
    return {
        "experiment": "mirflickr",
        "seeds": list(args.seeds),
        "training": TRAINING["mirflickr"],
        "summary": summary,
        "runs": runs,
    }


# --- 1b. MIRFLICKR-25K photos + user tags -> the 24 labels ----------------------------------------------------------
PHOTO_MODES = {"image only": "image", "tags only": "tags", "image + tags": "image+tags"}


def run_mirflickr_photos(args: argparse.Namespace) -> dict[str, Any]:
    """The real photos (first ``--images``) and their raw user tags → the 24 potential labels, seeded 80/10/10."""
    from phototag.backbones import create_backbone
    from phototag.features import FeatureStore
    from phototag.importers import import_mirflickr

    configs = {name: {"mode": mode} for name, mode in PHOTO_MODES.items()}
    configs["image + tags, image_dropout 0.8"] = {"mode": "image+tags", "image_dropout": 0.8}
    configs.update({f"{name}, --preset paper": {**preset_config("contextual", "paper"), "mode": mode}
                    for name, mode in PHOTO_MODES.items()})  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ["most_likely", *configs]}
    store = FeatureStore(create_backbone("efficientnet_lite0"), args.cache_dir)
    labels: list[str] = []
    for seed in args.seeds:
        dataset = import_mirflickr(args.data / "mirflickr25k", seed=seed, targets="labels", max_images=args.images)
        vocab = dataset.fit_vocab()
        labels = list(vocab.tags_)
        parts = {s: dataset.split(s) for s in ("train", "val", "test")}
        features = {
            s: store.extract([str(dataset.image_path(r)) for r in recs], progress=False).features
            for s, recs in parts.items()
        }
        inputs = {s: {"features": features[s], "user_tags": [r.user_tags for r in recs]} for s, recs in parts.items()}
        targets = {s: vocab.transform([r.tags for r in recs]) for s, recs in parts.items()}
        baseline = create_method("most_likely").fit(inputs["train"], targets["train"], progress=False)
        runs["most_likely"].append(
            {"seed": seed, "map": mean_average_precision(targets["test"], baseline.score(inputs["test"]))}
        )
        for name, config in configs.items():
            method, seconds = fit_contextual(
                {**TRAINING["mirflickr"], **config}, seed, inputs["train"], targets["train"], inputs["val"],
                targets["val"], labels,
            )  # fmt: skip
            scores = method.score(inputs["test"])
            runs[name].append(
                {"seed": seed, "map": mean_average_precision(targets["test"], scores), "seconds": seconds}
            )
            print(f"  seed {seed} {name:<32} mAP {runs[name][-1]['map']:.4f}", file=sys.stderr, flush=True)
    summary = {name: {"map": mean_std([r["map"] for r in rs])} for name, rs in runs.items()}
    print(f"\nMIRFLICKR-25K photos {args.images}: 24 labels from photo / user tags / both ({len(args.seeds)} seeds)")
    for name, s in summary.items():
        print(f"{name:<40} mAP {show(s['map'])}")
    return {"experiment": "mirflickr-photos", "images": args.images, "seeds": list(args.seeds), "summary": summary,
            "runs": runs, "backbone": "efficientnet_lite0"}  # fmt: skip


# --- 2. HARRISON hashtag completion -------------------------------------------------------------------------------
def hide_hashtags(tag_lists, fraction: float, rng: np.random.Generator):
    """Split each post's hashtags into (visible, hidden); posts with fewer than 2 hashtags are left out."""
    visible, hidden, kept = [], [], []
    for i, tags in enumerate(tag_lists):
        tags = list(dict.fromkeys(tags))
        if len(tags) < 2:
            continue
        n_hide = min(len(tags) - 1, max(1, int(round(fraction * len(tags)))))
        order = rng.permutation(len(tags))
        hidden.append([tags[j] for j in order[:n_hide]])
        visible.append([tags[j] for j in order[n_hide:]])
        kept.append(i)
    return visible, hidden, kept


def cooccurrence_scores(train_visible, train_hidden, test_visible, vocab: TagVocabulary) -> np.ndarray:
    """Σ over a post's visible tags v of P(t hidden | v visible), from training-post counts."""
    from scipy import sparse

    xv = sparse.csr_matrix(vocab.transform(train_visible))
    yh = sparse.csr_matrix(vocab.transform(train_hidden))
    counts = (xv.T @ yh).toarray()
    conditional = counts / np.maximum(np.asarray(xv.sum(axis=0)).ravel()[:, None], 1.0)
    return (vocab.transform(test_visible) @ conditional).astype(np.float32)


def completion_metrics(hidden: np.ndarray, visible: np.ndarray, scores: np.ndarray, k: int = 5) -> dict[str, float]:
    """P@1, P@k, R@k per post (visible hashtags excluded from the ranking) and mAP over hashtags."""
    scores = np.where(visible > 0, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(hidden, order[:, :k], axis=1)
    n_hidden = hidden.sum(axis=1)
    ok = n_hidden > 0
    finite = np.where(np.isfinite(scores), scores, np.nanmin(np.where(np.isfinite(scores), scores, np.nan)) - 1.0)
    return {
        "p@1": float(hits[ok, 0].mean()),
        f"p@{k}": float(hits[ok].sum(axis=1).mean() / k),
        f"r@{k}": float((hits[ok].sum(axis=1) / n_hidden[ok]).mean()),
        "map": mean_average_precision(hidden, finite),
        "posts_without_known_hidden": int((~ok).sum()),
    }


def run_harrison(args: argparse.Namespace) -> dict[str, Any]:
    from phototag.importers import import_harrison

    names = ["popularity (most_likely, prior)", "co-occurrence", "contextual max", "contextual avg"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    counts: dict[str, Any] = {}
    for seed in args.seeds:
        dataset = import_harrison(args.data / "harrison", seed=seed)
        rng = np.random.default_rng(seed)
        split = {}
        for part in ("train", "val", "test"):
            records = dataset.split(part)
            if part == "train" and args.max_train and len(records) > args.max_train:
                chosen = np.sort(rng.choice(len(records), args.max_train, replace=False))
                records = [records[i] for i in chosen]
            visible, hidden, kept = hide_hashtags([r.tags for r in records], args.hide, rng)
            split[part] = (visible, hidden)
            counts[part] = {"posts": len(records), "with_2_or_more_hashtags": len(kept)}
        # Target vocabulary: every hashtag of the training posts (visible or hidden).
        vocab = TagVocabulary(min_count=1).fit(v + h for v, h in zip(*split["train"], strict=True))
        targets = {p: vocab.transform(split[p][1]) for p in split}
        shown = {p: vocab.transform(split[p][0]) for p in split}
        inputs = {p: {"user_tags": split[p][0]} for p in split}
        baseline = create_method("most_likely", scores="prior").fit(inputs["train"], targets["train"], progress=False)
        all_scores = {
            names[0]: baseline.score(inputs["test"]),
            names[1]: cooccurrence_scores(*split["train"], split["test"][0], vocab),
        }
        for name, pooling in ((names[2], "max"), (names[3], "avg")):
            method, _ = fit_contextual(
                {**TRAINING["harrison"], "mode": "tags", "pooling": pooling, "tag_threshold": 1},
                seed,
                inputs["train"],
                targets["train"],
                inputs["val"],
                targets["val"],
                vocab.tags_,
            )
            all_scores[name] = method.score(inputs["test"])
        for name, scores in all_scores.items():
            runs[name].append({"seed": seed, **completion_metrics(targets["test"], shown["test"], scores)})
            print(f"  seed {seed} {name:<32} {runs[name][-1]}", file=sys.stderr, flush=True)
    keys = ("p@1", "p@5", "r@5", "map")
    summary = {name: {key: mean_std([r[key] for r in rs]) for key in keys} for name, rs in runs.items()}
    print(
        f"\nHARRISON hashtag completion: {args.hide:.0%} of each post's hashtags hidden, predicted from the rest "
        f"({len(vocab)} hashtags, {counts['train']['posts']} training posts; {len(args.seeds)} seeds)"
    )
    header = f"{'method':<32} " + " ".join(f"{key:>15}" for key in keys)
    print(header + "\n" + "-" * len(header))
    for name, s in summary.items():
        print(f"{name:<32} " + " ".join(f"{show(s[key]):>15}" for key in keys))
    return {
        "experiment": "harrison",
        "hide_fraction": args.hide,
        "max_train": args.max_train,
        "posts": counts,
        "seeds": list(args.seeds),
        "training": TRAINING["harrison"],
        "summary": summary,
        "runs": runs,
    }


# --- 3. Corel5k with noisy user tags ------------------------------------------------------------------------------
def noisy_user_tags(tag_lists, *, drop: float, add: float, frequent: Sequence[str], rng: np.random.Generator):
    """Each true tag kept with probability 1 - drop; Poisson(add) random frequent tags (not already true) added."""
    out = []
    for tags in tag_lists:
        kept = [t for t in tags if rng.random() >= drop]
        candidates = [t for t in frequent if t not in tags]
        n_add = min(int(rng.poisson(add)), len(candidates))
        extra = [candidates[i] for i in rng.choice(len(candidates), n_add, replace=False)] if n_add else []
        noisy = kept + extra
        out.append([noisy[i] for i in rng.permutation(len(noisy))])
    return out


def tag_rates(true_lists, user_lists) -> dict[str, float]:
    """Precision (user tags that are true) and recall (true tags the user gave) of simulated user tags."""
    n_user = sum(len(u) for u in user_lists)
    n_true = sum(len(t) for t in true_lists)
    n_both = sum(len(set(u) & set(t)) for t, u in zip(true_lists, user_lists, strict=True))
    return {
        "precision": n_both / max(n_user, 1),
        "recall": n_both / max(n_true, 1),
        "tags_per_image": n_user / len(user_lists),
        "images_without_user_tags": sum(not u for u in user_lists) / len(user_lists),
    }


def run_corel5k(args: argparse.Namespace) -> dict[str, Any]:
    from phototag.backbones import create_backbone
    from phototag.features import FeatureStore
    from phototag.importers import import_corel5k

    full = import_corel5k(args.data / "corel5k")
    full.fit_vocab()
    dataset = full.carve_test(500, seed=0)
    vocab = dataset.vocab
    result = FeatureStore(create_backbone("efficientnet_lite0"), args.cache_dir).extract(
        [str(dataset.image_path(r)) for r in dataset.records], progress=True
    )
    if not result.ok.all():
        raise SystemExit(f"{(~result.ok).sum()} Corel5k photos could not be read: {result.failures[:3]}")
    row_of = {r.id: i for i, r in enumerate(dataset.records)}
    frequent = sorted(vocab.tags_, key=lambda t: -vocab.counts_[t])[:50]
    levels = {f"drop {d:.0%}, add {a:g}": (d, a) for d, a in args.noise}
    names = ["image only", "image only, image_dropout 0.8"] + [
        f"{mode} [{level}]" for level in levels for mode in ("user tags as given", "tags only", "image+tags")
    ]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    rates: dict[str, list[dict[str, float]]] = {level: [] for level in levels}
    keys = ("tag@5_mean_precision", "tag@5_mean_recall", "tag@5_f1", "tag@5_n_plus", "map")
    for seed in args.seeds:
        train_records, val_records = dataset.train_val(val_fraction=0.1, seed=seed)
        parts = {"train": train_records, "val": val_records, "test": dataset.split("test")}
        feats = {p: result.features[[row_of[r.id] for r in recs]] for p, recs in parts.items()}
        targets = {p: vocab.transform([r.tags for r in recs]) for p, recs in parts.items()}

        def record(name: str, scores: np.ndarray, seconds: float = 0.0, seed: int = seed, truth=targets["test"]):
            metrics = evaluate_scores(truth, scores, k=5)
            runs[name].append({"seed": seed, "seconds": seconds, **{key: metrics[key] for key in keys}})
            print(f"  seed {seed} {name:<40} F1@5 {metrics['tag@5_f1']:.3f} mAP {metrics['map']:.3f}", file=sys.stderr)

        image_only = {p: {"features": feats[p]} for p in parts}
        for name, image_dropout in (("image only", 0.0), ("image only, image_dropout 0.8", 0.8)):
            config = {**TRAINING["corel5k"], "mode": "image", "image_dropout": image_dropout}
            method, seconds = fit_contextual(
                config, seed, image_only["train"], targets["train"], image_only["val"], targets["val"], vocab.tags_
            )
            record(name, method.score(image_only["test"]), seconds)
        for level, (drop, add) in levels.items():
            rng = np.random.default_rng(1000 + seed)
            user = {
                p: noisy_user_tags([r.tags for r in recs], drop=drop, add=add, frequent=frequent, rng=rng)
                for p, recs in parts.items()
            }
            rates[level].append(tag_rates([r.tags for r in parts["test"]], user["test"]))
            given = vocab.transform(user["test"])
            # Ties among given tags broken by training frequency, so top-5 picks are deterministic.
            prior = np.array([vocab.counts_[t] for t in vocab.tags_], dtype=np.float32) / len(train_records)
            record(f"user tags as given [{level}]", given + 1e-3 * prior)
            for mode in ("tags", "image+tags"):
                inputs = {p: {"features": feats[p], "user_tags": user[p]} for p in parts}
                config = {**TRAINING["corel5k"], "mode": mode}
                method, seconds = fit_contextual(
                    config, seed, inputs["train"], targets["train"], inputs["val"], targets["val"], vocab.tags_
                )
                label = "tags only" if mode == "tags" else mode
                record(f"{label} [{level}]", method.score(inputs["test"]), seconds)
    summary = {name: {key: mean_std([r[key] for r in rs]) for key in keys} for name, rs in runs.items() if rs}
    rate_summary = {level: {k: mean_std([r[k] for r in rs]) for k in rs[0]} for level, rs in rates.items()}
    print(
        "\nCorel5k, 500 held-out photos, efficientnet_lite0 features, simulated noisy user tags "
        f"({len(args.seeds)} seeds)"
    )
    for level, s in rate_summary.items():
        print(
            f"  [{level}] user tags on test photos: precision {show(s['precision'])}, recall {show(s['recall'])}, "
            f"{s['tags_per_image']['mean']:.2f} per photo, {s['images_without_user_tags']['mean']:.1%} photos without"
        )
    header = f"{'inputs':<44} {'P@5':>15} {'R@5':>15} {'F1@5':>15} {'N+':>13} {'mAP':>15}"
    print(header + "\n" + "-" * len(header))
    for name, s in summary.items():
        print(
            f"{name:<44} {show(s[keys[0]]):>15} {show(s[keys[1]]):>15} {show(s[keys[2]]):>15} "
            f"{show(s[keys[3]], 1):>13} {show(s[keys[4]]):>15}"
        )
    return {
        "experiment": "corel5k",
        "protocol": "corel5k-heldout500 (seed 0), 5 words per photo",
        "noise": {level: {"drop": d, "add_poisson_mean": a} for level, (d, a) in levels.items()},
        "user_tag_rates_test": rate_summary,
        "seeds": list(args.seeds),
        "training": TRAINING["corel5k"],
        "summary": summary,
        "runs": runs,
    }


def parse_noise(text: str) -> tuple[float, float]:
    drop, _, add = text.partition(",")
    return float(drop), float(add or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=("mirflickr", "mirflickr-photos", "harrison", "corel5k"))
    parser.add_argument("--images", type=int, default=3000, help="mirflickr-photos: use photos im1 ... imN")
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding mirflickr25k/, harrison/, corel5k/")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    parser.add_argument("--hide", type=float, default=0.5, help="harrison: share of each post's hashtags hidden")
    parser.add_argument("--max-train", type=int, default=10000, help="harrison: training posts used (0 = all)")
    parser.add_argument(
        "--noise",
        type=parse_noise,
        nargs="+",
        default=[(0.5, 1.0)],
        metavar="DROP,ADD",
        help="corel5k: noise levels (drop probability of a true word, mean number of random frequent words added)",
    )
    parser.add_argument("--cache-dir", default=None, help="corel5k: feature cache root (default ~/.cache/phototag)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    needed = {"mirflickr": "mirflickr25k", "mirflickr-photos": "mirflickr25k", "harrison": "harrison"}.get(
        args.experiment, "corel5k"
    )
    if not (args.data / needed).is_dir():
        print(f"{args.data / needed} not found; pass --data.", file=sys.stderr)
        return 2
    run = {
        "mirflickr": run_mirflickr,
        "mirflickr-photos": run_mirflickr_photos,
        "harrison": run_harrison,
        "corel5k": run_corel5k,
    }[args.experiment]
    start = time.perf_counter()
    payload = run(args)
    payload["command"] = "python benchmarks/contextual.py " + " ".join(argv if argv is not None else sys.argv[1:])
    payload["total_seconds"] = round(time.perf_counter() - start, 1)
    write(args.experiment, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
