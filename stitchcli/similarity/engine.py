"""The loop behind every many-pair comparison: each representation prepared once per family of measures.

Representations are grouped by model (a model's layers, or its one final representation). The loop runs one
family of measures at a time (measures that share per-pair work, see :class:`~stitchcli.similarity.registry.
Measure`): within it, every representation prepares what the family needs on first use and keeps it for all
its pairs; at the end of the family those caches are dropped, so peak memory is that of the largest family,
not of all of them. For the permutation null, each permuted copy of a representation of y is built once and
compared with every representation of every x it is paired with before the next permutation.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from stitchcli.similarity.registry import Measure
from stitchcli.similarity.representation import Representation

Group = Mapping[Hashable, Representation]
"""One model's representations by layer name (None: its final representation)."""


@dataclass
class Cell:
    """One measure between one layer of model a and one layer of model b: the value and its null draws."""

    value: float
    null: list[float] = field(default_factory=list)


CellKey = tuple[str, str, str, Hashable, Hashable]
"""(measure name, model a, model b, layer a, layer b)."""


def run(
    groups: Mapping[str, Group],
    jobs: Mapping[str, Sequence[tuple[str, str]]],
    measures: Sequence[Measure],
    options: Mapping[str, Mapping[str, Any]],
    permutations: Sequence[torch.Tensor] = (),
    progress: Callable[[str], None] | None = None,
    advance: Callable[[int], None] | None = None,
) -> dict[CellKey, Cell]:
    """Give every measure between every layer pair of every (model a, model b) job, with its null draws.

    Args:
        groups: representations by model, then by layer.
        jobs: for each measure name, the ordered (model a, model b) pairs it compares (x from a, y from b).
        measures: the measures, in the order their cells are produced.
        options: each measure's resolved options, by name.
        permutations: the row permutations applied to y for the null (none: no null).
        progress: called with a short line as each family and model b start.
        advance: called with the number of cells (one measure, one layer pair, the aligned rows or one
            permutation) computed, after each layer of b is compared, aligned or permuted (see :func:`cell_count`).
    """
    cells: dict[CellKey, Cell] = {}
    families: dict[str, list[Measure]] = {}
    for found in measures:
        families.setdefault(found.family, []).append(found)
    for family, members in families.items():
        targets = sorted({b for found in members for _, b in jobs[found.name]}, key=list(groups).index)
        for b in targets:
            if progress:
                progress(f"{family}: {', '.join(m.name for m in members)} against {b}")
            # (measure, model a) for this b; a model a's layers are all compared with each layer of b.
            wanted = [(found, a) for found in members for a, target in jobs[found.name] if target == b]
            width = sum(len(groups[a]) for _, a in wanted)
            for layer_b, y in groups[b].items():
                _compare(groups, wanted, y, b, layer_b, options, cells, None)
                if advance:
                    advance(width)
                for perm in permutations:
                    _compare(groups, wanted, y.permuted(perm), b, layer_b, options, cells, perm)
                    if advance:
                        advance(width)
        for group in groups.values():
            for rep in group.values():
                rep.clear()
    return cells


def cell_count(
    groups: Mapping[str, Group], jobs: Mapping[str, Sequence[tuple[str, str]]], permutations: int = 0
) -> int:
    """Give how many cells :func:`run` computes: every layer pair of every job, once aligned and once per permutation."""
    pairs = sum(len(groups[a]) * len(groups[b]) for pairs in jobs.values() for a, b in pairs)
    return pairs * (1 + permutations)


def _compare(
    groups: Mapping[str, Group],
    wanted: Sequence[tuple[Measure, str]],
    y: Representation,
    b: str,
    layer_b: Hashable,
    options: Mapping[str, Mapping[str, Any]],
    cells: dict[CellKey, Cell],
    perm: torch.Tensor | None,
) -> None:
    """Compare ``y`` (layer ``layer_b`` of b, maybe permuted) with every layer of every model a wanted."""
    shared: dict[tuple[str, Hashable], dict] = {}  # what measures of the family share, per (a, layer a)
    for found, a in wanted:
        for layer_a, x in groups[a].items():
            pair = shared.setdefault((a, layer_a), {})
            value = found.compare(x, y, pair, **options[found.name])
            key = (found.name, a, b, layer_a, layer_b)
            if perm is None:
                cells[key] = Cell(value)
            else:
                cells[key].null.append(value)
