"""Absolute transforms of the latents, fitted on the anchors only and applied to samples and anchors alike.

docs/METHOD.md §3: ``center`` subtracts the anchor mean (which makes cosine translation-invariant too),
``standardize`` also divides by the per-dimension anchor standard deviation, ``l2`` normalises rows, and
``none`` leaves the latents as they are (the default). A new transform is one fitting function registered
with :func:`register_transform`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from stitchcli.errors import UsageError
from stitchcli.registry import Registry

TransformFitter = Callable[[torch.Tensor], "Transform"]

_TRANSFORMS: Registry[TransformFitter] = Registry("transform")


@dataclass(frozen=True)
class Transform:
    """A fitted absolute transform: ``x -> (x - shift) / scale``, then optionally rows to unit length.

    Attributes:
        name: the registry name it was fitted under.
        shift: per-dimension value subtracted first, shape (D,), or None.
        scale: per-dimension divisor applied after the shift, shape (D,), or None.
        normalize_rows: whether rows are then scaled to unit L2 norm (zero rows stay zero).
    """

    name: str
    shift: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    normalize_rows: bool = False

    @property
    def is_identity(self) -> bool:
        """Whether applying this transform returns its input unchanged."""
        return self.shift is None and self.scale is None and not self.normalize_rows

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Give ``x`` (…, D) transformed; a new tensor unless the transform is the identity."""
        if self.shift is not None:
            x = x - self.shift.to(device=x.device, dtype=x.dtype)
        if self.scale is not None:
            x = x / self.scale.to(device=x.device, dtype=x.dtype)
        if self.normalize_rows:
            x = l2_normalize_rows(x)
        return x


def l2_normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Give the rows of ``x`` scaled to unit L2 norm, zero rows left at zero (never NaN).

    When some row's norm could underflow (tiny rows) or overflow (huge ones), every row is first divided by
    its largest absolute entry; a row of zeros stays zeros.
    """
    if x.is_floating_point() and x.shape[-1] > 0:
        # Fast path, two passes: where every row's norm is finite (its sum of squares did not overflow) and
        # large enough that its largest squares are normal numbers (underflowed small entries then weigh
        # under 2^-24 of it), dividing by the plain norm is exact to rounding.
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        smallest = (x.shape[-1] * torch.finfo(x.dtype).tiny) ** 0.5 * 2.0**12
        if bool(((norm > smallest) & (norm < float("inf"))).all()):
            return x / norm
    peak = x.abs().amax(dim=-1, keepdim=True)
    x = x / torch.where(peak > 0, peak, torch.ones_like(peak))
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def register_transform(name: str) -> Callable[[TransformFitter], TransformFitter]:
    """Give a decorator that registers a fitting function ``anchors (k, D) -> Transform`` under ``name``."""
    return _TRANSFORMS.register(name)


def list_transforms() -> list[str]:
    """Give the registered transform names, in registration order."""
    return _TRANSFORMS.names()


def fit_transform(name: str | Transform, anchors: torch.Tensor) -> Transform:
    """Give the transform ``name`` fitted on ``anchors`` (k, D); a :class:`Transform` is returned as is.

    Raises:
        UsageError: ``name`` is not a registered transform (the message lists the known ones).
    """
    if isinstance(name, Transform):
        return name
    fit = _TRANSFORMS.get(name)
    if anchors.ndim != 2 or anchors.shape[0] == 0:
        raise UsageError(f"anchors must be a non-empty (k, D) matrix, got shape {tuple(anchors.shape)}")
    return fit(anchors)


@register_transform("none")
def _fit_none(anchors: torch.Tensor) -> Transform:
    """Leave the latents as they are."""
    return Transform("none")


@register_transform("center")
def _fit_center(anchors: torch.Tensor) -> Transform:
    """Subtract the anchor mean."""
    return Transform("center", shift=anchors.mean(dim=0))


@register_transform("standardize")
def _fit_standardize(anchors: torch.Tensor) -> Transform:
    """Subtract the anchor mean and divide by the per-dimension anchor standard deviation.

    A dimension in which the anchors do not vary (standard deviation within rounding of zero relative to the
    data's magnitude) is only centred: dividing by a near-zero deviation would blow its noise up.
    """
    mean = anchors.mean(dim=0)
    std = anchors.std(dim=0, correction=0)
    epsilon = 1e3 * torch.finfo(std.dtype).eps * (mean.abs() + std.amax())
    scale = torch.where(std > epsilon, std, torch.ones_like(std))
    return Transform("standardize", shift=mean, scale=scale)


@register_transform("l2")
def _fit_l2(anchors: torch.Tensor) -> Transform:
    """Scale every row to unit L2 norm."""
    return Transform("l2", normalize_rows=True)
