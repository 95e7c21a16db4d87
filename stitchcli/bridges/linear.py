"""Linear bridges fitted on the anchors alone: orthogonal Procrustes and ridge least-squares affine maps.

Both are the latent space translation of Maiorca et al. (NeurIPS 2023, "Latent Space Translation via Semantic
Alignment", arXiv 2311.00664): estimate a map from the encoder's anchors to the decoder's and reuse the
decoder's absolute head. Once fitted both are an :class:`AffineMap` ``x -> (x - source_mean) @ matrix +
target_mean``, the form the refined and shared-space bridges produce too.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from stitchcli.bridges.registry import FitData, FittedBridge, register_bridge, register_form
from stitchcli.errors import UsageError

RIDGE_GRID: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
"""Relative ridges that ``ridge="gcv"`` chooses from (relative to the anchors' mean variance per dimension)."""


@register_form
class AffineMap(FittedBridge):
    """``x -> (x - source_mean) @ matrix + target_mean``.

    Attributes:
        source_mean: (Ds,) subtracted first.
        matrix: (Ds, Dt).
        target_mean: (Dt,) added last.
    """

    form = "affine"

    def __init__(self, source_mean: torch.Tensor, matrix: torch.Tensor, target_mean: torch.Tensor, config: dict[str, Any] | None = None) -> None:
        super().__init__(config or {})
        # contiguous now, so that a map loaded back from its state computes bit for bit the same
        self.source_mean, self.matrix, self.target_mean = (t.contiguous() for t in (source_mean, matrix, target_mean))

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        matrix = self.matrix.to(x.device)
        return (x - self.source_mean.to(x.device)) @ matrix + self.target_mean.to(x.device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Give source_mean, matrix and target_mean."""
        return {"source_mean": self.source_mean, "matrix": self.matrix, "target_mean": self.target_mean}

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], config: dict[str, Any]) -> AffineMap:
        """Give the affine map stored as (tensors, config)."""
        matrix = tensors["matrix"]
        if tuple(matrix.shape) != (config["source_dim"], config["target_dim"]):
            raise ValueError(f"matrix of shape {tuple(matrix.shape)} for a {config['source_dim']}→{config['target_dim']} bridge")
        return cls(tensors["source_mean"], matrix, tensors["target_mean"], config)


# ----- orthogonal Procrustes -------------------------------------------------------------------------


def rms_row_norm(x: torch.Tensor) -> float:
    """Give sqrt(mean squared row norm) of ``x`` (1.0 for an all-zero ``x``, so dividing by it is safe)."""
    norm = float(torch.sqrt((x**2).sum() / max(len(x), 1)))
    return norm if norm > 0 else 1.0


def procrustes_rotation(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Give the (Ds, Dt) semi-orthogonal R minimising |source R - target|_F, kept to the determined directions.

    With fewer rows than dimensions the cross-covariance is rank-deficient and the singular vectors of its
    zero singular values are arbitrary: R keeps only the part the rows determine (the rest maps to zero)
    rather than completing it with an arbitrary rotation. Then the SVD is taken in the rows' k-dimensional
    span (O(k²D) instead of O(D³)): sourceᵀ target = Vs (Ss Usᵀ target), Vs (Ds, k) orthonormal.
    """
    k = source.shape[0]
    if k < min(source.shape[1], target.shape[1]):
        _, s_values, s_vectors_t = torch.linalg.svd(source, full_matrices=False)
        basis = s_vectors_t.T  # (Ds, k): the directions the source rows span
        u, singular, vt = torch.linalg.svd(basis.T @ (source.T @ target), full_matrices=False)
        u = basis @ u
    else:
        u, singular, vt = torch.linalg.svd(source.T @ target, full_matrices=False)
    eps = torch.finfo(singular.dtype).eps
    rank = int((singular > singular.max() * max(source.shape[1], target.shape[1]) * eps).sum()) if len(singular) else 0
    return u[:, :rank] @ vt[:rank]


def orthogonal_map(source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Give (source_mean, matrix, target_mean) of the scaled orthogonal map from paired rows ``source`` → ``target``.

    Both sides are centred and scaled to unit RMS row norm, R is their Procrustes rotation, and the matrix is
    R times the ratio of the scales: exact for x -> s·xQ + t.
    """
    source_mean, target_mean = source.mean(dim=0), target.mean(dim=0)
    xs, xt = source - source_mean, target - target_mean
    source_scale, target_scale = rms_row_norm(xs), rms_row_norm(xt)
    rotation = procrustes_rotation(xs / source_scale, xt / target_scale)
    return source_mean, rotation * (target_scale / source_scale), target_mean


@register_bridge(
    "orthogonal",
    exact_for="similarity",
    source="Maiorca et al., Latent Space Translation via Semantic Alignment, NeurIPS 2023, arXiv 2311.00664 (orthogonal Procrustes, Schönemann 1966)",
)
def fit_orthogonal(data: FitData) -> AffineMap:
    """Orthogonal Procrustes after centring and scaling both anchor sets (the `translation` baseline)."""
    return AffineMap(*orthogonal_map(data.source_anchors, data.target_anchors))


# ----- ridge least-squares affine maps ---------------------------------------------------------------


def ridge_penalty(centred_source: torch.Tensor, ridge: float) -> float:
    """Give the absolute ridge penalty for a relative ``ridge``: ridge · k · (mean variance per dimension).

    So ``ridge`` means the same whatever the scale of the latents or the number of rows.
    """
    k, d = centred_source.shape
    variance = float((centred_source**2).sum()) / max(k * d, 1)
    return ridge * k * max(variance, torch.finfo(torch.float64).tiny)


def ridge_solve(a: torch.Tensor, b: torch.Tensor, penalty: float) -> torch.Tensor:
    """Give W minimising |a W - b|² + penalty·|W|², through whichever of the d×d or k×k systems is smaller."""
    k, d = a.shape
    if penalty == 0:
        return torch.linalg.lstsq(a, b, driver="gelsd").solution
    if k >= d:
        return torch.linalg.solve(a.T @ a + penalty * torch.eye(d, dtype=a.dtype), a.T @ b)
    return a.T @ torch.linalg.solve(a @ a.T + penalty * torch.eye(k, dtype=a.dtype), b)


def gcv_ridge(a: torch.Tensor, b: torch.Tensor, grid: Sequence[float] = RIDGE_GRID) -> tuple[float, list[float]]:
    """Give (the relative ridge of ``grid`` with the least generalised cross-validation error, every error).

    GCV (Golub, Heath & Wahba 1979) estimates the leave-one-out error of ridge regression from one SVD of
    ``a``: |(I - H) b|² · k / (k - tr H)², H the hat matrix. It uses the anchors alone, no labels.
    """
    k = a.shape[0]
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    ub = u.T @ b
    outside = float((b**2).sum() - (ub**2).sum())  # the part of b no ridge fit can reach
    scores: list[float] = []
    for ridge in grid:
        shrink = s**2 / (s**2 + ridge_penalty(a, ridge))
        residual = outside + float((((1 - shrink)[:, None] * ub) ** 2).sum())
        dof = k - float(shrink.sum())
        scores.append(residual * k / max(dof, 1e-12) ** 2)
    best = min(range(len(grid)), key=scores.__getitem__)
    return float(grid[best]), scores


def affine_map(
    source: torch.Tensor, target: torch.Tensor, ridge: float | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Give (source_mean, matrix, target_mean, relative ridge used) of the ridge affine map fitted on paired rows."""
    source_mean, target_mean = source.mean(dim=0), target.mean(dim=0)
    a, b = source - source_mean, target - target_mean
    if ridge == "gcv":
        ridge, _ = gcv_ridge(a, b)
    if isinstance(ridge, str) or ridge < 0:
        raise UsageError(f"the ridge must be 0 or more, or 'gcv', not {ridge!r}")
    return source_mean, ridge_solve(a, b, ridge_penalty(a, float(ridge))), target_mean, float(ridge)


@register_bridge(
    "affine",
    exact_for="affine",
    exact_options={"ridge": 0.0},
    source="Maiorca et al., Latent Space Translation via Semantic Alignment, NeurIPS 2023, arXiv 2311.00664 (affine least squares); ridge as in Hoerl & Kennard 1970",
)
def fit_affine(
    data: FitData,
    *,
    ridge: float | str = 0.1,
) -> AffineMap:
    """Ridge least-squares affine map on the anchors (ridge relative to their variance, or 'gcv')."""
    source_mean, matrix, target_mean, used = affine_map(data.source_anchors, data.target_anchors, ridge)
    return AffineMap(source_mean, matrix, target_mean, {"fit": {"ridge": used}})
