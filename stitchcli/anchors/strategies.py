"""Anchor strategies, one registry (:data:`STRATEGIES`): how ``num`` rows are chosen from a pool.

- ``uniform``: a seeded draw without replacement (``numpy.random.default_rng(seed).choice``).
- ``class-balanced``: equal counts per class, differing by at most one; the leftover goes to
  classes in a seeded order; a class with too few rows gives all of them and the rest is shared out.
- ``fps``: farthest point sampling on a model's cached embeddings: Euclidean distance between
  L2-normalised rows (a monotone function of cosine distance, so scale-free), seeded first row.
- ``kmeans``: seeded k-means (k = num, Lloyd iterations from ``num`` random rows) on the same
  normalised rows, then for each centroid in turn the nearest row not taken by an earlier one.

The same arguments give the same rows on any machine: numpy's ``default_rng`` draws the rows, and
fps/kmeans work on the normalised rows rounded to a grid of 2^-11 (cosines move by about 2e-4, at
most about 1e-3), where every dot product is a sum of integers below 2^24: exact in float32
whatever order the BLAS adds in, so the result does not depend on the CPU kernel or the thread
count.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from stitchcli.errors import UsageError

KMEANS_ITERATIONS = 10

# Rows are scaled by 2^11 after L2 normalisation and rounded: every coordinate is an integer, and a
# dot product of two such rows and each of its partial sums is at most (2^11 + sqrt(D)/2)^2 < 2^24
# in magnitude (Cauchy-Schwarz), so float32 matrix products hold them exactly, in any order.
_GRID = float(2**11)
# Upper bound on the temporary blocks of the distance computations.
_BLOCK_BYTES = 64 * 2**20


@dataclass
class AnchorPool:
    """The rows anchors are drawn from: ids, labels and, for fps/kmeans, the embeddings (row-aligned)."""

    ids: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass
class Selection:
    """What a strategy chose: positions into the pool, its parameters, and notes for the user."""

    positions: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AnchorStrategy:
    """One way of choosing anchors: ``select(pool, num, rng)``, whether it reads embeddings and whether it needs labels."""

    select: Callable[[AnchorPool, int, np.random.Generator], Selection]
    needs_embeddings: bool
    summary: str
    needs_labels: bool = False


def _uniform(pool: AnchorPool, num: int, rng: np.random.Generator) -> Selection:
    """Give ``num`` positions drawn uniformly without replacement."""
    return Selection(rng.choice(len(pool), size=num, replace=False))


def balanced_quotas(sizes: np.ndarray, num: int, order: np.ndarray) -> np.ndarray:
    """Give per-class counts summing to ``num``: equal where possible, never above a class's size.

    Classes that still have rows always receive the same share (water filling); a class with fewer
    rows than its share gives all it has. The last ``remaining < active classes`` anchors go one
    each to the active classes in ``order``. So counts differ by at most one, except classes that
    gave all their rows.
    """
    quota = np.zeros_like(sizes)
    remaining = int(num)
    while remaining > 0:
        active = np.flatnonzero(quota < sizes)
        share = remaining // len(active)
        if share == 0:
            ranked = [c for c in order if quota[c] < sizes[c]]
            quota[ranked[:remaining]] += 1
            break
        added = np.minimum(share, sizes[active] - quota[active])
        quota[active] += added
        remaining -= int(added.sum())
    return quota


def _class_balanced(pool: AnchorPool, num: int, rng: np.random.Generator) -> Selection:
    """Give ``num`` positions with (as near as the class sizes allow) equal counts per class."""
    classes, sizes = np.unique(pool.labels, return_counts=True)
    order = rng.permutation(len(classes))
    quota = balanced_quotas(sizes, num, order)
    chosen = [rng.choice(np.flatnonzero(pool.labels == cls), size=int(q), replace=False) for cls, q in zip(classes, quota)]
    notes = []
    if num < len(classes):
        left_out = [_class_name(pool, c) for c, q in zip(classes, quota) if q == 0]
        notes.append(
            f"class-balanced: {num} anchor(s) for {len(classes)} classes, so {len(left_out)} class(es) have none "
            f"({_few(left_out)}; chosen by the seed): ask for {len(classes)} or more for one of each "
            f"(--num-anchors {len(classes)}; `stitchcli anchor`: --num {len(classes)})"
        )
    elif quota.max() - quota.min() > 1:
        fair = num // len(classes)
        small = [f"{_class_name(pool, c)} ({s} row{'s' if s != 1 else ''})" for c, s, q in zip(classes, sizes, quota) if q == s and s < fair]
        notes.append(
            f"class-balanced: {len(small)} class(es) have fewer rows than the even share of {fair}: "
            f"{', '.join(small)}; took all their rows and gave the rest to the other classes "
            f"(counts range from {int(quota.min())} to {int(quota.max())})"
        )
    return Selection(np.concatenate(chosen), {"per_class": {_class_name(pool, c): int(q) for c, q in zip(classes, quota)}}, notes)


def _few(names: list[str], shown: int = 5) -> str:
    """Give the first ``shown`` names, then how many more."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _class_name(pool: AnchorPool, label: int) -> str:
    return pool.class_names[label] if 0 <= label < len(pool.class_names) else str(label)


def _grid_rows(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give the rows L2-normalised and rounded onto the integer grid (float32), and their squared norms (float64).

    Zero rows stay zero. Dot products of grid rows are exact in float32, squared norms in float64.
    """
    x = np.asarray(embeddings)
    n, d = x.shape
    grid = np.empty((n, d), dtype=np.float32)
    squared = np.empty(n, dtype=np.float64)
    step = max(1, _BLOCK_BYTES // (8 * max(d, 1)))
    for start in range(0, n, step):
        block = x[start : start + step].astype(np.float64)
        norms = np.sqrt((block * block).sum(axis=1))
        norms[norms == 0] = 1.0
        rounded = np.rint(block / norms[:, None] * _GRID)
        grid[start : start + step] = rounded
        squared[start : start + step] = (rounded * rounded).sum(axis=1)
    return grid, squared


_DISTANCE = "squared Euclidean between L2-normalised rows (exact on a 2^-11 grid)"


def _fps(pool: AnchorPool, num: int, rng: np.random.Generator) -> Selection:
    """Give ``num`` positions by farthest point sampling from a seeded first row.

    Each next row is the one farthest from all rows chosen so far (ties: the lowest position);
    rows identical to chosen ones come last, so the positions are always distinct.
    """
    assert pool.embeddings is not None
    grid, squared = _grid_rows(pool.embeddings)
    first = int(rng.integers(len(pool)))
    chosen = [first]
    nearest = np.full(len(pool), np.inf)
    nearest[first] = -np.inf
    current = first
    for _ in range(num - 1):
        distance = squared + squared[current] - 2.0 * (grid @ grid[current]).astype(np.float64)
        np.minimum(nearest, distance, out=nearest)
        current = int(np.argmax(nearest))
        nearest[current] = -np.inf
        chosen.append(current)
    return Selection(np.asarray(chosen, dtype=np.int64), {"distance": _DISTANCE, "first_id": int(pool.ids[first])})


def _nearest_centroids(grid: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Give each row's nearest centroid (ties: the lowest index), in blocks of bounded size."""
    centroid_sq = np.einsum("ij,ij->i", centroids, centroids, dtype=np.float64)
    step = max(1, _BLOCK_BYTES // (12 * len(centroids)))
    out = np.empty(len(grid), dtype=np.int64)
    for start in range(0, len(grid), step):
        # the row's own squared norm is the same for every centroid: left out of the argmin
        scores = centroid_sq[None, :] - 2.0 * (grid[start : start + step] @ centroids.T)
        out[start : start + step] = np.argmin(scores, axis=1)
    return out


def _distinct_nearest_rows(grid: np.ndarray, squared: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Give for each centroid in turn the nearest row no earlier centroid took."""
    n = len(grid)
    taken = np.zeros(n, dtype=bool)
    chosen = np.empty(len(centroids), dtype=np.int64)
    step = max(1, _BLOCK_BYTES // (12 * n))
    for start in range(0, len(centroids), step):
        scores = squared[None, :] - 2.0 * (centroids[start : start + step] @ grid.T)
        for j, row in enumerate(scores):
            row[taken] = np.inf
            pick = int(np.argmin(row))
            taken[pick] = True
            chosen[start + j] = pick
    return chosen


def _kmeans(pool: AnchorPool, num: int, rng: np.random.Generator, iterations: int = KMEANS_ITERATIONS) -> Selection:
    """Give the rows nearest the ``num`` centroids of a seeded k-means, one distinct row per centroid.

    Centroids start at ``num`` distinct random rows; each Lloyd step assigns rows to the nearest
    centroid and moves each centroid to its rows' mean (rounded to the grid, so the next step is
    exact too); a centroid left without rows stays where it is. Stops when no assignment changes.
    """
    assert pool.embeddings is not None
    grid, squared = _grid_rows(pool.embeddings)
    centroids = grid[rng.choice(len(pool), size=num, replace=False)].copy()
    assignment: np.ndarray | None = None
    steps, converged = 0, False
    for steps in range(1, iterations + 1):
        new = _nearest_centroids(grid, centroids)
        if assignment is not None and np.array_equal(new, assignment):
            converged = True
            break
        assignment = new
        sums = np.zeros(centroids.shape, dtype=np.float64)  # sums of integers: exact below 2^53
        np.add.at(sums, assignment, grid)
        counts = np.bincount(assignment, minlength=num)
        filled = counts > 0
        centroids[filled] = np.rint(sums[filled] / counts[filled, None])
    positions = _distinct_nearest_rows(grid, squared, centroids)
    params = {"distance": _DISTANCE, "init": "random rows", "max_iterations": iterations, "iterations": steps, "converged": converged}
    return Selection(positions, params)


STRATEGIES: dict[str, AnchorStrategy] = {
    "uniform": AnchorStrategy(_uniform, False, "seeded uniform draw without replacement"),
    "class-balanced": AnchorStrategy(_class_balanced, False, "equal counts per class (differ by at most one)", needs_labels=True),
    "fps": AnchorStrategy(_fps, True, "farthest point sampling on a model's cached embeddings"),
    "kmeans": AnchorStrategy(_kmeans, True, "real rows nearest the centroids of a seeded k-means on a model's cached embeddings"),
}


def list_anchor_strategies() -> list[str]:
    """Give the names of the anchor strategies."""
    return list(STRATEGIES)


def get_anchor_strategy(name: str) -> AnchorStrategy:
    """Give the strategy registered as ``name``; UsageError (with a close name, if any) when there is none."""
    if name not in STRATEGIES:
        close = difflib.get_close_matches(name, STRATEGIES, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(f"unknown anchor strategy {name!r}; {hint}use one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
