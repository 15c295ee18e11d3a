"""Rebuild the default model shipped in ``src/phototag/default_model`` (used by ``phototag tag``).

Recipe (docs/default_model.md has the numbers):

1. Import the Corel5k train split (4,500 photos, 260 words) from ../shared/data/corel5k and hold out the same 500
   seeded-random photos as ``benchmarks/corel5k.py`` (seed 0). They are never seen in training, early stopping or
   calibration: the shipped model is measured on them.
2. Train an ``ensemble`` of two ``mlp`` heads and two ``knn`` voters on efficientnet_lite1 and lite2 features of the
   other 4,000 (early stopping on a seeded 10 % validation carve of those), combined by a weighted ``average`` (mlp
   3/8 each, knn 1/8 each). The stacker (5-fold
   out-of-fold) is trained too, so every combiner is there at predict time. Balancing offsets (``balance=0.25``,
   ``balance_k=2``, fitted on the out-of-fold scores and chosen on the validation photos, docs/default_model.md) are
   saved for balanced top-k decisions (``--balanced``), which give rare words their share of each photo's top k.
   They are opt-in: plain top-k and the 0.3 rule that ``phototag tag`` applies by default rank by score.
3. Evaluate the trained model on the 500 held-out photos (Corel5k protocol: 5 words per photo) and save it with those
   metrics in ``info["heldout"]`` (and, with balanced top-5 decisions, ``info["heldout_balanced"]``).

4. Ship the backbones inside the model as ONNX graphs (``backbones/*.onnx``, exported from the offline ImageNet
   weights and checked against torch on real photos; weights stored as float16, computed in float32), so tagging
   with the default model needs neither torch nor the weight packages. The held-out numbers of step 3 are measured
   with these graphs.

    .venv/bin/python scripts/build_default_model.py                                       # the shipped recipe
    .venv/bin/python scripts/build_default_model.py --method mlp --out /tmp/default-mlp   # the previous default
    .venv/bin/python scripts/build_default_model.py --reship   # same heads; re-export the graphs and re-measure
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
#: The shipped ensemble's settings: mlp heads and kNN voting on Lite1 and Lite2 features of the whole photo (``+full``:
#: no centre crop), a weighted average (each mlp 3/8, each kNN 1/8); the members were chosen on the validation photos
#: and the whole photo on 5 folds of the training photos (docs/default_model.md).
ENSEMBLE_RECIPE = [
    "members=[mlp@efficientnet_lite1+full, mlp@efficientnet_lite2+full, knn@efficientnet_lite1+full, "
    "knn@efficientnet_lite2+full]",
    "weights=[3, 3, 1, 1]",
    "combiner=average",
    "balance=0.25",
    "balance_k=2",
]
#: Photos held out of the 4,500 for measuring the shipped model (the benchmark's protocol).
N_HELDOUT = 500


def export_graphs(model, folder: Path) -> list[Path]:
    """The model's backbones as ONNX graphs in ``folder`` (float16-stored weights, checked against torch)."""
    from phototag.inputs import feature_specs
    from phototag.runtime import export_backbone, onnx_file_name

    graphs = []
    for spec in feature_specs(model.method, model.backbone_spec).values():
        graphs.append(export_backbone(spec, folder / onnx_file_name(spec), compress=True))
    return graphs


def with_imagenet(model, dataset):
    """The Corel5k heads merged with the backbones' own ImageNet-1k classifiers (method ``imagenet``), so the
    default model names everyday things too (docs/default_vocabulary.md).

    The ImageNet part learns only its calibration, on the validation photos the Corel heads stopped on (Corel words
    matched to keywords and their parents). Its keywords that name a Corel word take the Corel word (``car`` ->
    ``cars``), so a photo never gets both; a shared word takes the larger score. The mapping's parent keywords
    (animal, vehicle, water, people, ...: sums over many classes) become the model's categories, added after the
    keywords instead of ranked among them.
    """
    from phototag.imagenet_keywords import load_mapping
    from phototag.inputs import build_inputs
    from phototag.methods import create_method
    from phototag.model import TagModel, merge_models
    from phototag.runtime import RunOptions
    from phototag.vocab import TagVocabulary

    mapping = load_mapping()
    keywords = mapping.vocabulary()
    _, val = dataset.train_val(val_fraction=0.1, seed=0)  # the carve `train` stopped the heads on
    part = create_method("imagenet", backbones=model.method.feature_backbones())
    batch = build_inputs(part, [dataset.image_path(r) for r in val], options=RunOptions(progress=False))
    if not batch.ok.all():
        raise SystemExit(f"Calibration photos could not be read: {batch.failures[:3]}")
    part.fit(batch.inputs, mapping.targets_from_words([r.tags for r in val], keywords), tag_names=keywords)
    rename: dict[str, str] = {}
    for word in model.tags:
        keyword = mapping.resolve(word)
        if keyword is not None and keyword not in rename:
            rename[keyword] = word
    names = [rename.get(k, k) for k in keywords]
    everyday = TagModel(part, TagVocabulary(tags=names))
    categories = sorted({rename.get(k, k) for k in mapping.categories()})
    merged = merge_models([model, everyday], info={}, categories=categories)
    fitted_on = fit_merged_offsets(model, part, merged, dataset, options=RunOptions(progress=False))
    info = {
        **model.info,
        "imagenet": {
            "backbones": model.method.feature_backbones(),
            "calibration_photos": len(val),
            "keywords": len(names),
            "renamed_to_corel_words": len(rename),
            "categories": len(categories),
            "balancing_offsets_fitted_on": fitted_on,
        },
    }
    merged.info = info
    return merged


def fit_merged_offsets(model, part, merged, dataset, *, options) -> str | None:
    """The merged model's own balancing offsets for the Corel5k words, with the Corel5k part's settings
    (``balance``, ``balance_k``), fitted on merged scores of the training photos: the Corel5k part's out-of-fold
    scores (each photo scored by members that never saw it) merged with the ImageNet part's scores of the same photos
    (it never trained on them). The Corel5k part's own offsets do not fit the merged scores (docs/default_model.md).
    ``None`` (and the parts' offsets stay in use) when the model was not trained in this run."""
    from phototag.inputs import build_inputs

    ensemble = model.method
    oof = getattr(ensemble, "oof_scores_", None)
    if oof is None or ensemble.config.balance <= 0:
        return None
    train, _ = dataset.train_val(val_fraction=0.1, seed=0)  # the photos `train` fitted the ensemble on, in order
    batch = build_inputs(part, [dataset.image_path(r) for r in train], options=options)
    if not batch.ok.all() or len(train) != oof.shape[1]:
        raise SystemExit("The training photos no longer match the out-of-fold scores; rebuild from scratch.")
    corel_scores = ensemble._combine(oof, ensemble.config.combiner)
    scores = merged.method.merge_scores([corel_scores, part.score(batch.inputs)])
    columns = merged.method.columns_[0]
    targets = np.zeros((len(train), len(merged.tags)), np.float32)
    targets[:, columns] = model.vocab.transform([r.tags for r in train])
    k, power = ensemble.config.balance_k, ensemble.config.balance
    merged.method.fit_offsets(targets, scores, columns, k=k, power=power)
    return f"out-of-fold merged scores of the {len(train)} training photos (balance {power}, k {k})"


def main(argv: list[str] | None = None) -> int:
    from corel5k import heldout_dataset
    from phototag.model import default_model_path, load_model
    from phototag.pipeline import evaluate, train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "corel5k")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "corel5k", help="imported datasets go here")
    parser.add_argument("--method", default="ensemble")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="backbone of a feature method (not ensemble)")
    parser.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help=f"method setting (default for ensemble: {' '.join(ENSEMBLE_RECIPE)})",
    )
    parser.add_argument("--out", type=Path, default=default_model_path())
    parser.add_argument("--calibrate-thresholds", action="store_true", help="per-tag thresholds from validation")
    parser.add_argument(
        "--reship", action="store_true", help="keep the shipped heads; re-export their backbones and re-measure"
    )
    parser.add_argument(
        "--corel-only", action="store_true", help="leave out the ImageNet keywords (the Corel5k words only)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    from phototag.settings import parse_set_options

    if not (args.data / "corel5k_words.txt").exists():
        print(f"Corel5k not found at {args.data}; pass --data.", file=sys.stderr)
        return 2
    settings = args.set if args.set is not None else (ENSEMBLE_RECIPE if args.method == "ensemble" else [])
    dataset = heldout_dataset(args.data, args.work, n_heldout=N_HELDOUT, seed=0)
    if args.reship:
        from phototag.model import load_model

        model = load_model(args.out)
        previous = {k: model.info.get(k) for k in ("heldout", "heldout_balanced")}
        settings = None
    else:
        model = train(
            dataset,
            method=args.method,
            backbone=None if args.method == "ensemble" else args.backbone,
            config=parse_set_options(settings),
            seed=0,
            calibrate_thresholds=args.calibrate_thresholds,
        )
    if not args.corel_only and model.method.name != "merged":
        model = with_imagenet(model, dataset)
    notice_file = args.out / "backbones" / "NOTICE"  # the graphs' origin and licence: kept across rebuilds
    notice = notice_file.read_text() if notice_file.is_file() else None
    with tempfile.TemporaryDirectory(prefix="phototag-graphs-") as tmp:
        model.save(args.out, backbones=export_graphs(model, Path(tmp)))
    model = load_model(args.out)  # measured as shipped: with its own backbone graphs
    heldout = evaluate(model, dataset, split="test", k=5)
    # The balanced top-k decisions (`--balanced`) are measured too; only the @5 metrics can differ.
    balanced = (
        evaluate(model, dataset, split="test", k=5, balanced=True) if model.method.rank_offset() is not None else None
    )
    if args.reship:
        model.info["heldout_before_reship"] = previous
        model.info.update({"heldout": heldout, "heldout_balanced": balanced})
    else:
        recipe = f"python scripts/build_default_model.py --method {args.method}"
        if args.method != "ensemble":
            recipe += f" --backbone {args.backbone}"
        if args.corel_only:
            recipe += " --corel-only"
        model.info.update(
            {
                "dataset": f"corel5k (train split, 4,500 photos; {N_HELDOUT} seeded-random photos held out, seed 0)",
                "dataset_dir": None,
                "recipe": " ".join([recipe, *(f"--set {s}" for s in settings)]),
                "heldout": heldout,
                "heldout_balanced": balanced,
            }
        )
    model.save(args.out)
    if notice is not None:
        notice_file.write_text(notice)
    print(json.dumps({"heldout": heldout, "heldout_balanced": balanced}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
