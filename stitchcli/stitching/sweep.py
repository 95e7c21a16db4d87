"""The stitching sweep: every encoder's evaluation split through every decoder's frozen heads (docs/METHOD.md §4–5).

For every decoder, one head is trained per (projection set, aggregation, seed) on its training split's product
space against its own anchor embeddings; every encoder's evaluation split is projected against the encoder's
own anchor embeddings and fed to that frozen head. Nothing is fitted on the encoder. The baselines and the
bridges feed the encoder's raw or mapped latents (:mod:`stitchcli.stitching.bridges`) to the decoder's absolute
head.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping, Sequence

import numpy as np
import torch

from stitchcli.anchors import AnchorManifest, load_anchor_manifest
from stitchcli.bridges import FittedBridge
from stitchcli.data.base import DatasetSpec
from stitchcli.errors import UsageError
from stitchcli.heads import FittedHead, check_head, load_head
from stitchcli.models import ModelRef
from stitchcli.progress import Reporter
from stitchcli.settings import AUTO, HeadSettings, StitchSettings, differing
from stitchcli.stitching.bridges import BASELINE_BRIDGES, auto_candidates, bridge_options, obtain_bridge, obtain_selection
from stitchcli.stitching.data import ModelView, SweepData, prepare, resolve_sweep_dataset
from stitchcli.stitching.features import product_values, subspaces
from stitchcli.stitching.heads_cache import HeadRequest, obtain_head
from stitchcli.stitching.report import StitchReport, StitchRow, score_predictions
from stitchcli.store import EmbeddingStore

if TYPE_CHECKING:
    from stitchcli.reconstruction.targets import PixelTargets
    from stitchcli.stitching.reconstruction import ReconstructionRows, RowKey

HeadKey = tuple[str, tuple[str, ...], "str | None", int]


def run_sweep(
    store: EmbeddingStore,
    refs: Sequence[ModelRef],
    settings: StitchSettings,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    similarity: bool = False,
    head_file: str | Path | None = None,
    explicit: Collection[str] = (),
    reporter: Reporter | None = None,
    keep: str | None = None,
) -> StitchReport:
    """Give the stitching rows of every (encoder, decoder) pair, and optionally the similarity table.

    ``settings.task`` decides what heads do: classify (rows with accuracy and macro-F1) or reconstruct the
    input image (rows with MSE, PSNR, SSIM and a pixel classifier's accuracy; :mod:`stitchcli.stitching.reconstruction`).

    Args:
        store: the cache.
        refs: the models.
        settings: what to sweep.
        pairs: (encoder, decoder) names; default every ordered pair, the diagonal (the non-stitched
            references) included.
        similarity: also compute the similarity table of every unordered model pair.
        head_file: use this saved relative head as the (only) decoder head; its anchors, projections,
            aggregation, transform, seed and training settings apply.
        explicit: with ``head_file``: the settings the user gave (parameter names, as in
            :func:`stitchcli.settings.by_name`); one whose value differs from the head's is refused, as are
            anchors named in the settings that are not the head's.
        reporter: where progress goes.
        keep: reconstruction only: keep the first seed's reconstructions in ``report.reconstructions``, of the
            grid's images (``"grid"``) or of every evaluation image (``"all"``).
    """
    from stitchcli.device import resolve_device
    from stitchcli.stitching.reconstruction import ReconstructionRows, require_image_task

    started = time.perf_counter()
    reporter = reporter or Reporter()
    settings.check()
    names = [ref.name for ref in refs]
    if len(refs) < 1:
        raise UsageError("no model given")
    dataset = resolve_sweep_dataset(store, settings, names, reporter)
    require_image_task(settings, dataset)
    pairs = list(pairs) if pairs is not None else [(a, b) for a in names for b in names]
    decoders = list(dict.fromkeys(decoder for _, decoder in pairs))
    device = resolve_device(settings.device)

    given_head: FittedHead | None = None
    manifest: AnchorManifest | None = None
    if head_file is not None:
        given_head, manifest, settings = _settings_of_head(store, head_file, settings, dataset, decoders, explicit, device)
    data = prepare(store, refs, settings, dataset, reporter=reporter, manifest=manifest)
    if given_head is not None:
        check_head(given_head, task=settings.task, dataset_id=data.dataset_id, dataset_fingerprint=data.dataset_fingerprint, num_classes=data.num_classes)
    rows_evaluated = len(data.eval_labels) if data.eval_labels is not None else 0
    if similarity and {"jaccard", "mrr"} & set(settings.metrics) and settings.k >= rows_evaluated:
        raise UsageError(f"--k {settings.k} neighbours need more than the {rows_evaluated} evaluation rows: pass a smaller --k")
    projections = list(settings.projections)
    encoders = list(dict.fromkeys(encoder for encoder, _ in pairs))
    needed = list(dict.fromkeys(encoders + decoders))
    reporter.info(f"projecting the {settings.split} split of {len(needed)} model(s) onto {data.manifest.num} anchors ({', '.join(projections)})")
    eval_spaces = {name: _evaluation_space(data, name, projections, settings, device) for name in needed}
    pixels = ReconstructionRows(data, settings, device, keep=keep, reporter=reporter) if settings.task == "reconstruction" else None
    heads, trained, cached = _heads(store, data, settings, decoders, given_head, device, reporter, pixels)

    def score(key: RowKey, head_list: list[FittedHead], features: torch.Tensor) -> dict[str, Any]:
        if pixels is not None:
            return pixels.score(key, data.models[key[0]], head_list, features)
        predictions = [head.predict(features) for head in head_list]
        return score_predictions(predictions, _eval_labels(data), settings.seeds)

    rows: list[StitchRow] = []
    for subset in settings.projection_sets():
        for aggregation in settings.aggregations:
            for encoder, decoder in pairs:
                features = subspaces(eval_spaces[encoder], projections, subset)
                head_list = [heads[(decoder, subset, aggregation, seed)] for seed in settings.seeds]
                rows.append(StitchRow(encoder, decoder, "relative", list(subset), aggregation, encoder != decoder,
                                      **score((encoder, decoder, "relative", subset, aggregation), head_list, features)))
    bridges = _BridgeCounter(store, data, reporter)
    for method in settings.baselines:
        for encoder, decoder in pairs:
            rows.append(_baseline_row(method, data, encoder, decoder, heads, settings, bridges, score))
    # the affine bridge is the affine baseline (BASELINE_BRIDGES): with both asked for, its row is given once
    for name in (name for name in settings.bridges if name not in settings.baselines):
        for encoder, decoder in pairs:
            rows.append(_bridge_row(name, data, encoder, decoder, heads, settings, bridges, score))
    report = StitchReport(
        dataset=settings.dataset,
        dataset_id=data.dataset_id,
        split=settings.split,
        train_split=settings.train_split,
        anchors={"name": data.manifest.name, "num": data.manifest.num, "strategy": data.manifest.strategy,
                 "seed": data.manifest.seed, "split": data.manifest.split, "limit": data.manifest.limit},
        models=[data.models[name].summary() for name in needed],
        settings=settings.to_dict(),
        rows=rows,
        heads_trained=trained,
        heads_cached=cached,
        task=settings.task,
        bridges_fitted=bridges.fitted,
        bridges_cached=bridges.cached,
    )
    if pixels is not None:
        report.pixel_classifier, report.reconstructions = pixels.summary(), pixels.outputs
    if similarity:
        from stitchcli.stitching.similarity import similarity_rows

        report.similarity = similarity_rows(data, needed, eval_spaces, projections, settings)
    report.seconds = time.perf_counter() - started
    return report


def _eval_labels(data: SweepData) -> np.ndarray:
    if data.eval_labels is None:
        raise AssertionError("a sweep always reads the evaluation split")
    return data.eval_labels


def _evaluation_space(data: SweepData, name: str, projections: Sequence[str], settings: StitchSettings, device: torch.device) -> torch.Tensor:
    view = data.models[name]
    if view.evaluation is None:
        raise AssertionError("a sweep always reads the evaluation split")
    return product_values(view.evaluation.embeddings, view.anchors, projections, settings.transform, device)


def _heads(
    store: EmbeddingStore,
    data: SweepData,
    settings: StitchSettings,
    decoders: Sequence[str],
    given_head: FittedHead | None,
    device: torch.device,
    reporter: Reporter,
    pixels: ReconstructionRows | None = None,
) -> tuple[dict[HeadKey, FittedHead], int, int]:
    """Give (every head the rows read, how many were trained, how many read from the cache).

    ``pixels``: a reconstruction sweep's images (the decoders' training targets, read once).
    """
    projections = list(settings.projections)
    train_spaces: dict[str, torch.Tensor] = {}

    def train_features(decoder: str, subset: tuple[str, ...]) -> Callable[[], torch.Tensor]:
        def compute() -> torch.Tensor:
            if decoder not in train_spaces:
                view = data.models[decoder]
                train_spaces[decoder] = product_values(view.train.embeddings, view.anchors, projections, settings.transform, device)
            return subspaces(train_spaces[decoder], projections, subset)

        return compute

    seeds, aggregations = settings.seeds, settings.aggregations
    relative_jobs = [(d, s, a, seed) for d in decoders for s in settings.projection_sets() for a in aggregations for seed in seeds]
    absolute_jobs = [(d, seed) for d in decoders for seed in seeds] if settings.baselines or settings.bridges else []
    reporter.start("heads (trained, or read from the cache)", len(relative_jobs) + len(absolute_jobs), 0, unit="heads")
    trained = cached = 0
    heads: dict[HeadKey, FittedHead] = {}
    try:
        for decoder, subset, aggregation, seed in relative_jobs:
            if given_head is not None:
                heads[(decoder, subset, aggregation, seed)], hit = given_head, True
            else:
                heads[(decoder, subset, aggregation, seed)], hit = obtain_head(
                    store, data, data.models[decoder], HeadRequest("relative", subset, aggregation, seed), settings,
                    train_features(decoder, subset), device, reporter=reporter, targets=_targets(pixels, data.models[decoder]),
                )
            cached, trained = cached + hit, trained + (not hit)
            reporter.advance(1)
        for decoder, seed in absolute_jobs:
            view = data.models[decoder]
            heads[(decoder, (), None, seed)], hit = obtain_head(
                store, data, view, HeadRequest("absolute", (), None, seed), settings,
                lambda view=view: torch.from_numpy(view.train.embeddings), device, reporter=reporter, targets=_targets(pixels, view),
            )
            cached, trained = cached + hit, trained + (not hit)
            reporter.advance(1)
    finally:
        reporter.stop()
    return heads, trained, cached


def _targets(pixels: ReconstructionRows | None, view: ModelView) -> Callable[[], PixelTargets] | None:
    return (lambda: pixels.train_targets(view)) if pixels is not None else None


def _settings_of_head(
    store: EmbeddingStore,
    head_file: str | Path,
    settings: StitchSettings,
    dataset: DatasetSpec,
    decoders: Sequence[str],
    explicit: Collection[str],
    device: torch.device,
) -> tuple[FittedHead, AnchorManifest, StitchSettings]:
    """Give (the head, its anchors, the settings it implies) after refusing a head that does not fit the request.

    The head fixes its anchors, projections, aggregation, transform, seed and training settings; a setting the
    user gave explicitly (``explicit``) with another value is refused, one equal to the head's is accepted.
    """
    head = load_head(head_file, device=device)
    if head.kind != "relative":
        raise UsageError(f"head {head_file} is an absolute head: stitching needs a relative head (train one with `stitchcli fit-head`)")
    if len(decoders) != 1:
        raise UsageError("a head file is one decoder's head: give one decoder with it")
    requested = load_anchor_manifest(store, settings.anchors) if settings.anchors is not None else None
    check_head(
        head,
        task=settings.task,
        dataset_id=dataset.dataset_id,
        model=decoders[0],
        anchor_ids=requested.ids if requested is not None else None,
        anchors_name=requested.name if requested is not None else None,
    )
    manifest = AnchorManifest.from_dict(head.config["anchors"], where=f"the anchors of head {head_file}")
    implied = replace(
        settings,
        anchors=None,
        num_anchors=manifest.num,
        anchor_strategy=manifest.strategy,
        anchor_seed=manifest.seed,
        anchor_model=manifest.model,
        embed_seed=manifest.limit_seed if manifest.limit_seed is not None else settings.embed_seed,
        projections=head.projections,
        aggregations=(str(head.config["aggregation"]),),
        transform=str(head.config["transform"]),
        seeds=(int(head.config["seed"]),),
        head=HeadSettings.from_dict(head.config["settings"]),
        train_split=manifest.split,
        limit=head.config.get("limit"),
        singles=False,
    )
    changed = differing(settings, implied, sorted(name for name in explicit if name != "anchors"))
    if changed:
        raise UsageError(
            f"--head fixes the anchors, projections, aggregation, seed and training settings of the head, and {head_file} was "
            f"trained with other values: drop {', '.join(changed)} (or give the head's own values)"
        )
    return head, manifest, implied


Scorer = Callable[..., dict[str, Any]]
"""(row key, the decoder's heads of each seed, the encoder's features) -> the row's scores (either task)."""


class _BridgeCounter:
    """Fits or reads the sweep's bridges and selections once each, counting which were fitted and which cached."""

    def __init__(self, store: EmbeddingStore, data: SweepData, reporter: Reporter) -> None:
        self.store, self.data, self.reporter = store, data, reporter
        self.fitted = self.cached = 0

    def bridge(self, name: str, encoder: str, decoder: str, settings: StitchSettings) -> FittedBridge:
        bridge, hit = obtain_bridge(self.store, self.data, self.data.models[encoder], self.data.models[decoder], name,
                                    bridge_options(name, settings), reporter=self.reporter)
        self.cached, self.fitted = self.cached + hit, self.fitted + (not hit)
        return bridge

    def selection(self, encoder: str, decoder: str, head: FittedHead, settings: StitchSettings) -> dict[str, Any]:
        record, hit = obtain_selection(self.store, self.data, self.data.models[encoder], self.data.models[decoder],
                                       auto_candidates(settings), head, settings, reporter=self.reporter)
        self.cached, self.fitted = self.cached + hit, self.fitted + (not hit)
        return record


def _absolute_row(method: str, encoder: str, decoder: str, heads: Mapping[HeadKey, FittedHead], settings: StitchSettings,
                  latents: np.ndarray | torch.Tensor, score: Scorer, **extra: Any) -> StitchRow:
    """Give the row of ``latents`` (the encoder's evaluation split, mapped or not) through the decoder's absolute heads."""
    features = torch.as_tensor(np.ascontiguousarray(latents)) if isinstance(latents, np.ndarray) else latents.contiguous()
    head_list = [heads[(decoder, (), None, seed)] for seed in settings.seeds]
    return StitchRow(encoder, decoder, method, [], None, encoder != decoder, **score((encoder, decoder, method, (), None), head_list, features), **extra)


def _baseline_row(method: str, data: SweepData, encoder: str, decoder: str, heads: Mapping[HeadKey, FittedHead], settings: StitchSettings,
                  bridges: _BridgeCounter, score: Scorer) -> StitchRow:
    """Give one absolute, translation or affine row: the encoder's (mapped) latents through the decoder's absolute head.

    ``translation`` and ``affine`` are the registry's ``orthogonal`` and ``affine`` bridges (:data:`BASELINE_BRIDGES`).
    """
    source, target = data.models[encoder], data.models[decoder]
    if source.evaluation is None:
        raise AssertionError("a sweep always reads the evaluation split")
    if method == "absolute" or encoder == decoder:  # a space translated to itself: the identity, nothing to fit
        if source.dim != target.dim:
            empty = {"accuracy": None, "accuracy_std": None, "macro_f1": None, "macro_f1_std": None, "seeds": list(settings.seeds),
                     "task": settings.task}
            return StitchRow(encoder, decoder, method, [], None, True, **empty,
                             note=f"not defined: {encoder} has {source.dim}-d latents, {decoder} {target.dim}-d")
        return _absolute_row(method, encoder, decoder, heads, settings, source.evaluation.embeddings, score)
    bridge = bridges.bridge(BASELINE_BRIDGES[method], encoder, decoder, settings)
    return _absolute_row(method, encoder, decoder, heads, settings, bridge(torch.from_numpy(np.asarray(source.evaluation.embeddings))), score)


def _bridge_row(name: str, data: SweepData, encoder: str, decoder: str, heads: Mapping[HeadKey, FittedHead], settings: StitchSettings,
                bridges: _BridgeCounter, score: Scorer) -> StitchRow:
    """Give the row of bridge ``name`` (or ``auto``): the encoder's mapped latents through the decoder's absolute head.

    On the diagonal (a model into itself) every bridge is the identity: nothing is fitted or chosen.
    """
    source = data.models[encoder]
    if source.evaluation is None:
        raise AssertionError("a sweep always reads the evaluation split")
    if encoder == decoder:
        return _absolute_row(name, encoder, decoder, heads, settings, source.evaluation.embeddings, score)
    extra: dict[str, Any] = {}
    if name == AUTO:
        record = bridges.selection(encoder, decoder, heads[(decoder, (), None, settings.seeds[0])], settings)
        extra = {"chosen": record["winner"], "selection": record}
        name = record["winner"]
    bridge = bridges.bridge(name, encoder, decoder, settings)
    mapped = bridge(torch.from_numpy(np.asarray(source.evaluation.embeddings)))
    return _absolute_row(AUTO if extra else name, encoder, decoder, heads, settings, mapped, score, **extra)


def stitch(
    store: EmbeddingStore,
    encoder: ModelRef,
    decoder: ModelRef,
    settings: StitchSettings,
    *,
    head_file: str | Path | None = None,
    explicit: Collection[str] = (),
    reporter: Reporter | None = None,
    keep: str | None = None,
) -> StitchReport:
    """Give the rows of ENCODER→DECODER next to DECODER→DECODER for every projection set and the baselines.

    ``keep``: see :func:`run_sweep` (reconstruction).
    """
    if encoder.name == decoder.name:
        raise UsageError(f"ENCODER and DECODER are both {encoder.name!r}: stitching needs two models")
    return run_sweep(
        store, [encoder, decoder], settings, pairs=[(decoder.name, decoder.name), (encoder.name, decoder.name)],
        head_file=head_file, explicit=explicit, reporter=reporter, keep=keep,
    )


def evaluate(
    store: EmbeddingStore, models: Sequence[ModelRef], settings: StitchSettings, *, reporter: Reporter | None = None, keep: str | None = None
) -> StitchReport:
    """Give the N×N stitching rows (every encoder into every decoder) and the similarity table of the models.

    ``keep``: see :func:`run_sweep` (reconstruction).
    """
    if len(models) < 2:
        raise UsageError("eval compares models: give at least two with --models A,B")
    return run_sweep(store, models, settings, similarity=bool(settings.metrics), reporter=reporter, keep=keep)
