"""One model's (or one layer's) vectors for N samples, with what the measures derive from them kept once.

A :class:`Representation` wraps an (N, d) matrix without copying it. The measures ask it for derived
quantities (``rep.cached(key, build)``): the column mean and Gram matrix, the k nearest neighbours of every
row, the top singular vectors, a Gram or distance matrix on a row subsample. Each is built on first use and
kept, so a model compared with many others (all pairs, every layer pair) is prepared once.

``rep.permuted(perm)`` is the same rows in another order, for the permutation null: its rows are gathered
block by block from the original (never copied whole), and a measure that knows how a quantity moves under
a permutation (neighbour lists: re-indexed; the mean: unchanged) derives it from the original's instead of
recomputing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar, Union

import numpy as np
import torch

from stitchcli.errors import UsageError

ArrayLike = Union[torch.Tensor, np.ndarray]
T = TypeVar("T")

DEFAULT_CHUNK_ROWS = 4096
"""Rows per block where a measure streams over the samples."""


class Representation:
    """N samples under one model (or layer) as an (N, d) matrix, and what measures derived from it.

    Args:
        matrix: (N, d) numpy array or tensor (memmaps too); read, never modified or copied whole.
        name: how errors name it (``"x"``, a model or layer name).
    """

    def __init__(self, matrix: ArrayLike, name: str = "x") -> None:
        from stitchcli.metrics import _matrix

        self.name = name
        self._matrix = _matrix(matrix, name)
        self._order: torch.Tensor | None = None
        self._origin: Representation | None = None
        self._cache: dict[Any, Any] = {}

    # ------------------------------------------------------------------------------------------ shape

    @property
    def rows(self) -> int:
        """Give N, the number of samples."""
        return int(self._matrix.shape[0])

    @property
    def dim(self) -> int:
        """Give d, the width of each vector."""
        return int(self._matrix.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """Give the dtype of the stored matrix."""
        return self._matrix.dtype

    @property
    def device(self) -> torch.device:
        """Give where the work happens: the matrix's device (the CPU for MPS, which has no float64)."""
        device = self._matrix.device
        return torch.device("cpu") if device.type == "mps" else device

    # ------------------------------------------------------------------------------------------- rows

    def block(self, rows: slice, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Give rows ``rows`` (in this representation's order) on :attr:`device`, in ``dtype`` if given."""
        if self._order is None:
            part = self._matrix[rows]
        else:
            part = self._matrix[self._order[rows].to(self._matrix.device)]
        return part.to(self.device, dtype if dtype is not None else part.dtype)

    def take(self, indices: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Give the rows at ``indices`` (in this representation's order) on :attr:`device`."""
        source = indices if self._order is None else self._order[indices]
        part = self._matrix[source.to(self._matrix.device)]
        return part.to(self.device, dtype if dtype is not None else part.dtype)

    def blocks(self, size: int = DEFAULT_CHUNK_ROWS) -> Iterator[slice]:
        """Give consecutive slices of at most ``size`` rows covering all N rows."""
        for start in range(0, self.rows, size):
            yield slice(start, min(start + size, self.rows))

    def matrix(self) -> torch.Tensor:
        """Give all rows as one tensor on :attr:`device` (a gathered copy for a permuted representation)."""
        return self.block(slice(0, self.rows))

    # ---------------------------------------------------------------------------------- permutations

    def permuted(self, perm: torch.Tensor) -> Representation:
        """Give the same samples reordered: row i of the result is row ``perm[i]`` of this one."""
        perm = torch.as_tensor(perm, dtype=torch.int64)
        if perm.shape != (self.rows,):
            raise ValueError(f"a permutation of {self.rows} rows has shape ({self.rows},), got {tuple(perm.shape)}")
        result = Representation.__new__(Representation)
        result.name = self.name
        result._matrix = self._matrix
        result._cache = {}
        perm = perm.to(self.device)
        if self._origin is None:
            result._origin, result._order = self, perm
        else:  # a permutation of a permutation is one permutation of the original
            result._origin, result._order = self._origin, self._order.to(self.device)[perm]
        return result

    @property
    def origin(self) -> tuple[Representation, torch.Tensor] | None:
        """Give (the unpermuted representation, the order) for a permuted one, None for an original."""
        return None if self._origin is None else (self._origin, self._order)

    # ----------------------------------------------------------------------------------------- cache

    def cached(self, key: Any, build: Callable[[], T]) -> T:
        """Give the quantity stored under ``key``, building and storing it on first use."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def clear(self) -> None:
        """Drop every derived quantity (what a family of measures prepared), keeping the matrix."""
        self._cache.clear()

    def __repr__(self) -> str:
        kind = "permuted " if self._origin is not None else ""
        return f"Representation({self.name!r}, {kind}{self.rows}x{self.dim}, {self.dtype})"

    @classmethod
    def derived(cls, matrix: torch.Tensor, name: str) -> Representation:
        """Wrap a matrix computed from checked representations (a centred copy), without checking it again.

        The constructor's finiteness check reads every value; the caller vouches that the matrix is finite
        (a centred copy in float32 is checked by one sum, and made in float64 when centring overflowed).
        """
        result = cls.__new__(cls)
        result.name, result._matrix = name, matrix
        result._order, result._origin, result._cache = None, None, {}
        return result

    def peek(self, key: Any) -> Any | None:
        """Give the quantity stored under ``key`` if it was built, else None (never builds it)."""
        return self._cache.get(key)


def compute_dtype(*reps: Representation) -> torch.dtype:
    """Give float64 where an input is float64 (its precision was asked for), else float32."""
    return torch.float64 if any(rep.dtype == torch.float64 for rep in reps) else torch.float32


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """Give the permutation that undoes ``perm``."""
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    return inverse


def subsample_rows(n: int, max_rows: int, seed: int) -> torch.Tensor | None:
    """Give the sorted row indices a subsampled measure uses (a seeded draw of ``max_rows``), None for all.

    The draw depends only on (n, max_rows, seed), so every model of a comparison uses the same samples.
    """
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 4:
        raise UsageError(f"max_rows must be a whole number of at least 4, got {max_rows!r}")
    if n <= max_rows:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:max_rows].sort().values


def check_whole(value: Any, name: str, low: int, high: int | None = None, why: str = "") -> None:
    """Raise a UsageError unless ``value`` is a whole number in [low, high]."""
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= low and (high is None or value <= high)
    if not ok:
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise UsageError(f"{name} must be a whole number {bound}{f' ({why})' if why else ''}, got {value!r}")
