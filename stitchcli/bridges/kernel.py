"""A nonlinear bridge fitted on the anchors: kernel ridge regression with a linear plus Gaussian kernel.

    f(x) = Σ_i α_i [ <x̃, ã_i> + w · exp(-γ |x̃ - ã_i|²) ] + μt,     α = (K + λI)⁻¹ (B - μt)

x̃ is the encoder latent centred on its anchor mean and scaled to unit RMS anchor norm, ã_i the anchors
alike, B the decoder's anchors. The linear kernel alone (w = 0) is the ridge affine map in its kernel form;
the Gaussian part adds a smooth nonlinear correction that the anchors can pin down (Schölkopf & Smola 2002,
"Learning with Kernels"; as a latent-translation estimator, the nonlinear maps of Lähner & Moeller 2024,
"On the direct alignment of latent spaces", arXiv 2401.06244, whose MLPs need far more anchors than here).
The weight w is chosen by generalised cross-validation on the anchors (one eigendecomposition of the k×k
kernel per weight), γ by the median heuristic; the ridge λ is the affine bridge's (relative 0.1 by default:
GCV, which minimises the squared error in latent space, chose far smaller ridges that stitched worse on
MNIST, docs/BRIDGES.md), so that w = 0 is exactly the `affine` bridge. A small residual MLP with early
stopping on held-out anchors was measured against it and lost (docs/BRIDGES.md), so it is not a bridge.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from stitchcli.bridges.linear import RIDGE_GRID, rms_row_norm
from stitchcli.bridges.registry import FitData, FittedBridge, register_bridge, register_form
from stitchcli.errors import UsageError

RBF_WEIGHTS: tuple[float, ...] = (0.0, 0.3, 1.0, 3.0)
"""Weights of the Gaussian kernel against the linear one that ``rbf_weight="gcv"`` chooses from (both
kernels have trace k on the scaled anchors, so the weight is relative)."""


@register_form
class KernelMap(FittedBridge):
    """``x -> x̃ @ linear + exp(-γ|x̃ - ã|²) @ weights + target_mean``, x̃ = (x - source_mean) / source_scale."""

    form = "kernel"

    def __init__(self, tensors: Mapping[str, torch.Tensor], config: dict[str, Any] | None = None) -> None:
        super().__init__(config or {})
        self._tensors = {name: value.contiguous() for name, value in tensors.items()}

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        t = {name: value.to(x.device) for name, value in self._tensors.items()}
        scaled = (x - t["source_mean"]) / t["source_scale"]
        out = scaled @ t["linear"] + t["target_mean"]
        if t["weights"].abs().max() > 0:
            for start in range(0, len(x), 4096):  # bounded (rows × anchors) temporaries
                block = scaled[start : start + 4096]
                gram = torch.exp(-t["gamma"] * torch.cdist(block, t["anchors"]) ** 2)
                out[start : start + 4096] += gram @ t["weights"]
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """Give source_mean, source_scale, anchors (scaled), gamma, linear, weights and target_mean."""
        return dict(self._tensors)

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], config: dict[str, Any]) -> KernelMap:
        """Give the map stored as (tensors, config)."""
        missing = {"source_mean", "source_scale", "anchors", "gamma", "linear", "weights", "target_mean"} - set(tensors)
        if missing:
            raise ValueError(f"missing tensors {', '.join(sorted(missing))}")
        return cls(tensors, config)


def gaussian_gram(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """Give exp(-γ |x_i - x_j|²) for all pairs of rows of ``x``."""
    return torch.exp(-gamma * torch.cdist(x, x) ** 2)


def median_gamma(x: torch.Tensor, bandwidth: float) -> float:
    """Give γ = 1 / (2 (bandwidth · median pairwise distance)²), the median heuristic."""
    distances = torch.pdist(x)
    median = float(distances.median()) if len(distances) else 1.0
    return 1.0 / (2.0 * (bandwidth * (median if median > 0 else 1.0)) ** 2)


def kernel_gcv(kernel: torch.Tensor, b: torch.Tensor, penalties: Sequence[float]) -> list[tuple[float, float]]:
    """Give (GCV error, penalty) for each absolute ridge penalty: kernel ridge's leave-one-out error estimate from one eigh."""
    k = kernel.shape[0]
    values, vectors = torch.linalg.eigh(kernel)
    values = values.clamp_min(0)
    vb = vectors.T @ b
    out = []
    for penalty in penalties:
        shrink = values / (values + penalty)
        residual = float((((1 - shrink)[:, None] * vb) ** 2).sum())
        out.append((residual * k / max(k - float(shrink.sum()), 1e-12) ** 2, float(penalty)))
    return out


@register_bridge(
    "kernel",
    exact_for="affine",
    exact_options={"rbf_weight": 0.0, "ridge": 1e-10},
    source="kernel ridge regression (Schölkopf & Smola 2002) with GCV (Golub, Heath & Wahba 1979); nonlinear latent maps as in Lähner & Moeller 2024, arXiv 2401.06244",
)
def fit_kernel(
    data: FitData,
    *,
    rbf_weight: float | str = "gcv",
    ridge: float | str = 0.1,
    bandwidth: float = 1.0,
) -> KernelMap:
    """Kernel ridge regression (linear + Gaussian kernel) on the anchors, the Gaussian's weight by GCV."""
    source_anchors, target_anchors = data.source_anchors, data.target_anchors
    for name, value in (("rbf_weight", rbf_weight), ("ridge", ridge)):
        if value != "gcv" and (isinstance(value, str) or value < 0):
            raise UsageError(f"kernel {name} must be 0 or more, or 'gcv', not {value!r}")
    if bandwidth <= 0:
        raise UsageError(f"kernel bandwidth must be positive, not {bandwidth}")
    source_mean, target_mean = source_anchors.mean(dim=0), target_anchors.mean(dim=0)
    source_scale = rms_row_norm(source_anchors - source_mean)
    anchors = (source_anchors - source_mean) / source_scale
    b = target_anchors - target_mean
    k, d = anchors.shape
    gamma = median_gamma(anchors, bandwidth)
    linear_gram = anchors @ anchors.T
    rbf_gram = gaussian_gram(anchors, gamma)
    weights = RBF_WEIGHTS if rbf_weight == "gcv" else (float(rbf_weight),)
    ridges = RIDGE_GRID if ridge == "gcv" else (float(ridge),)

    # The penalty of the affine bridge (ridge · k · mean variance per dimension, = ridge · k / d on the scaled
    # anchors), grown with the kernel's trace: with w = 0 this is `affine` with the same ridge, in kernel form.
    def penalty(relative: float, weight: float) -> float:
        return relative * k / d * (1.0 + weight)

    if len(weights) == 1 and len(ridges) == 1:
        best = (0.0, ridges[0], weights[0])
    else:
        best = min(
            (score, relative, w)
            for w in weights
            for (score, _), relative in zip(kernel_gcv(linear_gram + w * rbf_gram, b, [penalty(r, w) for r in ridges]), ridges)
        )
    _, chosen_ridge, chosen_weight = best
    gram = linear_gram + chosen_weight * rbf_gram
    alpha = torch.linalg.solve(gram + penalty(chosen_ridge, chosen_weight) * torch.eye(k, dtype=gram.dtype), b)
    tensors = {
        "source_mean": source_mean,
        "source_scale": torch.tensor(source_scale, dtype=torch.float64),
        "anchors": anchors,
        "gamma": torch.tensor(gamma, dtype=torch.float64),
        "linear": anchors.T @ alpha,
        "weights": chosen_weight * alpha,
        "target_mean": target_mean,
    }
    return KernelMap(tensors, {"fit": {"ridge": chosen_ridge, "rbf_weight": chosen_weight, "gamma": gamma}})
