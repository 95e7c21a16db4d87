"""Refinement from unlabeled rows: mutual nearest neighbours as pseudo-anchors, refit, repeat.

Start from a map fitted on the anchors; map the encoder's unlabeled training rows into the decoder's space;
pair each mapped row with a decoder row when each is the other's nearest neighbour under CSLS (cross-domain
similarity local scaling, which discounts "hub" rows close to everything); refit the map on the anchors plus
those pairs; repeat until the pairs stop changing or the rounds run out. This is the Procrustes refinement of
unsupervised word translation (Conneau, Lample, Ranzato, Denoyer & Jégou 2018, "Word Translation Without
Parallel Data", arXiv 1710.04087) and the matching refinement of mini-vec2vec (Dar 2025, arXiv 2510.02348),
here seeded by real anchors instead of an unsupervised guess.

The rows are used as two unordered sets: a pair is found from the rows' values alone, never from their
positions, so shuffling one model's rows leaves the fitted map unchanged. When a side has more than
``max_rows`` rows, the subset kept is chosen from the rows' values too (see :func:`unordered_subset`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from stitchcli.bridges.linear import AffineMap, affine_map, orthogonal_map
from stitchcli.bridges.registry import FitData, base_options, register_bridge
from stitchcli.errors import UsageError

REFITS: dict[str, Callable[[torch.Tensor, torch.Tensor, float | str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
    "affine": lambda s, t, ridge: affine_map(s, t, ridge)[:3],
    "orthogonal": lambda s, t, ridge: orthogonal_map(s, t),
}

SIMILARITY_BUDGET = 64 * 2**20
"""Bytes of one block of the (mapped encoder rows × decoder rows) similarity matrix (float32)."""


def unordered_subset(rows: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Give ``count`` rows of ``rows`` chosen from their values alone, so the choice ignores the rows' order.

    Rows are ranked by their projection on a seeded random direction (an order nobody supplied), and a seeded
    random set of ranks is kept; the result is in rank order.
    """
    if len(rows) <= count:
        return rows
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(rows.shape[1], generator=generator, dtype=torch.float64)
    ranked = rows[torch.argsort(rows @ direction, stable=True)]
    keep = torch.sort(torch.randperm(len(rows), generator=generator)[:count]).values
    return ranked[keep]


def _blocks(n: int, columns: int) -> list[slice]:
    size = max(1, SIMILARITY_BUDGET // (4 * max(columns, 1)))
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def mutual_neighbours(mapped: torch.Tensor, target: torch.Tensor, *, csls_k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Give (mapped positions, target positions) of the pairs that are each other's nearest neighbour.

    Similarity is the cosine, corrected by CSLS when ``csls_k`` > 0: 2·cos(y, t) - r(y) - r(t), r the mean
    cosine to the ``csls_k`` nearest rows of the other set. Computed in float32, in row blocks of bounded
    size; the pairs come sorted by target position. No pairs when either side has no rows (every training row
    is an anchor held out by ``auto``'s folds, or equal to one).
    """
    if len(mapped) == 0 or len(target) == 0:
        none = torch.zeros(0, dtype=torch.long)
        return none, none.clone()
    y = torch.nn.functional.normalize(mapped.float(), dim=1)
    t = torch.nn.functional.normalize(target.float(), dim=1)
    neighbours = min(csls_k, len(y), len(t))
    blocks = _blocks(len(y), len(t))
    if len(blocks) == 1:  # everything fits: one similarity matrix, reductions along contiguous rows only
        sims = y @ t.T
        sims_t = sims.T.contiguous()
        row_hub = sims.topk(neighbours, dim=1).values.mean(dim=1) if neighbours else torch.zeros(len(y))
        column_hub = sims_t.topk(neighbours, dim=1).values.mean(dim=1) if neighbours else torch.zeros(len(t))
        # CSLS = 2·cos - r(y) - r(t): a row's argmax ignores r(y), a column's ignores r(t)
        best_column = (2 * sims - column_hub[None, :]).argmax(dim=1)
        column_arg = (2 * sims_t - row_hub[None, :]).argmax(dim=1)
    else:
        best_column, column_arg = _blocked_neighbours(y, t, neighbours, blocks)
    columns = torch.arange(len(t))
    mutual = best_column[column_arg] == columns
    return column_arg[mutual], columns[mutual]


def _blocked_neighbours(y: torch.Tensor, t: torch.Tensor, neighbours: int, blocks: list[slice]) -> tuple[torch.Tensor, torch.Tensor]:
    """Give (best target of each mapped row, best mapped row of each target) under CSLS, one row block at a time."""
    row_hub = torch.zeros(len(y))
    column_hub = torch.zeros(len(t))
    if neighbours > 0:
        running = torch.full((neighbours, len(t)), -2.0)
        for rows in blocks:
            sims = y[rows] @ t.T
            row_hub[rows] = sims.topk(neighbours, dim=1).values.mean(dim=1)
            running = torch.cat([running, sims]).topk(neighbours, dim=0).values
        column_hub = running.mean(dim=0)
    best_column = torch.empty(len(y), dtype=torch.long)
    column_best = torch.full((len(t),), -float("inf"))
    column_arg = torch.zeros(len(t), dtype=torch.long)
    for rows in blocks:
        scores = 2 * (y[rows] @ t.T) - row_hub[rows, None] - column_hub[None, :]
        best_column[rows] = scores.argmax(dim=1)
        value, arg = scores.max(dim=0)
        better = value > column_best
        column_best = torch.where(better, value, column_best)
        column_arg = torch.where(better, arg + rows.start, column_arg)
    return best_column, column_arg


def refine_map(
    data: FitData, *, refit: str, ridge: float | str, rounds: int, csls_k: int, max_rows: int
) -> AffineMap:
    """Give the refined affine map; its config's ``fit.pairs_per_round`` counts the pseudo-anchor pairs of each
    round run."""
    if rounds < 0 or csls_k < 0 or max_rows < 1:
        raise UsageError(f"refine needs rounds >= 0, csls_k >= 0 and max_rows >= 1, got {rounds}, {csls_k}, {max_rows}")
    if data.source_rows is None or data.target_rows is None:
        raise UsageError("refinement learns from unlabeled training rows of both models: pass source_rows and target_rows")
    source_anchors, target_anchors, seed = data.source_anchors, data.target_anchors, data.seed
    fit = REFITS[refit]
    source = unordered_subset(data.source_rows, max_rows, seed)
    target = unordered_subset(data.target_rows, max_rows, seed + 1)
    bridge = AffineMap(*fit(source_anchors, target_anchors, ridge))
    counts: list[int] = []
    previous: tuple[torch.Tensor, torch.Tensor] | None = None
    source32, target32 = source.float(), target.float()
    for _ in range(rounds):
        # float32 is enough to rank cosines, and halves the work of the largest products
        shift = (bridge.target_mean - bridge.source_mean @ bridge.matrix).float()
        centre = bridge.target_mean.float()  # the decoder anchors' mean: cosines of centred rows, as in `center`
        mapped = source32 @ bridge.matrix.float() + (shift - centre)
        pairs = mutual_neighbours(mapped, target32 - centre, csls_k=csls_k)
        if previous is not None and len(pairs[0]) == len(previous[0]) and bool((pairs[0] == previous[0]).all() and (pairs[1] == previous[1]).all()):
            break
        counts.append(len(pairs[0]))
        previous = pairs
        pooled = (torch.cat([source_anchors, source[pairs[0]]]), torch.cat([target_anchors, target[pairs[1]]]))
        bridge = AffineMap(*fit(*pooled, ridge))
    bridge.config = {"fit": {"pairs_per_round": counts}}
    return bridge


def covariance_power(rows: torch.Tensor, mean: torch.Tensor, power: float, epsilon: float) -> torch.Tensor:
    """Give (C + δI)^power, C the covariance of ``rows`` about ``mean`` and δ = ``epsilon`` times its mean variance.

    With fewer rows than dimensions and ``epsilon`` > 0, C has rank below d and the power comes from the thin
    SVD of the centred rows, Xc = U S Vᵀ: (C + δI)^p = V ((S²/(N-1) + δ)^p - δ^p) Vᵀ + δ^p I, which is the same
    matrix as the eigen-decomposition of the d×d C gives, at O(N²·d) instead of O(d³) (30 rows of 1,280-d
    latents: 2 SVDs of 30×1,280 instead of 2 eigen-decompositions of 1,280×1,280). Otherwise the
    eigen-decomposition of C + δI.
    """
    centred = rows - mean
    count, dim = centred.shape
    scale = 1.0 / max(count - 1, 1)
    if 0 < epsilon and count < dim:
        singular = torch.linalg.svd(centred, full_matrices=False)
        variances = singular.S.square() * scale
        delta = epsilon * float(variances.sum()) / dim
        if delta > 0:
            vectors = singular.Vh.T
            low_rank = (vectors * ((variances + delta) ** power - delta**power)) @ vectors.T
            return low_rank + delta**power * torch.eye(dim, dtype=rows.dtype, device=rows.device)
    covariance = centred.T @ centred * scale
    regularised = covariance + epsilon * float(covariance.diagonal().mean()) * torch.eye(dim, dtype=rows.dtype, device=rows.device)
    values, vectors = torch.linalg.eigh(regularised)
    return (vectors * values.clamp_min(torch.finfo(rows.dtype).tiny) ** power) @ vectors.T


def covariance_alignment(bridge: AffineMap, source_rows: torch.Tensor, target_rows: torch.Tensor, *, epsilon: float = 1e-2) -> AffineMap:
    """Give ``bridge`` followed by CORAL: the mapped encoder rows recoloured to the decoder rows' mean and covariance.

    x -> (f(x) - μm) Cm^(-1/2) Ct^(1/2) + μt, with Cm, Ct the covariances of the mapped encoder rows and of the
    decoder rows (each plus ``epsilon`` times its mean variance on the diagonal), both from the rows as
    unordered sets (Sun, Feng & Saenko 2016, "Return of Frustratingly Easy Domain Adaptation", arXiv
    1511.05547). A least-squares map shrinks its outputs towards the mean; this gives them the decoder's
    spread back. The result is still one affine map.
    """
    mapped = bridge._map(source_rows)
    mapped_mean, target_mean = mapped.mean(dim=0), target_rows.mean(dim=0)
    recolour = covariance_power(mapped, mapped_mean, -0.5, epsilon) @ covariance_power(target_rows, target_mean, 0.5, epsilon)
    matrix = bridge.matrix @ recolour
    # f(x) - μm = (x - μs) W + μt0 - μm, so the new shift folds μt0 - μm through the recolouring
    shift = (bridge.target_mean - mapped_mean) @ recolour + target_mean
    return AffineMap(bridge.source_mean, matrix, shift)


@register_bridge(
    "refine",
    extends="affine",
    uses_rows=True,
    source="Conneau et al., Word Translation Without Parallel Data, ICLR 2018, arXiv 1710.04087 (CSLS, Procrustes refinement); Dar, mini-vec2vec, 2025, arXiv 2510.02348",
)
def fit_refine(data: FitData, *, rounds: int = 3, csls_k: int = 10, max_rows: int = 5000, **affine: Any) -> AffineMap:
    """Ridge affine map on the anchors, refitted with mutual-nearest-neighbour pseudo-anchors from unlabeled rows."""
    ridge = base_options("affine", affine)["ridge"]
    return refine_map(data, refit="affine", ridge=ridge, rounds=rounds, csls_k=csls_k, max_rows=max_rows)


@register_bridge(
    "refine-coral",
    extends="refine",
    source="`refine`, then CORAL: Sun, Feng & Saenko, Return of Frustratingly Easy Domain Adaptation, AAAI 2016, arXiv 1511.05547",
)
def fit_refine_coral(data: FitData, *, epsilon: float = 1e-2, **refine: Any) -> AffineMap:
    """`refine`, then the mapped rows' covariance matched to the decoder rows' (CORAL), both unpaired."""
    if epsilon < 0:
        raise UsageError(f"refine-coral epsilon must be 0 or more, not {epsilon}")
    options = base_options("refine", refine)
    bridge = fit_refine(data, **options)
    max_rows = options["max_rows"]
    assert data.source_rows is not None and data.target_rows is not None  # refine_map checked them
    source = unordered_subset(data.source_rows, max_rows, data.seed)
    target = unordered_subset(data.target_rows, max_rows, data.seed + 1)
    aligned = covariance_alignment(bridge, source, target, epsilon=epsilon)
    aligned.config = bridge.config
    return aligned


@register_bridge(
    "refine-orthogonal",
    extends="orthogonal",
    uses_rows=True,
    source="Conneau et al., Word Translation Without Parallel Data, ICLR 2018, arXiv 1710.04087 (CSLS, Procrustes refinement)",
)
def fit_refine_orthogonal(data: FitData, *, rounds: int = 3, csls_k: int = 10, max_rows: int = 5000) -> AffineMap:
    """Orthogonal Procrustes on the anchors, refitted with mutual-nearest-neighbour pseudo-anchors from unlabeled rows."""
    return refine_map(data, refit="orthogonal", ridge=0.0, rounds=rounds, csls_k=csls_k, max_rows=max_rows)
