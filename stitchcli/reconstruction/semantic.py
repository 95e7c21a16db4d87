"""The semantic check: a classifier trained on the dataset's pixels reads the reconstructions.

MSE and SSIM say how close a reconstruction is pixel by pixel; they do not say whether it still shows the
right digit. A small CNN trained on the original training images (never on any model's latents) answers
that: its accuracy on the reconstructions of the test rows, next to its accuracy on the originals (the
ceiling) and on the decoder's own reconstructions (the non-stitched reference).

    Conv(C→16, 3×3) → SiLU → MaxPool 2 → Conv(16→32, 3×3) → SiLU → MaxPool 2 → AdaptiveAvgPool 4×4
    → Linear(512, 128) → SiLU → Dropout → Linear(128, classes)

trained with the heads' loop (:func:`stitchcli.heads.fit_with_early_stopping`: Adam, early stopping on the
accuracy of a class-stratified validation part, seeded). On the packaged MNIST (4000 training digits) it
reads the 1000 test digits with about 97% accuracy (benchmarks/results/reconstruction_sweep-mnist5k.json).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from stitchcli.errors import UsageError
from stitchcli.heads import fit_with_early_stopping, stratified_split
from stitchcli.settings import HeadSettings

PIXEL_CLASSIFIER_SETTINGS = HeadSettings(hidden=128, dropout=0.25, epochs=30, lr=2e-3, batch_size=128, patience=4)
"""Training settings of the pixel classifier (``hidden`` is its last hidden layer)."""


class PixelClassifier(nn.Module):
    """A small CNN from (N, C, H, W) images in [0, 1] to class logits (any image size: it pools to 4×4)."""

    def __init__(self, channels: int, num_classes: int, *, hidden: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, kernel_size=3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classify = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, hidden),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Give the (N, classes) logits of (N, C, H, W) images."""
        return self.classify(self.features(images))


@dataclass
class TrainedPixelClassifier:
    """A pixel classifier and how it was trained.

    Attributes:
        module: the CNN, in eval mode.
        val_accuracy: its accuracy on the held-out part of the training images.
        epochs_run: epochs trained before early stopping.
        seconds: training time.
    """

    module: PixelClassifier
    val_accuracy: float
    epochs_run: int
    seconds: float

    def accuracy(self, images: torch.Tensor, labels: np.ndarray) -> float:
        """Give the fraction of ``images`` ((N, C, H, W) in [0, 1]) it assigns to their ``labels``."""
        return pixel_accuracy(self.module, images, labels)


def train_pixel_classifier(
    images: torch.Tensor,
    labels: np.ndarray,
    *,
    seed: int = 0,
    settings: HeadSettings = PIXEL_CLASSIFIER_SETTINGS,
    num_classes: int | None = None,
    device: torch.device | str = "cpu",
) -> TrainedPixelClassifier:
    """Give a CNN trained on ``images`` (N, C, H, W) in [0, 1] to predict ``labels``, seeded.

    Batches hold at most ``settings.batch_size`` images and, for small training sets, an eighth of the training
    part (at least 16), so that a few hundred images still give several Adam steps an epoch: on the 300 MNIST
    training digits of the demo's subset, batches of 128 stopped after 17 epochs of 3 steps at 65% on the 300
    test digits, batches of 32 reached 86% (docs/RECONSTRUCTION.md §4).

    Raises:
        UsageError: fewer than two classes, or no validation part (too few images).
    """
    started = time.perf_counter()
    labels = np.asarray(labels, dtype=np.int64)
    if len(np.unique(labels)) < 2:
        raise UsageError("a pixel classifier tells classes apart, and the training images are all of one class")
    train_rows, val_rows = stratified_split(labels, settings.val_fraction, seed)
    if len(val_rows) == 0:
        raise UsageError(f"{len(labels)} training images give no validation part: use more images")
    classes = num_classes if num_classes is not None else int(labels.max()) + 1
    settings = replace(settings, batch_size=min(settings.batch_size, max(16, len(train_rows) // 8)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = PixelClassifier(int(images.shape[1]), classes, hidden=settings.hidden, dropout=settings.dropout)
    device = torch.device(device)
    x = torch.as_tensor(images).to(device=device, dtype=torch.float32)
    y = torch.as_tensor(labels).to(device)
    fit = fit_with_early_stopping(
        module, x, y, train_rows, val_rows, settings, seed=seed, loss_fn=nn.CrossEntropyLoss(),
        metric=("accuracy", lambda logits, target: int((logits.argmax(dim=1) == target).sum())),
    )
    return TrainedPixelClassifier(module, round(fit.val_metric, 6), len(fit.curve), round(time.perf_counter() - started, 3))


@torch.no_grad()
def pixel_accuracy(module: nn.Module, images: torch.Tensor, labels: np.ndarray, *, batch_size: int = 1024) -> float:
    """Give the fraction of ``images`` whose arg-max class under ``module`` is their label."""
    from stitchcli.heads import predict

    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise UsageError("there are no images to classify")
    return float((predict(module, images, batch_size=batch_size) == labels).mean())
