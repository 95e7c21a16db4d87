"""The reconstruction head: a decoder from one model's relative (or absolute) representation to the image.

It follows the relative autoencoders of Moschella et al. (ICLR 2023) and Cannistraci et al. (ICLR 2024):
the decoder reads the normalised relative representation (relative heads) or the raw latents (absolute
heads, for the baselines) and outputs a sigmoid image, trained with MSE:

    [aggregation φ]     relative heads only: one LayerNorm per subspace, then concat/sum/mlp-sum/self-attention,
                        the very module classification heads use (stitchcli.relative.aggregation)
    LayerNorm → Linear(in, h) → SiLU → Dropout            the classification head's first layers, unchanged
    then the generator of the architecture:
      mlp (default)     Linear(h, h) → SiLU → Linear(h, C·H·W) → sigmoid → reshape (C, H, W)
      deconv            Linear(h, c·s_h·s_w) → SiLU → reshape to a coarse map of at most 8×8, then
                        u × [ConvTranspose2d(k4, s2, p1) → SiLU], each doubling the size and halving the
                        channels, Conv2d(k3, p1) → sigmoid → crop to (H, W); u = ceil(log2(max(H, W) / 8)) and
                        ``base_channels`` channels at full size (MNIST: 7×7×64 → 14×14×32 → 28×28×16 → 28×28×1)

Why the MLP is the default: on EfficientNet-Lite0's MNIST latents (absolute decoders, same settings, seed
and epoch budget) it reached the test MSE of the transposed-convolution decoder with 16 channels at full
size (its SSIM a little lower) and beat the 8-channel one on both, while training faster on the CPU
(docs/RECONSTRUCTION.md; benchmarks/reconstruction_architectures.py). What a frozen encoder's pooled
features keep of the pixels bounds the reconstruction, so the convolutions' spatial prior buys little here;
``deconv`` stays available where strokes matter more than training time. Neither uses BatchNorm, so a
decoder reads one image exactly as it reads a batch (stitched inputs arrive with other statistics than the
training ones). The same :class:`~stitchcli.heads.HeadSettings` train both (hidden size, dropout, epochs, lr,
batch, patience), on MSE with early stopping on the validation part, through the loop classification heads
use (:func:`stitchcli.heads.fit_with_early_stopping`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from stitchcli.errors import UsageError
from stitchcli.heads import TrainingRun, fit_with_early_stopping, stratified_split
from stitchcli.reconstruction.targets import ImageShape, image_shape_of
from stitchcli.registry import Registry
from stitchcli.relative.aggregation import Aggregation, build_aggregation
from stitchcli.settings import TASK_HEAD_DEFAULTS, HeadSettings

TASK = "reconstruction"
DEFAULT_SETTINGS = HeadSettings(**TASK_HEAD_DEFAULTS[TASK])
"""A reconstruction head's training defaults: a classification head's, but batches of 64 rather than 256. At the
demo's 300 training rows, 256 leaves two Adam steps an epoch and the decoder is still far from trained after
40 epochs (the digits blur together); with 64 the validation MSE is lower and the SSIM of the reconstructions
and a pixel classifier's accuracy on them are far higher (docs/RECONSTRUCTION.md §4)."""
DEFAULT_ARCHITECTURE = "mlp"
DEFAULT_BASE_CHANNELS = 16
COARSEST_SIDE = 8
"""deconv: the largest side of the map the transposed convolutions start from."""

GeneratorBuilder = Callable[[int, ImageShape, HeadSettings, int], nn.Module]
_ARCHITECTURES: Registry[GeneratorBuilder] = Registry("decoder architecture")


def register_decoder_architecture(name: str) -> Callable[[GeneratorBuilder], GeneratorBuilder]:
    """Give a decorator that registers ``build(hidden_size, image_shape, settings, base_channels) -> generator``.

    The generator maps the (N, h) output of the shared LayerNorm → Linear → SiLU → Dropout to (N, C, H, W)
    images in [0, 1].
    """
    return _ARCHITECTURES.register(name)


def list_decoder_architectures() -> list[str]:
    """Give the registered decoder architecture names, the default first."""
    return _ARCHITECTURES.names()


class _Reshape(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, *self.shape)


class _Crop(nn.Module):
    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height, self.width = height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : self.height, : self.width]


@register_decoder_architecture("mlp")
def _mlp_generator(hidden: int, shape: ImageShape, settings: HeadSettings, base_channels: int) -> nn.Module:
    """Linear(h, h) → SiLU → Linear(h, C·H·W) → sigmoid → (C, H, W)."""
    pixels = shape.channels * shape.height * shape.width
    return nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, pixels), nn.Sigmoid(), _Reshape(*shape.as_list()))


@register_decoder_architecture("deconv")
def _deconv_generator(hidden: int, shape: ImageShape, settings: HeadSettings, base_channels: int) -> nn.Module:
    """Linear to a coarse map, transposed convolutions doubling it, a 3×3 convolution, sigmoid, crop."""
    if base_channels < 1:
        raise UsageError(f"a deconv decoder needs at least one channel, not {base_channels}")
    doublings = max(0, math.ceil(math.log2(max(shape.height, shape.width) / COARSEST_SIDE)))
    coarse = (math.ceil(shape.height / 2**doublings), math.ceil(shape.width / 2**doublings))
    channels = base_channels * 2**doublings
    layers: list[nn.Module] = [nn.Linear(hidden, channels * coarse[0] * coarse[1]), nn.SiLU(), _Reshape(channels, *coarse)]
    for _ in range(doublings):
        layers += [nn.ConvTranspose2d(channels, channels // 2, kernel_size=4, stride=2, padding=1), nn.SiLU()]
        channels //= 2
    layers += [nn.Conv2d(channels, shape.channels, kernel_size=3, padding=1), nn.Sigmoid(), _Crop(shape.height, shape.width)]
    return nn.Sequential(*layers)


class ReconstructionDecoder(nn.Module):
    """An optional aggregation, the classification head's LayerNorm → Linear → SiLU → Dropout, then the
    architecture's generator of a (C, H, W) image in [0, 1].

    Attributes:
        aggregation: the product-space aggregation (relative heads), or None (absolute heads).
        image_shape: the (C, H, W) it outputs.
        architecture: the generator's registry name (``mlp`` or ``deconv``).
        base_channels: deconv's channels at full size (recorded, unused by ``mlp``).
        mlp: LayerNorm → Linear(in, h) → SiLU → Dropout.
        generator: (N, h) -> (N, C, H, W).
    """

    def __init__(
        self,
        input_size: int,
        image_shape: ImageShape,
        settings: HeadSettings,
        *,
        aggregation: Aggregation | None = None,
        architecture: str = DEFAULT_ARCHITECTURE,
        base_channels: int = DEFAULT_BASE_CHANNELS,
    ) -> None:
        super().__init__()
        build_generator = _ARCHITECTURES.get(architecture)
        self.aggregation = aggregation
        self.image_shape = image_shape
        self.architecture = architecture
        self.base_channels = base_channels
        self.mlp = nn.Sequential(nn.LayerNorm(input_size), nn.Linear(input_size, settings.hidden), nn.SiLU(), nn.Dropout(settings.dropout))
        self.generator = build_generator(settings.hidden, image_shape, settings, base_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Give the (N, C, H, W) images of (N, n, k) product-space features, or of (N, D) latents without aggregation."""
        if self.aggregation is not None:
            features = self.aggregation(features)
        return self.generator(self.mlp(features))


def build_decoder(
    kind: str,
    image_shape: ImageShape,
    settings: HeadSettings,
    *,
    input_dim: int | None = None,
    aggregation: str | None = None,
    num_subspaces: int | None = None,
    num_anchors: int | None = None,
    architecture: str = DEFAULT_ARCHITECTURE,
    base_channels: int = DEFAULT_BASE_CHANNELS,
    seed: int | None = None,
) -> ReconstructionDecoder:
    """Give a new (untrained) decoder: relative with an aggregation over (n, k), or absolute over D.

    The arguments mean what they mean for :func:`stitchcli.heads.build_classifier`; ``architecture`` is one of
    :func:`list_decoder_architectures` and ``base_channels`` deconv's width. With ``seed`` the initial weights
    come from a generator seeded with it (torch's global random state is left as it was).
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_decoder(kind, image_shape, settings, input_dim=input_dim, aggregation=aggregation, num_subspaces=num_subspaces,
                                 num_anchors=num_anchors, architecture=architecture, base_channels=base_channels)
    options: dict[str, Any] = dict(architecture=architecture, base_channels=base_channels)
    if kind == "relative":
        if aggregation is None or num_subspaces is None or num_anchors is None:
            raise ValueError("a relative decoder needs aggregation, num_subspaces and num_anchors")
        phi = build_aggregation(aggregation, num_subspaces, num_anchors)
        return ReconstructionDecoder(phi.output_size, image_shape, settings, aggregation=phi, **options)
    if kind == "absolute":
        if input_dim is None:
            raise ValueError("an absolute decoder needs input_dim")
        return ReconstructionDecoder(input_dim, image_shape, settings, **options)
    raise ValueError(f"unknown head kind {kind!r}")


def decoder_config(module: ReconstructionDecoder) -> dict[str, Any]:
    """Give the config fields a saved reconstruction head needs beyond a classification head's.

    ``task``, ``image_shape`` ([C, H, W]) and ``decoder`` (architecture and base channels): merge them into the
    head's config (kind, projections, aggregation, num_anchors, input_dim, settings… as for classification).
    """
    return {
        "task": TASK,
        "image_shape": module.image_shape.as_list(),
        "decoder": {"architecture": module.architecture, "base_channels": module.base_channels},
    }


def decoder_from_config(config: dict[str, Any], settings: HeadSettings) -> ReconstructionDecoder:
    """Give the untrained decoder a saved reconstruction head's config describes (``load_head`` fills its tensors)."""
    decoder = dict(config.get("decoder") or {})
    architecture = str(decoder.get("architecture"))
    if architecture not in _ARCHITECTURES:
        raise UsageError(f"the head's decoder architecture {architecture!r} is not one this stitchcli knows ({', '.join(_ARCHITECTURES.names())}): update stitchcli, or train it again")
    return build_decoder(
        str(config["kind"]),
        image_shape_of(config),
        settings,
        input_dim=config.get("input_dim"),
        aggregation=config.get("aggregation"),
        num_subspaces=len(config.get("projections") or ()) or None,
        num_anchors=config.get("num_anchors"),
        architecture=architecture,
        base_channels=int(decoder.get("base_channels", DEFAULT_BASE_CHANNELS)),
    )


@dataclass(kw_only=True)
class ReconstructionRecord(TrainingRun):
    """A reconstruction head's training: the run, and the mean squared errors of the kept weights."""

    train_mse: float
    val_mse: float


def validation_split(rows: int, labels: np.ndarray | None, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Give (train positions, validation positions) of ``rows`` rows, seeded.

    With labels, the class-stratified split classification heads use (so both tasks hold out the same rows);
    without, a random ``fraction`` of the rows (at least one, leaving at least one).
    """
    if labels is not None:
        return stratified_split(np.asarray(labels, dtype=np.int64), fraction, seed)
    count = min(rows - 1, max(1, int(round(fraction * rows))))
    held = np.sort(np.random.default_rng(seed).choice(rows, size=max(count, 0), replace=False))
    return np.setdiff1d(np.arange(rows), held), held


def train_decoder(
    module: ReconstructionDecoder,
    features: torch.Tensor,
    images: torch.Tensor,
    settings: HeadSettings,
    *,
    seed: int,
    labels: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> ReconstructionRecord:
    """Give the training record after training ``module`` in place to rebuild ``images`` from ``features``.

    MSE loss, Adam, early stopping on the validation MSE (``settings.patience`` epochs without a lower one),
    and the weights of the best epoch kept; the validation part is :func:`validation_split`'s. Shuffling and
    dropout draw from generators seeded with ``seed`` (torch's global random state is left as it was).

    Args:
        module: a fresh decoder (see :func:`build_decoder`, whose ``seed`` fixes the initial weights).
        features: (N, n, k) product-space values or (N, D) latents of the training rows.
        images: (N, C, H, W) targets in [0, 1] of the same rows, in the same order (the module's image shape).
        settings: the training settings.
        seed: the seed of the validation split, shuffling and dropout.
        labels: (N,) classes of the rows, to hold out a class-stratified validation part; None for a random one.
        device: where to train.
        progress: called after every epoch with (epoch, its curve point: train_loss, val_loss as MSE).

    Raises:
        UsageError: fewer than two rows (no validation part).
    """
    started = time.perf_counter()
    device = torch.device(device)
    if len(features) != len(images):
        raise ValueError(f"{len(features)} feature rows but {len(images)} images")
    if tuple(images.shape[1:]) != tuple(module.image_shape.as_list()):
        raise ValueError(f"the decoder outputs {module.image_shape.as_list()} images, the targets are {list(images.shape[1:])}")
    if len(images) < 2:
        raise UsageError(f"a reconstruction head needs a validation part for early stopping, and {len(images)} training row gives none: embed more rows")
    train_rows, val_rows = validation_split(len(images), labels, settings.val_fraction, seed)
    if len(val_rows) == 0:
        raise UsageError(f"a reconstruction head needs a validation part for early stopping, and {len(images)} training rows give none: embed more rows")
    x = torch.as_tensor(features).to(device=device, dtype=torch.float32)
    y = torch.as_tensor(images).to(device=device, dtype=torch.float32)
    fit = fit_with_early_stopping(module, x, y, train_rows, val_rows, settings, seed=seed, loss_fn=nn.MSELoss(), progress=progress)
    kept = torch.as_tensor(train_rows, device=device)
    train_mse = float(((reconstruct(module, x[kept]) - y[kept].cpu()) ** 2).mean())
    return ReconstructionRecord.of(fit, train_rows, val_rows, started, train_mse=train_mse, val_mse=fit.val_loss)


@torch.no_grad()
def reconstruct(module: nn.Module, features: torch.Tensor | np.ndarray, *, batch_size: int = 1024) -> torch.Tensor:
    """Give the (N, C, H, W) images ``module`` rebuilds from ``features`` ((N, n, k) or (N, D)), on the CPU, in batches."""
    device = next(module.parameters()).device
    x = torch.as_tensor(features)
    was_training = module.training
    module.eval()
    out = [module(x[i : i + batch_size].to(device=device, dtype=torch.float32)).cpu() for i in range(0, len(x), batch_size)]
    module.train(was_training)
    if not out:
        shape = getattr(module, "image_shape", None)
        return torch.zeros((0, *(shape.as_list() if shape is not None else (0, 0, 0))))
    return torch.cat(out)
