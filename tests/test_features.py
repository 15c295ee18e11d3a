from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phototag.features import FeatureStore


def _store(backbone, cache, **kwargs):
    return FeatureStore(backbone, cache, device="cpu", batch_size=4, **kwargs)


@pytest.fixture
def photos(synthetic_photos):
    return sorted(str(p) for p in (synthetic_photos / "img" / "train").iterdir())[:6]


def test_extract_caches_by_content(backbone, photos, tmp_path):
    first = _store(backbone, tmp_path).extract(photos, progress=False)
    assert first.features.shape == (6, 1280) and first.ok.all() and not first.failures
    # A new store reads everything back from disk: the backbone must not run again.
    store = _store(backbone, tmp_path)
    store._embed = lambda tensors: pytest.fail("cached features were recomputed")
    second = store.extract(photos, progress=False)
    np.testing.assert_array_equal(first.features, second.features)


def test_renamed_copy_hits_the_cache(backbone, photos, tmp_path):
    _store(backbone, tmp_path).extract(photos[:1], progress=False)
    copy = tmp_path / "renamed.bin"
    copy.write_bytes(Path(photos[0]).read_bytes())
    store = _store(backbone, tmp_path)
    store._embed = lambda tensors: pytest.fail("recomputed")
    assert store.extract([str(copy)], progress=False).ok.all()


def test_unreadable_images_are_reported_not_dropped(backbone, photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(Path(photos[1]).read_bytes()[:200])
    missing = str(tmp_path / "missing.jpg")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    paths = [photos[0], str(bad), missing, str(text), photos[2]]
    result = _store(backbone, False).extract(paths, progress=False)
    assert result.ok.tolist() == [True, False, False, False, True]
    assert [p for p, _ in result.failures] == [str(bad), missing, str(text)]
    assert "not found" in result.failures[1][1] or "cannot read" in result.failures[1][1]
    assert not result.features[1].any()


def test_interrupted_extraction_resumes(backbone, photos, tmp_path):
    store = _store(backbone, tmp_path, flush_every=2)
    real_embed, calls = store._embed, []

    def embed_then_crash(tensors):
        calls.append(len(tensors))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_embed(tensors)

    store._embed = embed_then_crash
    with pytest.raises(KeyboardInterrupt):
        store.extract(photos, progress=False)
    assert len(_store(backbone, tmp_path).cache) == 4  # the first batch was kept
    resumed = _store(backbone, tmp_path)
    done = []
    real = resumed._embed
    resumed._embed = lambda tensors: done.append(len(tensors)) or real(tensors)
    assert resumed.extract(photos, progress=False).ok.all()
    assert sum(done) == 2  # only the images not cached before the interruption


def test_memory_only_store_writes_no_features(backbone, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("PHOTOTAG_CACHE", str(tmp_path / "cache"))
    _store(backbone, False).extract(photos[:2], progress=False)
    assert not (tmp_path / "cache" / "features").exists()


def test_features_of_older_versions_are_imported_once(backbone, photos, tmp_path):
    """phototag 0.1 kept features in npz shards: they are read into the database and left for old versions."""
    first = _store(backbone, False).extract(photos[:3], progress=False)
    folder = tmp_path / "features" / backbone.spec.cache_key()
    folder.mkdir(parents=True)
    from phototag.features import content_hash

    hashes = np.array([content_hash(Path(p).read_bytes()) for p in photos[:3]])
    np.savez(folder / "shard-1-3.npz", hashes=hashes, features=first.features)
    store = _store(backbone, tmp_path)
    store._embed = lambda batch: pytest.fail("features in an old shard were recomputed")
    np.testing.assert_array_equal(store.extract(photos[:3], progress=False).features, first.features)
    assert (folder / "shard-1-3.npz").exists() and len(store.cache) == 3


def test_several_backbones_decode_each_photo_once(photos, tmp_path, monkeypatch):
    from phototag import features as features_module
    from phototag.features import FeatureStore, extract_features

    calls = []
    real = features_module.decode_image
    monkeypatch.setattr(features_module, "decode_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    stores = [FeatureStore(f"efficientnet_lite{i}", tmp_path) for i in (0, 1)]
    result = extract_features(photos[:3], stores)
    assert len(calls) == 3 and result.ok.all()
    assert {k: v.shape for k, v in result.features.items()} == {s.key: (3, 1280) for s in stores}


def test_a_new_cache_opened_by_many_threads_at_once(backbone, photos, tmp_path):
    """Decoding threads all open the (new) database at the same moment: none may find it locked."""
    from concurrent.futures import ThreadPoolExecutor

    from phototag.features import FeatureStore, extract_features
    from phototag.runtime import RunOptions

    stores = [FeatureStore(backbone, tmp_path) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda s: extract_features(photos, [s], options=RunOptions(workers=8)), stores))
    assert all(r.ok.all() for r in results)
    np.testing.assert_allclose(results[0].features[stores[0].key], results[2].features[stores[2].key], atol=1e-5)


def test_a_backbone_pooling_fewer_stages_takes_its_columns_from_the_others_run(photos, tmp_path):
    """``efficientnet_lite0`` and ``efficientnet_lite0+s16`` together: the network runs once per photo (the second's
    graph records the widths of its parts), the first's features are the leading columns of the second's, match the
    first's own graph, and are cached for it like computed ones."""
    from phototag.features import embed_pictures, extract_features, shared_runs
    from phototag.images import decode_image
    from phototag.runtime import RunOptions

    options = RunOptions(cache_dir=tmp_path, progress=False)
    plain, pooled = (
        FeatureStore(name, tmp_path, options=options) for name in ("efficientnet_lite0", "efficientnet_lite0+s16")
    )
    assert shared_runs([plain, pooled]) == {plain.key: pooled}
    assert shared_runs([plain, FeatureStore("efficientnet_lite0+s16+full", tmp_path)]) == {}  # not the same input
    assert pooled.part_widths() == (1280, 112) and pooled.backbone.part_widths == (1280, 112)
    own = FeatureStore("efficientnet_lite0", False).extract(photos, progress=False).features

    plain._embed = lambda arrays: pytest.fail("the plain backbone ran although the pooled one gives its features")
    result = extract_features(photos, [plain, pooled], options=options)
    got, wide = result.features[plain.key], result.features[pooled.key]
    assert result.ok.all() and got.shape == (6, 1280) and wide.shape == (6, 1392)
    np.testing.assert_array_equal(got, wide[:, :1280])
    cosine = (got * own).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(own, axis=1)
    assert cosine.min() > 0.9999
    again = FeatureStore("efficientnet_lite0", tmp_path, options=options)
    again._embed = plain._embed
    np.testing.assert_array_equal(again.extract(photos, progress=False).features, got)  # cached for the plain one

    pictures = [decode_image(Path(p).read_bytes(), source=p) for p in photos[:2]]
    fresh = {"a": FeatureStore("efficientnet_lite0", False), "b": FeatureStore("efficientnet_lite0+s16", False)}
    fresh["a"]._embed = plain._embed
    embedded = embed_pictures(fresh, pictures)
    np.testing.assert_array_equal(embedded["a"], embedded["b"][:, :1280])
