"""One shared space for N models: generalised Procrustes analysis on the anchors.

Instead of N² pairwise maps, every model i gets one map into a common space, fitted on the same anchors:
its anchors are centred, scaled to unit RMS row norm (optionally whitened), and rotated by a semi-orthogonal
R_i so that all of them agree with their mean, the consensus (Gower 1975, "Generalized Procrustes analysis",
Psychometrika 40; ten Berge 1977). Alternating "rotate every model onto the consensus" and "recompute the
consensus" lowers Σ_i |X_i R_i - M|² at every step. Encoder a feeds decoder b through the consensus:

    x -> ((x - μa) / sa) Wa Ra Rbᵀ Wb⁻¹ sb + μb      (W = I without whitening)

which is an :class:`~stitchcli.bridges.linear.AffineMap` (form ``affine``), cached and loaded like any
bridge. With two models of one size and no whitening this is exactly pairwise orthogonal Procrustes; with
whitening each model's anchors get identity covariance first (a ridge keeps it invertible), which lets the
shared space absorb per-model stretching, like generalised CCA (Kettenring 1971).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from stitchcli.bridges.linear import AffineMap, procrustes_rotation, rms_row_norm
from stitchcli.bridges.registry import BRIDGE_FORMAT, as_latents
from stitchcli.errors import UsageError


@dataclass
class SharedSpace:
    """Per-model maps into one consensus space fitted on shared anchors.

    Attributes:
        names: the models, in the order given.
        tensors: per model ``{name}.mean`` (D,), ``{name}.into`` (D, Dc) and ``{name}.back`` (Dc, D): into
            the shared space is ``(x - mean) @ into``, back out is ``z @ back + mean``.
        config: JSON-able: dims, whitening, iterations run, final residual.
    """

    names: list[str]
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]

    def _check(self, name: str) -> None:
        if name not in self.names:
            raise UsageError(f"model {name!r} is not in this shared space: it holds {', '.join(self.names)}")

    def to_shared(self, name: str, x: Any) -> torch.Tensor:
        """Give model ``name``'s latents (N, D) in the shared space (N, Dc), float64."""
        self._check(name)
        x = as_latents(x, f"{name}'s latents", dim=self.tensors[f"{name}.mean"].shape[0])
        return (x - self.tensors[f"{name}.mean"]) @ self.tensors[f"{name}.into"]

    def bridge(self, source: str, target: str) -> AffineMap:
        """Give the bridge from model ``source`` to model ``target`` through the shared space."""
        self._check(source)
        self._check(target)
        t = self.tensors
        matrix = t[f"{source}.into"] @ t[f"{target}.back"]
        config = {
            "format": BRIDGE_FORMAT,
            "bridge": "shared-procrustes",
            "form": AffineMap.form,
            "source_dim": int(matrix.shape[0]),
            "target_dim": int(matrix.shape[1]),
            "options": {"whiten": self.config["whiten"], "ridge": self.config["ridge"]},
            "seed": 0,
            "fit": {"models": list(self.names), "source": source, "target": target, **{k: self.config[k] for k in ("iterations", "residual", "anchors")}},
        }
        return AffineMap(t[f"{source}.mean"], matrix, t[f"{target}.mean"], config)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Give (tensors, JSON-able config) for safetensors + JSON; :meth:`from_state` reads them back."""
        return {k: v.contiguous() for k, v in self.tensors.items()}, {**self.config, "names": list(self.names)}

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> SharedSpace:
        """Give the shared space saved as :meth:`state`."""
        names = list(config["names"])
        missing = [f"{n}.{part}" for n in names for part in ("mean", "into", "back") if f"{n}.{part}" not in tensors]
        if missing:
            raise UsageError(f"saved shared space lacks {', '.join(missing)}: fit it again")
        return cls(names, {k: torch.as_tensor(v, dtype=torch.float64) for k, v in tensors.items()}, dict(config))


def _whitening(x: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Give (W, W⁻¹) with W = (C + ridge·mean variance·I)^(-1/2), C the covariance of the centred rows ``x``."""
    covariance = x.T @ x / len(x)
    values, vectors = torch.linalg.eigh(covariance)
    values = values.clamp_min(0) + ridge * float(values.clamp_min(0).mean())
    if float(values.min()) <= 0:
        raise UsageError("whitening needs a positive ridge when the anchors span fewer directions than the latent size")
    return (vectors * values.rsqrt()) @ vectors.T, (vectors * values.sqrt()) @ vectors.T


def fit_shared_space(
    anchors: Mapping[str, Any],
    *,
    whiten: bool = False,
    ridge: float = 0.1,
    iterations: int = 100,
    tolerance: float = 1e-10,
) -> SharedSpace:
    """Give the generalised-Procrustes shared space of N models from the same anchors embedded by each.

    Args:
        anchors: model name -> (k, D_i) its anchors, the same k rows in the same order for every model.
        whiten: whiten each model's anchors first (per-model linear stretching absorbed; needs ``ridge`` > 0
            when k <= D_i).
        ridge: relative ridge of the whitening.
        iterations: most alternations run.
        tolerance: stop when the consensus moves less than this (relative).

    Raises:
        UsageError: fewer than two models, anchors that do not pair up, bad shapes.
    """
    if len(anchors) < 2:
        raise UsageError(f"a shared space needs at least two models, got {len(anchors)}")
    data = {name: as_latents(value, f"{name}'s anchors") for name, value in anchors.items()}
    counts = {len(x) for x in data.values()}
    if len(counts) != 1 or min(counts) < 2:
        raise UsageError(f"a shared space needs the same anchors (2 or more) in every model, got {', '.join(f'{n}: {len(x)}' for n, x in data.items())}")
    means, scales, stretch, unstretch, centred = {}, {}, {}, {}, {}
    for name, x in data.items():
        means[name] = x.mean(dim=0)
        scales[name] = rms_row_norm(x - means[name])
        z = (x - means[name]) / scales[name]
        if whiten:
            stretch[name], unstretch[name] = _whitening(z, ridge)
            z = z @ stretch[name]
            z = z / rms_row_norm(z)
        centred[name] = z
    shared_dim = max(z.shape[1] for z in centred.values())
    first = max(centred, key=lambda n: centred[n].shape[1])
    consensus = torch.nn.functional.pad(centred[first], (0, shared_dim - centred[first].shape[1]))
    rotations: dict[str, torch.Tensor] = {}
    run, residual = 0, 0.0
    for run in range(1, iterations + 1):
        rotations = {name: procrustes_rotation(z, consensus) for name, z in centred.items()}
        moved = torch.stack([centred[name] @ rotations[name] for name in centred])
        updated = moved.mean(dim=0)
        residual = float(((moved - updated) ** 2).sum() / len(centred))
        change = float(((updated - consensus) ** 2).sum() / max(float((consensus**2).sum()), 1e-300))
        consensus = updated
        if change < tolerance:
            break
    tensors: dict[str, torch.Tensor] = {}
    for name in centred:
        into = rotations[name] / scales[name]
        back = rotations[name].T * scales[name]
        if whiten:
            rescale = rms_row_norm((data[name] - means[name]) / scales[name] @ stretch[name])
            into = stretch[name] @ rotations[name] / (scales[name] * rescale)
            back = rotations[name].T @ unstretch[name] * (scales[name] * rescale)
        tensors[f"{name}.mean"], tensors[f"{name}.into"], tensors[f"{name}.back"] = means[name], into, back
    config = {"whiten": whiten, "ridge": ridge, "iterations": run, "residual": round(residual, 8), "anchors": int(min(counts)), "shared_dim": shared_dim}
    return SharedSpace(list(data), tensors, config)
