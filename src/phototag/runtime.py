"""Running backbones: run options, ONNX export of timm backbones, and ONNX Runtime sessions.

Tagging runs every backbone as an ONNX graph in ONNX Runtime (CPU, or the CUDA execution provider when present);
torch is needed only to export a graph once (``phototag[train]``). Exported graphs are cached under
``<cache dir>/onnx/<spec key>[-int8].onnx``; the shipped default model carries its own in
``default_model/backbones/``. An export is checked against torch on real photos (cosine ≥ 0.9999) before it is
used, so a graph that computes something else never reaches a user.

:class:`RunOptions` holds how to run (device, threads, batch size, cache, precision): never part of a model, never
saved with one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .backbone_spec import backbone_label
from .backbones import BackboneSpec, resolve_spec
from .errors import EnvironmentProblem, MissingDependencyError
from .fileio import atomic_write_bytes

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "int8")
#: Opset of exported graphs.
ONNX_OPSET = 17
#: Smallest cosine similarity between torch and ONNX features accepted at export.
EXPORT_MIN_COSINE = 0.9999
#: Metadata key of an exported graph: the widths of its output's parts, as a JSON list.
PART_WIDTHS_KEY = "phototag.part_widths"


@dataclass
class RunOptions:
    """How to run a model: settings of the machine and the run, never of the model (nothing here is saved).

    Attributes:
        device: ``"auto"`` (CUDA when ONNX Runtime has it, else CPU), ``"cpu"`` or ``"cuda"``.
        workers: Threads decoding photos while the network runs; ``None`` = one per core (at most 8).
        batch_size: Photos per network call.
        cache_dir: Cache root (features and exported graphs); ``None`` = ``$PHOTOTAG_CACHE`` or
            ``~/.cache/phototag``; ``False`` = keep no features on disk (exported graphs still go to the default).
        precision: ``"fp32"`` or ``"int8"`` (statically quantised backbones, calibrated on real photos).
        threads: ONNX Runtime intra-op threads; ``None`` = one per core.
        progress: Show progress bars on stderr.
    """

    device: str = "auto"
    workers: int | None = None
    batch_size: int = 32
    cache_dir: str | os.PathLike | None | bool = None
    precision: str = "fp32"
    threads: int | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}. Got {self.device!r} instead.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}. Got {self.precision!r} instead.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1. Got {self.batch_size!r} instead.")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 0):
            raise ValueError(f"workers must be an int >= 0 (0 = decode in the main thread). Got {self.workers!r}.")

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with ``changes`` applied (``None`` values ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def decode_workers(self) -> int:
        return min(8, os.cpu_count() or 1) if self.workers is None else self.workers


def default_cache_dir() -> Path:
    """``$PHOTOTAG_CACHE`` if set, else ``~/.cache/phototag``."""
    return Path(os.environ.get("PHOTOTAG_CACHE", Path.home() / ".cache" / "phototag"))


def cache_root(cache_dir: str | os.PathLike | None | bool) -> Path:
    """The cache root for ``cache_dir`` as :class:`RunOptions` takes it (``False`` still caches exported graphs)."""
    return default_cache_dir() if cache_dir in (None, True, False) else Path(cache_dir)


def onnxruntime_module():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "Running backbones needs onnxruntime: pip install onnxruntime (or reinstall phototag)"
        ) from None
    return onnxruntime


def execution_providers(device: str) -> list[str]:
    """ONNX Runtime providers for ``device`` (see :class:`RunOptions`)."""
    available = onnxruntime_module().get_available_providers()
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise EnvironmentProblem(
                "device 'cuda' asked for, but this onnxruntime has no CUDA execution provider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or use --device cpu."
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


# --- export -------------------------------------------------------------------------------------------------------
def onnx_file_name(spec: BackboneSpec, precision: str = "fp32") -> str:
    return f"{resolve_spec(spec).cache_key()}{'-int8' if precision == 'int8' else ''}.onnx"


def check_images() -> list[Image.Image]:
    """Real photos for export and quantisation checks: the sample photos of scikit-image / scikit-learn when
    installed, else a few smooth synthetic pictures (deterministic)."""
    from PIL import Image

    from .images import load_image
    from .samples import example_images

    photos = []
    for path in example_images():
        try:
            photos.append(load_image(path))
        except Exception:  # a damaged sample only costs one check photo
            continue
    if photos:
        return photos
    y, x = np.mgrid[0:256, 0:256]
    return [
        Image.fromarray(
            np.stack([(x + k * 40) % 256, (y * 2 + k * 30) % 256, (x + y + k * 70) % 256], -1).astype("uint8")
        )
        for k in range(4)
    ]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def export_backbone(
    spec: BackboneSpec | str,
    path: str | os.PathLike,
    *,
    backbone: Any = None,
    images: Sequence[Image.Image] | None = None,
    compress: bool = False,
) -> Path:
    """Export a timm backbone (pooled features) to an ONNX file, checked against torch on real photos.

    Args:
        spec: The backbone.
        path: Where to write the ``.onnx`` file (atomically).
        backbone: An already built :class:`~phototag.torch_backbones.Backbone` for ``spec`` (else built here).
        images: Photos for the check (default :func:`check_images`).
        compress: Store large weights as float16 (half the file; ONNX Runtime folds them back to float32 when it
            loads the graph, so it computes in float32).

    Raises:
        RuntimeError: The exported graph's features differ from torch's (cosine < :data:`EXPORT_MIN_COSINE`).
    """
    from .torch_backbones import require_torch

    require_torch("Exporting a backbone to ONNX")
    import io
    import warnings

    import onnx
    import torch

    from .preprocess import preprocess
    from .torch_backbones import create_backbone

    backbone = backbone if backbone is not None else create_backbone(spec)
    spec = backbone.spec
    module = backbone.model.eval()
    size = int(spec.input_size)
    # Whole photos ("full") come in many shapes: the graph takes any height and width.
    axes = {0: "batch", 2: "height", 3: "width"} if spec.resize_mode == "full" else {0: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice; its graphs are what we check
        torch.onnx.export(
            module,
            (torch.zeros(2, 3, size, size),),
            buffer,
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": axes, "features": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    # The widths of the output's parts (the pooled last layer, then each pooled earlier stage), so a backbone name
    # pooling fewer stages reads its columns from this graph's run (phototag.backbone_spec.subset_columns).
    widths = getattr(module, "widths", (backbone.num_features,))
    onnx.helper.set_model_props(proto, {PART_WIDTHS_KEY: json.dumps([int(w) for w in widths])})
    if compress:
        proto = compress_initializers(proto)
    data = proto.SerializeToString()
    session = onnxruntime_module().InferenceSession(data, providers=["CPUExecutionProvider"])
    reference, exported = [], []
    for array in (preprocess(spec, im) for im in (images if images is not None else check_images())):
        batch = array[None]  # one photo at a time: whole photos differ in shape
        with torch.inference_mode():
            reference.append(module(torch.from_numpy(batch)).float().numpy())
        exported.append(session.run(None, {"images": batch})[0])
    reference, exported = np.concatenate(reference), np.concatenate(exported)
    cosine = float(_cosines(reference, exported).min())
    if cosine < EXPORT_MIN_COSINE:
        raise EnvironmentProblem(
            f"The ONNX export of backbone '{backbone_label(spec)}' disagrees with torch on real photos (cosine "
            f"{cosine:.6f} < {EXPORT_MIN_COSINE}); report this with your torch and onnx versions."
        )
    log.info("Exported backbone %s to ONNX (cosine to torch %.7f)", backbone_label(spec), cosine)
    return atomic_write_bytes(path, data)


def compress_initializers(proto: Any, *, min_elements: int = 1024) -> Any:
    """Store float32 weights of at least ``min_elements`` values as float16 followed by a Cast back to float32."""
    import onnx
    from onnx import numpy_helper

    graph = proto.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(init)
        if array.size < min_elements:
            continue
        name = init.name
        half = numpy_helper.from_array(array.astype(np.float16), name=f"{name}__fp16")
        init.CopyFrom(half)
        casts.append(onnx.helper.make_node("Cast", [f"{name}__fp16"], [name], to=onnx.TensorProto.FLOAT))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.checker.check_model(proto)
    return proto


def quantize_backbone(
    fp32_path: str | os.PathLike, out_path: str | os.PathLike, spec: BackboneSpec, images: Sequence[Image.Image]
) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) of an exported backbone, calibrated on ``images``."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from .preprocess import preprocess

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{"images": preprocess(spec, im)[None]} for im in images])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(prefix="phototag-quant-") as tmp:
        staged = Path(tmp) / "model-int8.onnx"
        quantize_static(
            str(fp32_path),
            str(staged),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        import onnx

        # The fp32 graph's metadata (the widths of its output's parts) holds for the int8 one too.
        quantized = onnx.load(str(staged))
        props = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
        onnx.helper.set_model_props(quantized, {**{p.key: p.value for p in quantized.metadata_props}, **props})
        return atomic_write_bytes(out_path, quantized.SerializeToString())


# --- sessions -----------------------------------------------------------------------------------------------------
class OnnxBackbone:
    """One backbone as an ONNX Runtime session: ``(n, 3, S, S)`` float32 → ``(n, d)`` pooled features.

    Thread-safe (ONNX Runtime sessions may be run from several threads).
    """

    def __init__(self, spec: BackboneSpec, path: str | os.PathLike, options: RunOptions | None = None):
        options = options or RunOptions()
        ort = onnxruntime_module()
        self.spec = spec
        self.path = Path(path)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.threads or (os.cpu_count() or 1)
        session_options.inter_op_num_threads = 1
        session_options.log_severity_level = 3
        # Idle worker threads sleep instead of spinning: decoding threads share the cores with the network, and
        # spinning threads starve them (and everything else) on a busy machine.
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(self.path), session_options, providers=execution_providers(options.device)
            )
        except Exception as err:  # onnxruntime raises its own exception types for damaged files
            raise EnvironmentProblem(
                f"Cannot load the backbone graph {self.path} ({err}); delete it to re-export."
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        width = self.session.get_outputs()[0].shape[-1]
        self.num_features = int(width) if isinstance(width, int) else None
        widths = self.session.get_modelmeta().custom_metadata_map.get(PART_WIDTHS_KEY)
        #: The widths of the output's parts (pooled last layer, then each pooled stride), or None for graphs
        #: exported before phototag recorded them.
        self.part_widths: tuple[int, ...] | None = tuple(json.loads(widths)) if widths else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        self.num_features = out.shape[1]
        return out.astype(np.float32, copy=False)


_SESSIONS: dict[tuple, OnnxBackbone] = {}
_LOCK = threading.Lock()
_EXPORT_LOCK = threading.RLock()  # re-entrant: an int8 graph first needs the fp32 one


def backbone_graph(
    spec: BackboneSpec,
    options: RunOptions | None = None,
    *,
    search: Iterable[str | os.PathLike] = (),
    backbone: Any = None,
) -> Path:
    """Path of ``spec``'s ONNX graph at ``options.precision``: found in ``search`` folders (e.g. the model
    directory's ``backbones/``), among the graphs the default model ships, or in the cache; else exported (needs
    torch) and cached."""
    options = options or RunOptions()
    spec = resolve_spec(spec)
    name = onnx_file_name(spec, options.precision)
    # The graph is the network alone; the one of the same network for whole photos ("full") takes inputs of any
    # shape, so it serves the square modes too (the default model ships its backbones that way).
    names = [name]
    if spec.resize_mode != "full":
        names.append(onnx_file_name(dataclasses.replace(spec, resize_mode="full"), options.precision))
    shipped = Path(__file__).resolve().parent / "default_model" / "backbones"  # any model may use these
    for folder in [*search, shipped, cache_root(options.cache_dir) / "onnx"]:
        for candidate in (Path(folder) / n for n in names):
            if candidate.is_file():
                return candidate
    cached = cache_root(options.cache_dir) / "onnx" / name
    try:
        from .torch_backbones import require_torch

        require_torch("Exporting a backbone to ONNX")
    except ImportError:
        ready = sorted({f.name.rsplit("-", 1)[0] for f in shipped.glob("*.onnx")})
        raise MissingDependencyError(
            f"No ONNX graph of backbone '{backbone_label(spec)}' ({name}) in this installation or cache, and exporting "
            'one needs PyTorch: pip install "phototag[train]" (once; the graph is cached), or use a model that ships '
            f"its backbones, or a backbone whose graph phototag ships ({', '.join(ready) or 'none'})."
        ) from None
    # One export at a time in this process: torch.onnx.export is not thread-safe, and threads that asked for the same
    # graph find it cached once the first one has written it.
    with _EXPORT_LOCK:
        if cached.is_file():
            return cached
        if options.precision == "int8":
            fp32 = backbone_graph(spec, options.replace(precision="fp32"), search=search, backbone=backbone)
            log.info("Quantising backbone %s to int8 (calibrated on sample photos)", backbone_label(spec))
            return quantize_backbone(fp32, cached, spec, check_images())
        log.info("Exporting backbone %s to ONNX (once; cached in %s)", backbone_label(spec), cached.parent)
        return export_backbone(spec, cached, backbone=backbone)


def load_backbone(
    spec: BackboneSpec | str,
    options: RunOptions | None = None,
    *,
    search: Iterable[str | os.PathLike] = (),
    backbone: Any = None,
) -> OnnxBackbone:
    """An :class:`OnnxBackbone` for ``spec`` (sessions are shared within the process)."""
    options = options or RunOptions()
    spec = resolve_spec(spec)
    path = backbone_graph(spec, options, search=search, backbone=backbone)
    key = (str(path), options.device, options.threads)
    with _LOCK:
        if key not in _SESSIONS:
            _SESSIONS[key] = OnnxBackbone(spec, path, options)
        return _SESSIONS[key]
