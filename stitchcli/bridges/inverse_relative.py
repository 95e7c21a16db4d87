"""Inverse relative projection (Maiorca, Moschella, Fumero, Locatello, Rodolà 2024, arXiv 2406.15057).

The encoder's latent x is described by its cosine similarities to the encoder's anchors (the relative
representation of Moschella et al. 2023, of centred latents). That vector is then *decoded* in the decoder's
space: the direction y whose cosines to the decoder's anchors are closest to it in least squares,

    r = unit(x - μs) · unit(As)ᵀ                   (k cosines)
    y = argmin_y |unit(At) y - r|² + λ|y|²          (a fixed (k, Dt) operator applied to r)

and y is given a norm and the decoder's anchor mean back. Both steps are linear in unit(x - μs), so the whole
bridge is ``unit(x - μs) @ M``, M = unit(As)ᵀ P (Ds × Dt), then the norm and the shift. The paper gives every
output the decoder anchors' mean norm (its decoders are nearly scale-invariant, ``norm="mean"``);
``norm="transfer"`` keeps the encoder's norm relative to its anchors instead, which makes the bridge exact for
x -> s·xQ + t. Only the anchors are used, and each model's side could be computed without the other's.

The least-squares decoding amplifies whatever of r the decoder's anchors do not explain, so it needs a
ridge well above "numerical": on MNIST (EfficientNet-Lite2 -> Lite0) a relative ridge of 1e-3 stitched at
29–42%, 10–30 at 77–79% (docs/BRIDGES.md). ``ridge="cv"`` (the default) picks it from :data:`RIDGE_GRID` by
how close in angle the decoded held-out anchors come to the decoder's own (3 folds of the anchors).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from stitchcli.bridges.registry import FitData, FittedBridge, register_bridge, register_form
from stitchcli.errors import UsageError
from stitchcli.relative.transforms import l2_normalize_rows

NORMS = ("mean", "transfer")


@register_form
class InverseRelativeMap(FittedBridge):
    """``x -> unit(unit(x - source_mean) @ matrix) · norm(x) + target_mean``.

    ``norm(x)`` is ``target_norm`` (``norm="mean"``) or ``|x - source_mean| · target_norm / source_norm``
    (``norm="transfer"``), with ``source_norm`` and ``target_norm`` the anchors' mean centred norms.
    """

    form = "inverse-relative"

    def __init__(self, source_mean: torch.Tensor, matrix: torch.Tensor, target_mean: torch.Tensor, norms: torch.Tensor, config: dict[str, Any] | None = None) -> None:
        super().__init__(config or {})
        self.source_mean, self.matrix, self.target_mean, self.norms = (t.contiguous() for t in (source_mean, matrix, target_mean, norms))

    @property
    def transfer(self) -> bool:
        """Whether the encoder's relative norm is carried over (else every output gets the mean norm)."""
        return (self.config.get("options") or {}).get("norm", "mean") == "transfer"

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - self.source_mean.to(x.device)
        direction = l2_normalize_rows(l2_normalize_rows(centred) @ self.matrix.to(x.device))
        source_norm, target_norm = float(self.norms[0]), float(self.norms[1])
        if self.transfer:
            scale = torch.linalg.vector_norm(centred, dim=1, keepdim=True) * (target_norm / source_norm)
        else:
            scale = torch.full((len(x), 1), target_norm, dtype=x.dtype, device=x.device)
        return direction * scale + self.target_mean.to(x.device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Give source_mean, matrix, target_mean and norms (the source and target anchors' mean norms)."""
        return {"source_mean": self.source_mean, "matrix": self.matrix, "target_mean": self.target_mean, "norms": self.norms}

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], config: dict[str, Any]) -> InverseRelativeMap:
        """Give the map stored as (tensors, config)."""
        return cls(tensors["source_mean"], tensors["matrix"], tensors["target_mean"], tensors["norms"], config)


RIDGE_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0)
"""Relative ridges ``ridge="cv"`` chooses from."""


def _decoder_side(target_anchors: torch.Tensor, center: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Give (the decoder anchors' mean, its centred anchors as unit rows)."""
    mean = target_anchors.mean(dim=0) if center else torch.zeros(target_anchors.shape[1], dtype=target_anchors.dtype)
    return mean, l2_normalize_rows(target_anchors - mean)


def _decode_operators(target_units: torch.Tensor, ridges: list[float]) -> list[torch.Tensor]:
    """Give, per relative ridge, the (k, Dt) operator P with r @ P = argmin_y |unit(At) y - r|² + λ|y|².

    One eigendecomposition of the k×k Gram matrix G serves every ridge: P = (G + λI)⁻¹ unit(At). λ is
    relative to the mean non-zero eigenvalue of G (whose trace is k), like the affine ridge.
    """
    k, dt = target_units.shape
    values, vectors = torch.linalg.eigh(target_units @ target_units.T)
    values = values.clamp_min(0)
    projected = vectors.T @ target_units
    scale = k / max(min(k, dt), 1)
    out = []
    for ridge in ridges:
        if ridge == 0:  # the pseudo-inverse: least squares, minimum norm where it is underdetermined
            out.append(torch.linalg.pinv(target_units).T)
        else:
            out.append(vectors @ (projected / (values + ridge * scale)[:, None]))
    return out


def cross_validated_ridge(source_units: torch.Tensor, target_anchors: torch.Tensor, center: bool, *, folds: int = 3, seed: int = 0) -> tuple[float, list[float]]:
    """Give (the ridge of :data:`RIDGE_GRID` whose decoded held-out anchors are closest in angle to the decoder's own, every mean cosine).

    The anchors are split into seeded folds; for each, the decoding operator is built from the other folds'
    decoder anchors and applied to the held-out anchors' relative representations against the other folds'
    encoder anchors. Anchors only, no labels. Every ridge reuses one eigendecomposition per fold.
    """
    k, dt = len(source_units), target_anchors.shape[1]
    folds = max(2, min(folds, k // 2))
    order = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    totals = [0.0] * len(RIDGE_GRID)
    for held in order.tensor_split(folds):
        fit = torch.ones(k, dtype=torch.bool)
        fit[held] = False
        mean, target_units = _decoder_side(target_anchors[fit], center)
        held_target = l2_normalize_rows(target_anchors[held] - mean)
        values, vectors = torch.linalg.eigh(target_units @ target_units.T)
        values = values.clamp_min(0)
        # decoded = relative @ V diag(1/(λ + values)) Vᵀ unit(At): the two outer products once, the middle per ridge
        left = (source_units[held] @ source_units[fit].T) @ vectors
        right = vectors.T @ target_units
        scale = len(target_units) / max(min(len(target_units), dt), 1)
        for index, ridge in enumerate(RIDGE_GRID):
            decoded = (left / (values + ridge * scale)) @ right
            totals[index] += float((l2_normalize_rows(decoded) * held_target).sum())
    scores = [total / k for total in totals]
    return RIDGE_GRID[max(range(len(scores)), key=scores.__getitem__)], scores


@register_bridge(
    "inverse-relative",
    exact_for="similarity",
    exact_options={"norm": "transfer", "ridge": 0.0},
    source="Maiorca et al., Latent Space Translation via Inverse Relative Projection, 2024, arXiv 2406.15057",
)
def fit_inverse_relative(
    data: FitData,
    *,
    norm: str = "mean",
    ridge: float | str = "cv",
    center: bool = True,
) -> InverseRelativeMap:
    """The encoder's cosine relative representation decoded into the decoder's space with its anchors."""
    source_anchors, target_anchors = data.source_anchors, data.target_anchors
    if norm not in NORMS:
        raise UsageError(f"inverse-relative norm must be one of {', '.join(NORMS)}, not {norm!r}")
    if ridge != "cv" and (isinstance(ridge, str) or ridge < 0):
        raise UsageError(f"the ridge must be 0 or more, or 'cv', not {ridge!r}")
    source_mean = source_anchors.mean(dim=0) if center else torch.zeros(source_anchors.shape[1], dtype=source_anchors.dtype)
    source_centred = source_anchors - source_mean
    source_units = l2_normalize_rows(source_centred)
    target_mean, target_units = _decoder_side(target_anchors, center)
    record: dict[str, object] = {}
    if ridge == "cv":
        ridge, scores = cross_validated_ridge(source_units, target_anchors, center, seed=data.seed)
        record = {"ridge": ridge, "held_out_cosine": [round(s, 4) for s in scores]}
    matrix = source_units.T @ _decode_operators(target_units, [float(ridge)])[0]
    norms = torch.stack([
        torch.linalg.vector_norm(source_centred, dim=1).mean(),
        torch.linalg.vector_norm(target_anchors - target_mean, dim=1).mean(),
    ]).clamp_min(torch.finfo(torch.float64).tiny)
    return InverseRelativeMap(source_mean, matrix, target_mean, norms, {"fit": record})
