"""Cached trunk activations (:mod:`phototag.trunk_cache`) and ``cnn`` trained from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from phototag.backbones import create_backbone
from phototag.methods.cnn import backbone_blocks
from phototag.metrics import mean_average_precision
from phototag.model import TagModel
from phototag.pipeline import train
from phototag.preprocess import preprocess
from phototag.trunk_cache import (
    TrunkCache,
    cache_folder,
    fill_cache,
    photo_views,
    split_backbone,
    trunk_fingerprint,
    view_names,
)

#: Tiny settings (64 px, 2 + 2 epochs), trained from the cache of the frozen trunk.
CACHED = {
    "input_size": 64,
    "transfer_epochs": 2,
    "finetune_epochs": 2,
    "finetune_blocks": 2,
    "optimizer": "adam",
    "lr": 1e-2,
    "batch_size": 16,
    "cached_trunk": True,
}


@pytest.fixture(scope="module")
def small_backbone():
    return create_backbone("efficientnet_lite0", input_size=64)


@pytest.fixture
def photos(tmp_path) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        path = tmp_path / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 255, size=(48 + 8 * i, 80, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


# --- views ----------------------------------------------------------------------------------------------------------
def test_view_names():
    assert view_names(flip=False) == ["center"]
    assert view_names(flip=True, crops=2) == ["center", "center_flip", "top_left", "top_left_flip"] + [
        "bottom_right",
        "bottom_right_flip",
    ]
    with pytest.raises(ValueError, match="crops must be between 0 and 4"):
        view_names(crops=5)


def test_views_are_the_backbone_input_its_mirror_and_corners(small_backbone, photos):
    spec = small_backbone.spec
    image = Image.open(photos[2]).convert("RGB")
    views = photo_views(spec, image, view_names(flip=True, crops=4))
    assert views.shape == (10, 3, 64, 64) and views.dtype == np.float32
    np.testing.assert_array_equal(views[0], preprocess(spec, image))  # the centre view is what tagging sees
    np.testing.assert_array_equal(views[1], views[0][:, :, ::-1])
    corners = views[2::2]
    assert not any(np.array_equal(corners[i], corners[j]) for i in range(4) for j in range(i))
    np.testing.assert_array_equal(views[3], views[2][:, :, ::-1])


# --- cutting the backbone -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_tail", [0, 1, 2, 9])
def test_trunk_then_tail_is_the_whole_backbone(small_backbone, n_tail):
    model = small_backbone.model
    trunk, tail = split_backbone(model, backbone_blocks(model), n_tail, 64)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(tail(trunk(x)), model(x), rtol=1e-5, atol=1e-5)
        if n_tail == 0:
            assert trunk(x).shape == (3, 1280) and len(tail) == 0
        if n_tail == 2:  # the tail is the last stage and the head convolution, then pooling
            assert trunk(x).shape == (3, 192, 2, 2) and tail[0] is model.blocks[-1]
    assert not any(p is q for p in trunk.parameters() for q in tail.parameters())


def test_a_backbone_that_does_not_run_in_sequence_is_refused():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            h = self.a(x)
            return (self.b(h) + h).mean((2, 3))  # a skip connection around b

    model = Skip()
    with pytest.raises(ValueError, match="cached_trunk=false"):
        split_backbone(model, [model.a, model.b], 1, 8)


# --- the cache ------------------------------------------------------------------------------------------------------
def test_cache_rows_by_content_and_resume_after_an_interrupted_write(tmp_path):
    cache = TrunkCache(tmp_path / "c", (2, 3), meta={"what": "test"})
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), -np.ones((2, 3), np.float32)
    cache.append({"aa": a})
    # An interrupted append wrote bytes it never indexed: the next append cuts them off.
    with open(cache.data_path, "ab") as data:
        data.write(b"\x01" * 10)
    cache.close()
    cache = TrunkCache(tmp_path / "c", (2, 3), meta={"what": "test"})
    cache.append({"bb": b, "aa": a + 100})  # "aa" is cached already: kept, not replaced
    assert list(cache.lookup(["bb", "zz", "aa"])) == [1, -1, 0]
    np.testing.assert_array_equal(cache.array[0], a)
    np.testing.assert_array_equal(cache.array[1], b)
    assert cache.data_path.stat().st_size == 2 * 6 * 4
    with pytest.raises(ValueError, match="holds other activations"):
        TrunkCache(tmp_path / "c", (2, 3), meta={"what": "else"})


def test_cache_folder_keys_backbone_weights_cut_and_views(small_backbone, tmp_path):
    spec = small_backbone.spec
    model = small_backbone.model
    units = backbone_blocks(model)
    trunk2, _ = split_backbone(model, units, 2, 64)
    trunk3, _ = split_backbone(model, units, 3, 64)
    views = view_names()
    folder = cache_folder(tmp_path, spec, trunk_fingerprint(trunk2), 2, views)
    assert folder.parent == tmp_path / "trunk" and folder.name.startswith(spec.cache_key())
    others = [
        cache_folder(tmp_path, spec, trunk_fingerprint(trunk3), 3, views),
        cache_folder(tmp_path, spec, trunk_fingerprint(trunk2), 2, view_names(flip=False)),
    ]
    with torch.no_grad():
        model.conv_stem.weight[0, 0, 0, 0] += 1.0  # other trunk weights: other activations
    try:
        others.append(cache_folder(tmp_path, spec, trunk_fingerprint(trunk2), 2, views))
    finally:
        with torch.no_grad():
            model.conv_stem.weight[0, 0, 0, 0] -= 1.0
    assert len({folder, *others}) == 4
    assert cache_folder(tmp_path, spec, trunk_fingerprint(trunk2), 2, views) == folder


class _Interrupted(RuntimeError):
    pass


class _StopsAfter(nn.Module):
    """The trunk, interrupted at its ``calls``-th batch (like a killed run)."""

    def __init__(self, trunk: nn.Module, calls: int):
        super().__init__()
        self.trunk, self.calls = trunk, calls

    def forward(self, x):
        self.calls -= 1
        if self.calls < 0:
            raise _Interrupted
        return self.trunk(x)


def test_fill_resumes_flips_and_reports_unreadable_photos(small_backbone, photos, tmp_path):
    spec = small_backbone.spec
    model = small_backbone.model
    trunk, tail = split_backbone(model, backbone_blocks(model), 2, 64)
    views = view_names(flip=True)
    cache = TrunkCache(tmp_path / "cache", (2, 192, 2, 2))
    fill = {"device": torch.device("cpu"), "batch_size": 2, "flush_every": 1}
    with pytest.raises(_Interrupted):
        fill_cache(cache, photos, _StopsAfter(trunk, 2), spec, views, **fill)
    assert len(cache) == 2  # what was computed before the interruption is kept
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    copy = tmp_path / "copy.png"
    copy.write_bytes(Path(photos[0]).read_bytes())
    paths = [*photos, str(broken), str(copy)]
    done = fill_cache(cache, paths, trunk, spec, views, **fill)
    assert done.computed == 3 and len(cache) == 5  # only the photos not cached yet; the copy is the same content
    assert done.rows[5] == -1 and done.failures == [(str(broken), done.failures[0][1])]
    assert done.rows[6] == done.rows[0]
    again = fill_cache(cache, paths, trunk, spec, views, **fill)
    assert again.computed == 0 and list(again.rows) == list(done.rows)
    # Every row holds the trunk's activations of the photo and of its mirror image.
    image = Image.open(photos[3]).convert("RGB")
    center = torch.from_numpy(preprocess(spec, image)[None])
    with torch.no_grad():
        expected = trunk(torch.cat([center, center.flip(-1)])).numpy()
    np.testing.assert_allclose(cache.array[done.rows[3]], expected, rtol=1e-4, atol=1e-4)


# --- cnn trained from the cache -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cached_model(synthetic_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("cached-cnn")
    model = train(synthetic_dataset, method="cnn", config=CACHED, out=root / "model", cache_dir=root / "cache")
    return model, root


def test_cached_trunk_cnn_learns_and_its_saved_model_scores_end_to_end(cached_model, synthetic_dataset):
    from phototag.data import Dataset

    model, root = cached_model
    info = model.method.trunk_cache_
    assert info["views"] == ["center", "center_flip"] and info["tail_blocks"] == 2
    assert info["activation_shape"] == [192, 2, 2] and Path(info["folder"]).parent == root / "cache" / "trunk"
    assert [h["stage"] for h in model.method.history_] == ["transfer"] * 2 + ["finetune"] * 2
    ds = Dataset.load(synthetic_dataset)
    test = [str(ds.image_path(r)) for r in ds.split("test")]
    saved = TagModel.load(root / "model")
    end_to_end = saved.score_images(test).scores
    truth = model.vocab.transform([r.tags for r in ds.split("test")])
    assert mean_average_precision(truth, end_to_end) > 0.7  # chance is ~0.45
    # The scores training optimised (tail + head on the cached centre view) are the saved network's, end to end.
    net = saved.method.network_
    trunk, tail = split_backbone(net.backbone.model, backbone_blocks(net.backbone.model), 2, 64)
    cache = TrunkCache(Path(info["folder"]), (2, *info["activation_shape"]))
    rows = fill_cache(cache, test, trunk, saved.method.spec_, info["views"], device=torch.device("cpu")).rows
    with torch.no_grad():
        from_cache = torch.sigmoid(net.head(tail(torch.from_numpy(np.array(cache.array[rows, 0]))))).numpy()
    np.testing.assert_allclose(from_cache, end_to_end, rtol=1e-4, atol=1e-5)
    # The validation F1 that chose the epoch is the one the saved network gets on the validation photos.
    best = max(model.method.history_, key=lambda h: (h["val_f1"], h["val_map"]))
    assert model.info["validation"]["image_f1_mean"] == pytest.approx(best["val_f1"], abs=1e-6)


def test_cached_trunk_is_reused_and_off_trains_end_to_end(cached_model, synthetic_dataset):
    model, root = cached_model
    again = train(
        synthetic_dataset,
        method="cnn",
        config={**CACHED, "transfer_epochs": 1, "finetune_epochs": 1},
        cache_dir=root / "cache",
    )
    assert again.method.trunk_cache_["computed"] == 0  # same photos, backbone and cut: nothing recomputed
    plain = train(
        synthetic_dataset,
        method="cnn",
        config={**CACHED, "cached_trunk": False, "transfer_epochs": 1, "finetune_epochs": 1},
        cache_dir=root / "cache",
    )
    assert plain.method.trunk_cache_ is None and len(plain.method.history_) == 2


def test_bad_cache_crops_are_refused(synthetic_dataset):
    with pytest.raises(ValueError, match="cache_crops must be between 0 and 4"):
        train(synthetic_dataset, method="cnn", config={**CACHED, "cache_crops": 9}, progress=False)
