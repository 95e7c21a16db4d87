"""Relative projections: each sample described by its similarity or distance to k anchors (docs/METHOD.md §2–3).

``relative_projection(x, anchors, "cosine")`` maps samples (N, D) and anchors (k, D) to (N, k). The
projections live in one registry keyed by name, so a new one is one function ``(x_block, anchors) -> (b, k)``
decorated with :func:`register_projection`; chunking, devices, dtypes, transforms and where the output goes
are handled here once for all of them.

Memory stays bounded: the samples are processed in chunks whose temporaries fit ``memory_budget`` (128 MiB
by default), no (N, k, D) tensor is ever built, and the output can go to a preallocated tensor, a numpy
array or memmap, a callable, or straight into a file (:func:`~stitchcli.relative.to_file.relative_projection_to_file`).

The built-ins' arithmetic lives beside this module: :mod:`~stitchcli.relative.euclidean` (Euclidean distances
that keep their digits) and :mod:`~stitchcli.relative.compiled_lp` (the compiled L1/L∞ kernel).
"""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Union, overload

import numpy as np
import torch

from stitchcli.errors import UsageError
from stitchcli.relative import compiled_lp, unknown_name
from stitchcli.relative.euclidean import euclidean_distances
from stitchcli.relative.transforms import Transform, fit_transform, l2_normalize_rows

DEFAULT_MEMORY_BUDGET = 128 * 2**20
"""Bytes the temporaries of one chunk may take (the output itself is not counted). 128 MiB keeps chunks of
thousands of rows (as fast as larger ones) and leaves room under the memory bound of output + 1.5 GB
(docs/PERFORMANCE.md)."""

DISTANCE_KERNELS = ("auto", "cdist", "compiled", "blocked")
"""How L1 and L∞ reduce over the latent dimension; see :func:`relative_projection`."""

KERNEL_ENVIRONMENT_VARIABLE = "STITCHCLI_DISTANCE_KERNEL"

# Below this many |z - e| terms (N·k·D), torch.cdist takes well under a second and ``auto`` does not build
# the compiled kernel (a one-off build on first use).
_COMPILE_MIN_TERMS = 10**9


ArrayLike = Union[torch.Tensor, np.ndarray]
BlockSink = Callable[[int, torch.Tensor], None]
"""Receives ``(start_row, block)`` for consecutive row blocks of the (N, k) output, in order."""
ProjectionFunction = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Projection:
    """A registered relative projection.

    Attributes:
        name: registry name (``cosine``, ``euclidean``, ``l1``, ``linf``, …).
        function: ``(x_block (b, D), anchors (k, D)) -> (b, k)``, both on one device and in one floating
            dtype; it may also accept the keyword options ``kernel`` and ``memory_budget``.
        kind: ``similarity`` (larger = closer) or ``distance`` (larger = farther).
        summary: one line for listings (the function's docstring's first line).
        options: the keyword options among ``kernel``, ``memory_budget`` and ``out`` (a (b, k) tensor to write
            into) that ``function`` accepts.
    """

    name: str
    function: ProjectionFunction
    kind: Literal["similarity", "distance"]
    summary: str
    options: frozenset[str]
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
    """Work on the anchors that does not depend on the samples, done once per relative_projection call."""
    prepared_function: Callable[..., torch.Tensor] | None = None
    """``(x_block, prepare(anchors), out=None) -> (b, k)``, writing into ``out`` (a (b, k) tensor) when given."""


_PROJECTIONS: dict[str, Projection] = {}
_OPTIONS = frozenset({"kernel", "memory_budget", "out"})


def register_projection(
    name: str,
    *,
    kind: Literal["similarity", "distance"] = "distance",
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    prepared: Callable[..., torch.Tensor] | None = None,
) -> Callable[[ProjectionFunction], ProjectionFunction]:
    """Give a decorator that registers ``function(x_block, anchors) -> (b, k)`` as projection ``name``.

    ``prepare`` and ``prepared`` (given together) let a long computation work on the anchors once:
    ``function(x, anchors)`` must equal ``prepared(x, prepare(anchors))``, and ``prepared`` also takes
    ``out=`` to write its block straight into the result.
    """
    if (prepare is None) != (prepared is None):
        raise ValueError("register_projection: give prepare and prepared together")

    def decorator(function: ProjectionFunction) -> ProjectionFunction:
        if name in _PROJECTIONS:
            raise ValueError(f"projection {name!r} is already registered")
        accepted = frozenset(inspect.signature(function).parameters) & _OPTIONS
        summary = (inspect.getdoc(function) or name).splitlines()[0]
        _PROJECTIONS[name] = Projection(name, function, kind, summary, accepted, prepare, prepared)
        return function

    return decorator


def list_projections() -> list[str]:
    """Give the registered projection names, in registration order."""
    return list(_PROJECTIONS)


def get_projection(name: str) -> Projection:
    """Give the registered projection ``name``.

    Raises:
        UsageError: no projection has that name (the one-line message lists the known names).
    """
    found = _PROJECTIONS.get(name)
    if found is None:
        raise unknown_name("projection", name, list(_PROJECTIONS))
    return found


# --------------------------------------------------------------------------------------------- built-ins


def _cosine_to_unit_anchors(x: torch.Tensor, unit_anchors: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity of the rows of ``x`` to anchors already scaled to unit norm (into ``out`` if given)."""
    if out is None:
        return l2_normalize_rows(x) @ unit_anchors.T
    return torch.mm(l2_normalize_rows(x), unit_anchors.T, out=out)


@register_projection("cosine", kind="similarity", prepare=l2_normalize_rows, prepared=_cosine_to_unit_anchors)
def cosine(x: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Cosine similarity <z, e> / (‖z‖ ‖e‖); a zero vector gives 0, never NaN."""
    return _cosine_to_unit_anchors(x, l2_normalize_rows(anchors))

@register_projection("euclidean")
def euclidean(
    x: torch.Tensor, anchors: torch.Tensor, *, memory_budget: int = DEFAULT_MEMORY_BUDGET, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Euclidean distance ‖z − e‖₂ (each entry within 1e-6 relative, 0 for a sample equal to an anchor).

    One matmul, with the pairs whose expansion loses digits recomputed from the differences; see
    :func:`~stitchcli.relative.euclidean.euclidean_distances`. ``out``: a float32 (b, k) tensor the float32
    path writes into.
    """
    return euclidean_distances(x, anchors, memory_budget=memory_budget, out=out)


def _lp_projection(name: str, p: float, summary: str) -> ProjectionFunction:
    """Give the projection function of one L^p distance, ``pairwise_lp`` with ``p`` fixed."""

    def projection(
        x: torch.Tensor,
        anchors: torch.Tensor,
        *,
        kernel: str = "cdist",
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return pairwise_lp(x, anchors, p, kernel=kernel, memory_budget=memory_budget, out=out)

    projection.__name__ = projection.__qualname__ = name
    projection.__doc__ = summary
    return projection


l1 = register_projection("l1")(_lp_projection("l1", 1, "Manhattan distance Σ_j |z_j − e_j|."))
linf = register_projection("linf")(_lp_projection("linf", float("inf"), "Chebyshev distance max_j |z_j − e_j|."))


# ------------------------------------------------------------------------------------- L1 / L∞ kernels


def pairwise_lp(
    x: torch.Tensor,
    anchors: torch.Tensor,
    p: float,
    *,
    kernel: str = "cdist",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Give the (b, k) L1 (``p=1``) or L∞ (``p=inf``) distances between rows of ``x`` and ``anchors``
    (written into ``out`` and ``out`` given back, when given).

    Kernels (none builds a (b, k, D) tensor):
        ``cdist``: ``torch.cdist``, one fused loop per pair (the portable default).
        ``compiled``: a small C loop built with the system's C compiler on first use and cached in the
            stitchcli cache folder (:mod:`~stitchcli.relative.compiled_lp`); CPU only; much faster than
            ``cdist`` on large inputs (see docs/PERFORMANCE.md).
        ``blocked``: broadcast-and-reduce in eager torch over blocks of the latent dimension, accumulating
            the sum or running maximum, each block's (b, k, d) temporary within ``memory_budget``.
    """
    if p not in (1, float("inf")):
        raise ValueError(f"pairwise_lp supports p=1 and p=inf, not {p}")
    if kernel == "compiled":
        return compiled_lp.compiled_lp(x, anchors, p, out=out)
    if kernel == "blocked":
        result = _blocked_lp(x, anchors, p, memory_budget)
    elif kernel == "cdist":
        result = torch.cdist(x, anchors, p=p)
    else:
        raise unknown_name("distance kernel", kernel, list(DISTANCE_KERNELS))
    return result if out is None else out.copy_(result)


def _blocked_lp(x: torch.Tensor, anchors: torch.Tensor, p: float, memory_budget: int) -> torch.Tensor:
    rows, dim = x.shape
    # abs_() works in place, so one (b, k, d) temporary plus the reduction's output is all a block needs.
    per_dim = 2 * rows * anchors.shape[0] * x.element_size()
    block = max(1, min(dim, memory_budget // max(1, per_dim)))
    result: torch.Tensor | None = None
    for start in range(0, max(dim, 1), block):
        diff = (x[:, None, start : start + block] - anchors[None, :, start : start + block]).abs_()
        part = diff.sum(dim=-1) if p == 1 else diff.amax(dim=-1)
        del diff
        if result is None:
            result = part
        elif p == 1:
            result.add_(part)
        else:
            torch.maximum(result, part, out=result)
    assert result is not None
    return result



def _resolve_kernel(kernel: str, projection: Projection, terms: int, device: torch.device, needs_grad: bool) -> str:
    """Give the concrete L1/L∞ kernel for a call of ``terms`` = N·k·D: ``auto`` becomes ``compiled`` or ``cdist``."""
    if kernel not in DISTANCE_KERNELS:
        raise unknown_name("distance kernel", kernel, list(DISTANCE_KERNELS))
    if kernel == "compiled" and needs_grad:
        raise UsageError(
            "the compiled distance kernel is not differentiable: use kernel='cdist' (or 'auto') with inputs that require grad"
        )
    if kernel != "auto":
        return kernel
    chosen = os.environ.get(KERNEL_ENVIRONMENT_VARIABLE, "auto") or "auto"
    if chosen not in DISTANCE_KERNELS:
        raise UsageError(
            f"${KERNEL_ENVIRONMENT_VARIABLE}={chosen!r} is not a distance kernel: "
            f"use one of {', '.join(DISTANCE_KERNELS)}"
        )
    if chosen != "auto":
        return chosen
    if (
        "kernel" in projection.options
        and device.type == "cpu"
        and not needs_grad
        and terms >= _COMPILE_MIN_TERMS
        and not compiled_lp.kernel_failed()
    ):
        return "compiled"
    return "cdist"


def _call_block(
    projection: Projection, x: torch.Tensor, anchors: torch.Tensor, kernel: str, memory_budget: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    if projection.prepared_function is not None:  # the anchors were prepared in _prepare
        return projection.prepared_function(x, anchors, out=out)
    options: dict[str, Any] = {}
    if "out" in projection.options and out is not None:
        options["out"] = out
    if "kernel" in projection.options:
        options["kernel"] = kernel
    if "memory_budget" in projection.options:
        options["memory_budget"] = memory_budget
    if kernel != "compiled" or "kernel" not in projection.options:
        return projection.function(x, anchors, **options)
    try:
        return projection.function(x, anchors, **options)
    except RuntimeError as error:
        if compiled_lp.kernel_loaded() and x.device.type == "cpu":
            raise  # the kernel is there and failed: a bug, not a missing compiler
        warnings.warn(
            f"the compiled {projection.name} kernel is not available ({error}); using torch.cdist instead "
            f"(set ${KERNEL_ENVIRONMENT_VARIABLE}=cdist to skip the attempt)",
            RuntimeWarning,
            stacklevel=4,
        )
        return projection.function(x, anchors, **{**options, "kernel": "cdist"})



# -------------------------------------------------------------------------------- the public entry point


def _as_tensor(value: ArrayLike, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value
    else:
        array = np.asarray(value)
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise UsageError(f"{what} must hold numbers, got dtype {array.dtype}")
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        with warnings.catch_warnings():
            # A read-only memmap is only ever read here, so torch's warning about writability does not apply.
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(array)
    if tensor.ndim != 2:
        raise UsageError(f"{what} must be a 2-D matrix (rows, latent dimension), got shape {tuple(tensor.shape)}")
    return tensor


def _compute_dtype(x: torch.Tensor, anchors: torch.Tensor) -> torch.dtype:
    dtype = torch.promote_types(x.dtype, anchors.dtype)
    if not dtype.is_floating_point or torch.finfo(dtype).bits < 32:
        return torch.float32
    return dtype


def chunk_rows(num_anchors: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Give how many sample rows one chunk takes so its temporaries stay within ``memory_budget`` bytes.

    Budgeted per row: a float64 copy of the row and of its (k,) block of results, twice over (the
    worst built-in, euclidean, holds about that many at once).
    """
    per_row = 8 * 2 * (num_anchors + dim)
    return max(1, memory_budget // per_row)


@dataclass(frozen=True)
class ProjectionJob:
    """One relative projection, checked and ready to run chunk by chunk (made by :func:`prepare_job`).

    ``anchors`` are on ``device`` in ``dtype``, already transformed and prepared for the projection; ``x`` is as
    given (each chunk is moved and transformed when it is computed).
    """

    projection: Projection
    x: torch.Tensor
    anchors: torch.Tensor
    transform: Transform | None
    device: torch.device
    dtype: torch.dtype
    chunk_size: int
    kernel: str
    memory_budget: int
    needs_grad: bool

    @property
    def shape(self) -> tuple[int, int]:
        """The (N, k) shape of the result."""
        return self.x.shape[0], self.anchors.shape[0]

    def blocks(self, out: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(start, block)`` over the rows of the output, one chunk at a time. With ``out`` (a result
        tensor the projection can write into: same device and dtype, contiguous), blocks are views of it."""
        for start in range(0, self.x.shape[0], self.chunk_size):
            xb = self.x[start : start + self.chunk_size].to(device=self.device, dtype=self.dtype)
            if self.transform is not None:
                xb = self.transform.apply(xb)
            dest = None if out is None else out[start : start + xb.shape[0]]
            yield start, _call_block(self.projection, xb, self.anchors, self.kernel, self.memory_budget, dest)

    def fill(self, out: torch.Tensor | np.ndarray | BlockSink) -> None:
        """Compute the job chunk by chunk into ``out`` (a tensor, a numpy array or a block sink)."""
        if isinstance(out, (torch.Tensor, np.ndarray)):
            if tuple(out.shape) != self.shape:
                raise UsageError(f"out has shape {tuple(out.shape)} but the result is {self.shape}")
        elif not callable(out):
            raise UsageError(f"out must be None, a tensor, a numpy array or a callable, not {type(out).__name__}")
        writes_into = self.projection.prepared_function is not None or "out" in self.projection.options
        direct = (
            isinstance(out, torch.Tensor) and writes_into and out.is_contiguous() and out.dtype == self.dtype
            and out.device == self.device
        )
        with torch.no_grad():
            for start, block in self.blocks(out if direct else None):
                stop = start + block.shape[0]
                if isinstance(out, torch.Tensor):
                    if not (direct and block.data_ptr() == out[start:stop].data_ptr()):  # else written in place
                        out[start:stop].copy_(block)
                elif isinstance(out, np.ndarray):
                    out[start:stop] = block.cpu().numpy()
                else:
                    out(start, block)


def prepare_job(
    x: ArrayLike,
    anchors: ArrayLike,
    projection: str,
    *,
    chunk_size: int | None,
    transform: str | Transform | None,
    device: str | torch.device | None,
    kernel: str,
    memory_budget: int,
) -> ProjectionJob:
    """Give the checked, ready-to-run job of one relative projection (what :func:`relative_projection` and
    :func:`~stitchcli.relative.to_file.relative_projection_to_file` take), anchors transformed and prepared.

    Raises:
        UsageError: as :func:`relative_projection`.
    """
    spec = get_projection(projection)
    xt = _as_tensor(x, "samples")
    at = _as_tensor(anchors, "anchors")
    if at.shape[0] == 0:
        raise UsageError("anchors are empty: a relative projection needs at least one anchor")
    if xt.shape[1] != at.shape[1]:
        raise UsageError(
            f"samples have latent dimension {xt.shape[1]} but anchors have {at.shape[1]}: "
            "anchors must be embedded by the same model as the samples"
        )
    if chunk_size is not None and chunk_size < 1:
        raise UsageError(f"chunk_size must be at least 1, got {chunk_size}")
    if memory_budget < 1:
        raise UsageError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    target = torch.device(device) if device is not None else xt.device
    dtype = _compute_dtype(xt, at)
    needs_grad = torch.is_grad_enabled() and (xt.requires_grad or at.requires_grad)
    anchors_c = at.to(device=target, dtype=dtype)
    fitted: Transform | None = None
    if transform is not None:
        fitted = fit_transform(transform, anchors_c)
        if fitted.is_identity:
            fitted = None
        else:
            anchors_c = fitted.apply(anchors_c)
    if spec.prepare is not None:
        anchors_c = spec.prepare(anchors_c)
    rows = chunk_size or chunk_rows(at.shape[0], at.shape[1], memory_budget)
    terms = xt.shape[0] * at.shape[0] * at.shape[1]
    concrete = _resolve_kernel(kernel, spec, terms, target, needs_grad)
    return ProjectionJob(spec, xt, anchors_c, fitted, target, dtype, rows, concrete, memory_budget, needs_grad)


@overload
def relative_projection(
    x: ArrayLike, anchors: ArrayLike, projection: str, *, chunk_size: int | None = ..., out: torch.Tensor | None = ...,
    transform: str | Transform | None = ..., device: str | torch.device | None = ..., kernel: str = ...,
    memory_budget: int = ...,
) -> torch.Tensor: ...
@overload
def relative_projection(
    x: ArrayLike, anchors: ArrayLike, projection: str, *, chunk_size: int | None = ..., out: np.ndarray,
    transform: str | Transform | None = ..., device: str | torch.device | None = ..., kernel: str = ...,
    memory_budget: int = ...,
) -> np.ndarray: ...
@overload
def relative_projection(
    x: ArrayLike, anchors: ArrayLike, projection: str, *, chunk_size: int | None = ..., out: BlockSink,
    transform: str | Transform | None = ..., device: str | torch.device | None = ..., kernel: str = ...,
    memory_budget: int = ...,
) -> None: ...


def relative_projection(
    x: ArrayLike,
    anchors: ArrayLike,
    projection: str,
    *,
    chunk_size: int | None = None,
    out: torch.Tensor | np.ndarray | BlockSink | None = None,
    transform: str | Transform | None = None,
    device: str | torch.device | None = None,
    kernel: str = "auto",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> torch.Tensor | np.ndarray | None:
    """Give the relative representation (N, k) of samples ``x`` (N, D) against ``anchors`` (k, D).

    Entry (i, j) is projection ``projection`` between sample i and anchor j (:func:`list_projections`:
    ``cosine``, ``euclidean``, ``l1``, ``linf``). Torch tensors and numpy arrays (memmaps too) are accepted.
    Work runs in float64 when either input is float64, else in float32, on ``device`` (default: the
    device of ``x``; anchors are moved there), one chunk of samples at a time.

    Args:
        x: samples, (N, D).
        anchors: the anchors embedded by the same model, (k, D).
        projection: a registered projection name.
        chunk_size: samples per chunk; default: as many as keep the temporaries within ``memory_budget``.
        out: where the result goes. None: a new tensor on the device of ``x``. A tensor or numpy array
            (a memmap streams to disk) of shape (N, k): filled and returned. A callable: called as
            ``out(start_row, block)`` for consecutive blocks, and None is returned.
        transform: an absolute transform fitted on the anchors and applied to samples and anchors alike
            (``none``, ``center``, ``standardize``, ``l2`` or a fitted :class:`Transform`); default none.
        device: where to compute; chunks are moved there one at a time.
        kernel: how L1 and L∞ reduce (see :func:`pairwise_lp`): ``cdist``, ``compiled`` (a C loop built
            on first use; much faster than cdist on large inputs, see docs/PERFORMANCE.md), ``blocked``, or
            ``auto`` (default): ``$STITCHCLI_DISTANCE_KERNEL`` if set, else ``compiled`` on the CPU for jobs of at least 10⁹
            terms N·k·D, else ``cdist``. Where no C compiler works, ``compiled`` warns once and uses
            ``cdist``. Ignored by cosine and euclidean.
        memory_budget: bytes the temporaries of one chunk may take (the output is not counted).

    When ``x`` or ``anchors`` requires grad, the result is differentiable (``out`` must then be None).

    Raises:
        UsageError: unknown projection, transform or kernel; shapes that do not fit.
    """
    job = prepare_job(
        x, anchors, projection, chunk_size=chunk_size, transform=transform, device=device, kernel=kernel,
        memory_budget=memory_budget,
    )
    if job.needs_grad:
        if out is not None:
            raise UsageError("out= cannot hold a differentiable result: leave out=None when inputs require grad")
        parts = [block for _, block in job.blocks()]
        k = job.anchors.shape[0]
        result = torch.cat(parts) if parts else torch.empty((0, k), dtype=job.dtype, device=job.device)
        return result.to(job.x.device)
    if out is None:
        out = torch.empty(job.shape, dtype=job.dtype, device=job.x.device)
    job.fill(out)
    return None if _is_sink(out) else out



def _is_sink(out: object) -> bool:
    return callable(out) and not isinstance(out, (torch.Tensor, np.ndarray))
