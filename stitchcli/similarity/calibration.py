"""Calibration of a similarity score against a permutation null.

A score alone does not say how alike two representations are: CKA, SVCCA and the k-NN overlaps take
sizeable values between representations that share nothing but their width, depth or the data's marginal
statistics, and those chance levels differ between measures and between model pairs (Gröger, Wen and Brbić,
"Revisiting the Platonic Representation Hypothesis: An Aristotelian View", 2026, arXiv 2602.14486). The null
here breaks the correspondence of samples: the rows of y are shuffled (seeded), the measure is recomputed,
and this is repeated ``permutations`` times, giving a null mean μ₀ and standard deviation σ₀ (ddof 0).

The calibrated value is chance-corrected like the adjusted Rand index (their "ARI-style" variant):

    calibrated = (value - μ₀) / (identical - μ₀)

where ``identical`` is the measure's value for a representation against itself (1 for a similarity, 0 for
the Procrustes distance, so the sign comes out right for a distance too). It reads the same way for every
measure: 1 = as alike as identical representations, 0 = as alike as misaligned ones (a row-permuted copy
scores about 0), negative = less alike than chance. We use it rather than their default, which gates the
score at the null's 95% quantile, because it keeps the sign and the size of a small effect, and because the
rows of ``stitchcli similarity`` report μ₀ and σ₀ beside it. The z-score (value - μ₀) / σ₀ (signed so that
positive means more alike than chance) and an add-one permutation p-value are given too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from stitchcli.similarity.registry import Measure, check_rows, get_measure
from stitchcli.similarity.representation import ArrayLike, Representation, check_whole


@dataclass(frozen=True)
class Calibrated:
    """A score with its permutation null.

    Attributes:
        value: the measure on the aligned rows.
        null_mean: μ₀, the mean of the measure over the permutations.
        null_std: σ₀, their standard deviation (ddof 0).
        calibrated: (value - μ₀) / (identical - μ₀); NaN if μ₀ equals the identical value.
        z_score: (value - μ₀) / σ₀, positive when more alike than chance; NaN if σ₀ is 0.
        p_value: (1 + the permutations at least as alike as the value) / (1 + their number).
        permutations: how many permutations the null holds.
    """

    value: float
    null_mean: float
    null_std: float
    calibrated: float
    z_score: float
    p_value: float
    permutations: int

    def to_dict(self) -> dict[str, Any]:
        """Give the fields as a JSON-ready dict (NaN as None)."""
        return {key: (None if isinstance(value, float) and math.isnan(value) else value) for key, value in asdict(self).items()}


def calibrate(value: float, null: Sequence[float], measure: str | Measure) -> Calibrated:
    """Give ``value`` calibrated against the null values ``null`` of ``measure`` (see the module docstring)."""
    found = measure if isinstance(measure, Measure) else get_measure(measure)
    draws = torch.tensor([float(v) for v in null], dtype=torch.float64)
    draws = draws[~draws.isnan()]
    if draws.numel() == 0 or math.isnan(value):
        nan = float("nan")
        return Calibrated(value, nan, nan, nan, nan, nan, int(draws.numel()))
    mean = float(draws.mean())
    std = float(draws.std(correction=0))
    direction = 1.0 if found.higher_is_more_alike else -1.0
    span = found.identical - mean
    calibrated = (value - mean) / span if span != 0 else float("nan")
    z_score = direction * (value - mean) / std if std > 0 else float("nan")
    as_alike = int((direction * draws >= direction * value).sum())
    p_value = (1 + as_alike) / (1 + draws.numel())
    return Calibrated(value, mean, std, calibrated, z_score, p_value, int(draws.numel()))


def permutations(rows: int, count: int, seed: int = 0) -> list[torch.Tensor]:
    """Give ``count`` seeded random permutations of ``rows`` rows (the same for every pair of a run)."""
    check_whole(count, "the number of permutations", 0)
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(rows, generator=generator) for _ in range(count)]


def permutation_null(
    x: ArrayLike | Representation,
    y: ArrayLike | Representation,
    measure: str | Measure,
    *,
    permutations_count: int = 100,
    seed: int = 0,
    **options: Any,
) -> Calibrated:
    """Give the measure between x and y calibrated against ``permutations_count`` row permutations of y.

    Each representation is prepared once: the k-NN measures and the subsample measures on all rows re-index
    what they prepared instead of recomputing it, so their null costs little beyond the score itself.

    Args:
        x: first representation (N, p), or a prepared Representation.
        y: second representation (N, q); its rows are permuted.
        measure: a registered name or Measure.
        permutations_count: null draws (at least 1).
        seed: seeds the permutations.
        **options: the measure's options (e.g. ``k=10``).
    """
    found = measure if isinstance(measure, Measure) else get_measure(measure)
    check_whole(permutations_count, "permutations_count", 1)
    chosen = found.resolve_options(options)
    rx = x if isinstance(x, Representation) else Representation(x, "x")
    ry = y if isinstance(y, Representation) else Representation(y, "y")
    check_rows(rx, ry)
    value = found.compare(rx, ry, {}, **chosen)
    null = [found.compare(rx, ry.permuted(perm), {}, **chosen) for perm in permutations(ry.rows, permutations_count, seed)]
    return calibrate(value, null, found)
