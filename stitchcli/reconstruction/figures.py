"""The reconstruction grid: one PNG per encoder → decoder pair, the same test images in every row.

Row 1 shows the originals, row 2 the decoder's own reconstruction (its model's latents through its own
head: the non-stitched reference), then one row per stitched method, each labelled on the left (the caller
writes the labels, typically the method and its MSE/SSIM). The images are drawn as one mosaic, pixel for
pixel (nearest-neighbour scaling, fixed [0, 1] range, grey colour map for one channel), so what the grid
shows is what the scores measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from stitchcli.plots import require_matplotlib

GRID_IMAGES = 10
_GAP = 2  # pixels between tiles


def grid_positions(labels: np.ndarray, count: int = GRID_IMAGES, *, seed: int = 0) -> np.ndarray:
    """Give ``count`` row positions to show: one image of each class first (classes in sorted order), seeded.

    With fewer classes than ``count`` the rest are drawn at random from the other rows; with more, the first
    ``count`` classes in sorted order get one image each. The same labels, count and seed give the same rows.
    """
    labels = np.asarray(labels)
    count = min(count, len(labels))
    rng = np.random.default_rng(seed)
    chosen = [int(rng.choice(np.flatnonzero(labels == label))) for label in np.unique(labels)[:count]]
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    chosen += [int(i) for i in rng.choice(rest, size=count - len(chosen), replace=False)]
    return np.asarray(chosen, dtype=np.int64)


def mosaic(rows: Sequence[torch.Tensor | np.ndarray]) -> np.ndarray:
    """Give one (H', W') or (H', W', 3) array in [0, 1] tiling rows of (n, C, H, W) images, white gaps between."""
    arrays = [np.clip(np.asarray(torch.as_tensor(r, dtype=torch.float32)), 0.0, 1.0) for r in rows]
    n, channels, height, width = arrays[0].shape
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"every row needs the same (n, C, H, W), got {[a.shape for a in arrays]}")
    out = np.ones(((height + _GAP) * len(arrays) - _GAP, (width + _GAP) * n - _GAP, channels), dtype=np.float32)
    for i, row in enumerate(arrays):
        for j, image in enumerate(row):
            top, left = i * (height + _GAP), j * (width + _GAP)
            out[top : top + height, left : left + width] = image.transpose(1, 2, 0)
    return out[..., 0] if channels == 1 else out


def reconstruction_grid(
    path: str | Path,
    originals: torch.Tensor,
    rows: Sequence[tuple[str, torch.Tensor]],
    *,
    title: str,
    original_label: str = "original",
) -> Path:
    """Give the path of a PNG grid: ``originals`` on the first row, then each (label, images) row.

    Args:
        path: the PNG to write (folders are created).
        originals: (n, C, H, W) in [0, 1], the images shown.
        rows: (label, (n, C, H, W) reconstructions of the same images in the same order), top to bottom:
            the decoder's own reconstruction first, then the stitched methods.
        title: the figure title (e.g. ``"lite2 → lite0 on mnist5k"``).
        original_label: the first row's label.

    Raises:
        UsageError: matplotlib is missing (the plot, demo and test extras install it).
    """
    plt = require_matplotlib()
    labels = [original_label] + [label for label, _ in rows]
    picture = mosaic([originals] + [images for _, images in rows])
    count, height = int(originals.shape[0]), int(originals.shape[2])
    tile_inches = 0.55 if height <= 32 else 0.8
    width_inches = count * tile_inches + 0.09 * max(len(label) for label in labels) + 0.4
    figure, axes = plt.subplots(figsize=(width_inches, len(labels) * tile_inches + 0.7))
    axes.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    centres = [(height + _GAP) * i + height / 2 - 0.5 for i in range(len(labels))]
    axes.set_yticks(centres, labels=labels, fontsize=8)
    axes.set_xticks([])
    axes.tick_params(length=0)
    for spine in axes.spines.values():
        spine.set_visible(False)
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(figure)
    return path
