"""Zero training on MIRFLICKR-25K: how well do the default model and the ``imagenet`` method tag photos nobody
trained or tuned them on?

Photos: a fixed subset of the MIRFLICKR photos in ../shared/data (every ``--step``-th of 1–20000: 1,000 photos by
default, to keep feature extraction affordable on a 2-core CPU). None of them is used for anything but the report.

Rows:
  (a) the shipped default model (Corel5k heads, ``phototag tag``);
  (b) the ``imagenet`` method (the backbones' own ImageNet-1k classifiers folded into keywords through
      data/imagenet_keywords.yaml) on efficientnet_lite0, lite1, lite2 and their average (lite012);
  (c) (a) and (b, lite012) merged: a label's score is the better of the two.

``imagenet`` learns only its calibration, and only on Corel5k photos (``--calibration-photos`` of the Corel5k train
split, seeded; Corel words matched to keywords through the mapping's synonyms), never on MIRFLICKR. Calibration is
per keyword and monotone, so it leaves (b)'s per-label AP as it is; it matters for (c) and the scene check, where
scores of the two sources are compared.

Metrics:
  * mAP over MIRFLICKR's 14 "relevant" labels (``*_r1.txt``): each label is scored by the model's tag of the same
    name or a close synonym (:data:`LABEL_SYNONYMS`; the best of those the model has). A label the model has no
    tag for gets a constant score (AP = the label's frequency, what a random ranking gets) and is marked "-".
  * Natural scenes: photos of the subset showing desert, mountains, sea, sunset or trees (MIRFLICKR's potential
    labels sea, sunset, tree; the owners' Flickr tags desert, mountain(s)) — the share whose 10 best tags contain
    the scene or a synonym (:data:`SCENE_SYNONYMS`).

    python benchmarks/zero_shot_mirflickr.py --data ../shared/data
    python benchmarks/zero_shot_mirflickr.py --data ../shared/data --step 10   # 2,000 photos
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from phototag.backbones import create_backbone
from phototag.features import FeatureStore
from phototag.imagenet_keywords import load_mapping
from phototag.inputs import build_inputs
from phototag.methods import create_method
from phototag.metrics import average_precision
from phototag.model import load_model
from phototag.runtime import RunOptions
from report import write_json

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

#: MIRFLICKR label -> the tag names that count for it (same name, plural, or a close synonym; not hyponyms).
LABEL_SYNONYMS: dict[str, tuple[str, ...]] = {
    "baby": ("baby", "infant"),
    "bird": ("bird", "birds"),
    "car": ("car", "cars"),
    "clouds": ("clouds", "cloud"),
    "dog": ("dog", "dogs", "puppy"),
    "female": ("female", "woman", "women", "girl"),
    "flower": ("flower", "flowers", "blooms"),
    "male": ("male", "man", "men", "boy"),
    "night": ("night",),
    "people": ("people", "person", "crowd"),
    "portrait": ("portrait", "face"),
    "river": ("river", "stream"),
    "sea": ("sea", "ocean"),
    "tree": ("tree", "trees"),
}
#: The 14 "relevant" labels (``mirflickr25k_annotations_v080/*_r1.txt``), in this order.
LABELS = tuple(LABEL_SYNONYMS)

#: Scene -> tags that name it (or a close synonym) among a photo's 10 best.
SCENE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "desert": ("desert", "dunes", "sand"),
    "mountain": ("mountain", "mountains", "peaks", "hills", "valley", "volcano", "cliff"),
    "sea": ("sea", "ocean", "coast", "beach", "waves", "shore", "harbor", "coral reef"),
    "sunset": ("sunset", "sunrise", "sun"),
    "tree": ("tree", "trees", "forest", "palm", "branch", "trunk"),
}


def read_ids(path: Path) -> set[int]:
    return {int(line) for line in path.read_text().split()}


def mirflickr_subset(
    root: Path, step: int, start: int | None = None
) -> tuple[list[str], list[int], np.ndarray, dict[str, set[int]]]:
    """Paths and numbers of the report photos (``start``, ``start + step``, ...; ``start`` defaults to ``step``), their
    14 relevant labels ``(n, 14)`` and the scene photos."""
    annotations = root / "mirflickr25k_annotations_v080"
    numbers = list(range(start or step, 20001, step))
    paths = [str(root / "mirflickr" / f"im{n}.jpg") for n in numbers]
    labels = np.zeros((len(numbers), len(LABELS)), dtype=np.float32)
    for j, label in enumerate(LABELS):
        ids = read_ids(annotations / f"{label}_r1.txt")
        labels[:, j] = [n in ids for n in numbers]
    scenes: dict[str, set[int]] = {s: set() for s in SCENE_SYNONYMS}
    for scene, label_file in (("sea", "sea.txt"), ("sunset", "sunset.txt"), ("tree", "tree.txt")):
        scenes[scene] = read_ids(annotations / label_file) & set(numbers)
    for n in numbers:
        tags_file = root / "mirflickr" / "meta" / "tags" / f"tags{n}.txt"
        user_tags = set(tags_file.read_text(errors="replace").split()) if tags_file.is_file() else set()
        if "desert" in user_tags:
            scenes["desert"].add(n)
        if user_tags & {"mountain", "mountains"}:
            scenes["mountain"].add(n)
    return paths, numbers, labels, scenes


def corel_calibration_set(root: Path, n: int, seed: int) -> tuple[list[str], list[list[str]]]:
    """``n`` seeded Corel5k train photos and their words (for the imagenet method's calibration only)."""
    from scipy.io import loadmat

    ids = [line.strip() for line in (root / "corel5k_train_list.txt").read_text().splitlines() if line.strip()]
    words = [w.strip() for w in (root / "corel5k_words.txt").read_text().splitlines() if w.strip()]
    annot = loadmat(root / "corel5k_train_annot.mat")["annot1"]
    pick = sorted(np.random.default_rng(seed).choice(len(ids), n, replace=False))
    return [str(root / f"{ids[i]}.jpeg") for i in pick], [[words[j] for j in np.flatnonzero(annot[i])] for i in pick]


def features_of(paths: list[str], backbones: tuple[str, ...]) -> dict[str, np.ndarray]:
    out = {}
    for name in backbones:
        result = FeatureStore(create_backbone(name)).extract(paths, progress=sys.stderr.isatty(), desc=name)
        if not result.ok.all():
            raise SystemExit(f"{(~result.ok).sum()} photos could not be read: {result.failures[:3]}")
        out[name] = result.features
    return out


def label_scores(scores: np.ndarray, tags: list[str], synonyms: dict[str, tuple[str, ...]]) -> tuple[np.ndarray, list]:
    """``(n, n_labels)``: per label the best score among its synonyms the model has; ``used`` names them (or [])."""
    index = {t: i for i, t in enumerate(tags)}
    out = np.zeros((len(scores), len(synonyms)), dtype=np.float64)
    used = []
    for j, names in enumerate(synonyms.values()):
        columns = [index[name] for name in names if name in index]
        used.append([tags[c] for c in columns])
        if columns:
            out[:, j] = scores[:, columns].max(axis=1)
    return out, used


def per_label_ap(labels: np.ndarray, scores: np.ndarray) -> list[float]:
    return [average_precision(labels[:, j], scores[:, j]) for j in range(labels.shape[1])]


def scene_hits(
    scores: np.ndarray,
    tags: list[str],
    numbers: list[int],
    scenes: dict[str, set[int]],
    k: int = 10,
    lists: list[set[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Per scene: photos, and the share with the scene or a synonym among their ``k`` best tags (or in ``lists``,
    each photo's tag list as the model gives it: for the default model, its 10 best keywords and the categories it
    adds after them)."""
    row = {n: i for i, n in enumerate(numbers)}
    if lists is None:
        lists = [{tags[j] for j in top} for top in np.argsort(-scores, axis=1)[:, :k]]
    out = {}
    total_hits = total = 0
    for scene, photos in scenes.items():
        wanted = set(SCENE_SYNONYMS[scene])
        hits = sum(1 for n in photos if wanted & lists[row[n]])
        out[scene] = {"photos": len(photos), "hit_rate": hits / len(photos) if photos else float("nan")}
        total_hits, total = total_hits + hits, total + len(photos)
    out["all"] = {"photos": total, "hit_rate": total_hits / total if total else float("nan")}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="../shared/data (mirflickr25k, corel5k)")
    parser.add_argument("--step", type=int, default=20, help="every STEP-th photo of 1-20000 (20: 1,000 photos)")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped default)")
    parser.add_argument("--start", type=int, default=None, help="first photo number (default: STEP)")
    parser.add_argument("--calibration-photos", type=int, default=500, help="Corel5k photos for calibration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "zero_shot_mirflickr.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    mir_root, corel_root = args.data / "mirflickr25k", args.data / "corel5k"
    if not (mir_root / "mirflickr").is_dir() or not (corel_root / "corel5k_train_list.txt").is_file():
        raise SystemExit(f"MIRFLICKR-25K and Corel5k are needed under {args.data} (see its README.md).")
    started = time.time()
    paths, numbers, labels, scenes = mirflickr_subset(mir_root, args.step, args.start)
    print(
        f"{len(paths)} MIRFLICKR photos (every {args.step}th of 1-20000 from {numbers[0]}); scene photos: "
        + ", ".join(f"{s} {len(p)}" for s, p in scenes.items())
    )

    rows: dict[str, tuple] = {}
    # (a) the shipped default model, and (a0) its Corel5k part alone (the default model before the ImageNet keywords)
    model = load_model(args.model)
    scored = model.score_images(paths)
    if not scored.ok.all():
        raise SystemExit(f"{len(scored.failures)} photos could not be read: {scored.failures[:3]}")
    lists = [{t["tag"] for t in p["tags"]} for p in model.format_predictions(paths, scored.scores, top_k=10)]
    rows["default model"] = (scored.scores.astype(np.float64), model.tags, lists)
    if model.method.name == "merged":
        inputs = build_inputs(model.method, paths, options=RunOptions(progress=False)).inputs
        corel_scores = model.method.part_scores(inputs)[0].astype(np.float64)
        columns = model.method.columns_[0]
        rows["(a0) its Corel5k words only"] = (corel_scores, [model.tags[j] for j in columns], None)

    # (b) imagenet, calibrated on Corel5k photos only
    mapping = load_mapping()
    vocab = mapping.vocabulary()
    calib_paths, calib_words = corel_calibration_set(corel_root, args.calibration_photos, args.seed)
    calib_targets = mapping.targets_from_words(calib_words, vocab)
    calib_features = features_of(calib_paths, BACKBONES)
    report_features = features_of(paths, BACKBONES)
    calibrated = int((calib_targets.sum(0) >= 10).sum())
    print(f"imagenet calibration: {len(calib_paths)} Corel5k photos, {calibrated} keywords with their own Platt pair")
    for name, backbones in [(b.replace("efficientnet_", ""), (b,)) for b in BACKBONES] + [("lite012", BACKBONES)]:
        method = create_method("imagenet", backbones=list(backbones))
        method.fit(
            {"backbone_features": {b: calib_features[b] for b in backbones}},
            calib_targets,
            tag_names=vocab,
            progress=False,
        )
        scores = method.score({"backbone_features": {b: report_features[b] for b in backbones}})
        rows[f"imagenet {name}"] = (scores.astype(np.float64), vocab, None)

    results = {}
    header = f"{'model':<28} {'mAP':>6}  " + " ".join(f"{label[:7]:>7}" for label in LABELS) + "  scenes@10"
    print(header)
    print("-" * len(header))
    for name, (scores, tags, tag_lists) in rows.items():
        per_label, used = label_scores(scores, tags, LABEL_SYNONYMS)
        aps = per_label_ap(labels, per_label)
        scene = scene_hits(scores, tags, numbers, scenes, lists=tag_lists)
        cells = " ".join(f"{ap:7.3f}" if names else f"{'-':>7}" for ap, names in zip(aps, used, strict=True))
        print(f"{name:<28} {np.mean(aps):6.3f}  {cells}  {scene['all']['hit_rate']:9.3f}")
        results[name] = {
            "map": float(np.mean(aps)),
            "ap": {label: float(ap) for label, ap in zip(LABELS, aps, strict=True)},
            "tags_used": {label: names for label, names in zip(LABELS, used, strict=True)},
            "scenes_top10": scene,
        }
    print("'-': the model has no tag for the label (constant score: AP = the label's frequency).")
    scene_line = ", ".join(f"{s} {v['hit_rate']:.2f}" for s, v in results["default model"]["scenes_top10"].items())
    print(f"scenes@10 per scene, default model: {scene_line}")
    payload = {
        "photos": {
            "dataset": "MIRFLICKR-25K",
            "numbers": f"every {args.step}th of 1-20000 from {numbers[0]}",
            "n": len(paths),
        },
        "label_frequency": {label: float(labels[:, j].mean()) for j, label in enumerate(LABELS)},
        "calibration": {
            "dataset": "Corel5k train split",
            "photos": len(calib_paths),
            "seed": args.seed,
            "keywords_with_own_platt": calibrated,
        },
        "label_synonyms": LABEL_SYNONYMS,
        "scene_synonyms": SCENE_SYNONYMS,
        "results": results,
        "seconds": round(time.time() - started, 1),
    }
    write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
