"""Measures built on the centred features: linear CKA, unbiased CKA, orthogonal Procrustes distance, SVCCA.

Linear CKA, unbiased CKA and the Procrustes distance all read the cross-covariance C = Xcᵀ Yc (p×q) of the
column-centred inputs, or rather its singular values: one product per pair, shared by the three (family
``cross``). Each representation enters through a factor F with F Fᵀ = Xc Xcᵀ
(:func:`cross_factor`): the centred copy itself when N ≥ d, an N×N triangle from a QR decomposition when
there are fewer rows than columns, so that a pair of wide representations on few rows costs an N×N×N product
and an N×N decomposition instead of N·p·q and p×q; the two CKAs of such a pair need only ‖Xcᵀ Yc‖²_F =
tr(Kx Ky), O(N²) from each one's N×N row Gram matrix. The products are accumulated in float64 over row blocks.
The centring is done in float64; float32 inputs (the cache's) then multiply their centred blocks of at most
1,024 rows in float32, each block's product added to the float64 sum, which is about twice as fast as float64
products; float64 inputs stay in float64 throughout. On the cached EfficientNet-Lite embeddings (4,000 ×
1,280) the float32 blocks moved linear CKA by 8e-10 and the nuclear norm of C by 2e-10 of itself. Per
representation, the column mean and the squared row norms (two O(N·d) passes), the factor and, for CKA,
‖Xcᵀ Xc‖_F are computed once and kept while the family runs: with N ≥ d no N×N matrix of the rows is ever
held; with N < d the N×N factor and row Gram matrix are (float64, so at most twice a float32 input's size
each). SVCCA keeps each representation's top singular vectors (N×r) once and compares two of them in O(N·r²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from stitchcli import metrics
from stitchcli.errors import UsageError
from stitchcli.similarity.registry import (
    Measure,
    PairCache,
    measure_options,
    register_measure,
)
from stitchcli.similarity.representation import Representation, check_whole, compute_dtype

_CHUNK = 8192
"""Rows per block of the float64 accumulations (the default of :func:`stitchcli.metrics.linear_cka`)."""
_FLOAT32_CHUNK = 1024
"""Rows per block of a float32 product: each block's rounding stays small before it joins the float64 sum."""


@dataclass(frozen=True)
class Moments:
    """What the centred-feature measures need from one representation's centred rows, float64.

    Attributes:
        sq_norms: ‖xc_i‖² for every centred row, (N,); their sum is ‖Xc‖²_F.
    """

    sq_norms: torch.Tensor


def product_blocks(*reps: Representation, chunk_size: int = _CHUNK) -> tuple[torch.dtype, int]:
    """Give (dtype, rows per block) of the products of centred blocks: float32 in blocks of at most
    :data:`_FLOAT32_CHUNK` rows when every input is float32 (or narrower), else float64 in ``chunk_size``."""
    if compute_dtype(*reps) == torch.float64:
        return torch.float64, chunk_size
    return torch.float32, min(chunk_size, _FLOAT32_CHUNK)


def _centre(rep: Representation, chunk_size: int = _CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Give (shift, mean) of ``rep``: one O(N·d) pass, once. The shift is the first row, subtracted before
    averaging (it keeps a large common offset from eating precision, and makes a constant column exactly zero
    after centring); the mean is the column mean of (x - shift)."""

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        shift = rep.block(slice(0, 1), torch.float64)[0]
        total = torch.zeros_like(shift)
        for rows in rep.blocks(chunk_size):
            total += (rep.block(rows, torch.float64) - shift).sum(dim=0)
        return shift, total / rep.rows

    return rep.cached(("centre",), build)


def _centred_rows(rep: Representation, rows: slice, chunk_size: int = _CHUNK) -> torch.Tensor:
    """Give rows ``rows`` of ``rep`` centred, float64, on its device (a new tensor)."""
    shift, mean = _centre(rep, chunk_size)
    return rep.block(rows, torch.float64) - (shift + mean)


def moments(rep: Representation, chunk_size: int = _CHUNK) -> Moments:
    """Give the centring moments of ``rep``: two O(N·d) passes, once (a permuted one reorders the row norms).

    The row norms are read from the centred copy when a float64 one was built (one subtraction fewer); a
    float32 copy would round them, so float32 inputs are centred again in float64.
    """

    def build() -> Moments:
        if rep.origin is not None:
            base, order = rep.origin
            found = moments(base, chunk_size)
            return replace(found, sq_norms=found.sq_norms[order.to(found.sq_norms.device)])
        copy = rep.peek(("centred",))
        exact = copy is not None and copy.dtype == torch.float64
        sq_norms = torch.empty(rep.rows, dtype=torch.float64, device=rep.device)
        for rows in rep.blocks(chunk_size):
            block = copy.block(rows) if exact else _centred_rows(rep, rows, chunk_size)
            sq_norms[rows] = block.square().sum(dim=1)
        if not float(sq_norms.sum()) > 0:
            raise UsageError(
                f"{rep.name} has no variance (every row is the same), so it cannot be compared: "
                "check that the embeddings were computed from distinct samples"
            )
        return Moments(sq_norms)

    return rep.cached(("moments",), build)


def centred_copy(rep: Representation, chunk_size: int = _CHUNK) -> Representation:
    """Give ``rep`` column-centred (in float64, stored in its product dtype), built once and kept in its cache.

    Centring a block costs as much memory traffic as multiplying it by a narrow matrix, so doing it once per
    representation instead of once per pair saved a third of the cross family's time; the price is one copy
    of each representation while the family runs (the engine clears it after). A permuted representation
    reorders its original's copy. A representation with no variance is refused here (through its moments).
    """
    if rep.origin is not None:
        base, order = rep.origin
        return rep.cached(("centred",), lambda: centred_copy(base, chunk_size).permuted(order))

    def copy_in(dtype: torch.dtype) -> torch.Tensor:
        copy = torch.empty(rep.rows, rep.dim, dtype=dtype, device=rep.device)
        for rows in rep.blocks(chunk_size):
            copy[rows] = _centred_rows(rep, rows, chunk_size).to(dtype)
        return copy

    def build() -> Representation:
        dtype, _ = product_blocks(rep, chunk_size=chunk_size)
        copy = copy_in(dtype)
        # finite float32 inputs spread beyond float32's range (±3.4e38) overflow when centred: float64 then
        if dtype != torch.float64 and not bool(torch.isfinite(copy.sum(dtype=torch.float64))):
            copy = copy_in(torch.float64)
        return Representation.derived(copy, rep.name)

    found = rep.cached(("centred",), build)
    moments(rep, chunk_size)
    return found


def _wide(rep: Representation) -> bool:
    """Tell whether ``rep`` has fewer rows than columns (the cross measures then work on N×N matrices)."""
    return rep.rows < rep.dim


def cross_factor(rep: Representation, chunk_size: int = _CHUNK) -> Representation:
    """Give a factor F of the centred ``rep`` with F Fᵀ = Xc Xcᵀ: all the cross measures read, built once.

    Linear CKA, unbiased CKA and the Procrustes distance depend on Xc only through Xc Xcᵀ (the singular
    values of Xcᵀ Yc are those of Fxᵀ Fy, whatever F is). With at least as many rows as columns F is the
    centred copy itself (N×d). With fewer rows than columns, as with wide features on a few thousand samples,
    F is Rᵀ from the QR decomposition Xcᵀ = QR, an N×N float64 triangle (Xc = Rᵀ Qᵀ, and Q has orthonormal
    columns): one O(N²·d) decomposition per representation, after which a pair costs an N×N×N product and an
    N×N decomposition instead of an N×p×q product and a p×q one. A permuted representation permutes its
    original's factor (P Xc = (P F) Qᵀ).
    """
    if rep.origin is not None:
        base, order = rep.origin
        return rep.cached(("factor",), lambda: cross_factor(base, chunk_size).permuted(order))
    if not _wide(rep):
        return centred_copy(rep, chunk_size)

    def build() -> Representation:
        moments(rep, chunk_size)  # refuses a representation with no variance
        centred = _centred_rows(rep, slice(0, rep.rows), chunk_size)  # N×d float64, smaller than d×d here
        triangle = torch.linalg.qr(centred.T, mode="r").R
        return Representation.derived(triangle.T.contiguous(), rep.name)

    return rep.cached(("factor",), build)


def row_gram(rep: Representation, chunk_size: int = _CHUNK) -> torch.Tensor:
    """Give K = Xc Xcᵀ (N×N, float64) of a representation with fewer rows than columns, once.

    Built from the :func:`cross_factor` when the Procrustes distance made one (F Fᵀ, O(N³)), else from the
    centred rows (O(N²·d)). A permuted representation gathers its original's (P K Pᵀ).
    """
    if rep.origin is not None:
        base, order = rep.origin

        def permute() -> torch.Tensor:
            gram = row_gram(base, chunk_size)
            where = order.to(gram.device)
            return gram[where][:, where]

        return rep.cached(("row_gram",), permute)

    def build() -> torch.Tensor:
        moments(rep, chunk_size)  # refuses a representation with no variance
        factor = rep.peek(("factor",))
        rows = factor.matrix() if factor is not None else _centred_rows(rep, slice(0, rep.rows), chunk_size)
        return rows @ rows.T

    return rep.cached(("row_gram",), build)


def gram_norm(rep: Representation, chunk_size: int = _CHUNK) -> float:
    """Give ‖Xcᵀ Xc‖_F of ``rep`` (= ‖Xc Xcᵀ‖_F; once; unchanged by a permutation)."""
    if rep.origin is not None:
        return gram_norm(rep.origin[0], chunk_size)

    def build() -> float:
        if _wide(rep):
            return float(torch.linalg.matrix_norm(row_gram(rep, chunk_size)))
        centred = centred_copy(rep, chunk_size)
        dtype, block = product_blocks(centred, chunk_size=chunk_size)
        gram = torch.zeros(rep.dim, rep.dim, dtype=torch.float64, device=rep.device)
        for rows in centred.blocks(block):
            xc = centred.block(rows, dtype)
            gram += xc.T @ xc
        return float(torch.linalg.matrix_norm(gram))

    return rep.cached(("gram_norm",), build)


def cross_frobenius(x: Representation, y: Representation, pair: PairCache, chunk_size: int = _CHUNK) -> float:
    """Give ‖Xcᵀ Yc‖²_F for the pair, kept in ``pair``: tr(Kx Ky) in O(N²) from the row Gram matrices when
    both have fewer rows than columns (and no cross-covariance was needed yet), else from
    :func:`cross_covariance`."""
    if "frobenius" not in pair:
        if "cross" not in pair and _wide(x) and _wide(y):
            kx = row_gram(x, chunk_size)
            pair["frobenius"] = float((kx * row_gram(y, chunk_size).to(kx.device)).sum())
        else:
            pair["frobenius"] = float(cross_covariance(x, y, pair, chunk_size).square().sum())
    return pair["frobenius"]


def cross_covariance(x: Representation, y: Representation, pair: PairCache, chunk_size: int = _CHUNK) -> torch.Tensor:
    """Give Fxᵀ Fy (float64) for the pair's factors (:func:`cross_factor`), accumulated over row blocks and kept in
    ``pair``: Xcᵀ Yc itself (p×q) when both have at least as many rows as columns, else a smaller matrix with the
    same singular values (so the same Frobenius and nuclear norms)."""
    if "cross" not in pair:
        fx, fy = cross_factor(x, chunk_size), cross_factor(y, chunk_size)
        dtype, block = product_blocks(fx, fy, chunk_size=chunk_size)
        cross = torch.zeros(fx.dim, fy.dim, dtype=torch.float64, device=x.device)
        for rows in fx.blocks(block):
            cross += fx.block(rows, dtype).T @ fy.block(rows, dtype).to(x.device)
        pair["cross"] = cross
    return pair["cross"]


# ---------------------------------------------------------------------------------------------- CKA


def linear_cka(x: Representation, y: Representation, pair: PairCache, *, chunk_size: int = _CHUNK) -> float:
    """Give linear CKA, ‖Xcᵀ Yc‖²_F / (‖Xcᵀ Xc‖_F · ‖Ycᵀ Yc‖_F), in [0, 1] (Kornblith et al., 2019)."""
    _enough_rows(x, 2, "CKA")
    return cross_frobenius(x, y, pair, chunk_size) / (gram_norm(x, chunk_size) * gram_norm(y, chunk_size))


def unbiased_cka(x: Representation, y: Representation, pair: PairCache, *, chunk_size: int = _CHUNK) -> float:
    """Give CKA with the unbiased HSIC estimator of Song et al. (2012), at most 1 (can dip below 0).

    With K = Xc Xcᵀ and K̃ its off-diagonal part, the unbiased HSIC needs tr(K̃ L̃), 1ᵀK̃1 and 1ᵀK̃L̃1.
    Because the columns are centred, K1 = 0, so K̃1 = -n_x (the squared row norms) and everything follows
    from ‖Xcᵀ Yc‖²_F (:func:`cross_frobenius`), Σ n_x, Σ n_y and Σ n_x·n_y. The estimator is invariant to
    translating either input, so centring first changes nothing (it equals the uncentred Gram form).
    """
    _enough_rows(x, 4, "the unbiased HSIC estimator")
    cross_sq = cross_frobenius(x, y, pair, chunk_size)
    mx, my = moments(x, chunk_size), moments(y, chunk_size)
    n = x.rows
    nx = mx.sq_norms
    ny = my.sq_norms.to(nx.device)

    def hsic(cross_sq: float, diagonal: float, sum_a: float, sum_b: float) -> float:
        # The common factor 1 / (N(N-3)) cancels in the ratio and is left out.
        return cross_sq - diagonal + sum_a * sum_b / ((n - 1) * (n - 2)) - 2.0 * diagonal / (n - 2)

    sum_x, sum_y = float(nx.sum()), float(ny.sum())
    xy = hsic(cross_sq, float(nx @ ny), sum_x, sum_y)
    xx = hsic(gram_norm(x, chunk_size) ** 2, float(nx @ nx), sum_x, sum_x)
    yy = hsic(gram_norm(y, chunk_size) ** 2, float(ny @ ny), sum_y, sum_y)
    if not xx * yy > 0:
        return float("nan")  # the estimator of HSIC(X, X) can only fail to be positive on degenerate inputs
    return xy / math.sqrt(xx * yy)


# ---------------------------------------------------------------------------------------- Procrustes


def procrustes(x: Representation, y: Representation, pair: PairCache, *, chunk_size: int = _CHUNK) -> float:
    """Give the orthogonal Procrustes distance min_Q ‖X̂ - Ŷ Q‖_F, in [0, √2] (0: the same up to rotation).

    X̂ and Ŷ are the centred inputs scaled to unit Frobenius norm (the narrower one padded with zero columns);
    the minimum over orthogonal Q is √(2 - 2‖X̂ᵀŶ‖_*) (Ding et al., 2021; netrep's euclidean score, whose
    angular form is arccos ‖X̂ᵀŶ‖_*). ‖·‖_* is the nuclear norm of the cross-covariance.
    """
    _enough_rows(x, 2, "the Procrustes distance")
    cross = cross_covariance(x, y, pair, chunk_size)
    mx, my = moments(x, chunk_size), moments(y, chunk_size)
    # Xcᵀ Yc has rank N - 1 at most: a wider one is singular, and its singular values need the SVD
    nuclear = _nuclear_norm(cross, singular=min(cross.shape) >= x.rows)
    nuclear /= math.sqrt(float(mx.sq_norms.sum()) * float(my.sq_norms.sum()))
    if not math.isfinite(nuclear):
        return float("nan")  # not 0 ("identical"), which max(0, nan) would give
    return math.sqrt(max(0.0, 2.0 - 2.0 * min(nuclear, 1.0)))


def _nuclear_norm(matrix: torch.Tensor, singular: bool = False) -> float:
    """Give the sum of the singular values of ``matrix`` (float64); ``singular``: known to be rank-deficient."""
    if singular:
        return float(torch.linalg.svdvals(matrix).sum())
    small = matrix if matrix.shape[1] <= matrix.shape[0] else matrix.T
    # The eigenvalues of CᵀC on the narrower side are 2-6x faster than an SVD; their square roots lose
    # precision only for eigenvalues near eps·λ_max, so an ill-conditioned C goes through the SVD.
    eigenvalues = torch.linalg.eigvalsh(small.T @ small)
    if float(eigenvalues[0]) > 1e-8 * float(eigenvalues[-1]):
        return float(eigenvalues.sqrt().sum())
    return float(torch.linalg.svdvals(matrix).sum())


# ------------------------------------------------------------------------------------------------ SVCCA


def svcca_basis(rep: Representation, components: int, chunk_size: int = _CHUNK) -> torch.Tensor:
    """Give the top ``components`` left singular vectors of the centred ``rep``, (N, r) float64 orthonormal.

    r = min(components, d, N - 1, rank): directions without variance (singular values below 1e-6 of the
    largest) are left out, as their singular vectors are arbitrary. They come from the eigenvectors V of
    Xcᵀ Xc as Xc V / σ, so nothing N×N and nothing N×d beyond a row block is held; with fewer rows than
    columns, directly from the eigenvectors of the N×N row Gram matrix Xc Xcᵀ (O(N²·d + N³) instead of
    O(N·d² + d³)).
    """

    def build() -> torch.Tensor:
        if rep.origin is not None:
            base, order = rep.origin
            basis = svcca_basis(base, components, chunk_size)
            return basis[order.to(basis.device)]
        moments(rep, chunk_size)  # refuses a representation with no variance
        r = min(components, rep.dim, rep.rows - 1)
        if _wide(rep):
            gram = row_gram(rep, chunk_size)
        else:
            gram = torch.zeros(rep.dim, rep.dim, dtype=torch.float64, device=rep.device)
            for rows in rep.blocks(chunk_size):
                xc = _centred_rows(rep, rows, chunk_size)
                gram += xc.T @ xc
        eigenvalues, eigenvectors = torch.linalg.eigh(gram)
        # directions without variance (a rank-deficient input: a relative space on few anchors) have arbitrary
        # singular vectors; they are left out, so r is at most the rank
        r = min(r, int((eigenvalues > 1e-12 * float(eigenvalues[-1])).sum()))
        top, vectors = eigenvalues.flip(0)[:r], eigenvectors.flip(1)[:, :r]
        if _wide(rep):
            return vectors.contiguous()  # the eigenvectors of Xc Xcᵀ are the left singular vectors themselves
        scale = vectors / top.sqrt()
        basis = torch.empty(rep.rows, r, dtype=torch.float64, device=rep.device)
        for rows in rep.blocks(chunk_size):
            basis[rows] = _centred_rows(rep, rows, chunk_size) @ scale
        return basis

    return rep.cached(("svcca", components), build)


def svcca(x: Representation, y: Representation, pair: PairCache, *, components: int = 10, chunk_size: int = _CHUNK) -> float:
    """Give SVCCA: the mean canonical correlation between the top singular subspaces of x and y, in [0, 1].

    Raghu et al. (2017): keep the top ``components`` singular directions of each centred representation,
    then CCA between the two reduced spaces. Their bases being orthonormal, the canonical correlations are
    the singular values of U_xᵀ U_y (the cosines of the principal angles between the two subspaces); the
    mean runs over min(r_x, r_y) of them.
    """
    check_whole(components, "components", 1)
    _enough_rows(x, 3, "SVCCA")
    ux = svcca_basis(x, components, chunk_size)
    uy = svcca_basis(y, components, chunk_size).to(ux.device)
    correlations = torch.linalg.svdvals(ux.T @ uy).clamp(max=1.0)
    return float(correlations.mean())


def _enough_rows(rep: Representation, least: int, what: str) -> None:
    if rep.rows < least:
        raise UsageError(f"{what} needs at least {least} samples, got {rep.rows}")


_RIGID = "rotations and reflections (any orthogonal map), isotropic scaling, translation"

register_measure(Measure(
    name="linear-cka", title="linear CKA", compare=linear_cka, higher_is_more_alike=True, identical=1.0,
    symmetric=True, invariant_to=_RIGID, family="cross", options=measure_options(linear_cka), aliases=("cka",),
    function=metrics.linear_cka,
    cost="O(N·p·min(N, p)) once per representation; per pair O(N·p·q) (shared with unbiased-cka and procrustes), "
    "O(N²) when both have fewer rows than columns; memory O(p² + q² + p·q + chunk·(p + q)), or with fewer rows than "
    "columns an N×N row Gram matrix per representation",
    reference="Kornblith et al. 2019, feature-space form (docs/METHOD.md §6)",
))
register_measure(Measure(
    name="unbiased-cka", title="unbiased CKA", compare=unbiased_cka, higher_is_more_alike=True, identical=1.0,
    symmetric=True, invariant_to=_RIGID, family="cross", options=measure_options(unbiased_cka),
    cost="as linear-cka (the same ‖Xcᵀ Yc‖²_F) plus O(N) per pair",
    reference="Song et al. 2012 unbiased HSIC; the debiased CKA of platonic-rep and Kornblith's code",
))
register_measure(Measure(
    name="procrustes", title="Procrustes distance", compare=procrustes, higher_is_more_alike=False, identical=0.0,
    symmetric=True, invariant_to=_RIGID, family="cross", options=measure_options(procrustes),
    cost="O(N·p·min(N, p)) once per representation (an N×N QR factor when N < p), O(N·min(N, p)·min(N, q)) "
    "per pair for the cross-covariance (shared with the CKAs) plus a decomposition of its min(N, p, q)² core",
    reference="orthogonal Procrustes distance, Ding et al. 2021; netrep LinearMetric(alpha=1), euclidean score",
))
register_measure(Measure(
    name="svcca", title="SVCCA", compare=svcca, higher_is_more_alike=True, identical=1.0, symmetric=True,
    invariant_to=_RIGID, family="svcca", options=measure_options(svcca),
    cost="O(N·p² + p³) once per representation, O(N·r²) per pair (r = components); memory O(N·r + p²)",
    reference="Raghu et al. 2017 (SVD then CCA); platonic-rep uses 10 components",
))
