"""The features heads read: a model's product space against its own anchors, and parts of it."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def product_values(latents: np.ndarray, anchors: np.ndarray, projections: Sequence[str], transform: str, device: torch.device) -> torch.Tensor:
    """Give the (N, n, k) product space of ``latents`` against the model's own ``anchors`` (on the CPU)."""
    from stitchcli.relative import relative_space

    return relative_space(torch.from_numpy(np.ascontiguousarray(latents)), torch.from_numpy(anchors), projections, transform=transform, device=device).values


def subspaces(values: torch.Tensor, projections: Sequence[str], subset: Sequence[str]) -> torch.Tensor:
    """Give the (N, len(subset), k) part of an (N, n, k) product space (a view when it is all of it)."""
    if tuple(subset) == tuple(projections):
        return values
    return values[:, [list(projections).index(name) for name in subset]]
