"""Run options, ONNX export of backbones (checked against torch) and ONNX Runtime sessions."""

from __future__ import annotations

import numpy as np
import pytest

from phototag.backbones import resolve_spec
from phototag.runtime import RunOptions, backbone_graph, compress_initializers, load_backbone, onnx_file_name


def test_run_options_are_checked():
    with pytest.raises(ValueError, match="device must be one of"):
        RunOptions(device="tpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        RunOptions(precision="fp8")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        RunOptions(batch_size=0)
    assert RunOptions().replace(batch_size=None, workers=3).workers == 3


def test_cuda_without_provider_is_a_clear_error():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    from phototag.runtime import execution_providers

    with pytest.raises(RuntimeError, match="no CUDA execution provider"):
        execution_providers("cuda")
    assert execution_providers("auto") == ["CPUExecutionProvider"]


def test_onnx_backbone_matches_torch_on_real_photos(backbone, tmp_path):
    """The graph tagging runs computes the same features as the torch backbone it was exported from."""
    import torch

    from phototag.preprocess import preprocess
    from phototag.runtime import check_images

    session = load_backbone(backbone.spec, RunOptions(cache_dir=tmp_path), backbone=backbone)
    assert session.path.name == onnx_file_name(backbone.spec)
    batch = np.stack([preprocess(backbone.spec, im) for im in check_images()])
    with torch.inference_mode():
        expected = backbone(torch.from_numpy(batch)).numpy()
    got = session(batch)
    cosine = (expected * got).sum(1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(got, axis=1)
    assert got.shape == expected.shape and cosine.min() > 0.9999


def test_compressed_graph_is_half_the_size_and_computes_in_float32(backbone, tmp_path):
    import onnx
    import onnxruntime

    from phototag.runtime import export_backbone

    path = export_backbone(backbone.spec, tmp_path / "lite0.onnx", backbone=backbone)
    full = onnx.load(str(path))
    small = compress_initializers(onnx.load(str(path)))
    assert len(small.SerializeToString()) < 0.6 * len(full.SerializeToString())
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    run = [
        onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"images": x}
        )[0]
        for m in (full, small)
    ]
    assert run[1].dtype == np.float32
    cosine = (run[0] * run[1]).sum(1) / np.linalg.norm(run[0], axis=1) / np.linalg.norm(run[1], axis=1)
    assert cosine.min() > 0.9999


def test_shipped_default_backbones_are_found_without_export(tmp_path):
    from phototag.model import default_model_path

    folder = default_model_path() / "backbones"
    if not folder.is_dir():
        pytest.fail("the default model ships no backbone graphs")
    spec = resolve_spec("efficientnet_lite2")
    assert backbone_graph(spec, RunOptions(cache_dir=tmp_path)).parent == folder
    assert not (tmp_path / "onnx").exists()  # nothing exported


def test_whole_photo_graphs_take_any_shape(tmp_path):
    """A ``+full`` backbone's graph takes photos of any proportions (dynamic height and width), matches torch on
    each, and a batch that mixes landscape, portrait and square photos gives each photo its own features."""
    import torch

    from phototag.features import FeatureStore
    from phototag.preprocess import preprocess
    from phototag.runtime import check_images
    from phototag.torch_backbones import create_backbone

    network = create_backbone("efficientnet_lite0+full")
    images = check_images()
    photos = [images[i % len(images)].resize(size) for i, size in enumerate([(300, 200), (200, 300), (250, 250)])]
    paths = []
    for i, im in enumerate(photos):
        paths.append(tmp_path / f"p{i}.png")
        im.save(paths[-1])
    arrays = [preprocess(network.spec, im) for im in photos]
    assert len({a.shape for a in arrays}) == len(photos)
    with torch.inference_mode():
        expected = np.concatenate([network(torch.from_numpy(a[None])).numpy() for a in arrays])
    store = FeatureStore("efficientnet_lite0+full", tmp_path / "cache", batch_size=8)
    got = store.extract([str(p) for p in paths], progress=False).features
    cosine = (expected * got).sum(1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() > 0.9999


@pytest.mark.slow
def test_int8_graphs_keep_the_widths_of_their_parts_and_share_a_run(tmp_path):
    """An int8 backbone (static QDQ quantisation, calibrated on the sample photos) computes nearly the fp32 features,
    keeps its graph's record of the widths of its parts, so ``efficientnet_lite0`` at int8 still takes its columns
    from ``efficientnet_lite0+s16``'s int8 run, and never shares an fp32 run (nor its cache)."""
    from phototag.features import FeatureStore, extract_features, shared_runs
    from phototag.runtime import check_images

    paths = []
    for i, image in enumerate(check_images()[:4]):
        paths.append(tmp_path / f"p{i}.png")
        image.save(paths[-1])
    int8, fp32 = RunOptions(cache_dir=tmp_path, precision="int8"), RunOptions(cache_dir=tmp_path)
    plain, pooled = (
        FeatureStore("efficientnet_lite0", tmp_path, options=int8),
        FeatureStore("efficientnet_lite0+s16", tmp_path, options=int8),
    )
    assert pooled.backbone.path.name == onnx_file_name(pooled.spec, "int8")
    assert pooled.backbone.part_widths == (1280, 112)
    assert shared_runs([plain, pooled]) == {plain.key: pooled}
    assert shared_runs([FeatureStore("efficientnet_lite0", tmp_path, options=fp32), pooled]) == {}
    result = extract_features(paths, [plain, pooled], options=int8)
    np.testing.assert_array_equal(result.features[plain.key], result.features[pooled.key][:, :1280])
    exact = FeatureStore("efficientnet_lite0+s16", False).extract(paths, progress=False).features
    got = result.features[pooled.key]
    cosine = (got * exact).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(exact, axis=1)
    assert cosine.min() > 0.9, cosine
