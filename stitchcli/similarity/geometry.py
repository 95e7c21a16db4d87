"""Measures that need the full sample × sample matrix: RBF CKA and RSA, on at most ``max_rows`` samples.

An RBF Gram matrix must be centred as a whole and a Spearman correlation ranks every entry, so neither
streams like the feature-space measures. Memory is bounded instead by the number of samples: where N is
larger than ``max_rows`` (default 1000), a seeded draw of ``max_rows`` rows is used, the same rows for every
model (:func:`~stitchcli.similarity.representation.subsample_rows`); at or below it, every row, exactly.
Each representation keeps one vector of its upper triangle (about max_rows²/2 float64 numbers: 4 MB at the
default), built once; a pair then costs one dot product.

Under the permutation null on all rows (N ≤ max_rows) the kept vector is re-indexed; with a subsample, the
permuted representation's own rows are drawn, so its matrix is computed again (a null of the subsampled
statistic: the misaligned rows of y are another sample of y).
"""

from __future__ import annotations

import math

import torch

from stitchcli.errors import UsageError
from stitchcli.similarity.registry import Measure, PairCache, measure_options, register_measure
from stitchcli.similarity.representation import Representation, check_whole, subsample_rows

DEFAULT_MAX_ROWS = 1000
DISTANCES = ("euclidean", "cosine", "correlation")


def _points(rep: Representation, max_rows: int, seed: int) -> torch.Tensor:
    """Give the rows a subsampled measure uses, float64, (m, d)."""
    chosen = subsample_rows(rep.rows, max_rows, seed)
    return rep.matrix().to(torch.float64) if chosen is None else rep.take(chosen, torch.float64)


def _squared_distances(points: torch.Tensor) -> torch.Tensor:
    """Give the (m, m) squared Euclidean distances, zero on the diagonal, never negative."""
    norms = points.square().sum(dim=1)
    distances = (norms[:, None] + norms[None, :] - 2.0 * (points @ points.T)).clamp(min=0.0)
    return distances.fill_diagonal_(0.0)


def _median(values: torch.Tensor) -> float:
    """Give the median as numpy gives it (the mean of the two middle values for an even count)."""
    flat = values.flatten()
    low = flat.kthvalue((flat.numel() + 1) // 2).values
    high = flat.kthvalue(flat.numel() // 2 + 1).values
    return float((low + high) / 2)


def _upper_index(a: torch.Tensor, b: torch.Tensor, m: int) -> torch.Tensor:
    """Give the position of entry (a, b), a < b, in the row-major upper triangle of an m×m matrix."""
    return a * m - a * (a + 1) // 2 + (b - a - 1)


def _permuted_triangle(vector: torch.Tensor, order: torch.Tensor, m: int, with_diagonal: bool) -> torch.Tensor:
    """Give the triangle vector of S[order][:, order] from that of S (see :func:`_triangle`)."""
    order = order.to(vector.device)
    rows, cols = torch.triu_indices(m, m, 1, device=vector.device)
    a, b = order[rows], order[cols]
    upper = vector[_upper_index(torch.minimum(a, b), torch.maximum(a, b), m)]
    if not with_diagonal:
        return upper
    return torch.cat([upper, vector[m * (m - 1) // 2 + order]])


def _triangle(matrix: torch.Tensor, with_diagonal: bool) -> torch.Tensor:
    """Give a symmetric matrix as one vector whose dot products are the matrices' Frobenius products:
    the strict upper triangle (× √2 with the diagonal, which then follows it; alone, as it is)."""
    m = matrix.shape[0]
    rows, cols = torch.triu_indices(m, m, 1, device=matrix.device)
    upper = matrix[rows, cols]
    return torch.cat([upper * math.sqrt(2.0), matrix.diagonal()]) if with_diagonal else upper


def _kept(rep: Representation, key: tuple, max_rows: int, seed: int, with_diagonal: bool, build) -> torch.Tensor:
    """Give the cached triangle vector of ``rep``, re-indexed from the original's when a permutation of all rows."""

    def make() -> torch.Tensor:
        if rep.origin is not None and rep.rows <= max_rows:
            base, order = rep.origin
            return _permuted_triangle(_kept(base, key, max_rows, seed, with_diagonal, build), order, rep.rows, with_diagonal)
        return build()

    return rep.cached(key, make)


# -------------------------------------------------------------------------------------------- RBF CKA


def rbf_gram(rep: Representation, max_rows: int, seed: int, threshold: float) -> torch.Tensor:
    """Give the centred RBF Gram matrix of ``rep``'s rows, scaled to unit Frobenius norm, as a triangle vector.

    k(a, b) = exp(-‖a - b‖² / (2σ²)), σ² = threshold² × the median squared distance over all m² entries
    (the diagonal's zeros included: Kornblith et al.'s ``gram_rbf``).
    """

    def build() -> torch.Tensor:
        distances = _squared_distances(_points(rep, max_rows, seed))
        median = _median(distances)
        if not median > 0:
            raise UsageError(f"{rep.name}: most samples are identical, so the RBF bandwidth (median distance) is 0")
        gram = torch.exp(-distances / (2.0 * threshold**2 * median))
        del distances
        row_mean = gram.mean(dim=0)
        gram -= row_mean[:, None] + row_mean[None, :] - row_mean.mean()
        norm = torch.linalg.matrix_norm(gram)
        if not norm > 0:
            raise UsageError(f"{rep.name}: the centred RBF Gram matrix is zero, so RBF CKA is undefined")
        return _triangle(gram / norm, with_diagonal=True)

    return _kept(rep, ("rbf", max_rows, seed, threshold), max_rows, seed, True, build)


def rbf_cka(
    x: Representation, y: Representation, pair: PairCache, *, threshold: float = 1.0, max_rows: int = DEFAULT_MAX_ROWS, seed: int = 0
) -> float:
    """Give CKA with a Gaussian (RBF) kernel, ⟨HKH, HLH⟩ / (‖HKH‖ ‖HLH‖), in [0, 1] (Kornblith et al., 2019).

    On at most ``max_rows`` samples (a seeded draw, the same for x and y; all of them up to max_rows).
    """
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and threshold > 0):
        raise UsageError(f"threshold must be a positive number (the bandwidth in median distances), got {threshold!r}")
    kx = rbf_gram(x, max_rows, seed, float(threshold))
    ky = rbf_gram(y, max_rows, seed, float(threshold)).to(kx.device)
    return float(kx @ ky)


# ------------------------------------------------------------------------------------------------ RSA


def _dissimilarities(points: torch.Tensor, distance: str) -> torch.Tensor:
    """Give an (m, m) matrix ordered as the dissimilarity ``distance`` orders pairs of samples."""
    if distance == "euclidean":
        return _squared_distances(points)  # the square root keeps the order, and ranks are all RSA reads
    if distance == "correlation":
        points = points - points.mean(dim=1, keepdim=True)
    norms = points.norm(dim=1, keepdim=True)
    unit = points / torch.where(norms > 0, norms, torch.ones_like(norms))
    return 1.0 - unit @ unit.T


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Give the 1-based ranks of ``values``, tied values sharing the mean of their ranks (as scipy's rankdata).

    One sort of all the values is the cost (the pairs of m samples are m²/2 values); ties share the mean of
    their ranks whatever order the sort leaves them in, so the faster unstable sort is enough, and the group
    bookkeeping runs only when there are ties (distances of distinct float samples rarely tie).
    """
    ordered, order = values.sort()
    ranks = torch.empty_like(values, dtype=torch.float64)
    tied = ordered[1:] == ordered[:-1]
    if not bool(tied.any()):
        ranks[order] = torch.arange(1, values.numel() + 1, dtype=torch.float64, device=values.device)
        return ranks
    starts_group = torch.ones_like(ordered, dtype=torch.bool)
    starts_group[1:] = ~tied
    group = starts_group.cumsum(0) - 1
    counts = torch.bincount(group).to(torch.float64)
    mean_rank = counts.cumsum(0) - (counts - 1) / 2  # the last member's 1-based rank, less half the group's span
    ranks[order] = mean_rank[group]
    return ranks


def rdm_ranks(rep: Representation, max_rows: int, seed: int, distance: str) -> torch.Tensor:
    """Give the centred ranks of ``rep``'s pairwise dissimilarities (upper triangle), scaled to unit norm."""

    def build() -> torch.Tensor:
        points = _points(rep, max_rows, seed)
        values = _triangle(_dissimilarities(points, distance), with_diagonal=False)
        ranks = _average_ranks(values)
        ranks -= ranks.mean()
        norm = ranks.norm()
        if not norm > 0:
            raise UsageError(f"{rep.name}: every pair of samples is equally far apart, so RSA is undefined")
        return ranks / norm

    return _kept(rep, ("rsa", max_rows, seed, distance), max_rows, seed, False, build)


def rsa(
    x: Representation, y: Representation, pair: PairCache, *, distance: str = "euclidean", max_rows: int = DEFAULT_MAX_ROWS, seed: int = 0
) -> float:
    """Give RSA: the Spearman correlation between the two representational dissimilarity matrices, in [-1, 1].

    Each RDM holds a dissimilarity for every pair of samples (``euclidean``, ``cosine``: 1 - cosine, or
    ``correlation``: 1 - Pearson across features); the score is Spearman's ρ over the pairs i < j (average
    ranks for ties), on at most ``max_rows`` samples.
    """
    if distance not in DISTANCES:
        from stitchcli.relative import unknown_name

        raise unknown_name("RSA distance", distance, list(DISTANCES))
    check_whole(x.rows, "the number of samples", 3, why="RSA needs at least 3 pairs of samples")
    rx = rdm_ranks(x, max_rows, seed, distance)
    ry = rdm_ranks(y, max_rows, seed, distance).to(rx.device)
    return float(rx @ ry)


_SUBSAMPLE_COST = (
    "O(m²·d) once per representation, m = min(N, max_rows); O(m²) per pair; memory O(m²) per representation "
    "(4 MB at max_rows 1000)"
)

register_measure(Measure(
    name="rbf-cka", title="RBF CKA", compare=rbf_cka, higher_is_more_alike=True, identical=1.0, symmetric=True,
    invariant_to="rotations and reflections, translation, isotropic scaling (the bandwidth follows the median distance)",
    family="rbf", options=measure_options(rbf_cka), cost=_SUBSAMPLE_COST,
    reference="Kornblith et al. 2019, gram_rbf with the median heuristic",
))
register_measure(Measure(
    name="rsa", title="RSA (Spearman)", compare=rsa, higher_is_more_alike=True, identical=1.0, symmetric=True,
    invariant_to="rotations and reflections, translation, isotropic scaling (euclidean RDM); any change that keeps "
    "the order of the distances",
    family="rsa", options=measure_options(rsa), cost=_SUBSAMPLE_COST + " plus an O(m² log m) sort",
    reference="Kriegeskorte et al. 2008; rsatoolbox's euclidean RDM compared by Spearman's rho",
))
