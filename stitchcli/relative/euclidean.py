"""Euclidean distances that keep their digits: one matmul, with the pairs it would get wrong recomputed.

The matmul expansion ‖z‖² + ‖e‖² − 2<z, e> is fast but loses digits where a sample is close to an anchor
relative to their norms; :func:`euclidean_distances` finds those pairs and recomputes them from the
differences, so every entry is accurate, near-duplicates included (docs/METHOD.md §2).
"""

from __future__ import annotations

import torch

# The matmul expansion ‖x‖² + ‖e‖² − 2<x, e> (after centring) is off by a few units of rounding
# times ‖x‖² + ‖e‖², so an entry whose squared distance is a fraction r of ‖x‖² + ‖e‖² is off by about that
# many units / (2r), relatively. Entries below these fractions are recomputed from the differences: 1e-4
# with a float64 matmul (error ~1e-12 relative above it), 0.3 with a float32 one, whose error is about
# 7 units of 6e-8 (measured for D = 16…4096) / (2r): under 1e-6 relative above 0.3.
_EUCLIDEAN_RECOMPUTE_BELOW = 1e-4
_EUCLIDEAN_RECOMPUTE_BELOW_FLOAT32 = 0.3
# A row with more than this share of its anchors to recompute redoes its matmul in float64 instead:
# recomputing one pair from its differences costs many times one entry of a matmul.
_EUCLIDEAN_FLOAT64_ROW_SHARE = 1 / 32
_EUCLIDEAN_BLOCK_ROWS = 512


def euclidean_distances(
    x: torch.Tensor, anchors: torch.Tensor, *, memory_budget: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Give the (b, k) Euclidean distances ‖z − e‖₂ of the rows of ``x`` to the anchors, each within 1e-6
    relative (0 for a sample equal to an anchor).

    Computed as ‖z‖² + ‖e‖² − 2<z, e> with one matmul, both sides first centred on the anchor mean
    (distances do not change, and data far from the origin keeps its digits). float32 inputs use a float32
    matmul; the pairs where its expansion loses digits, those whose squared distance is under 0.3 of
    ‖z‖² + ‖e‖², are recomputed from the differences (rows with many such pairs redo their matmul in
    float64 instead), so every entry is accurate, near-duplicates included. float64 inputs, inputs that
    need gradients, and float32 matmuls allowed below full precision (TF32, bfloat16) use a float64 matmul
    and recompute the pairs under 1e-4. ``out``: a float32 (b, k) tensor the float32 path writes into (the
    float64 path returns a new tensor).
    """
    differentiable = torch.is_grad_enabled() and (x.requires_grad or anchors.requires_grad)
    float32 = x.dtype == torch.float32 and anchors.dtype == torch.float32
    if not float32 or differentiable or not _full_float32_matmul():
        return _euclidean_float64(x, anchors, memory_budget)
    mean = anchors.mean(dim=0, dtype=torch.float64).to(torch.float32)
    centred = anchors - mean
    a_sq = centred.square().sum(dim=1)
    shape = (x.shape[0], anchors.shape[0])
    usable = out is not None and tuple(out.shape) == shape and out.dtype == torch.float32 and out.device == x.device
    result = out if usable else torch.empty(shape, dtype=torch.float32, device=x.device)
    # Blocks of rows: their (block, k) temporaries stay in cache between passes, and on data where most
    # rows need float64 (tight clusters) the rest of the chunk goes there directly after one block.
    block = max(1, min(_EUCLIDEAN_BLOCK_ROWS, memory_budget // (64 * anchors.shape[0])))
    for start in range(0, x.shape[0], block):
        rows = slice(start, start + block)
        redone = _euclidean_float32(x[rows], anchors, mean, centred, a_sq, result[rows], memory_budget)
        if redone > block // 2 and start + block < x.shape[0]:
            result[start + block :] = _euclidean_float64(x[start + block :], anchors, memory_budget).to(torch.float32)
            break
    return result


def _full_float32_matmul() -> bool:
    """Whether float32 matmuls run in full float32: ``torch.set_float32_matmul_precision("high")`` or lower
    lets them use TF32 or bfloat16, whose rounding the float32 path's threshold does not cover."""
    try:
        return torch.get_float32_matmul_precision() == "highest"
    except RuntimeError:  # precision set through torch's per-backend settings: take the float64 path
        return False


def _euclidean_float32(
    x: torch.Tensor,
    anchors: torch.Tensor,
    mean: torch.Tensor,
    centred: torch.Tensor,
    a_sq: torch.Tensor,
    out: torch.Tensor,
    memory_budget: int,
) -> int:
    """Fill ``out`` (b, k) with euclidean distances through a float32 matmul; give how many rows went to float64.

    ``centred`` and ``a_sq`` are the anchors less ``mean`` and their squared norms. Entries of the expansion
    under 0.3 (‖x‖² + ‖e‖²) are recomputed from the differences; a row with more than 1/32 of its anchors
    to recompute is redone through a float64 matmul instead.
    """
    xc = x - mean
    x_sq = xc.square().sum(dim=1)
    squared = torch.add(x_sq[:, None], a_sq[None, :], out=out).addmm_(xc, centred.T, alpha=-2)
    del xc
    # A first test, each row's smallest entry against its row's bound with the largest anchor norm (one read
    # of the block, no (b, k) mask), finds nothing for most data; only then is each entry held to its own bound.
    rows = cols = redo = None
    if bool((squared.amin(dim=1) <= (x_sq + a_sq.amax()).mul_(_EUCLIDEAN_RECOMPUTE_BELOW_FLOAT32)).any()):
        close = squared <= (x_sq[:, None] + a_sq[None, :]).mul_(_EUCLIDEAN_RECOMPUTE_BELOW_FLOAT32)
        many = close.sum(dim=1) > _EUCLIDEAN_FLOAT64_ROW_SHARE * anchors.shape[0]
        if bool(many.any()):
            redo = many.nonzero().squeeze(1)
            close[redo] = False
        rows, cols = close.nonzero().unbind(dim=1)
        del close
    distances = squared.sqrt_()  # a square rounded below 0 gives NaN here, but such a pair is recomputed below
    if redo is not None:
        distances[redo] = _euclidean_float64(x[redo], anchors, memory_budget).to(torch.float32)
    if rows is not None:
        per_batch = max(1, memory_budget // (2 * 4 * max(1, x.shape[1])))
        for start in range(0, rows.shape[0], per_batch):
            r, c = rows[start : start + per_batch], cols[start : start + per_batch]
            differences = torch.index_select(x, 0, r)
            differences -= torch.index_select(anchors, 0, c)
            # sum() adds in a cascade (within ~1e-8 here); float32 vector_norm was off by up to 9e-7 at D = 2048.
            distances[r, c] = differences.square_().sum(dim=1).sqrt_()
    return 0 if redo is None else redo.shape[0]


def _euclidean_float64(x: torch.Tensor, anchors: torch.Tensor, memory_budget: int) -> torch.Tensor:
    """Give euclidean's (b, k) distances through a float64 matmul, in the dtype of ``x``."""
    wide = torch.float64
    xw, aw = x.to(wide), anchors.to(wide)
    mean = aw.mean(dim=0)
    xc, ac = xw - mean, aw - mean
    x_sq = xc.square().sum(dim=1)
    a_sq = ac.square().sum(dim=1)
    differentiable = torch.is_grad_enabled() and (x.requires_grad or anchors.requires_grad)
    squared = x_sq[:, None] + a_sq[None, :]
    if differentiable:
        squared = torch.addmm(squared, xc, ac.T, alpha=-2)
    else:
        squared.addmm_(xc, ac.T, alpha=-2)
    del xc, ac
    # Rounding error of the expansion is about eps·(‖x‖² + ‖e‖²); with the largest anchor norm in the bound
    # the test needs no (b, k) temporary beyond a boolean mask, and only flags a few more pairs.
    close = squared <= _EUCLIDEAN_RECOMPUTE_BELOW * (x_sq[:, None] + a_sq.amax())
    pairs = close.nonzero()
    del close
    if pairs.numel():
        per_batch = max(1, memory_budget // (4 * 8 * max(1, x.shape[1])))
        for start in range(0, pairs.shape[0], per_batch):
            rows, cols = pairs[start : start + per_batch].unbind(dim=1)
            squared[rows, cols] = (xw[rows] - aw[cols]).square().sum(dim=1)
    if differentiable:
        return squared.clamp(min=0).sqrt().to(x.dtype)
    return squared.clamp_(min=0).sqrt_().to(x.dtype)
