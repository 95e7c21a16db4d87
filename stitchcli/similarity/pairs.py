"""All pairs of many models (and their layers) under many measures: the rows of ``stitchcli similarity``.

    from stitchcli.similarity import compare_models

    report = compare_models({"minilm": x1, "mpnet": x2}, ["linear-cka", "mutual-knn"], null=20)
    report.records          # one SimilarityRecord per (model pair, layer pair, projection, measure)
    report.table("linear-cka")   # (names, N×N matrix)
    report.matrices         # one LayerMatrix per (model pair, projection, measure), with its best pair

A model is either one (N, d) matrix (its final representation: layer None) or a mapping of layer names to
(N, d_layer) matrices in depth order. Every representation of every model describes the same N samples in
the same order. Each is prepared once per family of measures (see :mod:`stitchcli.similarity.engine`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Union

import numpy as np
import torch

from stitchcli.errors import UsageError
from stitchcli.progress import Reporter
from stitchcli.similarity import engine
from stitchcli.similarity.calibration import calibrate, permutations
from stitchcli.similarity.layers import LayerMatrix, matrix_from_cells
from stitchcli.similarity.registry import Measure, get_measure, list_measures
from stitchcli.similarity.representation import ArrayLike, Representation

ModelInput = Union[ArrayLike, Mapping[Hashable, ArrayLike]]
"""One model: its final representation (N, d), or its layers by name."""


@dataclass(frozen=True)
class SimilarityRecord:
    """One row of the similarity output: a measure between one layer of model a and one of model b.

    ``layer_a``/``layer_b`` are None for the final representation, ``projection`` None for the absolute
    latents; ``null_mean``, ``null_std`` and ``calibrated`` are None without a permutation null (see
    :mod:`stitchcli.similarity.calibration` for the calibrated value).
    """

    model_a: str
    model_b: str
    layer_a: Hashable
    layer_b: Hashable
    projection: str | None
    measure: str
    value: float | None
    null_mean: float | None = None
    null_std: float | None = None
    calibrated: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Give the row as a JSON-ready dict, keys in the order of issue 23 (NaN as None)."""
        return {key: _finite(value) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class SimilarityReport:
    """Everything :func:`compare_models` computed."""

    models: list[str]
    records: list[SimilarityRecord]
    matrices: list[LayerMatrix] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Give ``{"models", "rows", "layer_matrices"}`` ready for JSON."""
        return {
            "models": list(self.models),
            "rows": [record.to_dict() for record in self.records],
            "layer_matrices": [matrix.to_dict() for matrix in self.matrices],
        }

    def table(self, measure: str, projection: str | None = None, value: str = "value") -> tuple[list[str], np.ndarray]:
        """Give (model names, N×N matrix) of ``measure``: row a, column b is the measure of (a, b).

        With layers, a cell is the best layer pair's. The diagonal is the measure's value for identical
        representations (1, or 0 for a distance; 1 for ``value="calibrated"``) unless the report compared
        models with themselves. A symmetric measure fills both triangles from one computation.

        Args:
            measure: a measure name of the report.
            projection: which comparison space (None: absolute latents).
            value: ``"value"`` or ``"calibrated"``.
        """
        found = get_measure(measure)
        if value not in ("value", "calibrated"):
            raise UsageError(f"value must be 'value' or 'calibrated', got {value!r}")
        index = {name: i for i, name in enumerate(self.models)}
        ideal = 1.0 if value == "calibrated" else found.identical
        table = np.full((len(self.models), len(self.models)), np.nan)
        np.fill_diagonal(table, ideal)
        for matrix in self.matrices:
            if matrix.measure != found.name or matrix.projection != projection:
                continue
            best = matrix.best
            cell = best.value if value == "value" else (best.null.calibrated if best.null is not None else np.nan)
            i, j = index[matrix.model_a], index[matrix.model_b]
            table[i, j] = cell
            if found.symmetric and i != j:
                table[j, i] = cell
        return list(self.models), table


def compare_models(
    models: Mapping[str, ModelInput],
    measures: Sequence[str | Measure] | None = None,
    *,
    null: int = 0,
    seed: int = 0,
    projections: Sequence[str | None] = (None,),
    anchors: Mapping[str, ModelInput] | None = None,
    transform: str | None = None,
    include_self: bool = False,
    progress: Callable[[str], None] | None = None,
    reporter: Reporter | None = None,
    **options: Any,
) -> SimilarityReport:
    """Give every measure between every pair of models (every layer pair), optionally calibrated.

    Args:
        models: by name, each an (N, d) matrix or a mapping layer name → (N, d_layer), all on the same N
            samples in the same order.
        measures: names (or Measures) to compute; default all registered. Shared-space measures (``mrr``,
            ``cosine``) are computed in relative projections only.
        null: permutations of the rows of model b per pair (0: no calibration). The same seeded
            permutations serve every pair.
        seed: seeds the permutations.
        projections: comparison spaces: None for the absolute latents, or relative projection names
            (``cosine``, ``euclidean``, ``l1``, ``linf``), each model against its own anchors.
        anchors: with a projection, each model's anchors in the same structure as ``models`` (its anchor
            rows embedded by that model and layer).
        transform: the absolute transform of the relative projection (``center``, ...; default none).
        include_self: also compare each model with itself (layer × layer within a model).
        progress: called with a short line as work proceeds.
        reporter: a progress bar over the cells (one measure between one layer pair, aligned or permuted),
            with what is running as its status (``Reporter().start/advance/status/stop``).
        **options: measure options, each passed to the measures that take it (e.g. ``k=10``, ``max_rows``);
            one that no registered measure takes is a UsageError.

    Pairs are (a, b) in the order of ``models`` with a before b; a measure that is not symmetric is
    computed in both orders.
    """
    names = list(models)
    if len(names) < 2 and not include_self:
        raise UsageError("give at least two models to compare (or include_self=True)")
    found = _measures(measures)
    _check_options(options)
    groups = {name: _group(name, value) for name, value in models.items()}
    rows = {rep.rows for group in groups.values() for rep in group.values()}
    if len(rows) != 1:
        raise UsageError(f"every model and layer must describe the same samples, row for row: got row counts {sorted(rows)}")
    draws = permutations(rows.pop(), null, seed)
    records: list[SimilarityRecord] = []
    matrices: list[LayerMatrix] = []
    plan = []
    for projection in projections:
        chosen = [m for m in found if projection is not None or not m.shared_space]
        if chosen:
            plan.append((projection, chosen, {m.name: _jobs(names, m.symmetric, include_self) for m in chosen}))
    if reporter is not None:  # relative spaces keep their model's layers, so the count needs none of them built
        total = sum(engine.cell_count(groups, jobs, null) for _, _, jobs in plan)
        reporter.start("similarity", total, 0, unit="cells")
    try:
        for projection, chosen, jobs in plan:
            space = "absolute" if projection is None else projection

            def say(line: str, space: str = space) -> None:
                if progress:
                    progress(line)
                if reporter is not None:
                    reporter.status(f"{space}: {line}")

            spaces = groups if projection is None else _relative_groups(groups, anchors, projection, transform)
            resolved = {m.name: m.options_from(options) for m in chosen}
            cells = engine.run(spaces, jobs, chosen, resolved, draws, say, reporter.advance if reporter is not None else None)
            for m in chosen:
                for a, b in jobs[m.name]:
                    matrix = matrix_from_cells(cells, m, a, b, list(spaces[a]), list(spaces[b]), projection)
                    matrices.append(matrix)
                    records.extend(_records(cells, m, a, b, list(spaces[a]), list(spaces[b]), projection))
    finally:
        if reporter is not None:
            reporter.stop()
    return SimilarityReport(names, records, matrices)


def relative_representations(
    samples: Mapping[str, ModelInput], anchors: Mapping[str, ModelInput], projection: str, *, transform: str | None = None
) -> dict[str, dict[Hashable, torch.Tensor]]:
    """Give each model's (and layer's) relative projection of its samples against its own anchors.

    Every model lands in the same R^k (k anchors, the same anchor samples for every model), where the
    shared-space measures (MRR@k, mean cosine) are defined and the others compare relative geometry.

    Args:
        samples: by model, an (N, d) matrix or layers → (N, d_layer).
        anchors: by model, the same structure: the anchor samples embedded by that model (and layer).
        projection: a relative projection name (:func:`stitchcli.relative.list_projections`).
        transform: the absolute transform fitted on the anchors (default none).
    """
    from stitchcli.relative import relative_projection

    result: dict[str, dict[Hashable, torch.Tensor]] = {}
    for name, value in samples.items():
        if name not in anchors:
            raise UsageError(f"no anchors for model {name!r}: give each model's anchors to compare relative spaces")
        layers = _layers(value)
        anchor_layers = _layers(anchors[name])
        missing = [layer for layer in layers if layer not in anchor_layers]
        if missing:
            raise UsageError(f"model {name!r} has no anchors for layer(s) {', '.join(map(str, missing))}")
        result[name] = {
            layer: relative_projection(matrix, anchor_layers[layer], projection, transform=transform)
            for layer, matrix in layers.items()
        }
    return result


# -------------------------------------------------------------------------------------------- helpers


def _measures(measures: Sequence[str | Measure] | None) -> list[Measure]:
    chosen = [get_measure(name) if not isinstance(name, Measure) else name for name in (measures or list_measures())]
    seen: set[str] = set()
    unique = [m for m in chosen if not (m.name in seen or seen.add(m.name))]
    if not unique:
        raise UsageError("give at least one similarity measure")
    return unique


def _check_options(options: Mapping[str, Any]) -> None:
    """Refuse an option no registered measure takes (a typo); one that only other measures take is fine,
    so that one set of options (a command line's) serves any choice of measures."""
    taken = {key for name in list_measures() for key in get_measure(name).options}
    unknown = sorted(set(options) - taken)
    if unknown:
        raise UsageError(f"no similarity measure takes option(s) {', '.join(map(repr, unknown))}: they take {', '.join(sorted(taken))}")


def _layers(value: ModelInput) -> dict[Hashable, ArrayLike]:
    if isinstance(value, Mapping):
        if not value:
            raise UsageError("a model given as layers needs at least one layer")
        return dict(value)
    return {None: value}


def _group(name: str, value: ModelInput) -> dict[Hashable, Representation]:
    return {
        layer: Representation(matrix, name if layer is None else f"{name}/{layer}") for layer, matrix in _layers(value).items()
    }


def _relative_groups(
    groups: Mapping[str, Mapping[Hashable, Representation]], anchors: Mapping[str, ModelInput] | None, projection: str, transform: str | None
) -> dict[str, dict[Hashable, Representation]]:
    if anchors is None:
        raise UsageError(f"the {projection!r} projection needs each model's anchors (anchors=...)")
    samples = {name: {layer: rep.matrix() for layer, rep in group.items()} for name, group in groups.items()}
    relative = relative_representations(samples, anchors, projection, transform=transform)
    return {
        name: {layer: Representation(matrix, f"{name}/{layer}/{projection}") for layer, matrix in layers.items()}
        for name, layers in relative.items()
    }


def _jobs(names: Sequence[str], symmetric: bool, include_self: bool) -> list[tuple[str, str]]:
    jobs = []
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if (i < j) or (i > j and not symmetric) or (i == j and include_self):
                jobs.append((a, b))
    return jobs


def _records(cells: Mapping[engine.CellKey, engine.Cell], found: Measure, a: str, b: str, layers_a: Sequence[Hashable],
             layers_b: Sequence[Hashable], projection: str | None) -> list[SimilarityRecord]:
    records = []
    for la in layers_a:
        for lb in layers_b:
            cell = cells[(found.name, a, b, la, lb)]
            if cell.null:
                calibrated = calibrate(cell.value, cell.null, found)
                extra = (calibrated.null_mean, calibrated.null_std, calibrated.calibrated)
            else:
                extra = (None, None, None)
            records.append(SimilarityRecord(a, b, la, lb, projection, found.name, cell.value, *extra))
    return records


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value
