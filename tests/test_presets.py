"""Paper presets (`--preset`), and the settings they need in refine and drel."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import clustered_features
from phototag.cli import main
from phototag.methods import create_method, get_method_class
from phototag.methods.drel import all_triplet_hinge
from phototag.methods.refine import reselect_neighbors
from phototag.metrics import mean_average_precision, mean_image_average_precision
from phototag.presets import list_presets, preset_config
from phototag.refinement import refine_scores, simulate_user_noise


def test_every_preset_names_real_config_fields():
    presets = list_presets()
    assert {"cnn", "ensemble", "drel", "contextual", "refine"} <= set(presets)
    for method, names in presets.items():
        fields = {f.name for f in dataclasses.fields(get_method_class(method).Config)}
        for name, citation in names.items():
            config = preset_config(method, name)
            assert set(config) <= fields, (method, name, set(config) - fields)
            assert citation and "\n" not in citation
            create_method(method, **config)  # the config builds


def test_preset_errors_list_the_valid_names():
    with pytest.raises(ValueError, match="Its presets: paper"):
        preset_config("refine", "papr")
    with pytest.raises(ValueError, match="has no presets"):
        preset_config("knn", "paper")
    assert preset_config("refine", "paper") is not preset_config("refine", "paper")  # a copy each time


def test_methods_lists_presets(capsys):
    assert main(["methods", "--presets"]) == 0
    out = capsys.readouterr().out
    assert "refine --preset paper: Zhang, Wu, Zhang, Shen, Lu" in out and "drel --preset paper" in out


def test_train_with_preset_and_set_override(synthetic_dataset, feature_cache, tmp_path, capsys):
    import json

    out = tmp_path / "m"
    argv = ["-q", "train", str(synthetic_dataset), "--method", "drel", "--preset", "paper", "--set", "lr=0.05"]
    assert main([*argv, "--set", "max_epochs=3", "--out", str(out), "--cache-dir", str(feature_cache)]) == 0
    saved = json.loads((out / "model.json").read_text()) if (out / "model.json").exists() else None
    text = json.dumps(saved) if saved else "".join(p.read_text() for p in out.glob("*.json"))
    assert '"all_triplets": true' in text and '"optimizer": "sgd"' in text and '"lr": 0.05' in text
    capsys.readouterr()
    assert main(["train", str(synthetic_dataset), "--preset", "paper", "--out", str(tmp_path / "x")]) == 2
    assert "--preset needs --method" in capsys.readouterr().err


def test_all_triplet_hinge_hand_computed():
    scores = torch.tensor([[2.0, 0.5, 1.8]])
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    rows, pos = torch.tensor([0]), torch.tensor([0])
    # Triplets (0, 1): max(0, 1 + 0.5 - 2) = 0; (0, 2): max(0, 1 + 1.8 - 2) = 0.8; mean over the 2 triplets.
    assert all_triplet_hinge(scores, targets, rows, pos, 1.0).item() == pytest.approx(0.4)


def test_drel_paper_preset_learns():
    x, y = clustered_features(n=160, n_tags=4, dim=16, seed=0)
    config = {
        **preset_config("drel", "paper"),
        "epochs_without_val": 15,
        "latent_dim": 32,
        "image_hidden": 64,
        "backbones": [],
    }
    method = create_method("drel", **config, lr=1.0).fit({"features": x[:120]}, y[:120], progress=False)
    # DR-EL ranks each photo's tags: nearly perfect per photo on these separable clusters.
    assert mean_image_average_precision(y[120:], method.score({"features": x[120:]})) > 0.95


def test_reselect_neighbors_follows_the_table():
    table = np.array([[0.0], [1.0], [5.0], [2.2], [0.4]], dtype=np.float32)
    candidates = np.array([[1, 2, 3, 4], [2, 3, 0, 4]])
    assert reselect_neighbors(table, candidates, np.array([0, 1]), 2).tolist() == [[4, 1], [4, 0]]
    table[2] = 0.1  # the network moved photo 2 close to photos 0 and 1
    assert reselect_neighbors(table, candidates, np.array([0, 1]), 2).tolist() == [[2, 4], [4, 2]]


def test_refine_paper_preset_runs_and_steps_the_learning_rate():
    x, truth = clustered_features(n=200, n_tags=4, dim=16, seed=0)
    noisy = simulate_user_noise(truth, drop_rate=0.3, add_rate=0.3, seed=0)
    config = {**preset_config("refine", "paper"), "knowledge": "none", "n_candidates": 20, "hidden": 64, "epochs": 4}
    config["lr_step_epochs"] = 2
    method, refined = refine_scores("refine", {"features": x}, noisy, list("abcd"), config=config, progress=False)
    lrs = [h["lr"] for h in method.history_ if h["stage"] == "refine"]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    assert mean_average_precision(truth, refined) > mean_average_precision(truth, noisy) + 0.1
