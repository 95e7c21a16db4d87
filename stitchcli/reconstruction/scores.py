"""How close reconstructions are to their originals: MSE, PSNR and SSIM per image, and their means.

Images are (N, C, H, W) floats in [0, 1] (data range 1). Per image: MSE is the mean squared difference over
its pixels and channels; PSNR is 10·log10(1 / MSE) in dB, with MSE floored at :data:`MSE_FLOOR` so an exact
copy scores :data:`MAX_PSNR` dB instead of infinity; SSIM is Wang et al.'s (2004) structural similarity with
an 11×11 Gaussian window of σ 1.5, K1 = 0.01, K2 = 0.03, averaged over the valid window positions and the
channels (the convention of Wang et al.'s reference code and of scikit-image's ``structural_similarity`` with
``gaussian_weights=True, use_sample_covariance=False``), computed by the ``pytorch-msssim`` package. Images with a side under 11 pixels
use the largest odd window that fits and σ scaled with it (1.5 · window / 11). The scores of a set of images
are the means of the per-image scores (the mean PSNR, not the PSNR of the mean MSE).

Why pytorch-msssim: a 12 kB pure-torch package that imports in milliseconds, and with a float64 window it
equals scikit-image's ``structural_similarity`` (the reference, checked in tests/test_reconstruction.py)
to 1e-9. torchmetrics (1.9) was weighed and not taken: importing it takes seconds (it loads transformers
and scipy), and its SSIM also averages the reflection-padded border positions, which gives other values
(about 0.01 higher on noisy 32×32 images).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from stitchcli.errors import UsageError

MSE_FLOOR = 1e-10
MAX_PSNR = 10.0 * math.log10(1.0 / MSE_FLOOR)  # 100 dB
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_BATCH = 1024


def _check_pair(reconstructions: torch.Tensor, originals: torch.Tensor) -> None:
    if reconstructions.shape != originals.shape or reconstructions.ndim != 4:
        raise ValueError(f"reconstructions {tuple(reconstructions.shape)} and originals {tuple(originals.shape)} must be the same (N, C, H, W)")


def per_image_mse(reconstructions: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """Give the (N,) mean squared error of each image over its pixels and channels (float64)."""
    _check_pair(reconstructions, originals)
    difference = reconstructions.to(torch.float64) - originals.to(torch.float64)
    return (difference**2).flatten(start_dim=1).mean(dim=1)


def per_image_psnr(reconstructions: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """Give the (N,) PSNR of each image in dB for data range 1: 10·log10(1 / max(MSE, MSE_FLOOR))."""
    return -10.0 * torch.log10(per_image_mse(reconstructions, originals).clamp_min(MSE_FLOOR))


def ssim_window(height: int, width: int) -> tuple[int, float]:
    """Give (window size, σ) of the Gaussian SSIM window for an image of this size (11 and 1.5 when it fits)."""
    size = min(SSIM_WINDOW, height, width)
    size -= 1 - size % 2  # odd
    return size, SSIM_SIGMA * size / SSIM_WINDOW


def per_image_ssim(reconstructions: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """Give the (N,) SSIM of each image (mean over window positions and channels), by pytorch-msssim.

    Raises:
        UsageError: pytorch-msssim is not installed (it is a dependency of stitchcli).
    """
    _check_pair(reconstructions, originals)
    try:
        from pytorch_msssim import ssim
    except ImportError:
        raise UsageError("SSIM needs the pytorch-msssim package: pip install pytorch-msssim") from None
    size, sigma = ssim_window(int(originals.shape[2]), int(originals.shape[3]))
    # The window in float64: pytorch-msssim builds it in float32, whose rounding (weights summing to 1 ± 1e-7)
    # moves the SSIM of flat regions by up to ~1e-5; in float64 it equals the references to 1e-9.
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    window = torch.exp(-(offsets**2) / (2 * sigma**2))
    window = (window / window.sum()).view(1, 1, 1, size).repeat(int(originals.shape[1]), 1, 1, 1)
    scores = []
    for start in range(0, len(originals), _BATCH):
        x = reconstructions[start : start + _BATCH].to(torch.float64)
        y = originals[start : start + _BATCH].to(torch.float64)
        scores.append(ssim(x, y, data_range=1.0, size_average=False, win=window))
    return torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)


def reconstruction_scores(reconstructions: torch.Tensor, originals: torch.Tensor) -> dict[str, float]:
    """Give ``{"mse", "psnr", "ssim"}``: the means over images of the per-image scores.

    Raises:
        UsageError: no images, or values outside [0, 1] in the originals (they must be pixel targets).
    """
    if len(originals) == 0:
        raise UsageError("there are no images to score: reconstruction scores need at least one")
    if float(originals.min()) < 0.0 or float(originals.max()) > 1.0:
        raise UsageError("the original images are not in [0, 1]: pass pixel targets from load_pixel_targets")
    return {
        "mse": float(per_image_mse(reconstructions, originals).mean()),
        "psnr": float(per_image_psnr(reconstructions, originals).mean()),
        "ssim": float(per_image_ssim(reconstructions, originals).mean()),
    }


def score_seeds(reconstructions: Sequence[torch.Tensor], originals: torch.Tensor, seeds: Sequence[int]) -> dict[str, Any]:
    """Give a stitching row's scores: ``mse``, ``psnr``, ``ssim`` and their ``_std`` over seeds, ``seeds``, ``per_seed``.

    One (N, C, H, W) reconstruction of ``originals`` per seed (the heads of each seed); each seed's scores are
    :func:`reconstruction_scores`, and a row gives their mean and population standard deviation (as the
    classification rows do for accuracy), rounded to 6 decimals.
    """
    if len(reconstructions) != len(seeds) or not seeds:
        raise ValueError(f"{len(reconstructions)} reconstructions for seeds {list(seeds)}")
    per_seed = [{"seed": seed, **{k: round(v, 6) for k, v in reconstruction_scores(r, originals).items()}} for seed, r in zip(seeds, reconstructions)]
    row: dict[str, Any] = {}
    for metric in ("mse", "psnr", "ssim"):
        values = np.array([s[metric] for s in per_seed])
        row[metric], row[f"{metric}_std"] = round(float(values.mean()), 6), round(float(values.std()), 6)
    return {**row, "seeds": list(seeds), "per_seed": per_seed}
