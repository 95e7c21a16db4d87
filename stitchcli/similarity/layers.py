"""Layer × layer comparison of two models: the full matrix of a measure and the best layer pair.

The best pair is the most alike cell (the largest value, or the smallest for a distance). Picking the best of
L_a × L_b cells inflates it, so its null is the null of that maximum: for each permutation of the rows of
model b (the same permutation for all of b's layers), the best cell of the permuted matrix. Its calibration
therefore says whether the best pair is more alike than the best pair of misaligned models would be.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from stitchcli.errors import UsageError
from stitchcli.similarity import engine
from stitchcli.similarity.calibration import Calibrated, calibrate, permutations
from stitchcli.similarity.registry import Measure, get_measure
from stitchcli.similarity.representation import ArrayLike, Representation


FINAL_LAYER = "final"
"""How tables, heatmaps and ``similarity --layers`` name the final representation (the layer ``None``)."""


def layer_label(layer: Hashable) -> str:
    """Give a layer's name as shown: ``final`` for the final representation (None), else the layer's name."""
    return FINAL_LAYER if layer is None else str(layer)


@dataclass(frozen=True)
class BestPair:
    """The most alike layer pair of a layer matrix, calibrated against the null of the best cell."""

    layer_a: Hashable
    layer_b: Hashable
    value: float
    null: Calibrated | None

    def to_dict(self) -> dict[str, Any]:
        """Give the pair as a JSON-ready dict (the null's fields inline, None without a null)."""
        document: dict[str, Any] = {"layer_a": self.layer_a, "layer_b": self.layer_b, "value": _finite(self.value)}
        null = self.null.to_dict() if self.null is not None else {}
        for name in ("null_mean", "null_std", "calibrated", "z_score", "p_value"):
            document[name] = null.get(name)
        return document


@dataclass(frozen=True)
class LayerMatrix:
    """One measure between every layer of model a (rows) and every layer of model b (columns).

    Attributes:
        measure: the measure's name.
        model_a, model_b: the two models.
        projection: the relative projection both were compared in, None for the absolute latents.
        layers_a, layers_b: layer names in order (None: the final representation).
        values: (L_a, L_b) float64.
        null_mean, null_std, calibrated: (L_a, L_b) per cell, None without a null.
        best: the most alike cell.
    """

    measure: str
    model_a: str
    model_b: str
    projection: str | None
    layers_a: list[Hashable]
    layers_b: list[Hashable]
    values: np.ndarray
    null_mean: np.ndarray | None
    null_std: np.ndarray | None
    calibrated: np.ndarray | None
    best: BestPair

    def to_dict(self) -> dict[str, Any]:
        """Give the matrix as a JSON-ready dict (NaN as None)."""
        def grid(values: np.ndarray | None) -> list[list[float | None]] | None:
            return None if values is None else [[_finite(v) for v in row] for row in values.tolist()]

        return {
            "measure": self.measure, "model_a": self.model_a, "model_b": self.model_b, "projection": self.projection,
            "layers_a": list(self.layers_a), "layers_b": list(self.layers_b), "values": grid(self.values),
            "null_mean": grid(self.null_mean), "null_std": grid(self.null_std), "calibrated": grid(self.calibrated),
            "best": self.best.to_dict(),
        }


def matrix_from_cells(
    cells: Mapping[engine.CellKey, engine.Cell],
    found: Measure,
    a: str,
    b: str,
    layers_a: Sequence[Hashable],
    layers_b: Sequence[Hashable],
    projection: str | None = None,
) -> LayerMatrix:
    """Give the layer matrix of ``found`` between models a and b from the engine's cells."""
    grid = [[cells[(found.name, a, b, la, lb)] for lb in layers_b] for la in layers_a]
    values = np.array([[cell.value for cell in row] for row in grid], dtype=np.float64)
    has_null = bool(grid[0][0].null)
    best_index = _best_index(values, found)
    la, lb = layers_a[best_index[0]], layers_b[best_index[1]]
    if not has_null:
        return LayerMatrix(found.name, a, b, projection, list(layers_a), list(layers_b), values, None, None, None,
                           BestPair(la, lb, float(values[best_index]), None))
    per_cell = [[calibrate(cell.value, cell.null, found) for cell in row] for row in grid]
    draws = np.array([[cell.null for cell in row] for row in grid], dtype=np.float64)  # (L_a, L_b, permutations)
    best_null = [float(values_at[_best_index(values_at, found)]) for values_at in np.moveaxis(draws, 2, 0)]
    best = BestPair(la, lb, float(values[best_index]), calibrate(float(values[best_index]), best_null, found))
    return LayerMatrix(found.name, a, b, projection, list(layers_a), list(layers_b), values,
                       _field(per_cell, "null_mean"), _field(per_cell, "null_std"), _field(per_cell, "calibrated"), best)


def _field(per_cell: list[list[Calibrated]], name: str) -> np.ndarray:
    return np.array([[getattr(cell, name) for cell in row] for row in per_cell], dtype=np.float64)


def _best_index(values: np.ndarray, found: Measure) -> tuple[int, int]:
    """Give the (row, column) of the most alike finite cell (the first such cell on ties)."""
    oriented = values if found.higher_is_more_alike else -values
    oriented = np.where(np.isnan(oriented), -np.inf, oriented)
    row, column = np.unravel_index(int(np.argmax(oriented)), values.shape)
    return int(row), int(column)


def layer_matrix(
    layers_a: Mapping[Hashable, ArrayLike],
    layers_b: Mapping[Hashable, ArrayLike],
    measure: str | Measure = "linear-cka",
    *,
    null: int = 0,
    seed: int = 0,
    model_a: str = "a",
    model_b: str = "b",
    **options: Any,
) -> LayerMatrix:
    """Give the layer × layer matrix of ``measure`` between two models, and its best pair.

    Each layer is prepared once (centring, neighbour lists, ...) whatever the number of pairs it is in.

    Args:
        layers_a: model a's representations by layer name, in depth order, each (N, d_layer) on the same N
            samples in the same order as every other layer of both models.
        layers_b: model b's, likewise.
        measure: a registered name or Measure.
        null: permutations of the rows of model b for the null (0: no calibration).
        seed: seeds the permutations.
        model_a, model_b: names to carry into the result.
        **options: the measure's options (e.g. ``k=10``).
    """
    found = measure if isinstance(measure, Measure) else get_measure(measure)
    chosen = found.resolve_options(options)
    if not layers_a or not layers_b:
        raise UsageError("each model needs at least one layer to compare")
    group_a = {name: Representation(matrix, f"{model_a}/{name}") for name, matrix in layers_a.items()}
    group_b = {name: Representation(matrix, f"{model_b}/{name}") for name, matrix in layers_b.items()}
    rows = {rep.rows for rep in (*group_a.values(), *group_b.values())}
    if len(rows) != 1:
        raise UsageError(f"every layer must describe the same samples, row for row: got row counts {sorted(rows)}")
    draws = permutations(rows.pop(), null, seed)
    key_a, key_b = "a", "b"  # engine keys, so that a model compared with itself still gets two groups
    cells = engine.run({key_a: group_a, key_b: group_b}, {found.name: [(key_a, key_b)]}, [found], {found.name: chosen}, draws)
    result = matrix_from_cells(cells, found, key_a, key_b, list(group_a), list(group_b))
    return replace(result, model_a=model_a, model_b=model_b)


def _finite(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
