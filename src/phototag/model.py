"""A trained tagger as one object and one directory: method + vocabulary + backbone spec + decision rule.

Model directory layout (everything prediction needs; the training data is never read again)::

    MODEL_DIR/phototag_model.json   format + version, method name and config, backbone spec, decision rule, info
    MODEL_DIR/vocab.json            the fitted TagVocabulary (column order of the scores)
    MODEL_DIR/weights.safetensors   the method's learned arrays ("method/...") and per-tag thresholds ("decision/...")
    MODEL_DIR/backbones/*.onnx      optional: the backbones as ONNX graphs (the shipped default model has them), so
                                    the model tags photos without torch and without exporting anything

Scoring photos goes through the one input layer (:mod:`phototag.inputs`): each photo is read and decoded once,
unreadable photos are reported by path and never get tags.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .backbones import BackboneSpec
from .calibration import balanced_ranking
from .errors import ModelFormatError
from .features import FeatureStore, ImageItem, embed_pictures
from .fileio import atomic_directory
from .inputs import build_inputs, feature_specs, make_stores
from .methods import TaggingMethod, create_method, get_method_class
from .model_checks import check_header, check_methods, check_weights
from .runtime import RunOptions
from .vocab import TagVocabulary

log = logging.getLogger(__name__)

MODEL_FORMAT = "phototag-model"
MODEL_FORMAT_VERSION = 1
MODEL_FILE = "phototag_model.json"


@dataclass
class DecisionRule:
    """How scores become tags.

    With neither ``top_k`` nor ``threshold`` given at predict time, the seeds' rule applies: tags scoring at least
    ``threshold`` (or the per-tag thresholds when calibrated), at most ``max_tags`` of them. ``top_k`` alone gives
    exactly the K best tags whatever their scores; ``threshold`` alone keeps the cap; both apply both.

    A ``rank_offset`` (per-tag logit offsets a method fitted, see :meth:`TaggingMethod.rank_offset`) changes which
    tags make the top k: the image's best-scoring tag stays, and the other places go by ``logit(score) + offset``
    (:func:`phototag.calibration.balanced_ranking`); the chosen tags are listed by score, and the scores reported stay
    the method's probabilities. :class:`TagModel` passes the method's offsets only for *balanced* top-k decisions
    (``balanced``, the model's default when its method or build says so, or ``--balanced`` per call): they give
    rarer tags places that frequent ones would take, which per-word benchmarks reward. ``balanced_places`` limits the
    offsets to the first places of a top k (the default model: 5, the top 5 its offsets were chosen for); the places
    after them go by score, so a longer list ends with the likeliest remaining tags, not with rare words.

    ``categories`` ``(n_tags,)`` marks broad words (animal, mammal, furniture: a sum over many narrower words, as the
    default model's ImageNet part gives them) that never take a keyword's place: they are left out of the ranking
    for ``top_k`` and ``max_tags`` and added after the chosen keywords when they reach the threshold (``threshold``,
    or the model's own threshold for a ``top_k`` decision without one), best first. So a list can be longer than
    ``top_k``, as a rules file's ``parents:`` can make it.
    """

    threshold: float = 0.3  # global score threshold (seed 001)
    max_tags: int | None = 15  # at most this many tags per image (seed 001)
    per_tag_threshold: np.ndarray | None = field(default=None, repr=False)  # (n_tags,) calibrated thresholds
    balanced: bool = False  # top-k follows the method's rank offsets by default (when it has them)
    # the offsets choose at most this many places of a balanced top k; the places after them go by score (None: all)
    balanced_places: int | None = None
    categories: np.ndarray | None = field(default=None, repr=False)  # (n_tags,) bool: attached after the keywords

    def select(
        self,
        scores: np.ndarray,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        rank_offset: np.ndarray | None = None,
    ) -> list[list[tuple[int, float]]]:
        """For each row of ``scores`` ``(n_images, n_tags)``: the chosen ``(tag index, score)``, best first.

        ``rank_offset`` ``(n_tags,)`` chooses the tags for ``top_k`` (:func:`phototag.calibration.balanced_ranking`:
        the image's best-scoring keyword and the others by ``logit(score) + offset``), listed by score; the threshold
        rule without ``top_k`` ranks by the scores themselves.
        """
        if top_k is not None and (not isinstance(top_k, int | np.integer) or top_k < 1):
            raise ValueError(f"top_k must be an int >= 1. Got {top_k!r} instead.")
        if top_k is None and threshold is None:
            cut: float | np.ndarray = self.own_thresholds(scores.shape[1])
            limit = self.max_tags
        elif top_k is None:
            cut, limit = float(threshold), self.max_tags
        else:
            cut = -np.inf if threshold is None else float(threshold)
            limit = top_k
        n_tags = scores.shape[1]
        cut_array = np.broadcast_to(np.asarray(cut, dtype=np.float64), (n_tags,))
        broad = self.category_mask(n_tags)
        balanced = top_k is not None and rank_offset is not None
        ranking = (
            balanced_ranking(scores, rank_offset, exclude=broad, places=self.balanced_places) if balanced else scores
        )
        if broad is not None:
            ranking = np.where(broad, -np.inf, ranking)  # categories never take a keyword's place
            bar = cut_array if np.isfinite(cut_array).all() else self.own_thresholds(n_tags)
            broad_columns = np.flatnonzero(broad)
        order = np.argsort(-ranking, axis=1, kind="stable")
        if limit is not None:
            order = order[:, :limit]
        chosen = []
        for row, idx in zip(scores, order, strict=True):
            keep = idx[row[idx] >= cut_array[idx]]
            if balanced:  # the offsets chose the tags; they are listed by score
                keep = keep[np.argsort(-row[keep], kind="stable")]
            if broad is not None:
                keep = keep[~broad[keep]]
                extra = broad_columns[row[broad_columns] >= bar[broad_columns]]
                keep = np.concatenate([keep, extra[np.argsort(-row[extra], kind="stable")]])
            chosen.append([(int(i), float(row[i])) for i in keep])
        return chosen

    def category_mask(self, n_tags: int) -> np.ndarray | None:
        """:attr:`categories` as a bool mask over ``n_tags`` columns (tags added later are keywords), or ``None``."""
        if self.categories is None or not np.any(self.categories):
            return None
        mask = np.zeros(n_tags, dtype=bool)
        given = np.asarray(self.categories, dtype=bool)[:n_tags]
        mask[: len(given)] = given
        return mask

    def with_thresholds(self, thresholds: Mapping[int, float], n_tags: int) -> DecisionRule:
        """A copy whose own rule (no ``top_k`` / ``threshold`` given) uses ``thresholds`` (column -> threshold) for
        those of the ``n_tags`` tags and the current thresholds for the rest; they may be lower than the model's."""
        if not thresholds:
            return self
        cut = np.array(self.own_thresholds(n_tags), dtype=np.float32)
        for column, value in thresholds.items():
            cut[column] = value
        return replace(self, per_tag_threshold=cut)

    def own_thresholds(self, n_tags: int) -> np.ndarray:
        """The thresholds of the model's own rule, one per tag: the per-tag ones when calibrated, else the global."""
        cut = self.per_tag_threshold if self.per_tag_threshold is not None else self.threshold
        return np.broadcast_to(np.asarray(cut, dtype=np.float64), (n_tags,))


@dataclass
class ScoredImages:
    """Scores of the images that could be read, plus what could not.

    Attributes:
        paths: Paths (or upload names) of the scored images, aligned with ``scores`` rows.
        scores: ``(n_ok, n_tags)`` float32.
        failures: ``(path, reason)`` of the images that could not be read.
        ok: ``(n_given,)`` bool: which of the images given are in ``paths`` / ``scores``.
    """

    paths: list[str]
    scores: np.ndarray
    failures: list[tuple[str, str]]
    ok: np.ndarray | None = None


class TagModel:
    """A fitted tagging method with its vocabulary, backbone description and decision rule.

    Example:
        >>> model = load_model()  # the shipped default  # doctest: +SKIP
        >>> model.predict(["photo.jpg"], top_k=3)  # doctest: +SKIP
        [{'image': 'photo.jpg', 'tags': [{'tag': 'sky', 'score': 0.91}, ...]}]
    """

    def __init__(
        self,
        method: TaggingMethod,
        vocab: TagVocabulary,
        *,
        backbone_spec: BackboneSpec | None = None,
        decision: DecisionRule | None = None,
        info: dict[str, Any] | None = None,
    ):
        self.method = method
        self.vocab = vocab
        self.backbone_spec = backbone_spec
        self.decision = decision or DecisionRule()
        self.info = info or {}
        self.path: Path | None = None
        self._stores: dict[Any, dict[str, FeatureStore]] = {}

    @property
    def tags(self) -> list[str]:
        return list(self.vocab.tags_)

    @property
    def data_keys(self) -> tuple[str, ...]:
        return self.method.data_keys

    # --- inputs -------------------------------------------------------------------------------------------------
    def graph_folders(self) -> list[Path]:
        """Folders holding this model's own backbone graphs (``MODEL_DIR/backbones``)."""
        return [self.path / "backbones"] if self.path is not None else []

    def stores(self, options: RunOptions | None = None, *, memory: bool = True) -> dict[str, FeatureStore]:
        """The feature stores of every backbone the method reads (by input key; see
        :func:`phototag.inputs.feature_specs`), kept for the model's life per cache / run setting."""
        options = options or RunOptions()
        key = (str(options.cache_dir), options.device, options.precision, options.batch_size, options.threads, memory)
        if key not in self._stores:
            specs = feature_specs(self.method, self.backbone_spec)
            self._stores[key] = make_stores(specs, options, memory=memory, search=self.graph_folders())
        return self._stores[key]

    def feature_store(self, cache_dir: str | os.PathLike | None | bool = None) -> FeatureStore:
        """The feature store of the model's one backbone (methods reading ``"features"``)."""
        if "features" not in self.data_keys:
            raise ValueError(f"Method '{self.method.name}' reads no single-backbone features.")
        return self.stores(RunOptions(cache_dir=cache_dir))["features"]

    def decision_with(self, thresholds: Mapping[str, float]) -> DecisionRule:
        """The model's decision rule with per-label thresholds (label -> threshold, e.g.
        :func:`phototag.rules.label_thresholds`) for its own rule; labels the model does not know are ignored (a
        rules file may name any). The model is left as it is."""
        index = {tag: j for j, tag in enumerate(self.tags)}
        columns = {index[tag]: value for tag, value in thresholds.items() if tag in index}
        return self.decision.with_thresholds(columns, len(self.tags))

    def score_inputs(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """Scores ``(n_images, n_tags)`` from ready-made inputs (see :attr:`data_keys`)."""
        return self.method.score(inputs)

    def rank_offset(self, balanced: bool | None = None) -> np.ndarray | None:
        """The per-tag offsets top-k decisions rank by: the method's
        :meth:`~phototag.methods.base.TaggingMethod.rank_offset` for balanced decisions (``balanced``, or
        ``decision.balanced`` when ``None``), else ``None`` (rank by score).

        Raises:
            ValueError: ``balanced=True`` but the method fitted no offsets.
        """
        if not (self.decision.balanced if balanced is None else balanced):
            return None
        offset = self.method.rank_offset()
        if offset is None and balanced:
            raise ValueError(
                f"This '{self.method.name}' model has no balancing offsets for balanced top-k decisions. Train a "
                "2pknn or drel model (they fit them by default) or an ensemble with --set balance=P (P > 0, e.g. "
                "0.75), or leave balanced off."
            )
        return offset

    def ranking_scores(
        self, scores: np.ndarray, *, balanced: bool | None = None, columns: np.ndarray | None = None
    ) -> np.ndarray:
        """The scores ``(n_images, n_tags)`` that choose each image's tags for top-k decisions: for balanced
        decisions :func:`~phototag.calibration.balanced_ranking` with :meth:`rank_offset`, else ``scores`` itself.
        ``columns`` (a bool mask or indices over the tags) restricts the choice to those tags, as when only a dataset's
        words are scored; the result then has just those columns."""
        offset = self.rank_offset(balanced)
        if columns is not None:
            scores = scores[:, columns]
            offset = None if offset is None else offset[columns]
        return scores if offset is None else balanced_ranking(scores, offset, places=self.decision.balanced_places)

    def score_images(
        self,
        paths: Sequence[str | os.PathLike | ImageItem],
        *,
        user_tags: Sequence[Sequence[str]] | None = None,
        cache_dir: str | os.PathLike | None | bool = None,
        progress: bool | None = None,
        options: RunOptions | None = None,
        memory: bool = True,
        chunk_size: int = 4096,
    ) -> ScoredImages:
        """Score photos (paths or uploaded :class:`~phototag.features.ImageItem`); unreadable ones are returned in
        ``failures`` and get no scores, never dropped silently.

        Args:
            paths: Photos.
            user_tags: The user's own tags per photo (methods that read them).
            cache_dir: Feature cache root (overrides ``options.cache_dir``; ``False`` = no disk cache).
            progress: Progress bar (overrides ``options.progress``).
            options: How to run (device, workers, batch size, precision); never saved with the model.
            memory: Keep features of photos in memory when not caching on disk (``False``: keep nothing, as a
                long-running service must).
            chunk_size: Photos scored per pass, so memory stays bounded on very long lists.
        """
        options = (options or RunOptions()).replace(cache_dir=cache_dir, progress=progress)
        items = [ImageItem.of(p) for p in paths]
        stores = (
            self.stores(options, memory=memory)
            if any(k in self.data_keys for k in ("features", "backbone_features"))
            else {}
        )
        names: list[str] = []
        parts: list[np.ndarray] = []
        failures: list[tuple[str, str]] = []
        ok_all = np.zeros(len(items), dtype=bool)
        for start in range(0, max(len(items), 1), chunk_size):
            chunk = items[start : start + chunk_size]
            batch = build_inputs(
                self.method,
                chunk,
                backbone_spec=self.backbone_spec,
                user_tags=None if user_tags is None else user_tags[start : start + chunk_size],
                options=options,
                stores=stores,
                search=self.graph_folders(),
            )
            parts.append(self.score_inputs(batch.inputs))
            names += [item.name for item, good in zip(chunk, batch.ok, strict=True) if good]
            failures += batch.failures
            ok_all[start : start + len(chunk)] = batch.ok
        scores = np.concatenate(parts) if parts else np.zeros((0, len(self.vocab)), np.float32)
        return ScoredImages(names, scores, failures, ok_all)

    def score_pictures(
        self,
        pictures: Sequence[Any],
        *,
        user_tags: Sequence[Sequence[str]] | None = None,
        options: RunOptions | None = None,
    ) -> np.ndarray:
        """Scores ``(n, n_tags)`` of photos already decoded (RGB PIL images, e.g. the service's uploads); nothing is
        cached, so a long-running server neither fills the cache nor grows."""
        options = (options or RunOptions()).replace(cache_dir=False)
        keys = self.data_keys
        inputs: dict[str, Any] = {}
        if "features" in keys or "backbone_features" in keys:
            embedded = embed_pictures(self.stores(options, memory=False), pictures)
            if "features" in keys:
                inputs["features"] = embedded["features"]
            if "backbone_features" in keys:
                inputs["backbone_features"] = {name: embedded[name] for name in self.method.feature_backbones()}
        if "images" in keys:
            inputs["images"] = list(pictures)
        if "user_tags" in keys:
            inputs["user_tags"] = [list(t) for t in user_tags] if user_tags is not None else [[] for _ in pictures]
        return self.score_inputs(inputs)

    def predict(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        balanced: bool | None = None,
        user_tags: Sequence[Sequence[str]] | None = None,
        cache_dir: str | os.PathLike | None | bool = None,
        progress: bool | None = None,
        options: RunOptions | None = None,
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """Tags for image files (``balanced``: see :meth:`rank_offset`; run settings: see :meth:`score_images`).

        Returns:
            ``(predictions, failures)``: one ``{"image": path, "tags": [{"tag", "score"}, ...]}`` per readable image
            (best first: by score, or for balanced top-k by ``logit(score) + offset``), and ``(path, reason)`` per
            unreadable one, which gets no prediction at all.
        """
        scored = self.score_images(paths, user_tags=user_tags, cache_dir=cache_dir, progress=progress, options=options)
        predictions = self.format_predictions(
            scored.paths, scored.scores, top_k=top_k, threshold=threshold, balanced=balanced
        )
        return predictions, scored.failures

    def format_predictions(
        self,
        names: Sequence[str],
        scores: np.ndarray,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        balanced: bool | None = None,
        decision: DecisionRule | None = None,
    ) -> list[dict[str, Any]]:
        """``{"image", "tags": [{"tag", "score"}]}`` per row of ``scores`` (``decision``: instead of the model's own,
        e.g. :meth:`decision_with` a rules file's thresholds)."""
        tags = self.vocab.tags_
        # Checked even without top_k, as the service does: balanced=True on a model without offsets is an error.
        offset = self.rank_offset(balanced)
        rule = self.decision if decision is None else decision
        chosen = rule.select(scores, top_k=top_k, threshold=threshold, rank_offset=offset)
        return [
            {"image": name, "tags": [{"tag": tags[i], "score": round(s, 4)} for i, s in picks]}
            for name, picks in zip(names, chosen, strict=True)
        ]

    # --- persistence --------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, backbones: Sequence[str | os.PathLike] = ()) -> Path:
        """Write the model directory atomically (built in a temporary sibling, then renamed into place).

        An existing phototag model directory at ``path`` is replaced; any other non-empty folder is refused.
        ``backbones``: ONNX graph files (named as :func:`phototag.runtime.onnx_file_name` names them) to ship in
        ``backbones/``, so the model tags without torch. Graphs the model already ships are kept.
        """
        import shutil

        from safetensors.numpy import save_file

        arrays, meta = self.method.get_state()
        tensors = {f"method/{k}": np.ascontiguousarray(v) for k, v in arrays.items()}
        if self.decision.per_tag_threshold is not None:
            tensors["decision/per_tag_threshold"] = np.asarray(self.decision.per_tag_threshold, dtype=np.float32)
        categories = self.decision.category_mask(len(self.vocab))
        if categories is not None:
            tensors["decision/categories"] = categories.astype(np.uint8)
        header = {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "phototag_version": __version__,
            "method": self.method.name,
            "config": self.method.config_dict(),
            "method_meta": meta,
            "data_keys": list(self.data_keys),
            "backbone": self.backbone_spec.to_dict() if self.backbone_spec else None,
            "decision": {
                "threshold": self.decision.threshold,
                "max_tags": self.decision.max_tags,
                "balanced": self.decision.balanced,
                **({"balanced_places": self.decision.balanced_places} if self.decision.balanced_places else {}),
            },
            "n_tags": len(self.vocab),
            "info": self.info,
        }
        path = Path(path)
        with atomic_directory(path, marker=MODEL_FILE, what="model") as tmp:
            (tmp / MODEL_FILE).write_text(json.dumps(header, indent=2, default=_json_default))
            self.vocab.save(tmp / "vocab.json")
            save_file(tensors, str(tmp / "weights.safetensors"), metadata={"format": MODEL_FORMAT})
            graphs = [Path(g) for g in backbones]
            if self.path is not None and (self.path / "backbones").is_dir():
                graphs += [
                    g for g in sorted((self.path / "backbones").iterdir()) if g.name not in {x.name for x in graphs}
                ]
            if graphs:
                (tmp / "backbones").mkdir()
                for graph in graphs:
                    shutil.copyfile(graph, tmp / "backbones" / graph.name)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TagModel:
        """Load a model directory written by :meth:`save`.

        Raises:
            ModelFormatError: Missing or damaged files, or a format version this phototag cannot read.
        """
        from safetensors.numpy import load_file

        path = Path(path)
        header_file = path / MODEL_FILE
        if not path.is_dir():
            raise ModelFormatError(f"Model directory '{path}' does not exist. Train one with `phototag train`.")
        if not header_file.is_file():
            raise ModelFormatError(f"'{path}' is not a phototag model directory ({MODEL_FILE} is missing).")
        try:
            header = json.loads(header_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ModelFormatError(f"{header_file} is damaged ({err}); retrain or restore the model.") from None
        # Damaged or hand-edited files become one-line errors naming the file (phototag.model_checks).
        header = check_header(header, header_file, format_version=MODEL_FORMAT_VERSION)
        try:
            tensors = load_file(str(path / "weights.safetensors"))
        except Exception as err:
            raise ModelFormatError(
                f"Cannot read {path / 'weights.safetensors'} ({err}); the model is damaged."
            ) from None
        check_methods(header, get_method_class, header_file)
        check_weights(tensors, header, path / "weights.safetensors")
        vocab = TagVocabulary.load(path / "vocab.json")
        config = {**get_method_class(header["method"]).saved_defaults, **header["config"]}
        method = create_method(header["method"], config)
        method.set_state(
            {k[len("method/") :]: v for k, v in tensors.items() if k.startswith("method/")}, header["method_meta"]
        )
        categories = tensors.get("decision/categories")
        decision = DecisionRule(
            **header["decision"],
            per_tag_threshold=tensors.get("decision/per_tag_threshold"),
            categories=None if categories is None else categories.astype(bool),
        )
        spec = BackboneSpec.from_dict(header["backbone"]) if header.get("backbone") else None
        model = cls(method, vocab, backbone_spec=spec, decision=decision, info=header.get("info", {}))
        model.path = path
        if len(vocab) != method.n_tags_:
            raise ModelFormatError(
                f"Model '{path}': vocabulary has {len(vocab)} tags but the method scores "
                f"{method.n_tags_}; the directory is inconsistent."
            )
        return model


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Cannot serialise {type(value).__name__} to JSON")


def default_model_path() -> Path:
    """Folder of the default model shipped inside the package."""
    return Path(__file__).resolve().parent / "default_model"


def merge_models(
    models: Sequence[TagModel],
    *,
    rule: str = "max",
    info: dict[str, Any] | None = None,
    categories: Sequence[str] = (),
) -> TagModel:
    """One model scoring the union of several fitted models' vocabularies (method ``merged``).

    The first model's tags keep their columns and its decision rule; later models add their new tags. A tag several
    models know takes the largest of their scores (``rule="max"``) or the mean. The models' methods must name their
    backbones (``backbone_features``: ensembles, ``imagenet``), so the input layer decodes each photo once for all.
    ``categories``: tags the merged model adds after the chosen keywords instead of ranking them
    (:class:`DecisionRule`); each must be one of the merged tags.
    """
    import copy

    from .methods.merged import MergedTagger

    if not models:
        raise ValueError("merge_models needs at least one model.")
    method, tags = MergedTagger.from_parts([(m.method, m.tags) for m in models], rule=rule)
    vocab = copy.deepcopy(models[0].vocab)
    vocab.add_tags(tags[len(models[0].tags) :])
    if vocab.tags_ != tags:
        raise ValueError("merge_models: the merged vocabulary does not follow the models' tag order.")
    unknown = sorted(set(categories) - set(tags))
    if unknown:
        raise ValueError(f"merge_models: categories {unknown[:5]} are not tags of the merged models.")
    decision = DecisionRule(
        threshold=models[0].decision.threshold,
        max_tags=models[0].decision.max_tags,
        balanced=models[0].decision.balanced,
        balanced_places=models[0].decision.balanced_places,
        categories=np.isin(tags, list(categories)) if categories else None,
    )
    return TagModel(method, vocab, decision=decision, info=info or {})


def load_model(path: str | os.PathLike | None = None) -> TagModel:
    """Load a model directory; ``None`` loads the default model shipped with phototag."""
    if path is None:
        path = default_model_path()
        if not (path / MODEL_FILE).exists():
            raise ModelFormatError(
                f"The default model is missing from the installation ({path}); reinstall phototag or rebuild it "
                "with `python scripts/build_default_model.py`."
            )
    return TagModel.load(path)
