"""The fine-tuned CNN tagger (``cnn``) and its losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from phototag.losses import asymmetric, bce, bce_kl, label_kl, make_loss, weighted_bce
from phototag.methods.cnn import backbone_blocks
from phototag.metrics import mean_average_precision
from phototag.model import TagModel
from phototag.pipeline import train

#: Tiny settings: 64 px inputs, 2 + 1 epochs, augmentation on (the real recipe, just short).
TINY = {
    "input_size": 64,
    "transfer_epochs": 2,
    "finetune_epochs": 1,
    "finetune_blocks": 1,
    "optimizer": "adam",
    "lr": 1e-2,
    "batch_size": 16,
}


# --- losses ---------------------------------------------------------------------------------------------------------
def test_weighted_bce_by_hand():
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    expected = (10 * np.log(2) + np.log1p(np.exp(2.0))) / 2
    assert float(weighted_bce(logits, targets, 10.0)) == pytest.approx(expected, rel=1e-6)
    assert float(bce(logits, targets)) == pytest.approx((np.log(2) + np.log1p(np.exp(2.0))) / 2, rel=1e-6)


def test_label_kl_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [5.0, 1.0, 0.0, 0.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # Row 1: p = (1/2, 1/2, 0, 0), q uniform 1/4 -> KL = log 2. Row 2 has no tags and is skipped.
    assert float(label_kl(logits, targets)) == pytest.approx(np.log(2), rel=1e-6)
    assert float(bce_kl(logits, targets, 0.5)) == pytest.approx(float(bce(logits, targets)) + 0.5 * np.log(2))


def test_asymmetric_without_focusing_is_summed_bce():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(6, 5)).astype(np.float32))
    targets = torch.from_numpy((rng.random((6, 5)) < 0.4).astype(np.float32))
    plain = asymmetric(logits, targets, gamma_neg=0.0, gamma_pos=0.0, clip=0.0)
    assert float(plain) == pytest.approx(float(bce(logits, targets)) * 5, rel=1e-5)
    # Focusing only lowers the loss (each term is multiplied by a factor <= 1).
    assert float(asymmetric(logits, targets)) < float(plain)


def test_unknown_loss_lists_valid_ones():
    with pytest.raises(ValueError, match="Unknown loss 'focal'.*asymmetric"):
        make_loss("focal")


# --- network --------------------------------------------------------------------------------------------------------
def test_backbone_blocks_of_lite0(backbone):
    units = backbone_blocks(backbone.model)
    assert len(units) == 9  # stem + bn1, 7 stages, conv_head + bn2
    assert units[-1][0] is backbone.model.conv_head and units[-1][1] is backbone.model.bn2
    assert units[1] is backbone.model.blocks[0]


def test_bad_settings_are_refused(synthetic_dataset):
    with pytest.raises(ValueError, match="optimizer must be one of"):
        train(synthetic_dataset, method="cnn", config={**TINY, "optimizer": "rmsprop"}, progress=False)


# --- end to end -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn_model(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn") / "model"
    model = train(synthetic_dataset, method="cnn", config=TINY, out=out, progress=False)
    return model, out


def test_cnn_learns_synthetic_photos(cnn_model, synthetic_dataset):
    from phototag.data import Dataset

    model, out = cnn_model
    ds = Dataset.load(synthetic_dataset)
    test = ds.split("test")
    scored = TagModel.load(out).score_images([ds.image_path(r) for r in test])
    truth = model.vocab.transform([r.tags for r in test])
    # Chance level is ~0.45 (two of six tags per photo); the colours are easy for ImageNet features.
    assert mean_average_precision(truth, scored.scores) > 0.7
    history = model.method.history_
    assert [h["stage"] for h in history] == ["transfer", "transfer", "finetune"]
    best = max(history, key=lambda h: (h["val_f1"], h["val_map"]))
    assert model.method.best_epoch_ == best["epoch"]
    assert model.info["validation"]["image_f1_mean"] == pytest.approx(best["val_f1"])


def test_cnn_saves_the_whole_network(cnn_model):
    model, out = cnn_model
    reloaded = TagModel.load(out)
    state = reloaded.method.network_.state_dict()
    assert any(k.startswith("backbone.model.blocks.") for k in state) and "head.0.weight" in state
    assert reloaded.method.spec_.input_size == 64


def test_cnn_resumes_from_a_saved_model(cnn_model, synthetic_dataset):
    model, out = cnn_model
    # Learning rate 0 and nothing unfrozen: resuming must reproduce the saved network exactly.
    resumed = train(
        synthetic_dataset,
        method="cnn",
        config={**TINY, "resume_from": str(out), "transfer_epochs": 1, "finetune_epochs": 0, "lr": 0.0},
        progress=False,
    )
    from phototag.data import Dataset

    ds = Dataset.load(synthetic_dataset)
    inputs = {"images": [str(ds.image_path(r)) for r in ds.split("test")]}
    np.testing.assert_allclose(resumed.method.score(inputs), model.method.score(inputs), atol=1e-6)


def test_cnn_reports_unreadable_images(cnn_model, synthetic_dataset, tmp_path):
    from phototag.data import Dataset

    model, _ = cnn_model
    ds = Dataset.load(synthetic_dataset)
    good = str(ds.image_path(ds.split("test")[0]))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    # Through the model, the input layer decodes each photo once: the broken one is reported and gets no tags.
    predictions, failures = model.predict([good, str(broken)], top_k=3)
    assert [p["image"] for p in predictions] == [good]
    assert [path for path, _ in failures] == [str(broken)]
    # Called directly on a path it cannot read, the method refuses rather than score it.
    with pytest.raises(ValueError, match="broken.jpg"):
        model.method.score({"images": [good, str(broken)]})
