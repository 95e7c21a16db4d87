"""A stitched model from a stitch sweep: which row and seed to save (chosen on validation data only), its parts and
its card.

The sweep's data (embeddings, anchors, heads) is read again from the cache, where the sweep just put it. Every
stitched row of the report (ENCODER→DECODER: each relative projection set and aggregation, and the absolute,
translation and affine baselines where defined) and every head seed is a candidate. Each is scored on the
*validation rows*: the rows of the training split that the decoder's head held out for early stopping (a seeded
class-stratified part, never a gradient step), embedded by the ENCODER, less the anchors when enough rows remain.
The candidate with the highest validation accuracy is saved (ties: the earlier row of stitch's table, then the
lower seed). The evaluation split's accuracy is only measured and written on the card; it never chooses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, NoReturn, Sequence

import numpy as np

from stitchcli.errors import UsageError
from stitchcli.models import ModelRef
from stitchcli.progress import Reporter
from stitchcli.settings import SHARED, StitchSettings
from stitchcli.stitched.maps import map_parts
from stitchcli.stitched.model import StitchedParts, save_stitched
from stitchcli.stitching.report import StitchReport, StitchRow, setting_label
from stitchcli.store import EmbeddingStore

MIN_CLEAN_VALIDATION_ROWS = 20
"""Fewer validation rows than this once the anchors are taken out: keep the anchors in (the card says so)."""


@dataclass
class Candidate:
    """One row and head seed that could be saved, with its validation accuracy."""

    row: StitchRow
    seed: int
    validation_accuracy: float
    parts: StitchedParts = field(repr=False)

    @property
    def label(self) -> str:
        """Give the row's setting as stitch's table names it."""
        return setting_label(self.row.projections, self.row.aggregation, self.row.method)


@dataclass
class StitchedBuild:
    """The chosen candidate, the card that describes it, and every candidate's validation accuracy."""

    chosen: Candidate
    card: dict[str, Any]
    candidates: list[Candidate]

    @property
    def accuracy(self) -> float:
        """The saved head's accuracy on the evaluation split (what ``predict`` on that split reports)."""
        return float(self.card["accuracy"]["stitched"])

    @property
    def label(self) -> str:
        """Give ``ENCODER→DECODER setting (seed S)``."""
        return f"{self.chosen.row.encoder}→{self.chosen.row.decoder} {self.chosen.label} (seed {self.chosen.seed})"

    def save(self, directory: str | Path) -> Path:
        """Give the directory the stitched model was written to (see :func:`~stitchcli.stitched.model.save_stitched`)."""
        return save_stitched(directory, self.chosen.parts, self.card)


def matching_rows(report: StitchReport, encoder: str, decoder: str, wanted: str | None) -> list[StitchRow]:
    """Give the report's defined ENCODER→DECODER rows that ``wanted`` names (all of them when None).

    ``wanted``: a method (``relative``, or a map kind: ``absolute``, ``translation``, ``affine``...), or a relative
    row's setting as the table prints it (``cosine+euclidean [mlp-sum]``; spaces ignored; ``cosine+euclidean``
    alone when one aggregation was swept).
    """
    rows = [r for r in report.rows if r.encoder == encoder and r.decoder == decoder and r.stitched and r.accuracy is not None]
    if wanted is None:
        return rows
    chosen = [r for r in rows if _names_row(wanted, r.method, r.projections, r.aggregation)]
    if not chosen:
        _no_such_row(wanted, [(r.method, r.projections, r.aggregation) for r in rows])
    return chosen


def check_row_name(settings: StitchSettings, wanted: str | None) -> None:
    """Refuse, before any work, a ``--save-row`` that names none of the rows ``settings`` will give.

    The rows of a sweep follow from its settings alone: a relative row per projection set and aggregation, a row
    per baseline and per bridge (the affine bridge is the affine baseline's row). With ``--head`` the head's
    settings replace these: check after reading it (:func:`matching_rows`).
    """
    if wanted is None:
        return
    planned = [("relative", subset, aggregation) for subset in settings.projection_sets() for aggregation in settings.aggregations]
    planned += [(method, (), None) for method in dict.fromkeys([*settings.baselines, *settings.bridges])]
    if not any(_names_row(wanted, *row) for row in planned):
        _no_such_row(wanted, planned)


def _names_row(wanted: str, method: str, projections: Sequence[str], aggregation: str | None) -> bool:
    """Tell whether ``wanted`` (a method, or a relative row's setting; spaces ignored) names this row."""
    key = wanted.replace(" ", "")
    return method == key or (method == "relative" and key in (setting_label(projections, aggregation).replace(" ", ""), "+".join(projections)))


def _no_such_row(wanted: str, rows: Sequence[tuple[str, Sequence[str], str | None]]) -> NoReturn:
    labels = list(dict.fromkeys(["relative", *(setting_label(projections, aggregation, method).replace(" ", "")
                                               for method, projections, aggregation in rows)]))
    raise UsageError(f"--save-row {wanted!r} names no row of this stitch: use one of {', '.join(labels)}")


def stitched_from_sweep(
    store: EmbeddingStore,
    encoder: ModelRef,
    decoder: ModelRef,
    settings: StitchSettings,
    report: StitchReport,
    *,
    row: str | None = None,
    head_file: str | Path | None = None,
    explicit: Collection[str] = (),
    reporter: Reporter | None = None,
) -> StitchedBuild:
    """Give the stitched model of a finished :func:`~stitchcli.stitching.stitch` (same store, models and settings).

    Args:
        store: the cache the sweep used.
        encoder, decoder: the sweep's models.
        settings: the sweep's settings (with ``head_file``: as given; the head's own apply, as in the sweep).
        report: the sweep's report (its rows are the candidates; their evaluation accuracies go on the card).
        row: save this row (see :func:`matching_rows`); its best seed on validation data. Default: the best
            candidate on validation data.
        head_file, explicit: as given to the sweep.
        reporter: where progress goes.
    """
    from stitchcli.device import resolve_device
    from stitchcli.stitching.data import prepare, resolve_sweep_dataset

    reporter = reporter or Reporter()
    device = resolve_device(settings.device)
    rows = matching_rows(report, encoder.name, decoder.name, row)
    if row is None:
        # a shared space's map spans every model of the sweep, not one pair: not a row a stitched model holds
        rows = [r for r in rows if r.method != SHARED]
        if head_file is not None:  # the head given is the one to save (and to hold to --min-accuracy), not another
            rows = [r for r in rows if r.method == "relative"]
    if not rows:
        raise UsageError(f"stitch gave no defined {encoder.name}→{decoder.name} row to save")
    dataset = resolve_sweep_dataset(store, settings, [encoder.name, decoder.name], reporter)
    given_head, manifest = None, None
    if head_file is not None:
        # the sweep's own reading of --head (its settings and anchors), so that both read the same head the same way
        from stitchcli.stitching.sweep import _settings_of_head

        given_head, manifest, settings = _settings_of_head(store, head_file, settings, dataset, [decoder.name], explicit, device)
    # the sweep read the same data a moment ago and said what it had to say about it (a class missing from a split)
    quiet = dataclasses.replace(reporter, warn=lambda message: None)
    data = prepare(store, [encoder, decoder], settings, dataset, reporter=quiet, manifest=manifest)
    source, target = data.models[encoder.name], data.models[decoder.name]
    if source.train.embeddings is None or source.evaluation is None or source.evaluation.embeddings is None or data.eval_labels is None:
        raise AssertionError("prepare loads both splits' arrays")
    validation = {seed: _validation_rows(data, settings, seed) for seed in settings.seeds}
    reporter.info(f"choosing the row to save on the validation rows of {settings.train_split} (never on {settings.split})")

    candidates: list[Candidate] = []
    for stitch_row in rows:
        for seed in stitch_row.seeds:
            parts = _parts(store, data, settings, stitch_row, seed, given_head, device, reporter)
            held = validation[seed][0]
            accuracy = _accuracy(parts, source.train.embeddings[held], data.train_labels[held])
            candidates.append(Candidate(stitch_row, seed, accuracy, parts))
    best = max(candidates, key=lambda c: c.validation_accuracy)  # max keeps the first of equals: table order, then seed
    tested = _test_predictions(best.parts, source.evaluation.embeddings, settings)
    labels = data.eval_labels
    measured = float((tested == labels).mean())
    per_seed = {int(entry["seed"]): entry for entry in best.row.per_seed}
    if abs(measured - per_seed[best.seed]["accuracy"]) > 1e-6:
        raise AssertionError(f"the saved head gives {measured} on {settings.split}, the sweep {per_seed[best.seed]['accuracy']}")
    reference = next((r for r in report.rows if r.encoder == decoder.name and r.decoder == decoder.name and r.setting == best.row.setting), None)
    reference_seed = {int(entry["seed"]): entry for entry in reference.per_seed} if reference is not None else {}
    card = {
        "what": f"{encoder.name}'s latents through {decoder.name}'s frozen head ({best.label}), no training on {encoder.name}",
        "encoder": _model_card(source, data),
        "decoder": _model_card(target, data),
        "classes": list(data.class_names),
        "row": {"method": best.row.method, "projections": list(best.row.projections), "aggregation": best.row.aggregation,
                "label": best.label, "seed": best.seed},
        "data": {
            "dataset": settings.dataset,
            "dataset_id": data.dataset_id,
            "dataset_fingerprint": data.dataset_fingerprint,
            "split_fingerprint": source.evaluation.metadata["key"].get("dataset_fingerprint"),
            "dataset_options": settings.data.given(),
            "train_split": settings.train_split,
            "split": settings.split,
            "limit": settings.limit,
            "embed_seed": settings.embed_seed,
            "anchors": {"name": data.manifest.name, "num": data.manifest.num, "strategy": data.manifest.strategy,
                        "seed": data.manifest.seed, "split": data.manifest.split},
        },
        "accuracy": {
            "split": settings.split,
            "rows": len(labels),
            "stitched": round(measured, 6),
            "not_stitched": reference_seed.get(best.seed, {}).get("accuracy"),
            "stitched_row_mean": best.row.accuracy,
            "stitched_row_std": best.row.accuracy_std,
            "not_stitched_row_mean": reference.accuracy if reference is not None else None,
            "row_seeds": list(best.row.seeds),
            "validation_stitched": round(best.validation_accuracy, 6),
            "note": "stitched and not_stitched: the saved head (one seed); *_row_mean: stitch's row, the mean over its seeds",
        },
        "evaluation": {"predictions_sha256": predictions_digest(np.asarray(source.evaluation.ids), tested)},
        "selection": {
            "by": "validation" if row is None else f"--save-row {row}, then its best seed on validation",
            "rule": "highest accuracy on the validation rows; ties: the earlier row of stitch's table, then the lower seed",
            "validation": {"split": settings.train_split, "what": "the rows each head seed held out for early stopping (val_fraction), "
                           "embedded by the encoder, less the anchors when at least " + str(MIN_CLEAN_VALIDATION_ROWS) + " rows remain",
                           "rows": {str(seed): len(rows) for seed, (rows, _) in validation.items()},
                           "anchors_excluded": {str(seed): excluded for seed, (_, excluded) in validation.items()}},
            "candidates": [{"row": c.label, "seed": c.seed, "validation_accuracy": round(c.validation_accuracy, 6)} for c in candidates],
        },
        "settings": {"transform": settings.transform, "ridge": settings.ridge, "head": settings.head.to_dict()},
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return StitchedBuild(best, card, candidates)


def predictions_digest(ids: np.ndarray, predictions: np.ndarray) -> str:
    """Give the SHA-256 of (row ids, predicted class) pairs: equal digests, equal predictions row for row."""
    pairs = np.stack([np.asarray(ids, dtype=np.int64), np.asarray(predictions, dtype=np.int64)], axis=1)
    return hashlib.sha256(np.ascontiguousarray(pairs).tobytes()).hexdigest()


def _versions() -> dict[str, str]:
    from stitchcli.provenance import library_versions

    return library_versions()


def _model_card(view: Any, data: Any) -> dict[str, Any]:
    """Give a model's card section: its name and spec (weights and their hash, pooling, precision), preprocessing, size."""
    metadata = view.train.metadata
    spec = dict(metadata.get("model") or {})
    from stitchcli.stitched.encoding import weights_tensors_digest

    weights = spec.get("weights")
    return {
        "name": view.name,
        "options": dict(view.ref.options),
        "spec": spec,
        "weights_sha256": spec.get("weights_fingerprint"),
        "weights_tensors_sha256": weights_tensors_digest(weights) if weights not in (None, "random") else None,
        "pooling": spec.get("pooling"),
        "precision": spec.get("precision"),
        "preprocessing": metadata.get("preprocessing"),
        "modality": metadata.get("modality"),
        "dim": int(view.dim),
    }


def _validation_rows(data: Any, settings: StitchSettings, seed: int) -> tuple[np.ndarray, bool]:
    """Give (positions in the training split of the rows the head of ``seed`` held out, whether the anchors were taken out)."""
    from stitchcli.heads import stratified_split

    _, held = stratified_split(data.train_labels, settings.head.val_fraction, seed)
    ids = next(iter(data.models.values())).train.ids
    clean = held[~np.isin(ids[held], np.asarray(data.manifest.ids, dtype=np.int64))]
    if len(clean) >= MIN_CLEAN_VALIDATION_ROWS:
        return clean, True
    return held, False


def _parts(store: EmbeddingStore, data: Any, settings: StitchSettings, row: StitchRow, seed: int, given_head: Any, device: Any,
           reporter: Reporter) -> StitchedParts:
    """Give the head (read from the cache the sweep filled) and the anchors or the fitted map of one candidate."""
    import torch

    from stitchcli.bridges import list_bridges
    from stitchcli.settings import AUTO
    from stitchcli.stitching.bridges import BASELINE_BRIDGES, bridge_options, obtain_bridge
    from stitchcli.stitching.features import product_values, subspaces
    from stitchcli.stitching.heads_cache import HeadRequest, obtain_head

    source, target = data.models[row.encoder], data.models[row.decoder]
    projections = tuple(row.projections)
    if row.method == "relative":
        if given_head is not None:
            head = given_head
        else:
            def features() -> torch.Tensor:
                values = product_values(target.train.embeddings, target.anchors, settings.projections, settings.transform, device)
                return subspaces(values, settings.projections, projections)

            head, _ = obtain_head(store, data, target, HeadRequest("relative", projections, row.aggregation, seed), settings, features, device,
                                  reporter=reporter)
        return StitchedParts(head, source.anchors, np.asarray(data.manifest.ids, dtype=np.int64), settings.transform)
    head, _ = obtain_head(store, data, target, HeadRequest("absolute", (), None, seed), settings,
                          lambda: torch.from_numpy(target.train.embeddings), device, reporter=reporter)
    if row.method == "absolute":
        return StitchedParts(head, map_kind="absolute", map_tensors={}, map_options={})
    # the sweep's own bridge (read from the cache it was saved in): auto's choice, a baseline's registry bridge, or the named one
    name = row.chosen if row.method == AUTO and row.chosen else BASELINE_BRIDGES.get(row.method, row.method)
    if name not in list_bridges():
        raise UsageError(f"row {row.method!r} cannot be saved: it is not a bridge (known: {', '.join(list_bridges())})")
    bridge, _ = obtain_bridge(store, data, source, target, name, bridge_options(name, settings), reporter=reporter)
    tensors, options = map_parts("bridge", bridge)
    return StitchedParts(head, map_kind="bridge", map_tensors=tensors, map_options=options)


def _accuracy(parts: StitchedParts, latents: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return 0.0
    return float((parts.logits(latents).argmax(axis=1) == labels).mean())


def _test_predictions(parts: StitchedParts, latents: np.ndarray, settings: StitchSettings) -> np.ndarray:
    """Give the saved parts' predictions on the evaluation split, computed as the sweep computes its rows."""
    import torch

    from stitchcli.device import resolve_device
    from stitchcli.stitching.features import product_values, subspaces

    if parts.pipeline == "relative":
        assert parts.encoder_anchors is not None
        values = product_values(latents, parts.encoder_anchors, settings.projections, settings.transform, resolve_device(settings.device))
        return parts.head.predict(subspaces(values, settings.projections, parts.head.projections))
    return parts.head.predict(torch.from_numpy(np.ascontiguousarray(parts.mapped(latents))))


def candidates_table(build: StitchedBuild) -> Sequence[tuple[str, int, float]]:
    """Give (row, seed, validation accuracy) of every candidate, in table order."""
    return [(c.label, c.seed, c.validation_accuracy) for c in build.candidates]
