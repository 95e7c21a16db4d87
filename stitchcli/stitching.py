"""Zero-shot stitching (METHOD.md §4–6): encoders' relative representations through decoders' heads.

    from stitchcli.stitching import ModelRef, StitchSettings, stitch, evaluate

    report = stitch(store, ModelRef("lite0"), ModelRef("lite2"), StitchSettings(dataset="mnist5k"))
    for row in report.rows: ...

Everything a sweep needs and is missing (the embeddings of the training and evaluation splits, the anchors,
the heads) is built with the defaults and cached, so a second call only reads the cache. For every decoder,
one head is trained per (projection set, aggregation, seed) on its training split's product space against its
own anchor embeddings; every encoder's evaluation split is projected against the encoder's own anchor
embeddings and fed to that frozen head. Nothing is fitted on the encoder.

Baselines (METHOD.md §5): ``absolute`` feeds the encoder's raw latents to a head trained on the decoder's raw
latents (defined only when the dimensions match); ``translation`` maps the encoder's latents into the
decoder's space with an orthogonal Procrustes map fitted on the anchors alone, then uses that absolute head.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from stitchcli.anchors import (
    DEFAULT_NUM,
    STRATEGIES,
    AnchorManifest,
    default_anchor_name,
    is_evaluation_split,
    load_anchor_manifest,
    save_anchor_manifest,
    select_anchor_rows,
)
from stitchcli.embedding import EmbedOptions
from stitchcli.models import ModelRef
from stitchcli.progress import Reporter
from stitchcli.provenance import library_versions
from stitchcli.errors import UsageError, out_of_space_as_work_error
from stitchcli.heads import (
    HEAD_FORMAT,
    FittedHead,
    HeadSettings,
    build_classifier,
    check_head,
    head_digest,
    load_head,
    save_head,
    train_classifier,
)
from stitchcli import defaults
from stitchcli.store import CachedEmbeddings, EmbeddingStore, file_lock, remove_interrupted_writes, slug

DEFAULT_AGGREGATION = defaults.AGGREGATION
DEFAULT_SEEDS: tuple[int, ...] = defaults.SEEDS
DEFAULT_METRICS: tuple[str, ...] = defaults.METRICS
BASELINES: tuple[str, ...] = defaults.BASELINES
DEFAULT_RIDGE = defaults.RIDGE
DATASET_OPTIONS: tuple[str, ...] = ("input_column", "label_column", "dataset_revision")
HEADS_FOLDER = "heads"


@dataclass(frozen=True)
class StitchSettings:
    """Everything that decides a stitching sweep besides the models.

    Attributes:
        dataset: as for ``embed`` (alias, hub id, local path).
        split: the evaluation split (never used for training or model selection).
        train_split: the split heads are trained on and anchors are drawn from.
        limit: embed only the seeded class-stratified subset of this many rows of each split.
        embed_seed: embed's ``--seed`` (picks the ``limit`` subset, seeds ``--weights random``).
        anchors: a saved anchor manifest name or file; None draws ``num_anchors`` with ``anchor_strategy``.
        num_anchors: None means METHOD.md's 1280, or every training row when there are fewer.
        anchor_strategy: a name of :func:`~stitchcli.anchors.list_anchor_strategies`.
        anchor_seed: seed of the anchor draw.
        anchor_model: fps/kmeans: the model (one of the sweep's) whose training embeddings choose the anchors.
        projections: the projections; rows are each one alone and their product.
        aggregations: one set of rows per aggregation.
        transform: the absolute transform fitted on each model's own anchors (none, center, standardize, l2).
        seeds: head seeds; results are mean ± std over them.
        head: head architecture and training settings.
        baselines: which of ``absolute``, ``translation`` (orthogonal) and ``affine`` (ridge) to add.
        ridge: the ``affine`` baseline's ridge strength, relative to the anchors' mean variance per dimension.
        metrics: the similarity measures (eval).
        k: neighbours for Jaccard@k and MRR@k.
        dataset_options: input_column, label_column, dataset_revision as for embed.
        device: where heads train and projections run (auto, cpu, cuda…); also used to embed.
        embed_batch_size: the batch size used when embeddings must be computed.
        singles: add a row for every single projection besides the product.
        trust_remote_code: let transformers models embedded on demand run the code they ship (auto_map).
    """

    dataset: str
    split: str = "test"
    train_split: str = "train"
    limit: int | None = None
    embed_seed: int = 0
    anchors: str | None = None
    num_anchors: int | None = None
    anchor_strategy: str = "uniform"
    anchor_seed: int = 0
    anchor_model: str | None = None
    projections: tuple[str, ...] = defaults.PROJECTIONS
    aggregations: tuple[str, ...] = (DEFAULT_AGGREGATION,)
    transform: str = defaults.TRANSFORM
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    head: HeadSettings = field(default_factory=HeadSettings)
    baselines: tuple[str, ...] = BASELINES
    ridge: float = DEFAULT_RIDGE
    metrics: tuple[str, ...] = DEFAULT_METRICS
    k: int = 10
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    device: str = "auto"
    embed_batch_size: int | None = None
    singles: bool = True
    trust_remote_code: bool = False

    def check(self) -> None:
        """Refuse settings that cannot be right, before any work (UsageError naming the option)."""
        from stitchcli.relative import list_aggregations, list_projections, list_transforms, unknown_name

        for name in self.projections:
            if name not in list_projections():
                raise unknown_name("projection", name, list_projections())
        for name in self.aggregations:
            if name not in list_aggregations():
                raise unknown_name("aggregation", name, list_aggregations())
        if self.transform not in list_transforms():
            raise unknown_name("transform", self.transform, list_transforms())
        for name in self.baselines:
            if name not in BASELINES:
                raise unknown_name("baseline", name, list(BASELINES))
        for name in self.metrics:
            if name not in DEFAULT_METRICS:
                raise unknown_name("metric", name, list(DEFAULT_METRICS))
        for option, values in (("--projection", self.projections), ("--aggregation", self.aggregations), ("--seeds", self.seeds)):
            if not values:
                raise UsageError(f"{option} lists nothing: give at least one value")
            if len(set(values)) != len(values):
                raise UsageError(f"{option} lists a value twice: {','.join(map(str, values))}")
        if any(seed < 0 for seed in self.seeds) or self.embed_seed < 0 or self.anchor_seed < 0:
            raise UsageError("seeds must be 0 or more")
        if self.limit is not None and self.limit <= 0:
            raise UsageError(f"--limit must be a positive number of rows, not {self.limit}")
        if self.num_anchors is not None and self.num_anchors < 1:
            raise UsageError(f"--num-anchors must be a positive number of anchors, not {self.num_anchors}")
        if self.k < 1:
            raise UsageError(f"--k must be at least 1, not {self.k}")
        if not self.ridge > 0 or not np.isfinite(self.ridge):
            raise UsageError(f"--ridge must be a positive number, not {self.ridge}")
        from stitchcli.anchors import STRATEGIES, list_anchor_strategies

        if self.anchor_strategy not in STRATEGIES:
            raise unknown_name("anchor strategy", self.anchor_strategy, list_anchor_strategies())
        if STRATEGIES[self.anchor_strategy].needs_embeddings and self.anchor_model is None and self.anchors is None:
            raise UsageError(f"--anchor-strategy {self.anchor_strategy} chooses anchors from a model's embeddings: name one of the models with --anchor-model")
        if is_evaluation_split(self.train_split):
            raise UsageError(f"--train-split {self.train_split!r} looks like evaluation data: heads and anchors come from a training split")
        if self.split == self.train_split:
            raise UsageError(f"--split and --train-split are both {self.split!r}: evaluate on data the heads were not trained on")
        unknown = sorted(set(self.dataset_options) - set(DATASET_OPTIONS))
        if unknown:
            raise UsageError(f"unknown dataset option {', '.join(unknown)} (use some of {', '.join(DATASET_OPTIONS)})")

    def projection_sets(self) -> list[tuple[str, ...]]:
        """Give the projection sets with rows: each projection alone (when ``singles``), then the product."""
        sets = [(name,) for name in self.projections] if self.singles or len(self.projections) == 1 else []
        if len(self.projections) > 1:
            sets.append(tuple(self.projections))
        return sets


# ----- the data a sweep reads ---------------------------------------------------------------------


@dataclass
class ModelView:
    """One model's cached training and evaluation embeddings and its embeddings of the anchors."""

    ref: ModelRef
    train: CachedEmbeddings
    evaluation: CachedEmbeddings | None
    anchors: np.ndarray

    @property
    def name(self) -> str:
        """The model's name."""
        return self.ref.name

    @property
    def dim(self) -> int:
        """The latent size."""
        return self.train.dim

    def summary(self) -> dict[str, Any]:
        """Give the JSON-ready facts about the model's data in this sweep."""
        return {
            "name": self.name,
            "options": dict(self.ref.options),
            "dim": self.dim,
            "train_rows": self.train.rows,
            "eval_rows": self.evaluation.rows if self.evaluation is not None else None,
            "train_entry": str(self.train.path),
            "eval_entry": str(self.evaluation.path) if self.evaluation is not None else None,
        }


@dataclass
class SweepData:
    """The anchors and every model's view, checked to describe the same rows and classes."""

    manifest: AnchorManifest
    models: dict[str, ModelView]
    dataset_id: str
    dataset_fingerprint: str
    class_names: list[str]
    train_labels: np.ndarray
    eval_labels: np.ndarray | None

    @property
    def num_classes(self) -> int:
        """The number of classes of the dataset."""
        return len(self.class_names)


def _dataset_kwargs(settings: StitchSettings) -> dict[str, Any]:
    return {k: v for k, v in settings.dataset_options.items() if v is not None}


def _resolved_dataset(settings: StitchSettings) -> Any:
    """Give the DatasetSpec of the settings' dataset with its dataset options (no data is read)."""
    from stitchcli.data import resolve_dataset

    options = _dataset_kwargs(settings)
    return resolve_dataset(settings.dataset, input_column=options.get("input_column"),
                           label_column=options.get("label_column"), revision=options.get("dataset_revision"))


def ensure_embeddings(store: EmbeddingStore, ref: ModelRef, split: str, settings: StitchSettings, reporter: Reporter) -> CachedEmbeddings:
    """Give a model's cached embeddings of one split (arrays loaded), embedding them first if missing."""
    from stitchcli.embedding import embed, load_embeddings

    options = {k: v for k, v in ref.options.items() if v is not None}
    lookup = dict(limit=settings.limit, seed=settings.embed_seed, **options, **_dataset_kwargs(settings))
    try:
        return load_embeddings(store, ref.name, settings.dataset, split, **lookup)
    except UsageError as exc:
        if not str(exc).startswith("no cached embeddings"):
            raise
    reporter.info(f"{ref.name} has no cached embeddings of {settings.dataset}/{split}: embedding them now")
    embed(
        [ref.name],
        settings.dataset,
        [split],
        store=store,
        options=EmbedOptions(batch_size=settings.embed_batch_size, device=settings.device, limit=settings.limit, seed=settings.embed_seed,
                             trust_remote_code=settings.trust_remote_code),
        reporter=reporter,
        **options,
        **_dataset_kwargs(settings),
    )
    return load_embeddings(store, ref.name, settings.dataset, split, **lookup)


def ensure_anchors(
    store: EmbeddingStore, settings: StitchSettings, train: CachedEmbeddings, reporter: Reporter, refs: Sequence[ModelRef] = ()
) -> AnchorManifest:
    """Give the sweep's default anchor manifest (``settings.anchors`` is None: named anchors are loaded by prepare).

    The default draw is saved under :func:`~stitchcli.anchors.default_anchor_name` and reused while it
    still describes the same choice of the same data; otherwise it is drawn again and replaced.
    """
    from stitchcli.anchors import choose_anchors

    num = settings.num_anchors
    if num is not None and num > train.rows:
        raise UsageError(
            f"--num-anchors {num} is more than the {train.rows} rows of the training split {settings.train_split!r}: "
            f"ask for at most {train.rows}"
        )
    if num is None:
        num = min(DEFAULT_NUM, train.rows)
        if num < DEFAULT_NUM:
            reporter.info(f"using all {num} training rows as anchors (fewer than the default {DEFAULT_NUM})")
    options = _dataset_kwargs(settings)
    data = _resolved_dataset(settings)
    model_options: dict[str, Any] = {}
    if STRATEGIES[settings.anchor_strategy].needs_embeddings:
        chooser = {ref.name: ref for ref in refs}.get(str(settings.anchor_model))
        if chooser is None:
            raise UsageError(f"--anchor-model {settings.anchor_model} is not one of the models: name one of {', '.join(r.name for r in refs)}")
        model_options = dict(chooser.options)
    else:
        settings = replace(settings, anchor_model=None)
    name = default_anchor_name(data, settings.train_split, settings.anchor_strategy, num, settings.anchor_seed,
                               model=settings.anchor_model, limit=settings.limit)
    if settings.limit is not None and settings.embed_seed:
        name += f"-e{settings.embed_seed}"
    wanted = {
        "dataset_id": data.dataset_id,
        "dataset_fingerprint": train.metadata["key"].get("dataset_fingerprint"),
        "split": settings.train_split,
        "strategy": settings.anchor_strategy,
        "seed": settings.anchor_seed,
        "num": num,
        "limit": settings.limit,
        "limit_seed": settings.embed_seed if settings.limit is not None else None,
        "dataset_options": options,
        "model": settings.anchor_model,
        "model_options": model_options,
    }
    try:
        saved: AnchorManifest | None = load_anchor_manifest(store, name)
    except UsageError:
        saved = None
    if saved is not None and all(getattr(saved, key) == value for key, value in wanted.items()):
        return saved
    manifest = choose_anchors(
        store, settings.dataset, split=settings.train_split, num=num, strategy=settings.anchor_strategy,
        seed=settings.anchor_seed, model=ModelRef(settings.anchor_model, model_options) if settings.anchor_model else None,
        limit=settings.limit, embed_seed=settings.embed_seed, name=name, reporter=reporter, **options,
    )
    path = save_anchor_manifest(store, manifest, force=True)
    reporter.info(f"saved anchors {manifest.name!r} ({manifest.num} rows of {settings.train_split}): {path}")
    return manifest


def prepare(
    store: EmbeddingStore,
    refs: Sequence[ModelRef],
    settings: StitchSettings,
    *,
    reporter: Reporter | None = None,
    evaluation: bool = True,
    manifest: AnchorManifest | None = None,
) -> SweepData:
    """Give the sweep's data: every model's embeddings (built if missing) and anchor embeddings.

    Raises:
        UsageError: a model named twice, anchors of another dataset or split or not in a model's cache,
            a split that does not exist, models whose rows or classes disagree.
    """
    reporter = reporter or Reporter()
    settings.check()
    names = [ref.name for ref in refs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"model {', '.join(repeated)} is listed twice: name each model once")
    if manifest is None and settings.anchors is not None:
        manifest = load_anchor_manifest(store, settings.anchors)
    if manifest is not None:
        _check_manifest_before_work(manifest, settings)
    if settings.anchor_model is not None and STRATEGIES[settings.anchor_strategy].needs_embeddings and settings.anchor_model not in names:
        raise UsageError(f"--anchor-model {settings.anchor_model} is not one of the models: name one of {', '.join(names)}")
    train = {ref.name: ensure_embeddings(store, ref, settings.train_split, settings, reporter) for ref in refs}
    evals = {ref.name: ensure_embeddings(store, ref, settings.split, settings, reporter) for ref in refs} if evaluation else {}
    first = train[names[0]]
    key = first.metadata["key"]
    dataset_id = str(key["dataset_id"])
    if manifest is None:
        manifest = ensure_anchors(store, settings, first, reporter, refs)
    views: dict[str, ModelView] = {}
    for ref in refs:
        anchors = select_anchor_rows(manifest, train[ref.name], model=ref.name)
        views[ref.name] = ModelView(ref, train[ref.name], evals.get(ref.name), np.asarray(anchors.embeddings, dtype=np.float32))
    class_names = list(first.metadata.get("class_names") or [])
    if not class_names:
        class_names = [str(i) for i in range(int(first.labels.max()) + 1)] if first.rows else []
    for view in views.values():
        _check_same_rows(views[names[0]], view, "train", settings.train_split)
        if view.evaluation is not None:
            _check_same_rows(views[names[0]], view, "evaluation", settings.split)
        other = list(view.train.metadata.get("class_names") or [])
        if other and other != class_names:
            raise UsageError(f"{view.name} and {names[0]} disagree on the class names of {settings.dataset}: embed both with the same label column")
    eval_view = views[names[0]].evaluation
    unseen = sorted(set(eval_view.labels.tolist()) - set(first.labels.tolist())) if eval_view is not None else []
    if unseen:  # a --limit subset can lack a rare class: warn rather than refuse
        shown = ", ".join(class_names[i] if i < len(class_names) else str(i) for i in unseen)
        reporter.warn(f"class(es) {shown} of split {settings.split!r} never occur in {settings.train_split!r}: no head learns them, so their rows count as errors")
    return SweepData(
        manifest=manifest,
        models=views,
        dataset_id=dataset_id,
        dataset_fingerprint=str(key.get("dataset_fingerprint")),
        class_names=class_names,
        train_labels=np.asarray(first.labels, dtype=np.int64),
        eval_labels=np.asarray(eval_view.labels, dtype=np.int64) if eval_view is not None else None,
    )


def _check_manifest_before_work(manifest: AnchorManifest, settings: StitchSettings) -> None:
    """Refuse anchors of another dataset, split or subset before any model work (UsageError)."""
    data = _resolved_dataset(settings)
    if manifest.dataset_id != data.dataset_id:
        raise UsageError(f"anchors {manifest.name!r} are rows of {manifest.dataset_id}, not of the requested dataset {data.dataset_id}: choose anchors of this dataset")
    if manifest.split != settings.train_split:
        raise UsageError(
            f"anchors {manifest.name!r} are rows of split {manifest.split!r}, but heads train on {settings.train_split!r}: "
            f"pass --train-split {manifest.split} or anchors of {settings.train_split!r}"
        )
    if settings.num_anchors is not None and settings.num_anchors != manifest.num:
        raise UsageError(f"anchors {manifest.name!r} hold {manifest.num} anchors, not the --num-anchors {settings.num_anchors} requested: drop one of the two")
    if settings.limit is not None and manifest.limit != settings.limit:
        drawn = f"the --limit {manifest.limit} subset" if manifest.limit is not None else "the whole split"
        raise UsageError(
            f"anchors {manifest.name!r} were drawn from {drawn}, and --limit {settings.limit} embeds another subset "
            f"that lacks some of them: pass --limit {manifest.limit} or choose anchors with --limit {settings.limit}"
            if manifest.limit is not None else
            f"anchors {manifest.name!r} were drawn from the whole split, and --limit {settings.limit} embeds a subset "
            f"that lacks some of them: drop --limit, or choose anchors with `stitchcli anchor --limit {settings.limit}`"
        )


def _check_same_rows(reference: ModelView, view: ModelView, part: str, split: str) -> None:
    a = getattr(reference, part)
    b = getattr(view, part)
    if not (np.array_equal(a.ids, b.ids) and np.array_equal(a.labels, b.labels)):
        raise UsageError(
            f"{view.name} and {reference.name} hold different rows of split {split!r} ({b.rows} and {a.rows} rows): "
            "embed both with the same --limit and --seed"
        )


# ----- representations ------------------------------------------------------------------------------


def product_values(latents: np.ndarray, anchors: np.ndarray, projections: Sequence[str], transform: str, device: torch.device) -> torch.Tensor:
    """Give the (N, n, k) product space of ``latents`` against the model's own ``anchors`` (on the CPU)."""
    from stitchcli.relative import relative_space

    return relative_space(torch.from_numpy(np.ascontiguousarray(latents)), torch.from_numpy(anchors), projections, transform=transform, device=device).values


@dataclass
class LatentTranslation:
    """An orthogonal Procrustes map from a source latent space to a target one, fitted on anchors alone.

    ``x -> ((x - source_mean) / source_scale) @ rotation * target_scale + target_mean``: both anchor sets
    are centred and scaled to unit mean row norm, and ``rotation`` (source dim × target dim) minimises the
    Frobenius distance between them (Maiorca et al., NeurIPS 2023). Different dimensions are handled as
    zero-padding the smaller space. With fewer anchors than dimensions only the directions the anchors span
    are determined; the map is kept to those (the rest maps to the target's anchor mean), rather than
    completed with an arbitrary rotation.
    """

    source_mean: np.ndarray
    source_scale: float
    target_mean: np.ndarray
    target_scale: float
    rotation: np.ndarray

    @classmethod
    def fit(cls, source_anchors: np.ndarray, target_anchors: np.ndarray) -> LatentTranslation:
        """Give the map fitted on the same anchors embedded by the source and the target model (float64)."""
        source, target = _paired_anchors(source_anchors, target_anchors)
        source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
        xs, xt = source - source_mean, target - target_mean
        source_scale = _mean_row_norm(xs)
        target_scale = _mean_row_norm(xt)
        u, singular, vt = np.linalg.svd((xs / source_scale).T @ (xt / target_scale), full_matrices=False)
        # With fewer anchors than dimensions the cross-covariance is rank-deficient and the singular vectors
        # of its zero singular values are arbitrary: keep the map on the part the anchors determine.
        rank = int((singular > singular.max(initial=0.0) * max(u.shape[0], vt.shape[1]) * np.finfo(np.float64).eps).sum())
        return cls(source_mean, source_scale, target_mean, target_scale, u[:, :rank] @ vt[:rank])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Give ``x`` (N, source dim) mapped into the target space, float32."""
        mapped = ((np.asarray(x, dtype=np.float64) - self.source_mean) / self.source_scale) @ self.rotation
        return (mapped * self.target_scale + self.target_mean).astype(np.float32)


@dataclass
class AffineTranslation:
    """A ridge-regularised affine map from a source latent space to a target one, fitted on anchors alone.

    ``x -> (x - source_mean) @ matrix + target_mean``, where ``matrix`` minimises
    ``|A W - B|² + ridge · k · v · |W|²`` over the centred anchors ``A`` (source) and ``B`` (target), ``k``
    anchors, ``v`` the source anchors' mean variance per dimension (so ``ridge`` does not depend on the
    scale of the latents or the number of anchors). Unlike :class:`LatentTranslation` it may stretch and
    shear: two architectures trained apart are rarely isometric. On the offline demo's EfficientNet-Lite
    pair it closes most of the gap the orthogonal map leaves (docs/RESULTS.md).
    """

    source_mean: np.ndarray
    target_mean: np.ndarray
    matrix: np.ndarray

    @classmethod
    def fit(cls, source_anchors: np.ndarray, target_anchors: np.ndarray, ridge: float = DEFAULT_RIDGE) -> AffineTranslation:
        """Give the map fitted on the same anchors embedded by the source and the target model (float64)."""
        source, target = _paired_anchors(source_anchors, target_anchors)
        source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
        a, b = source - source_mean, target - target_mean
        k, d = a.shape
        penalty = ridge * k * max(float((a**2).sum()) / (k * d), np.finfo(np.float64).tiny)
        if k >= d:  # the d x d normal equations
            matrix = np.linalg.solve(a.T @ a + penalty * np.eye(d), a.T @ b)
        else:  # the same solution through the k x k kernel form
            matrix = a.T @ np.linalg.solve(a @ a.T + penalty * np.eye(k), b)
        return cls(source_mean, target_mean, matrix)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Give ``x`` (N, source dim) mapped into the target space, float32."""
        return ((np.asarray(x, dtype=np.float64) - self.source_mean) @ self.matrix + self.target_mean).astype(np.float32)


def _paired_anchors(source_anchors: np.ndarray, target_anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give both anchor sets as float64 after checking that they are the same rows (UsageError otherwise)."""
    source = np.asarray(source_anchors, dtype=np.float64)
    target = np.asarray(target_anchors, dtype=np.float64)
    if source.shape[0] != target.shape[0] or source.ndim != 2 or target.ndim != 2:
        raise UsageError(f"a translation needs the same anchors in both spaces, got {source.shape} and {target.shape}")
    return source, target


def _mean_row_norm(x: np.ndarray) -> float:
    norm = float(np.sqrt((x**2).sum() / max(len(x), 1)))
    return norm if norm > 0 else 1.0


# ----- heads -----------------------------------------------------------------------------------------


@dataclass
class HeadRequest:
    """What one head is: the decoder, its inputs (relative or absolute) and the training seed."""

    kind: str
    projections: tuple[str, ...]
    aggregation: str | None
    seed: int


def _head_identity(data: SweepData, view: ModelView, request: HeadRequest, settings: StitchSettings) -> dict[str, Any]:
    identity: dict[str, Any] = {
        "kind": request.kind,
        "model_entry": view.train.metadata.get("key_digest"),
        "settings": settings.head.to_dict(),
        "seed": request.seed,
    }
    if request.kind == "relative":
        identity.update(
            anchors={k: v for k, v in data.manifest.selection().items() if k not in ("notes", "params", "name")},
            projections=list(request.projections),
            aggregation=request.aggregation,
            transform=settings.transform,
        )
    return identity


def head_cache_path(store: EmbeddingStore, model: str, dataset_id: str, kind: str, digest: str) -> Path:
    """Give where a head with this identity digest is cached."""
    return store.root / HEADS_FOLDER / slug(model) / slug(dataset_id) / f"{kind}-{digest}.safetensors"


def obtain_head(
    store: EmbeddingStore,
    data: SweepData,
    view: ModelView,
    request: HeadRequest,
    settings: StitchSettings,
    features: Callable[[], torch.Tensor],
    device: torch.device,
    *,
    reporter: Reporter,
    force: bool = False,
) -> tuple[FittedHead, bool]:
    """Give (the head, whether it came from the cache): read when cached, else trained and saved.

    ``features`` gives the decoder's training features the head reads ((N, n, k) or (N, D)); it is called
    only when the head must be trained.
    """
    identity = _head_identity(data, view, request, settings)
    digest = head_digest(identity)
    path = head_cache_path(store, view.name, data.dataset_id, request.kind, digest)
    cached = None if force else _cached_head(path, digest, device, reporter)
    if cached is not None:
        return cached, True
    # One process trains a head at a time: another that needs it waits, then reads it (a read-only cache
    # that holds the head never gets here, so it is never locked).
    lock = path.with_suffix(".lock")
    with file_lock(lock, on_wait=lambda: reporter.info(f"waiting for another process training the same head ({lock})")) as locked:
        cached = None if force else _cached_head(path, digest, device, reporter, quiet=True)
        if cached is not None:
            return cached, True
        if locked:  # temporary files of a killed training; every writer holds the lock, so none is live
            remove_interrupted_writes(path)
            remove_interrupted_writes(path.with_suffix(".json"))
        x = features()
        module = build_classifier(
            request.kind,
            data.num_classes,
            settings.head,
            input_dim=int(x.shape[-1]) if request.kind == "absolute" else None,
            aggregation=request.aggregation,
            num_subspaces=len(request.projections) or None,
            num_anchors=data.manifest.num if request.kind == "relative" else None,
            seed=request.seed,
        )
        record = train_classifier(module, x, data.train_labels, settings.head, seed=request.seed, device=device)
        train_key = view.train.metadata["key"]
        config = {
            "format": HEAD_FORMAT,
            "kind": request.kind,
            "identity_digest": digest,
            "model": view.name,
            "model_options": dict(view.ref.options),
            "model_entry": view.train.metadata.get("key_digest"),
            "model_key": train_key,
            "dataset": settings.dataset,
            "dataset_id": data.dataset_id,
            "dataset_fingerprint": data.dataset_fingerprint,
            "train_split": settings.train_split,
            "limit": settings.limit,
            "num_classes": data.num_classes,
            "class_names": data.class_names,
            "anchors": data.manifest.to_dict() if request.kind == "relative" else None,
            "projections": list(request.projections),
            "aggregation": request.aggregation,
            "transform": settings.transform if request.kind == "relative" else None,
            "num_anchors": data.manifest.num if request.kind == "relative" else None,
            "input_dim": view.dim if request.kind == "absolute" else None,
            "settings": settings.head.to_dict(),
            "seed": request.seed,
            "training": record.to_dict(),
            "versions": library_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        head = FittedHead(module, config)
        with out_of_space_as_work_error(path):
            save_head(path, head)
        return head, False


def _cached_head(path: Path, digest: str, device: torch.device, reporter: Reporter, *, quiet: bool = False) -> FittedHead | None:
    """Give the head cached at ``path`` when it is there, intact and made for ``digest``; else None (with a
    warning why, unless ``quiet``: the caller has looked once already)."""
    if not path.is_file():
        return None
    try:
        head = load_head(path, device=device)
    except UsageError as exc:
        if not quiet:
            reporter.warn(f"{exc}; training it again")
        return None
    if head.config.get("identity_digest") == digest:
        return head
    if not quiet:
        reporter.warn(f"cached head {path} was made for other inputs; training it again")
    return None


# ----- reports ---------------------------------------------------------------------------------------


@dataclass
class StitchRow:
    """One (encoder, decoder, method, projection set, aggregation) result, mean ± std over seeds.

    ``accuracy`` and ``macro_f1`` are fractions in [0, 1]; None with a ``note`` where the row is not
    defined (absolute stitching across different latent sizes).
    """

    encoder: str
    decoder: str
    method: str
    projections: list[str]
    aggregation: str | None
    stitched: bool
    accuracy: float | None
    accuracy_std: float | None
    macro_f1: float | None
    macro_f1_std: float | None
    seeds: list[int]
    per_seed: list[dict[str, float]] = field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Give the JSON-ready row."""
        return asdict(self)

    @property
    def setting(self) -> tuple[str, tuple[str, ...], str | None]:
        """Give (method, projections, aggregation): what the row measures, apart from the models."""
        return (self.method, tuple(self.projections), self.aggregation)


@dataclass
class SimilarityRow:
    """How alike two models' representations of the same evaluation rows are, in one space."""

    model_a: str
    model_b: str
    projection: str
    cka: float | None
    jaccard: float | None
    mrr: float | None
    cosine: float | None
    rows: int
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Give the JSON-ready row."""
        return asdict(self)


@dataclass
class StitchReport:
    """The result of a sweep: rows, similarity, and what produced them."""

    dataset: str
    dataset_id: str
    split: str
    train_split: str
    anchors: dict[str, Any]
    models: list[dict[str, Any]]
    settings: dict[str, Any]
    rows: list[StitchRow]
    similarity: list[SimilarityRow] = field(default_factory=list)
    heads_trained: int = 0
    heads_cached: int = 0
    seconds: float = 0.0

    def summary(self) -> list[dict[str, Any]]:
        """Give mean ± std over model pairs per (method, projections, aggregation): reference and stitched.

        The reference averages the decoder→decoder rows, the stitched part the encoder→decoder rows with
        encoder ≠ decoder; each pair enters with its mean over seeds.
        """
        groups: dict[tuple[str, tuple[str, ...], str | None], dict[bool, list[StitchRow]]] = {}
        for row in self.rows:
            groups.setdefault(row.setting, {True: [], False: []})[row.stitched].append(row)
        out = []
        for (method, projections, aggregation), parts in groups.items():
            entry: dict[str, Any] = {"method": method, "projections": list(projections), "aggregation": aggregation}
            for stitched, label in ((False, "reference"), (True, "stitched")):
                for metric in ("accuracy", "macro_f1"):
                    values = [getattr(r, metric) for r in parts[stitched] if getattr(r, metric) is not None]
                    entry[f"{label}_{metric}"] = round(float(np.mean(values)), 6) if values else None
                    entry[f"{label}_{metric}_std"] = round(float(np.std(values)), 6) if values else None
                entry[f"{label}_pairs"] = sum(1 for r in parts[stitched] if r.accuracy is not None)
            out.append(entry)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Give the JSON document of ``stitch --json`` and ``eval --json``."""
        return {
            "dataset": self.dataset,
            "dataset_id": self.dataset_id,
            "split": self.split,
            "train_split": self.train_split,
            "anchors": self.anchors,
            "models": self.models,
            "settings": self.settings,
            "rows": [row.to_dict() for row in self.rows],
            "summary": self.summary(),
            "similarity": [row.to_dict() for row in self.similarity],
            "heads_trained": self.heads_trained,
            "heads_cached": self.heads_cached,
            "seconds": round(self.seconds, 3),
        }


def _score(predictions: list[np.ndarray], labels: np.ndarray, num_classes: int, seeds: Sequence[int]) -> dict[str, Any]:
    from stitchcli.metrics import accuracy, macro_f1

    per_seed = [
        {"seed": seed, "accuracy": round(accuracy(labels, p), 6), "macro_f1": round(macro_f1(labels, p, num_classes), 6)}
        for seed, p in zip(seeds, predictions)
    ]
    acc = np.array([s["accuracy"] for s in per_seed])
    f1 = np.array([s["macro_f1"] for s in per_seed])
    return {
        "accuracy": round(float(acc.mean()), 6),
        "accuracy_std": round(float(acc.std()), 6),
        "macro_f1": round(float(f1.mean()), 6),
        "macro_f1_std": round(float(f1.std()), 6),
        "seeds": list(seeds),
        "per_seed": per_seed,
    }


# ----- the sweep -------------------------------------------------------------------------------------


def run_sweep(
    store: EmbeddingStore,
    refs: Sequence[ModelRef],
    settings: StitchSettings,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    similarity: bool = False,
    head_file: str | Path | None = None,
    explicit: Mapping[str, Any] | None = None,
    reporter: Reporter | None = None,
) -> StitchReport:
    """Give the stitching rows of every (encoder, decoder) pair, and optionally the similarity table.

    Args:
        store: the cache.
        refs: the models.
        settings: what to sweep.
        pairs: (encoder, decoder) names; default every ordered pair, the diagonal (the non-stitched
            references) included.
        similarity: also compute the similarity table of every unordered model pair.
        head_file: use this saved relative head as the (only) decoder head; its anchors, projections,
            aggregation, transform and seed apply.
        explicit: with ``head_file``: what the user asked for explicitly (keys ``projections``,
            ``aggregation``, ``transform``); a head that differs is refused, as are anchors named in the
            settings that are not the head's.
        reporter: where progress goes.
    """
    from stitchcli.device import resolve_device

    from stitchcli.demo import prepare_packaged

    started = time.perf_counter()
    reporter = reporter or Reporter()
    settings.check()
    names = [ref.name for ref in refs]
    if len(refs) < 1:
        raise UsageError("no model given")
    shown = settings.dataset
    settings = replace(settings, dataset=prepare_packaged(store, settings.dataset, names, reporter))
    pairs = list(pairs) if pairs is not None else [(a, b) for a in names for b in names]
    decoders = list(dict.fromkeys(decoder for _, decoder in pairs))
    device = resolve_device(settings.device)

    given_head: FittedHead | None = None
    manifest: AnchorManifest | None = None
    sets = settings.projection_sets()
    aggregations = list(settings.aggregations)
    seeds = list(settings.seeds)
    if head_file is not None:
        given_head, manifest, settings = _settings_of_head(store, head_file, settings, decoders, explicit or {}, device)
        sets = [given_head.projections]
        aggregations = [str(given_head.config["aggregation"])]
        seeds = [int(given_head.config["seed"])]
    data = prepare(store, refs, settings, reporter=reporter, manifest=manifest)
    if given_head is not None:
        check_head(given_head, dataset_id=data.dataset_id, dataset_fingerprint=data.dataset_fingerprint, num_classes=data.num_classes)
    rows_evaluated = len(data.eval_labels) if data.eval_labels is not None else 0
    if similarity and {"jaccard", "mrr"} & set(settings.metrics) and settings.k >= rows_evaluated:
        raise UsageError(f"--k {settings.k} neighbours need more than the {rows_evaluated} evaluation rows: pass a smaller --k")
    assert data.eval_labels is not None
    projections = list(settings.projections)
    encoders = list(dict.fromkeys(encoder for encoder, _ in pairs))
    needed = list(dict.fromkeys(encoders + decoders))
    reporter.info(f"projecting the {settings.split} split of {len(needed)} model(s) onto {data.manifest.num} anchors ({', '.join(projections)})")
    eval_spaces = {
        name: product_values(data.models[name].evaluation.embeddings, data.models[name].anchors, projections, settings.transform, device)
        for name in needed
    }
    train_spaces: dict[str, torch.Tensor] = {}

    def train_features(decoder: str, subset: tuple[str, ...]) -> Callable[[], torch.Tensor]:
        def compute() -> torch.Tensor:
            if decoder not in train_spaces:
                view = data.models[decoder]
                train_spaces[decoder] = product_values(view.train.embeddings, view.anchors, projections, settings.transform, device)
            return _subspaces(train_spaces[decoder], projections, subset)

        return compute

    relative_jobs = [(d, s, a, seed) for d in decoders for s in sets for a in aggregations for seed in seeds]
    absolute_jobs = [(d, seed) for d in decoders for seed in seeds] if settings.baselines else []
    total = len(relative_jobs) + len(absolute_jobs)
    reporter.start("heads (trained, or read from the cache)", total, 0, unit="heads")
    trained = cached = 0
    heads: dict[tuple[str, tuple[str, ...], str | None, int], FittedHead] = {}
    try:
        for decoder, subset, aggregation, seed in relative_jobs:
            if given_head is not None:
                heads[(decoder, subset, aggregation, seed)], hit = given_head, True
            else:
                heads[(decoder, subset, aggregation, seed)], hit = obtain_head(
                    store, data, data.models[decoder], HeadRequest("relative", subset, aggregation, seed), settings,
                    train_features(decoder, subset), device, reporter=reporter,
                )
            cached, trained = cached + hit, trained + (not hit)
            reporter.advance(1)
        for decoder, seed in absolute_jobs:
            view = data.models[decoder]
            heads[(decoder, (), None, seed)], hit = obtain_head(
                store, data, view, HeadRequest("absolute", (), None, seed), settings,
                lambda view=view: torch.from_numpy(view.train.embeddings), device, reporter=reporter,
            )
            cached, trained = cached + hit, trained + (not hit)
            reporter.advance(1)
    finally:
        reporter.stop()
    train_spaces.clear()

    rows: list[StitchRow] = []
    labels = data.eval_labels
    for subset in sets:
        for aggregation in aggregations:
            for encoder, decoder in pairs:
                features = _subspaces(eval_spaces[encoder], projections, subset)
                predictions = [heads[(decoder, subset, aggregation, seed)].predict(features) for seed in seeds]
                rows.append(StitchRow(encoder, decoder, "relative", list(subset), aggregation, encoder != decoder,
                                      **_score(predictions, labels, data.num_classes, seeds)))
    for method in settings.baselines if absolute_jobs else ():
        for encoder, decoder in pairs:
            rows.append(_baseline_row(method, data, encoder, decoder, heads, seeds, labels, settings.ridge))
    report = StitchReport(
        dataset=shown,
        dataset_id=data.dataset_id,
        split=settings.split,
        train_split=settings.train_split,
        anchors={"name": data.manifest.name, "num": data.manifest.num, "strategy": data.manifest.strategy,
                 "seed": data.manifest.seed, "split": data.manifest.split, "limit": data.manifest.limit},
        models=[data.models[name].summary() for name in needed],
        settings=_settings_dict(settings),
        rows=rows,
        heads_trained=trained,
        heads_cached=cached,
    )
    if similarity:
        report.similarity = similarity_rows(data, needed, eval_spaces, projections, settings)
    report.seconds = time.perf_counter() - started
    return report


def _settings_of_head(
    store: EmbeddingStore,
    head_file: str | Path,
    settings: StitchSettings,
    decoders: Sequence[str],
    explicit: Mapping[str, Any],
    device: torch.device,
) -> tuple[FittedHead, AnchorManifest, StitchSettings]:
    """Give (the head, its anchors, the settings it implies) after refusing a head that does not fit the request."""
    head = load_head(head_file, device=device)
    if head.kind != "relative":
        raise UsageError(f"head {head_file} is an absolute head: stitching needs a relative head (train one with `stitchcli fit-head`)")
    if len(decoders) != 1:
        raise UsageError("a head file is one decoder's head: give one decoder with it")
    data = _resolved_dataset(settings)
    requested = load_anchor_manifest(store, settings.anchors) if settings.anchors is not None else None
    check_head(
        head,
        dataset_id=data.dataset_id,
        model=decoders[0],
        anchor_ids=requested.ids if requested is not None else None,
        anchors_name=requested.name if requested is not None else None,
        projections=explicit.get("projections"),
        aggregation=explicit.get("aggregation"),
        transform=explicit.get("transform"),
    )
    manifest = AnchorManifest.from_dict(head.config["anchors"], where=f"the anchors of head {head_file}")
    implied = replace(
        settings,
        anchors=None,
        num_anchors=None,
        projections=head.projections,
        aggregations=(str(head.config["aggregation"]),),
        transform=str(head.config["transform"]),
        seeds=(int(head.config["seed"]),),
        head=HeadSettings.from_dict(head.config["settings"]),
        train_split=manifest.split,
        limit=head.config.get("limit"),
    )
    return head, manifest, implied


def _subspaces(values: torch.Tensor, projections: Sequence[str], subset: Sequence[str]) -> torch.Tensor:
    """Give the (N, len(subset), k) part of an (N, n, k) product space (a view when it is all of it)."""
    if tuple(subset) == tuple(projections):
        return values
    return values[:, [list(projections).index(name) for name in subset]]


def _baseline_row(
    method: str,
    data: SweepData,
    encoder: str,
    decoder: str,
    heads: Mapping[tuple[str, tuple[str, ...], str | None, int], FittedHead],
    seeds: Sequence[int],
    labels: np.ndarray,
    ridge: float,
) -> StitchRow:
    """Give one absolute, translation or affine row: the encoder's (mapped) latents through the decoder's absolute head."""
    source, target = data.models[encoder], data.models[decoder]
    assert source.evaluation is not None
    empty = {"accuracy": None, "accuracy_std": None, "macro_f1": None, "macro_f1_std": None, "seeds": list(seeds)}
    if method == "absolute" or encoder == decoder:  # a space translated to itself: the identity, nothing to fit
        if source.dim != target.dim:
            return StitchRow(encoder, decoder, method, [], None, True, **empty,
                             note=f"not defined: {encoder} has {source.dim}-d latents, {decoder} {target.dim}-d")
        latents = source.evaluation.embeddings
    elif method == "affine":
        latents = AffineTranslation.fit(source.anchors, target.anchors, ridge)(source.evaluation.embeddings)
    else:
        latents = LatentTranslation.fit(source.anchors, target.anchors)(source.evaluation.embeddings)
    features = torch.from_numpy(np.ascontiguousarray(latents))
    predictions = [heads[(decoder, (), None, seed)].predict(features) for seed in seeds]
    return StitchRow(encoder, decoder, method, [], None, encoder != decoder, **_score(predictions, labels, data.num_classes, seeds))


def similarity_rows(
    data: SweepData, names: Sequence[str], spaces: Mapping[str, torch.Tensor], projections: Sequence[str], settings: StitchSettings
) -> list[SimilarityRow]:
    """Give the similarity of every unordered model pair: per projection (relative), and CKA/Jaccard of the absolute latents."""
    from stitchcli.metrics import jaccard_at_k, linear_cka, mean_cosine, mrr_at_k

    metrics = set(settings.metrics)
    rows: list[SimilarityRow] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            n = int(spaces[a].shape[0])
            for index, projection in enumerate(projections):
                x, y = spaces[a][:, index], spaces[b][:, index]
                rows.append(SimilarityRow(
                    a, b, projection,
                    cka=linear_cka(x, y) if "cka" in metrics else None,
                    jaccard=jaccard_at_k(x, y, settings.k) if "jaccard" in metrics else None,
                    mrr=mrr_at_k(x, y, settings.k) if "mrr" in metrics else None,
                    cosine=mean_cosine(x, y) if "cosine" in metrics else None,
                    rows=n,
                ))
            xa = data.models[a].evaluation.embeddings
            xb = data.models[b].evaluation.embeddings
            rows.append(SimilarityRow(
                a, b, "absolute",
                cka=linear_cka(xa, xb) if "cka" in metrics else None,
                jaccard=jaccard_at_k(xa, xb, settings.k) if "jaccard" in metrics else None,
                mrr=None,
                cosine=None,
                rows=n,
                note="mrr and cosine compare vectors across spaces: defined in the relative spaces only",
            ))
    return rows


def _settings_dict(settings: StitchSettings) -> dict[str, Any]:
    document = asdict(settings)
    document["head"] = settings.head.to_dict()
    document["dataset_options"] = dict(settings.dataset_options)
    return document


def stitch(
    store: EmbeddingStore,
    encoder: ModelRef,
    decoder: ModelRef,
    settings: StitchSettings,
    *,
    head_file: str | Path | None = None,
    explicit: Mapping[str, Any] | None = None,
    reporter: Reporter | None = None,
) -> StitchReport:
    """Give the rows of ENCODER→DECODER next to DECODER→DECODER for every projection set and the baselines."""
    if encoder.name == decoder.name:
        raise UsageError(f"ENCODER and DECODER are both {encoder.name!r}: stitching needs two models")
    return run_sweep(
        store, [encoder, decoder], settings, pairs=[(decoder.name, decoder.name), (encoder.name, decoder.name)],
        head_file=head_file, explicit=explicit, reporter=reporter,
    )


def evaluate(store: EmbeddingStore, models: Sequence[ModelRef], settings: StitchSettings, *, reporter: Reporter | None = None) -> StitchReport:
    """Give the N×N stitching rows (every encoder into every decoder) and the similarity table of the models."""
    if len(models) < 2:
        raise UsageError("eval compares models: give at least two with --models A,B")
    return run_sweep(store, models, settings, similarity=bool(settings.metrics), reporter=reporter)


def fit_head(
    store: EmbeddingStore,
    model: ModelRef,
    settings: StitchSettings,
    *,
    seed: int = 0,
    out: str | Path | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
) -> tuple[FittedHead, bool, Path | None]:
    """Give (the relative head of ``model``, whether it came from the cache, the file it was also written to).

    The head reads all of ``settings.projections`` with ``settings.aggregations[0]``; it is cached like the
    heads ``stitch`` trains (so ``stitch`` reuses it) and also written to ``out`` (``.safetensors`` added
    when missing, the config beside it as ``.json``) when given.
    """
    from stitchcli.device import resolve_device

    from stitchcli.demo import prepare_packaged

    reporter = reporter or Reporter()
    if len(settings.aggregations) != 1:
        raise UsageError("fit-head trains one head: give one --aggregation")
    settings = replace(settings, dataset=prepare_packaged(store, settings.dataset, [model.name], reporter))
    data = prepare(store, [model], settings, reporter=reporter, evaluation=False)
    view = data.models[model.name]
    device = resolve_device(settings.device)
    projections = tuple(settings.projections)

    def features() -> torch.Tensor:
        return product_values(view.train.embeddings, view.anchors, projections, settings.transform, device)

    def train_features() -> torch.Tensor:
        reporter.info(
            f"training a {settings.aggregations[0]} head on {model.name}'s {','.join(projections)} product space "
            f"({view.train.rows} rows, {data.manifest.num} anchors)"
        )
        return features()

    request = HeadRequest("relative", projections, settings.aggregations[0], seed)
    if out is not None:
        _check_out_file(Path(out), head_digest(_head_identity(data, view, request, settings)), force=force)
    head, hit = obtain_head(store, data, view, request, settings, train_features, device, reporter=reporter, force=force)
    written = None
    if out is not None:
        cached_path = head.path
        with out_of_space_as_work_error(out):
            written = save_head(out, head)
        head.path = cached_path
    return head, hit, written


def _check_out_file(out: Path, digest: str, *, force: bool) -> None:
    """Refuse an ``--out`` that is a folder, or a file holding another head (unless ``force``)."""
    if str(out).endswith(("/", "\\")) or out.expanduser().is_dir():
        raise UsageError(f"--out {out} is a folder: give a file name such as {Path(out) / 'head'}")
    target = out.expanduser()
    target = target if target.suffix == ".safetensors" else target.with_name(target.name + ".safetensors")
    if not target.exists() or force:
        return
    try:
        existing = load_head(target)
    except UsageError:
        raise UsageError(f"{target} exists and is not a stitchcli head: choose another --out, or pass --force to replace it") from None
    if existing.config.get("identity_digest") != digest:
        raise UsageError(
            f"{target} holds another head ({existing.config.get('model')} on {existing.config.get('dataset')}): "
            "choose another --out, or pass --force to replace it"
        )


def stitching_matrix(report: StitchReport, setting: tuple[str, tuple[str, ...], str | None], names: Iterable[str], metric: str = "accuracy") -> list[list[float | None]]:
    """Give the encoder × decoder matrix of ``metric`` for one (method, projections, aggregation)."""
    names = list(names)
    lookup = {(row.encoder, row.decoder): getattr(row, metric) for row in report.rows if row.setting == setting}
    return [[lookup.get((encoder, decoder)) for decoder in names] for encoder in names]
