"""Which model answers: the identity every ``POST /v1/tag`` answer starts with.

Public tagging APIs say which model spoke (Google Vision, Clarifai and Rekognition all do), so a client can tell two
answers apart after the server's model changed. The identity is:

- ``id``: ``sha256:`` and the first 16 hex digits of a SHA-256 over the model directory's files (relative path,
  size and bytes of each, in sorted order; weights, vocabulary, settings and shipped backbone graphs all count).
  The same files give the same id on any machine; retraining, a changed threshold or a new graph changes it. A
  model never saved (built in memory) is fingerprinted from what saving it would write (method, settings,
  vocabulary, decision rule, weights).
- ``version``: the serving phototag version, ``+``, the method and the id's first 8 digits (SemVer build
  metadata: ``0.1.0+ensemble.3f2a9c1d``), so it changes with either the software or the model.
- ``vocabulary_size``: how many tags the model can suggest; ``name``: the label shown by ``/healthz``
  (``method@directory``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__

if TYPE_CHECKING:
    from ..model import TagModel

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelIdentity:
    """Who answered a request (see the module docstring for how each field is made)."""

    id: str
    version: str
    vocabulary_size: int
    name: str
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_label(model: TagModel) -> str:
    """A short, human name of a model: its method and directory name (``mlp@default_model``)."""
    where = model.path.name if model.path is not None else "in-memory"
    return f"{model.method.name}@{where}"


def directory_fingerprint(path: str | Path) -> str:
    """SHA-256 hex digest over the files under ``path`` (relative path, size and bytes of each, sorted by path).

    Hidden files and folders (``.DS_Store``, ``.git``) are left out: they are not part of the model.
    """
    root = Path(path)
    digest = hashlib.sha256()
    named = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    files = [named[name] for name in sorted(named) if not any(part.startswith(".") for part in name.split("/"))]
    for file in files:
        digest.update(file.relative_to(root).as_posix().encode() + b"\0" + str(file.stat().st_size).encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def state_fingerprint(model: TagModel) -> str:
    """SHA-256 hex digest of what saving ``model`` would write (for a model that has no directory)."""
    arrays, meta = model.method.get_state()
    digest = hashlib.sha256()
    header = {
        "method": model.method.name,
        "config": model.method.config_dict(),
        "meta": meta,
        "tags": model.tags,
        "decision": [model.decision.threshold, model.decision.max_tags, model.decision.balanced],
        "backbone": model.backbone_spec.to_dict() if model.backbone_spec is not None else None,
    }
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    extra = {"decision/per_tag_threshold": model.decision.per_tag_threshold}
    for key, value in sorted({**arrays, **extra}.items()):
        if value is None:
            continue
        array = np.ascontiguousarray(value)
        digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def model_identity(model: TagModel, name: str | None = None) -> ModelIdentity:
    """The identity of ``model`` (reads every file of its directory once: 0.05 s for the 36 MB default)."""
    full = directory_fingerprint(model.path) if model.path is not None else state_fingerprint(model)
    return ModelIdentity(
        id=f"sha256:{full[:16]}",
        version=f"{__version__}+{model.method.name}.{full[:8]}",
        vocabulary_size=len(model.vocab),
        name=name or model_label(model),
        method=model.method.name,
    )
