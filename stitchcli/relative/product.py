"""The product space: one relative subspace per projection, stacked so an aggregation reads them at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from stitchcli.errors import UsageError
from stitchcli.relative.projections import (
    DEFAULT_MEMORY_BUDGET,
    ArrayLike,
    _as_tensor,
    _compute_dtype,
    get_projection,
    list_projections,
    relative_projection,
)
from stitchcli.relative.transforms import Transform, fit_transform

DEFAULT_PROJECTIONS: tuple[str, ...] = ("cosine", "euclidean", "l1", "linf")
"""The paper's product of all four invariances."""


@dataclass(frozen=True)
class ProductSpace:
    """Relative subspaces of N samples against k anchors, one per projection.

    Attributes:
        values: (N, n, k): subspace i of sample j is ``values[j, i]``; aggregations take this tensor.
        projections: the n projection names, in the order of the subspace axis.
        transform: the absolute transform applied before projecting (``none`` when none was).
    """

    values: torch.Tensor
    projections: tuple[str, ...]
    transform: str = "none"

    def __getitem__(self, projection: str) -> torch.Tensor:
        """Give the (N, k) subspace of ``projection`` (a view of :attr:`values`)."""
        try:
            return self.values[:, self.projections.index(projection)]
        except ValueError:
            raise KeyError(f"{projection!r} is not in this product space ({', '.join(self.projections)})") from None

    @property
    def num_subspaces(self) -> int:
        """The number n of subspaces (projections)."""
        return len(self.projections)

    @property
    def num_anchors(self) -> int:
        """The number k of anchors, the size of each subspace."""
        return int(self.values.shape[-1])

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Give ``{projection: (N, k) subspace}`` in subspace order (views, no copies)."""
        return {name: self[name] for name in self.projections}


def relative_space(
    x: ArrayLike,
    anchors: ArrayLike,
    projections: Sequence[str] = DEFAULT_PROJECTIONS,
    *,
    transform: str | Transform = "none",
    chunk_size: int | None = None,
    out: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    kernel: str = "auto",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> ProductSpace:
    """Give the product space of ``x`` (N, D) against ``anchors`` (k, D): one (N, k) subspace per projection.

    The transform is fitted on the anchors once and applied to samples and anchors alike, chunk by chunk
    (the transformed samples are never held whole). Each projection is computed as
    :func:`~stitchcli.relative.projections.relative_projection` does, straight into its slot of the result.

    Args:
        x: samples, (N, D), a tensor or numpy array.
        anchors: the anchors embedded by the same model, (k, D).
        projections: registered projection names, each at most once; default all four.
        transform: ``none`` (default), ``center``, ``standardize``, ``l2`` or a fitted transform.
        chunk_size, device, kernel, memory_budget: as for ``relative_projection``.
        out: an (N, n, k) tensor to fill instead of allocating one.

    Raises:
        UsageError: no projection, a repeated or unknown name, an unknown transform, shapes that do not fit.
    """
    names = tuple(projections)
    if not names:
        raise UsageError(f"a product space needs at least one projection: use some of {', '.join(list_projections())}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"projection {', '.join(map(repr, repeated))} is listed more than once")
    for name in names:
        get_projection(name)
    xt = _as_tensor(x, "samples")
    at = _as_tensor(anchors, "anchors")
    if at.shape[0] == 0:
        raise UsageError("anchors are empty: a relative projection needs at least one anchor")
    target = torch.device(device) if device is not None else xt.device
    dtype = _compute_dtype(xt, at)
    fitted = fit_transform(transform, at.to(device=target, dtype=dtype))
    shape = (xt.shape[0], len(names), at.shape[0])
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=xt.device)
    elif tuple(out.shape) != shape:
        raise UsageError(f"out has shape {tuple(out.shape)} but the product space is {shape}")
    for index, name in enumerate(names):
        relative_projection(
            xt, at, name, chunk_size=chunk_size, out=out[:, index], transform=fitted, device=target,
            kernel=kernel, memory_budget=memory_budget,
        )
    return ProductSpace(out, names, fitted.name)
