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
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from stitchcli.bridges.linear import ridge_solve
from stitchcli.bridges.registry import FittedBridge, register_bridge, register_form
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


@register_bridge(
    "inverse-relative",
    exact_for="similarity",
    exact_options={"norm": "transfer", "ridge": 0.0},
    source="Maiorca et al., Latent Space Translation via Inverse Relative Projection, 2024, arXiv 2406.15057",
)
def fit_inverse_relative(
    source_anchors: torch.Tensor,
    target_anchors: torch.Tensor,
    *,
    source_rows: torch.Tensor | None = None,
    target_rows: torch.Tensor | None = None,
    seed: int = 0,
    norm: str = "mean",
    ridge: float = 1e-3,
    center: bool = True,
) -> InverseRelativeMap:
    """The encoder's cosine relative representation decoded into the decoder's space with its anchors."""
    if norm not in NORMS:
        raise UsageError(f"inverse-relative norm must be one of {', '.join(NORMS)}, not {norm!r}")
    if ridge < 0:
        raise UsageError(f"the ridge must be 0 or more, not {ridge}")
    zeros_s = torch.zeros(source_anchors.shape[1], dtype=source_anchors.dtype)
    zeros_t = torch.zeros(target_anchors.shape[1], dtype=target_anchors.dtype)
    source_mean = source_anchors.mean(dim=0) if center else zeros_s
    target_mean = target_anchors.mean(dim=0) if center else zeros_t
    source_centred, target_centred = source_anchors - source_mean, target_anchors - target_mean
    source_units, target_units = l2_normalize_rows(source_centred), l2_normalize_rows(target_centred)
    k, dt = target_units.shape
    # The decoding operator P (k, Dt): y = r @ P solves min |unit(At) y - r|² + λ|y|² for every r at once.
    # λ is relative to the mean eigenvalue of unit(At)ᵀunit(At) (whose trace is k), like the affine ridge.
    penalty = ridge * k / max(min(k, dt), 1)
    decode = ridge_solve(target_units, torch.eye(k, dtype=target_units.dtype), penalty).T
    matrix = source_units.T @ decode
    norms = torch.stack([
        torch.linalg.vector_norm(source_centred, dim=1).mean(),
        torch.linalg.vector_norm(target_centred, dim=1).mean(),
    ]).clamp_min(torch.finfo(torch.float64).tiny)
    return InverseRelativeMap(source_mean, matrix, target_mean, norms)
