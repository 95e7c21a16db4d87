"""Latent translations: maps from one model's latent space into another's, fitted on the shared anchors alone.

The baselines of docs/METHOD.md §5 (Maiorca et al., NeurIPS 2023, "Latent Space Translation via Semantic
Alignment"): ``translation`` is an orthogonal Procrustes map after centring and scaling, ``affine`` a
ridge-regularised least-squares affine map. The decoder's absolute head reads the mapped latents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stitchcli.errors import UsageError


@dataclass
class LatentTranslation:
    """An orthogonal Procrustes map from a source latent space to a target one, fitted on anchors alone.

    ``x -> ((x - source_mean) / source_scale) @ rotation * target_scale + target_mean``: both anchor sets
    are centred and scaled to unit mean row norm, and ``rotation`` (source dim × target dim) minimises the
    Frobenius distance between them (Maiorca et al., NeurIPS 2023). Different dimensions are handled as
    zero-padding the smaller space. With fewer anchors than dimensions only the directions the anchors span
    are determined; the map is kept to those (the rest maps to the target's anchor mean), rather than
    completed with an arbitrary rotation.
    """

    source_mean: np.ndarray
    source_scale: float
    target_mean: np.ndarray
    target_scale: float
    rotation: np.ndarray

    @classmethod
    def fit(cls, source_anchors: np.ndarray, target_anchors: np.ndarray) -> LatentTranslation:
        """Give the map fitted on the same anchors embedded by the source and the target model (float64)."""
        source, target = _paired_anchors(source_anchors, target_anchors)
        source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
        xs, xt = source - source_mean, target - target_mean
        source_scale = _mean_row_norm(xs)
        target_scale = _mean_row_norm(xt)
        u, singular, vt = np.linalg.svd((xs / source_scale).T @ (xt / target_scale), full_matrices=False)
        # With fewer anchors than dimensions the cross-covariance is rank-deficient and the singular vectors
        # of its zero singular values are arbitrary: keep the map on the part the anchors determine.
        rank = int((singular > singular.max(initial=0.0) * max(u.shape[0], vt.shape[1]) * np.finfo(np.float64).eps).sum())
        return cls(source_mean, source_scale, target_mean, target_scale, u[:, :rank] @ vt[:rank])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Give ``x`` (N, source dim) mapped into the target space, float32."""
        mapped = ((np.asarray(x, dtype=np.float64) - self.source_mean) / self.source_scale) @ self.rotation
        return (mapped * self.target_scale + self.target_mean).astype(np.float32)


@dataclass
class AffineTranslation:
    """A ridge-regularised affine map from a source latent space to a target one, fitted on anchors alone.

    ``x -> (x - source_mean) @ matrix + target_mean``, where ``matrix`` minimises
    ``|A W - B|² + ridge · k · v · |W|²`` over the centred anchors ``A`` (source) and ``B`` (target), ``k``
    anchors, ``v`` the source anchors' mean variance per dimension (so ``ridge`` does not depend on the
    scale of the latents or the number of anchors). Unlike :class:`LatentTranslation` it may stretch and
    shear: two architectures trained apart are rarely isometric. On the offline demo's EfficientNet-Lite
    pair it closes most of the gap the orthogonal map leaves (docs/RESULTS.md).
    """

    source_mean: np.ndarray
    target_mean: np.ndarray
    matrix: np.ndarray

    @classmethod
    def fit(cls, source_anchors: np.ndarray, target_anchors: np.ndarray, ridge: float) -> AffineTranslation:
        """Give the map fitted on the same anchors embedded by the source and the target model (float64)."""
        source, target = _paired_anchors(source_anchors, target_anchors)
        source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
        a, b = source - source_mean, target - target_mean
        k, d = a.shape
        penalty = ridge * k * max(float((a**2).sum()) / (k * d), np.finfo(np.float64).tiny)
        if k >= d:  # the d x d normal equations
            matrix = np.linalg.solve(a.T @ a + penalty * np.eye(d), a.T @ b)
        else:  # the same solution through the k x k kernel form
            matrix = a.T @ np.linalg.solve(a @ a.T + penalty * np.eye(k), b)
        return cls(source_mean, target_mean, matrix)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Give ``x`` (N, source dim) mapped into the target space, float32."""
        return ((np.asarray(x, dtype=np.float64) - self.source_mean) @ self.matrix + self.target_mean).astype(np.float32)


def _paired_anchors(source_anchors: np.ndarray, target_anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give both anchor sets as float64 after checking that they are the same rows (UsageError otherwise)."""
    source = np.asarray(source_anchors, dtype=np.float64)
    target = np.asarray(target_anchors, dtype=np.float64)
    if source.shape[0] != target.shape[0] or source.ndim != 2 or target.ndim != 2:
        raise UsageError(f"a translation needs the same anchors in both spaces, got {source.shape} and {target.shape}")
    return source, target


def _mean_row_norm(x: np.ndarray) -> float:
    norm = float(np.sqrt((x**2).sum() / max(len(x), 1)))
    return norm if norm > 0 else 1.0
