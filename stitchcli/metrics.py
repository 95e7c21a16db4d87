"""Scores of a stitched model and similarity measures between two latent spaces, each a plain float.

Classification: :func:`accuracy` and :func:`macro_f1` (scikit-learn's macro F1 with ``zero_division=0``).
Latent similarity (docs/METHOD.md §6), between the representations of the same N samples under two models:
:func:`linear_cka`, :func:`jaccard_at_k`, :func:`mrr_at_k` and :func:`mean_cosine`.

Inputs may be numpy arrays or torch tensors (labels also plain lists); they are never modified. Memory stays
bounded for large N: CKA streams over row chunks in its feature-space form (no N×N Gram matrix), and the
neighbour measures build the N×N cosine matrix one block of rows at a time.

Nearest neighbours are deterministic: among equally similar candidates the one with the lower row index
ranks first, exactly as a stable descending sort of the similarities would order them.
"""

from __future__ import annotations

import warnings
from typing import Iterator, Sequence, Union

import numpy as np
import torch

from stitchcli.errors import UsageError
from stitchcli.relative.transforms import l2_normalize_rows

ArrayLike = Union[torch.Tensor, np.ndarray]
LabelsLike = Union[torch.Tensor, np.ndarray, Sequence[int]]

_BLOCK_ROWS = 8192
"""Rows per block where a function takes no chunk_size (finiteness checks, mean cosine)."""


# ------------------------------------------------------------------------------------------ classification


def accuracy(y_true: LabelsLike, y_pred: LabelsLike) -> float:
    """Give the fraction of samples whose predicted class equals the true one, in [0, 1].

    Args:
        y_true: true class indices, shape (N,).
        y_pred: predicted class indices, shape (N,).
    """
    true, pred = _label_pair(y_true, y_pred)
    return float((true == pred).to(torch.float64).mean())


def macro_f1(y_true: LabelsLike, y_pred: LabelsLike, num_classes: int | None = None) -> float:
    """Give the unweighted mean of the per-class F1 scores, in [0, 1].

    Equals scikit-learn's ``f1_score(y_true, y_pred, average="macro", labels=..., zero_division=0)``: a class
    with no true and no predicted sample scores 0 and still counts in the mean.

    Args:
        y_true: true class indices, shape (N,).
        y_pred: predicted class indices, shape (N,).
        num_classes: average over the classes 0..num_classes-1 (so a class absent from both vectors lowers
            the score); None averages over the classes present in ``y_true`` or ``y_pred``.

    Raises:
        UsageError: with ``num_classes``, a label outside 0..num_classes-1.
    """
    true, pred = _label_pair(y_true, y_pred)
    n = true.shape[0]
    if num_classes is None:
        # Renumber the classes present to 0..C-1 so that bincount needs no assumption on the label values.
        classes, inverse = torch.unique(torch.cat([true, pred]), return_inverse=True)
        count = classes.numel()
        true, pred = inverse[:n], inverse[n:]
    else:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise UsageError(f"num_classes must be a whole number of at least 1, got {num_classes!r}")
        low = int(torch.minimum(true.min(), pred.min()))
        high = int(torch.maximum(true.max(), pred.max()))
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise UsageError(
                f"label {bad} is outside 0..{num_classes - 1}: pass the dataset's true number of classes as "
                "num_classes, or leave it unset to average over the labels present"
            )
        count = num_classes
    hits = torch.bincount(true[true == pred], minlength=count)
    support = torch.bincount(true, minlength=count)
    predicted = torch.bincount(pred, minlength=count)
    # F1 = 2·TP / (2·TP + FP + FN) = 2·TP / (support + predicted); 0 where both are 0 (zero_division=0).
    denominator = (support + predicted).to(torch.float64)
    f1 = torch.where(denominator > 0, 2 * hits / denominator.clamp(min=1), torch.zeros_like(denominator))
    return float(f1.mean())


# -------------------------------------------------------------------------------------- latent similarity


def linear_cka(x: ArrayLike, y: ArrayLike, *, chunk_size: int = 8192) -> float:
    """Give the linear CKA between two representations of the same samples, in [0, 1].

    Feature-space form of docs/METHOD.md §6 with column-centred X (N×p) and Y (N×q):
    ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F), accumulated in float64 over row chunks, so memory is
    O(p² + q² + p·q + chunk_size·(p + q)) whatever N is. Invariant to orthogonal transforms, isotropic
    scaling and translations of either input; p and q may differ.

    Args:
        x: first representation, shape (N, p).
        y: second representation of the same samples, shape (N, q).
        chunk_size: rows per chunk.

    Raises:
        UsageError: fewer than 2 samples, or an input with no variance (every row the same).
    """
    xt, yt, n = _matrix_pair(x, y)
    _check_chunk_size(chunk_size)
    if n < 2:
        raise UsageError("CKA needs at least 2 samples: centring a single sample leaves nothing to compare")
    # MPS has no float64; the accumulators are small, so the CPU costs little there.
    device = torch.device("cpu") if xt.device.type == "mps" else xt.device
    # Shifting by the first row before averaging keeps a large common offset from eating float64 precision,
    # and makes a constant column exactly zero after centring, so a constant input is recognised exactly.
    x_shift = xt[0].to(device, torch.float64)
    y_shift = yt[0].to(device, torch.float64)
    x_mean = torch.zeros_like(x_shift)
    y_mean = torch.zeros_like(y_shift)
    for rows in _row_blocks(n, chunk_size):
        x_mean += (xt[rows].to(device, torch.float64) - x_shift).sum(dim=0)
        y_mean += (yt[rows].to(device, torch.float64) - y_shift).sum(dim=0)
    x_mean /= n
    y_mean /= n
    xx = torch.zeros(xt.shape[1], xt.shape[1], dtype=torch.float64, device=device)
    yy = torch.zeros(yt.shape[1], yt.shape[1], dtype=torch.float64, device=device)
    yx = torch.zeros(yt.shape[1], xt.shape[1], dtype=torch.float64, device=device)
    for rows in _row_blocks(n, chunk_size):
        xc = xt[rows].to(device, torch.float64) - x_shift - x_mean
        yc = yt[rows].to(device, torch.float64) - y_shift - y_mean
        xx += xc.T @ xc
        yy += yc.T @ yc
        yx += yc.T @ xc
    x_norm = torch.linalg.matrix_norm(xx)
    y_norm = torch.linalg.matrix_norm(yy)
    for what, norm in (("x", x_norm), ("y", y_norm)):
        if not norm > 0:
            raise UsageError(
                f"{what} has no variance (every row is the same), so CKA is undefined: "
                "check that the embeddings were computed from distinct samples"
            )
    return float(yx.square().sum() / (x_norm * y_norm))


def jaccard_at_k(x: ArrayLike, y: ArrayLike, k: int = 10, *, chunk_size: int = 1024) -> float:
    """Give the mean Jaccard overlap of each sample's k nearest neighbours in the two spaces, in [0, 1].

    For sample i, N1 holds the k rows of ``x`` most cosine-similar to x_i and N2 the k rows of ``y`` most
    similar to y_i, sample i itself excluded; the score is the mean over i of |N1 ∩ N2| / |N1 ∪ N2|. Ties go
    to the lower row index (a zero row is equally similar, 0, to every row). The N×N similarities are built
    ``chunk_size`` rows at a time, so memory is O(chunk_size·N) besides a normalised copy of each input.

    Args:
        x: first space, shape (N, p).
        y: second space for the same samples, shape (N, q); q may differ from p.
        k: neighbours per sample, 1 <= k <= N - 1.
        chunk_size: rows of the similarity matrix per block.
    """
    xt, yt, n = _matrix_pair(x, y)
    _check_k(k, n - 1, "the neighbours are the other N - 1 samples")
    _check_chunk_size(chunk_size)
    x_unit = _unit_rows(xt, _cosine_dtype(xt))
    y_unit = _unit_rows(yt.to(xt.device), _cosine_dtype(yt))
    total = torch.zeros((), dtype=torch.float64, device=xt.device)
    for rows in _row_blocks(n, chunk_size):
        near_x = _nearest_indices(_without_self(x_unit[rows] @ x_unit.T, rows), k)
        near_y = _nearest_indices(_without_self(y_unit[rows] @ y_unit.T, rows), k)
        shared = (near_x[:, :, None] == near_y[:, None, :]).sum(dim=(1, 2), dtype=torch.float64)
        total += (shared / (2 * k - shared)).sum()
    return min(1.0, max(-1.0, float(total / n)))  # rounding can leave a mean of unit cosines just above 1


def mrr_at_k(x: ArrayLike, y: ArrayLike, k: int = 10, *, chunk_size: int = 1024) -> float:
    """Give the mean reciprocal rank of each sample's own counterpart among its k nearest cross-space rows.

    For sample i the N rows of ``y`` (i included) are ranked by cosine similarity to x_i, ties to the lower
    row index; if y_i is at 1-based rank r <= k it scores 1/r, else 0. The result is the mean over i, in
    [0, 1]. Memory is O(chunk_size·N) besides a normalised copy of each input.

    Args:
        x: first space, shape (N, d).
        y: second space for the same samples, shape (N, d): vectors are compared across the spaces, so they
            must share the dimension (e.g. relative spaces built on the same anchors).
        k: ranks that count, 1 <= k <= N.
        chunk_size: rows of the similarity matrix per block.
    """
    xt, yt, n = _matrix_pair(x, y)
    _check_same_dimension(xt, yt, "MRR@k compares vectors across the two spaces, so they must share a dimension")
    _check_k(k, n, "the candidates are the N rows of y")
    _check_chunk_size(chunk_size)
    dtype = _cosine_dtype(xt, yt)
    x_unit = _unit_rows(xt, dtype)
    y_unit = _unit_rows(yt.to(xt.device), dtype)
    columns = torch.arange(n, device=xt.device)
    total = torch.zeros((), dtype=torch.float64, device=xt.device)
    for rows in _row_blocks(n, chunk_size):
        similarity = x_unit[rows] @ y_unit.T
        own_column = columns[rows][:, None]
        own = similarity.gather(1, own_column)
        # The rank is 1 + the number of rows ahead: every strictly closer one, and every equally close one
        # with a lower index. Only ranks up to k score, so the k + 1 largest similarities settle almost
        # every row: if the counterpart beats the (k+1)-th, all rows ahead of it are among the first k;
        # if it falls short of the k-th, it scores 0.
        values, indices = similarity.topk(min(k + 1, n), dim=1)
        head, head_index = values[:, :k], indices[:, :k]
        after = values[:, k:] if k < n else torch.full_like(own, float("-inf"))
        settled = own > after
        ahead = (head > own).sum(dim=1, keepdim=True)
        ahead += ((head == own) & (head_index < own_column)).sum(dim=1, keepdim=True)
        rank = (ahead + 1).to(torch.float64)
        total += torch.where(settled, 1.0 / rank, torch.zeros_like(rank)).sum()
        # Left: a counterpart tied with both the k-th and the (k+1)-th (a tie across the cut), counted in full.
        tied = (~settled & (own >= head[:, -1:])).squeeze(1).nonzero().squeeze(1)
        if tied.numel():
            block, own_tied, column = similarity[tied], own[tied], own_column[tied]
            ahead = (block > own_tied).sum(dim=1) + ((block == own_tied) & (columns < column)).sum(dim=1)
            rank = (ahead + 1).to(torch.float64)
            total += torch.where(rank <= k, 1.0 / rank, torch.zeros_like(rank)).sum()
    return float(total / n)


def mean_cosine(x: ArrayLike, y: ArrayLike) -> float:
    """Give the mean over samples of the cosine similarity between x_i and y_i, in [-1, 1].

    Meaningful where both spaces are the same space, e.g. relative spaces built on the same anchors. A zero
    row has cosine 0 with anything, never NaN.

    Args:
        x: first space, shape (N, d).
        y: second space for the same samples, same shape as ``x``.
    """
    xt, yt, n = _matrix_pair(x, y)
    _check_same_dimension(xt, yt, "the mean cosine compares each sample's two vectors, so they must share a dimension")
    dtype = _cosine_dtype(xt, yt)
    total = torch.zeros((), dtype=torch.float64, device=xt.device)
    for rows in _row_blocks(n, _BLOCK_ROWS):
        cosine = (_unit_rows(xt[rows], dtype) * _unit_rows(yt[rows].to(xt.device), dtype)).sum(dim=1)
        total += cosine.sum(dtype=torch.float64)
    return float(total / n)


# ------------------------------------------------------------------------------------------ neighbours


def _without_self(similarity: torch.Tensor, rows: slice) -> torch.Tensor:
    """Give a fresh block of self-similarities (rows ``rows``) with each row's own entry set to -inf in place."""
    own = torch.arange(rows.start, rows.stop, device=similarity.device)
    similarity[own - rows.start, own] = float("-inf")
    return similarity


def _nearest_indices(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """Give each row's k most similar columns as a (b, k) index tensor (a set: in no particular order), ties
    to the lower column index.

    The k largest entries form the same set whichever way topk orders ties among them, unless a tie crosses
    the cut (the (k+1)-th value equals the k-th); only such rows go through the full (row, N) mask.
    """
    n = similarity.shape[1]
    values, indices = similarity.topk(min(k + 1, n), dim=1)
    chosen = indices[:, :k]
    if k < n:
        crossing = (values[:, k] == values[:, k - 1]).nonzero().squeeze(1)
        if crossing.numel():
            chosen = chosen.clone()
            chosen[crossing] = _nearest_mask(similarity[crossing], k).nonzero()[:, 1].view(-1, k)
    return chosen


def _nearest_mask(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """Give a boolean mask of each row's k most similar columns, ties to the lower column index."""
    kth = similarity.topk(k, dim=1).values[:, -1:]
    above = similarity > kth
    tied = similarity == kth
    room = k - above.sum(dim=1, keepdim=True)
    # topk picks among ties in no documented order; keeping the first `room` tied columns reproduces a stable
    # sort. Only rows with more ties than room need the (b, N) cumulative count.
    crowded = (tied.sum(dim=1, keepdim=True) > room).squeeze(1)
    chosen = above | tied
    if bool(crowded.any()):
        first = tied[crowded].cumsum(dim=1) <= room[crowded]
        chosen[crowded] = above[crowded] | (tied[crowded] & first)
    return chosen


# ---------------------------------------------------------------------------------------------- inputs


def _tensor(value: ArrayLike | LabelsLike, what: str) -> torch.Tensor:
    """Give ``value`` as a tensor detached from any graph, sharing memory where it can (it is only read)."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise UsageError(f"{what} must hold real numbers, got dtype {value.dtype}")
        return value.detach()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise UsageError(f"{what} must hold numbers, got dtype {array.dtype}")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    with warnings.catch_warnings():
        # torch warns about read-only arrays (memmaps) because it cannot protect them; nothing here writes.
        warnings.simplefilter("ignore", UserWarning)
        return torch.as_tensor(array)


def _labels(value: LabelsLike, what: str) -> torch.Tensor:
    """Give a 1-D vector of class indices as int64, or raise a UsageError."""
    labels = _tensor(value, what)
    if labels.ndim != 1:
        raise UsageError(f"{what} must be a 1-D vector of class indices, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise UsageError(f"{what} must hold whole class indices, got fractional values")
    return labels.to(torch.int64)


def _label_pair(y_true: LabelsLike, y_pred: LabelsLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Give both label vectors as int64 on one device, checked to be non-empty and of equal length."""
    true = _labels(y_true, "y_true")
    pred = _labels(y_pred, "y_pred").to(true.device)
    if true.shape[0] != pred.shape[0]:
        raise UsageError(
            f"y_true has {true.shape[0]} labels but y_pred has {pred.shape[0]}: give one prediction per sample"
        )
    if true.shape[0] == 0:
        raise UsageError("y_true and y_pred are empty: give at least one sample")
    return true, pred


def _matrix(value: ArrayLike, what: str) -> torch.Tensor:
    """Give a non-empty, finite (N, D) matrix as a tensor, or raise a UsageError."""
    matrix = _tensor(value, what)
    if matrix.ndim != 2:
        raise UsageError(f"{what} must be a 2-D matrix (samples, features), got shape {tuple(matrix.shape)}")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise UsageError(f"{what} is empty (shape {tuple(matrix.shape)}): give at least one sample and one feature")
    if matrix.is_floating_point():
        # A finite sum proves every value finite (a NaN or an infinity makes the sum NaN or infinite), and a sum
        # reads the values without writing a mask, about 10x faster than isfinite; only a sum that is not finite
        # (a bad value, or finite values that overflow it) is checked value by value. By blocks, so the check
        # itself does not double the memory of a large input.
        for rows in _row_blocks(matrix.shape[0], _BLOCK_ROWS):
            block = matrix[rows]
            summed = block.element_size() >= 2  # float8 has no sum on the CPU: checked value by value
            if not (summed and bool(torch.isfinite(block.sum()))) and not bool(torch.isfinite(block).all()):
                raise UsageError(f"{what} holds NaN or infinite values: recompute or clean the embeddings")
    return matrix


def _matrix_pair(x: ArrayLike, y: ArrayLike) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Give both matrices and their common number of rows N, or raise a UsageError."""
    xt = _matrix(x, "x")
    yt = _matrix(y, "y")
    if xt.shape[0] != yt.shape[0]:
        raise UsageError(
            f"x has {xt.shape[0]} rows but y has {yt.shape[0]}: both must describe the same samples, row for row"
        )
    return xt, yt, xt.shape[0]


def _check_same_dimension(xt: torch.Tensor, yt: torch.Tensor, why: str) -> None:
    if xt.shape[1] != yt.shape[1]:
        raise UsageError(
            f"x has dimension {xt.shape[1]} but y has {yt.shape[1]}: {why} "
            "(e.g. relative spaces built on the same anchors)"
        )


def _check_k(k: int, upper: int, why: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= upper:
        raise UsageError(f"k must be a whole number from 1 to {upper} ({why}), got {k!r}")


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise UsageError(f"chunk_size must be a whole number of at least 1, got {chunk_size!r}")


def _cosine_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """Give float64 where an input is float64 (its precision was asked for), else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _unit_rows(matrix: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Give the rows of ``matrix`` in ``dtype`` scaled to unit length, zero rows left at zero."""
    return l2_normalize_rows(matrix.to(dtype))


def _row_blocks(n: int, size: int) -> Iterator[slice]:
    """Give consecutive slices of at most ``size`` rows covering 0..n-1."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
