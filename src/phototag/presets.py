"""Named configurations of the methods: each paper's published setting, and the shipped default model's recipe
(``ensemble --preset default-model``), one flag away.

``phototag train DATASET --method refine --preset paper`` fills the method's config from the preset; a config file
and ``--set KEY=VALUE`` still override it. ``phototag methods --presets`` lists them. The methods' own defaults are
what measured best here; docs/*.md say where and why each differs from its paper.

Only what a paper states and phototag can run is set. Backbones stay phototag's offline EfficientNet-Lite weights
(the papers' VGG-16 / ResNet / Inception weights are not available offline); each citation says what else differs.

Example:
    >>> preset_config("refine", "paper")["optimizer"]
    'sgd'
    >>> "paper" in list_presets()["drel"]
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """Config overrides for one method and where they come from."""

    config: dict[str, Any] = field(default_factory=dict)
    citation: str = ""  # one line: the paper, and what the preset cannot reproduce


_PRESETS: dict[str, dict[str, Preset]] = {
    "refine": {
        "paper": Preset(
            {
                "epochs": 30,
                "optimizer": "sgd",
                "refine_lr": 1e-3,
                "lr_step_epochs": 10,
                "lr_step_factor": 0.1,
                "batch_size": 64,
                "n_neighbors": 8,
                "reselect": "iteration",
                "vis_normalize": True,
                "pos_weight": 1.0,
                "weighted_err": False,
                "vote_weight": 0.0,
                "extra_backbones": [],
            },
            "Zhang, Wu, Zhang, Shen, Lu, 'Kill two birds with one stone', AAAI 2018: SGD 1e-3 for 30 epochs (/10 every"
            " 10), s = 64 anchors x m = 8 neighbours re-chosen every iteration, new photos scored by the network"
            " alone; frozen Lite0 features, not VGG-16",
        ),
    },
    "drel": {
        "paper": Preset(
            {"all_triplets": True, "optimizer": "sgd", "momentum": 0.9, "activation": "sigmoid"},
            "DR-EL, ACM ICMR 2015 (doi:10.1145/2671188.2749330): Eq. 6 averaged over all triplets, SGD, sigmoid "
            "networks (set the SGD rate with --set lr=...); on frozen Lite0 features, not learned from pixels",
        ),
    },
    "contextual": {
        "paper": Preset(
            {
                "tag_limit": 20,
                "tag_threshold": 10,
                "embedding_dim": 128,
                "hidden": 128,
                "layers": 1,
                "dropout": 0.1,
                "weight_decay": 0.02,
                "pos_weight": 1.0,
                "tag_dropout": 0.0,
                "image_dropout": 0.0,
                "embedding_lr": 1e-3,
            },
            "the contextualised-classifier thesis's best configuration: tag limit 20, threshold 10, 128/128 units, "
            "dropout 0.1, L2 0.01 (Keras; = Adam weight decay 0.02), plain BCE, one Adam rate",
        ),
    },
    "cnn": {
        "paper": Preset(
            {"optimizer": "adam", "loss": "weighted_bce", "pos_weight": 10.0, "hidden": 512, "dropout": 0.5},
            "the VGG16-tagger paper: Adam, weighted BCE (positives x10), Dense 512 ReLU + Dropout 0.5 head; on "
            "EfficientNet-Lite (no offline VGG-16 weights); import with --clean paper-cnn for its tag cleaning",
        ),
        "ensemble-member": Preset(
            {"optimizer": "sgd", "momentum": 0.9, "loss": "bce_kl"},
            "a member of the 3-CNN-ensemble paper: SGD with momentum, BCE + KL loss",
        ),
    },
    "ensemble": {
        "paper": Preset(
            {
                "members": ["cnn@efficientnet_lite0", "cnn@efficientnet_lite1", "cnn@efficientnet_lite2"],
                "member_config": {"cnn": {"optimizer": "sgd", "momentum": 0.9, "loss": "bce_kl"}},
                "combiner": "vote",
                "vote_threshold": 0.5,
            },
            "the 3-CNN-ensemble paper: three fine-tuned CNNs whose rounded (>= 0.5) outputs are combined by vote; "
            "Lite0/1/2 stand in for its three ImageNet CNNs (fine-tuning is a GPU job)",
        ),
        "default-model": Preset(
            {
                "members": [
                    "mlp@efficientnet_lite1+full",
                    "mlp@efficientnet_lite2+full",
                    "knn@efficientnet_lite1+full",
                    "knn@efficientnet_lite2+full",
                    "mlp@efficientnet_lite1+s16+full",
                    "mlp@efficientnet_lite2+s16+full",
                    "knn@efficientnet_lite1+s16+full",
                    "knn@efficientnet_lite2+s16+full",
                ],
                "weights": [3, 3, 1, 1, 3, 3, 1, 1],
                "member_config": {"mlp": {"epochs_without_val": 30}},
                "combiner": "average",
                "balance": 0.75,
                "balance_k": 1,
                "balance_strength": 1.5,
                "balanced": True,
                "stacker": False,
            },
            "the recipe of phototag's shipped default model (its Corel5k part; scripts/build_default_model.py): mlp "
            "heads and kNN voting on Lite1 and Lite2 features of the whole photo, with and without the pooled "
            "stride-16 map (one network run gives both), averaged 3:3:1:1 per feature set, balanced top k; chosen on "
            "5 folds of Corel5k training photos (docs/default_model.md)",
        ),
    },
}


def list_presets() -> dict[str, dict[str, str]]:
    """``{method: {preset name: citation}}`` of every registered preset."""
    return {method: {name: p.citation for name, p in presets.items()} for method, presets in sorted(_PRESETS.items())}


def preset_config(method: str, name: str) -> dict[str, Any]:
    """The config overrides of ``method``'s preset ``name`` (a copy).

    Raises:
        ValueError: The method has no presets, or no preset of that name (the message lists the valid ones).
    """
    presets = _PRESETS.get(method)
    if not presets:
        raise ValueError(f"Method '{method}' has no presets; methods with presets: {', '.join(sorted(_PRESETS))}.")
    if name not in presets:
        raise ValueError(f"Method '{method}' has no preset '{name}'. Its presets: {', '.join(sorted(presets))}.")
    import copy

    return copy.deepcopy(presets[name].config)
