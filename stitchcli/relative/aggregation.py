"""Aggregations φ of the product space (docs/METHOD.md §3), as torch modules trained with the decoder's head.

Every aggregation first passes each relative subspace through its own LayerNorm over the anchor axis
(normalized_shape = k), which puts similarities and distances on one footing and cancels a global rescaling
of the latents, then combines the n normalised subspaces:

    concat          [s_1, …, s_n]                                   output n·k
    sum             Σ_i s_i                                          output k
    mlp-sum         Σ_i tanh(W_i s_i + b_i), one k×k Linear each     output k
    self-attention  one-head self-attention over the n tokens s_i,   output k
                    then the sum over tokens

``forward`` takes one tensor of shape (N, n, k), subspace i of sample j at ``[j, i]``: the layout of
:attr:`stitchcli.relative.ProductSpace.values`, and what a DataLoader batches without a custom collate.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from stitchcli.errors import UsageError
from stitchcli.registry import Registry

DEFAULT_LAYER_NORM_EPS = 1e-5
"""torch's LayerNorm default. LayerNorm(s·v) = LayerNorm(v) holds exactly with eps = 0 and up to a relative
change of about eps / var(v) otherwise; pass a smaller ``layer_norm_eps`` where that matters."""


class Aggregation(nn.Module):
    """Base of the aggregations: one LayerNorm per subspace, then :meth:`combine`.

    Attributes:
        num_subspaces: n, the number of relative subspaces (projections).
        num_anchors: k, the size of each subspace.
        output_size: the size of the aggregated vector.
        subspace_norms: the n LayerNorms, in subspace order.
    """

    def __init__(self, num_subspaces: int, num_anchors: int, *, layer_norm_eps: float = DEFAULT_LAYER_NORM_EPS) -> None:
        super().__init__()
        if num_subspaces < 1 or num_anchors < 1:
            raise UsageError(
                f"an aggregation needs at least one subspace and one anchor, got {num_subspaces} and {num_anchors}"
            )
        self.num_subspaces = num_subspaces
        self.num_anchors = num_anchors
        self.subspace_norms = nn.ModuleList(nn.LayerNorm(num_anchors, eps=layer_norm_eps) for _ in range(num_subspaces))

    @property
    def output_size(self) -> int:
        """The size of the aggregated vector (k unless the aggregation says otherwise)."""
        return self.num_anchors

    def normalize(self, subspaces: torch.Tensor) -> torch.Tensor:
        """Give the (N, n, k) subspaces, each through its own LayerNorm."""
        expected = (self.num_subspaces, self.num_anchors)
        if subspaces.ndim != 3 or tuple(subspaces.shape[1:]) != expected:
            raise ValueError(f"expected subspaces of shape (N, {expected[0]}, {expected[1]}), got {tuple(subspaces.shape)}")
        return torch.stack([norm(subspaces[:, i]) for i, norm in enumerate(self.subspace_norms)], dim=1)

    def combine(self, normalized: torch.Tensor) -> torch.Tensor:
        """Give the aggregated (N, output_size) vectors from the normalised (N, n, k) subspaces."""
        raise NotImplementedError

    def forward(self, subspaces: torch.Tensor) -> torch.Tensor:
        """Give the aggregated (N, output_size) representation of the (N, n, k) subspaces."""
        return self.combine(self.normalize(subspaces))


_AGGREGATIONS: Registry[type[Aggregation]] = Registry("aggregation")


def register_aggregation(name: str) -> Callable[[type[Aggregation]], type[Aggregation]]:
    """Give a decorator that registers an :class:`Aggregation` subclass under ``name``."""
    return _AGGREGATIONS.register(name)


def list_aggregations() -> list[str]:
    """Give the registered aggregation names, in registration order."""
    return _AGGREGATIONS.names()


def build_aggregation(
    name: str, num_subspaces: int, num_anchors: int, *, layer_norm_eps: float = DEFAULT_LAYER_NORM_EPS
) -> Aggregation:
    """Give a new aggregation module ``name`` over ``num_subspaces`` subspaces of ``num_anchors`` values.

    Raises:
        UsageError: ``name`` is not a registered aggregation (the message lists the known ones).
    """
    cls = _AGGREGATIONS.get(name)
    return cls(num_subspaces, num_anchors, layer_norm_eps=layer_norm_eps)


@register_aggregation("concat")
class Concat(Aggregation):
    """[s_1, …, s_n]: the normalised subspaces side by side (n·k values; only the LayerNorms learn)."""

    @property
    def output_size(self) -> int:
        """n·k."""
        return self.num_subspaces * self.num_anchors

    def combine(self, normalized: torch.Tensor) -> torch.Tensor:
        """Give the (N, n·k) concatenation, subspace 1 first."""
        return normalized.flatten(start_dim=1)


@register_aggregation("sum")
class Sum(Aggregation):
    """Σ_i s_i: the normalised subspaces added (k values; only the LayerNorms learn)."""

    def combine(self, normalized: torch.Tensor) -> torch.Tensor:
        """Give the (N, k) sum over subspaces."""
        return normalized.sum(dim=1)


@register_aggregation("mlp-sum")
class MLPSum(Aggregation):
    """Σ_i tanh(W_i s_i + b_i) with one k×k Linear per subspace (the paper's strongest aggregation)."""

    def __init__(self, num_subspaces: int, num_anchors: int, *, layer_norm_eps: float = DEFAULT_LAYER_NORM_EPS) -> None:
        super().__init__(num_subspaces, num_anchors, layer_norm_eps=layer_norm_eps)
        self.subspace_maps = nn.ModuleList(nn.Linear(num_anchors, num_anchors) for _ in range(num_subspaces))

    def combine(self, normalized: torch.Tensor) -> torch.Tensor:
        """Give the (N, k) sum of the per-subspace tanh(Linear) maps."""
        return sum(torch.tanh(linear(normalized[:, i])) for i, linear in enumerate(self.subspace_maps))


@register_aggregation("self-attention")
class SelfAttention(Aggregation):
    """One-head self-attention over the n subspace tokens (each of size k), then the sum over tokens."""

    def __init__(self, num_subspaces: int, num_anchors: int, *, layer_norm_eps: float = DEFAULT_LAYER_NORM_EPS) -> None:
        super().__init__(num_subspaces, num_anchors, layer_norm_eps=layer_norm_eps)
        self.attention = nn.MultiheadAttention(num_anchors, num_heads=1, batch_first=True)

    def combine(self, normalized: torch.Tensor) -> torch.Tensor:
        """Give the (N, k) sum over tokens of the attended tokens."""
        attended, _ = self.attention(normalized, normalized, normalized, need_weights=False)
        return attended.sum(dim=1)
