"""Measures built on each sample's k nearest neighbours: mutual k-NN, CKNNA, Jaccard@k; and the two
shared-space measures of eval, MRR@k and the mean cosine.

Neighbours are by cosine similarity, the sample itself excluded, ties to the lower row index (the rule of
:mod:`stitchcli.metrics`). Each representation's neighbour lists (indices and similarities, N×k) are found
once, one block of rows of the N×N similarity at a time, so no N×N matrix is held; comparing two
representations then costs O(N·k²). Under a permutation of the rows the lists are re-indexed, not searched
again, which makes the permutation null of these measures almost free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stitchcli import metrics
from stitchcli.similarity.registry import Measure, PairCache, measure_options, register_measure
from stitchcli.similarity.representation import Representation, check_whole, compute_dtype, inverse_permutation

_CHUNK = 1024
"""Rows per block of the similarity matrix (the default of :func:`stitchcli.metrics.jaccard_at_k`)."""


@dataclass(frozen=True)
class Neighbours:
    """Each sample's k nearest other samples: ``indices`` (N, k) int64 (a set per row, in no particular
    order) and the cosine similarities to them, ``values`` (N, k)."""

    indices: torch.Tensor
    values: torch.Tensor


def neighbours(rep: Representation, k: int, chunk_size: int = _CHUNK) -> Neighbours:
    """Give the k nearest neighbours of every row of ``rep`` (found once, re-indexed when permuted)."""

    def build() -> Neighbours:
        if rep.origin is not None:
            base, order = rep.origin
            found = neighbours(base, k, chunk_size)
            order = order.to(found.indices.device)
            return Neighbours(inverse_permutation(order)[found.indices[order]], found.values[order])
        check_whole(k, "k", 1, rep.rows - 1, "the neighbours are the other N - 1 samples")
        check_whole(chunk_size, "chunk_size", 1)
        unit = metrics._unit_rows(rep.matrix(), compute_dtype(rep))
        indices = torch.empty(rep.rows, k, dtype=torch.int64, device=unit.device)
        values = torch.empty(rep.rows, k, dtype=unit.dtype, device=unit.device)
        for rows in rep.blocks(chunk_size):
            similarity = metrics._without_self(unit[rows] @ unit.T, rows)
            indices[rows] = metrics._nearest_indices(similarity, k)
            values[rows] = similarity.gather(1, indices[rows])
        return Neighbours(indices, values)

    return rep.cached(("neighbours", k), build)


def _shared_counts(x: Representation, y: Representation, pair: PairCache, k: int, chunk_size: int) -> torch.Tensor:
    """Give |N_x(i) ∩ N_y(i)| for every row i as float64 (kept in ``pair`` for the other k-NN measures)."""
    key = ("shared", k)
    if key not in pair:
        near_x = neighbours(x, k, chunk_size).indices
        near_y = neighbours(y, k, chunk_size).indices.to(near_x.device)
        counts = torch.empty(x.rows, dtype=torch.float64, device=near_x.device)
        for rows in x.blocks(chunk_size):
            equal = near_x[rows, :, None] == near_y[rows, None, :]
            counts[rows] = equal.sum(dim=(1, 2), dtype=torch.float64)
        pair[key] = counts
    return pair[key]


def mutual_knn(x: Representation, y: Representation, pair: PairCache, *, k: int = 10, chunk_size: int = _CHUNK) -> float:
    """Give the mutual k-NN alignment: the mean over samples of |N_x(i) ∩ N_y(i)| / k, in [0, 1].

    The measure of the Platonic Representation Hypothesis (Huh et al., 2024; platonic-rep ``mutual_knn``).
    """
    return float(_shared_counts(x, y, pair, k, chunk_size).mean() / k)


def jaccard(x: Representation, y: Representation, pair: PairCache, *, k: int = 10, chunk_size: int = _CHUNK) -> float:
    """Give Jaccard@k: the mean over samples of |N_x(i) ∩ N_y(i)| / |N_x(i) ∪ N_y(i)|, in [0, 1].

    The same neighbour sets as :func:`stitchcli.metrics.jaccard_at_k`, prepared once per representation.
    """
    shared = _shared_counts(x, y, pair, k, chunk_size)
    return float((shared / (2 * k - shared)).mean())


def cknna(x: Representation, y: Representation, pair: PairCache, *, k: int = 10, chunk_size: int = _CHUNK) -> float:
    """Give CKNNA (Huh et al., 2024): CKA restricted to the pairs of samples that are k-NN in both spaces.

    With K and L the cosine kernels and M the mask of pairs (i, j) where j is among the k nearest of i in
    both spaces, it is HSIC_u(M∘K, M∘L) / √(HSIC_u(M_x∘K, M_x∘K) · HSIC_u(M_y∘L, M_y∘L)), HSIC_u the
    unbiased estimator as platonic-rep writes it. M∘K has at most k entries per row, so every term is a sum
    over those N·k entries (no N×N matrix). platonic-rep adds 1e-6 to the denominator; this does not
    (the HSIC terms are O(k/N), so that 1e-6 would shift the value by a visible amount). The estimator's
    1ᵀK̃L̃1 term is not symmetric in a non-symmetric mask, so neither is CKNNA (slightly).
    """
    check_whole(k, "k", 2, x.rows - 1, "CKNNA needs at least 2 neighbours")
    check_whole(x.rows, "the number of samples", 4, why="CKNNA's unbiased HSIC needs 4")
    near_x, near_y = neighbours(x, k, chunk_size), neighbours(y, k, chunk_size)
    joint = _masked_hsic(near_x, near_y, x.rows, chunk_size)
    own_x = _own_hsic(x, k, chunk_size)
    own_y = _own_hsic(y, k, chunk_size)
    if not own_x * own_y > 0:
        return float("nan")
    return joint / math.sqrt(own_x * own_y)


def _own_hsic(rep: Representation, k: int, chunk_size: int) -> float:
    """Give HSIC_u(M∘K, M∘K) of ``rep`` with its own neighbour mask (unchanged by a permutation)."""
    if rep.origin is not None:
        return _own_hsic(rep.origin[0], k, chunk_size)
    return rep.cached(("cknna-own", k), lambda: _masked_hsic(neighbours(rep, k, chunk_size), neighbours(rep, k, chunk_size), rep.rows, chunk_size))


def _masked_hsic(a: Neighbours, b: Neighbours, n: int, chunk_size: int) -> float:
    """Give N(N-3)·HSIC_u(A, B), where A = M∘K and B = M∘L keep the entries (i, j) with j in both lists of i.

    HSIC_u(A, B) = [Σ_ij A_ij B_ji + ΣA·ΣB / ((N-1)(N-2)) - 2 Σ_l colsum(A)_l rowsum(B)_l / (N-2)] / (N(N-3))
    (the last term is 1ᵀAB1). A's diagonal is zero: no sample is its own neighbour.
    """
    device = a.indices.device
    b_indices, b_values = b.indices.to(device), b.values.to(device, torch.float64)
    rows_kept, cols_kept, a_kept, b_kept = [], [], [], []
    for start in range(0, n, chunk_size):
        rows = slice(start, min(start + chunk_size, n))
        equal = a.indices[rows, :, None] == b_indices[rows, None, :]
        both = equal.any(dim=2)
        # L_ij at the positions of a's list: the value b holds for the same column, where it has it.
        b_at_a = (equal * b_values[rows, None, :]).sum(dim=2)
        local, position = both.nonzero(as_tuple=True)
        rows_kept.append(local + start)
        cols_kept.append(a.indices[rows][local, position])
        a_kept.append(a.values[rows][local, position].to(torch.float64))
        b_kept.append(b_at_a[local, position])
    i, j = torch.cat(rows_kept), torch.cat(cols_kept)
    a_val, b_val = torch.cat(a_kept), torch.cat(b_kept)
    if i.numel() == 0:
        return 0.0
    # Σ_ij A_ij B_ji: the kept (i, j) whose transpose (j, i) is kept too, matched by sorted keys.
    keys, order = (i * n + j).sort()
    transposed = j * n + i
    where = torch.searchsorted(keys, transposed).clamp(max=keys.numel() - 1)
    found = keys[where] == transposed
    trace = float((a_val[found] * b_val[order[where[found]]]).sum())
    col_a = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, j, a_val)
    row_b = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, i, b_val)
    return trace + float(a_val.sum()) * float(b_val.sum()) / ((n - 1) * (n - 2)) - 2.0 * float(col_a @ row_b) / (n - 2)


# ------------------------------------------------------------------------------------ shared space


def mrr(x: Representation, y: Representation, pair: PairCache, *, k: int = 10, chunk_size: int = _CHUNK) -> float:
    """Give MRR@k of each sample's counterpart among the rows of y, as :func:`stitchcli.metrics.mrr_at_k`."""
    return metrics.mrr_at_k(x.matrix(), y.matrix(), k, chunk_size=chunk_size)


def cosine(x: Representation, y: Representation, pair: PairCache) -> float:
    """Give the mean cosine between x_i and y_i, as :func:`stitchcli.metrics.mean_cosine`."""
    return metrics.mean_cosine(x.matrix(), y.matrix())


_COSINE = "rotations and reflections (any orthogonal map), scaling (each row on its own); not translation"
_NEIGHBOUR_COST = (
    "O(N²·d) once per representation (the k-NN search, by blocks of rows: memory O(chunk·N + N·k)), "
    "O(N·k²) per pair and per permutation"
)

register_measure(Measure(
    name="mutual-knn", title="mutual k-NN", compare=mutual_knn, higher_is_more_alike=True, identical=1.0,
    symmetric=True, invariant_to=_COSINE, family="neighbours", options=measure_options(mutual_knn),
    cost=_NEIGHBOUR_COST, reference="Huh et al. 2024 (platonic-rep mutual_knn), cosine neighbours",
))
register_measure(Measure(
    name="cknna", title="CKNNA", compare=cknna, higher_is_more_alike=True, identical=1.0, symmetric=False,
    invariant_to=_COSINE, family="neighbours", options=measure_options(cknna),
    cost=_NEIGHBOUR_COST + "; no N×N matrix (platonic-rep builds three)",
    reference="Huh et al. 2024 (platonic-rep cknna, unbiased), cosine kernel",
))
register_measure(Measure(
    name="jaccard", title="Jaccard@k", compare=jaccard, higher_is_more_alike=True, identical=1.0, symmetric=True,
    invariant_to=_COSINE, family="neighbours", options=measure_options(jaccard), function=metrics.jaccard_at_k,
    cost=_NEIGHBOUR_COST, reference="docs/METHOD.md §6",
))
register_measure(Measure(
    name="mrr", title="MRR@k", compare=mrr, higher_is_more_alike=True, identical=1.0, symmetric=False,
    invariant_to="scaling of each row; the two spaces must share coordinates", family="shared", shared_space=True,
    options=measure_options(mrr), function=metrics.mrr_at_k,
    cost="O(N²·d) per pair and per permutation (cross-space blocks of rows; memory O(chunk·N))",
    reference="docs/METHOD.md §6",
))
register_measure(Measure(
    name="cosine", title="mean cosine", compare=cosine, higher_is_more_alike=True, identical=1.0, symmetric=True,
    invariant_to="scaling of each row; the two spaces must share coordinates", family="shared", shared_space=True,
    options={}, function=metrics.mean_cosine, cost="O(N·d) per pair",
    reference="docs/METHOD.md §6",
))
