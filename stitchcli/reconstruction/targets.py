"""Pixel targets: the images of a split's rows, at one size, as an (N, C, H, W) float tensor in [0, 1].

Size: by default the dataset's own, read from the first requested row's image (MNIST: 28×28), scaled down
with its aspect ratio kept so that its longer side is at most :data:`MAX_SIDE` (a 128×96 photo becomes
64×48); every image is then resized to exactly that size (bilinear, antialiased by Pillow when shrinking),
so an image whose aspect differs from the first one's is stretched, not cropped or padded. An explicit
``size`` overrides it.

Channels: 1 when every loaded image is grey (its R, G and B differ by at most :data:`GREY_TOLERANCE` levels
of 255 anywhere: lossless grey images decoded to RGB have R = G = B exactly, and the tolerance lets JPEG's
colour noise in grey photos pass), else 3. The loaders hand every image over as RGB, so the source's own
mode is not available; testing the pixels is both robust and cheap next to decoding. A grey target is the
luma ``0.299 R + 0.587 G + 0.114 B`` (Pillow's ``convert("L")``), which is each channel's value when they agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from stitchcli.errors import UsageError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from stitchcli.data import DatasetSpec, SplitData

MAX_SIDE = 64
"""The longest image side a default target size keeps (larger images are scaled down to it)."""

GREY_TOLERANCE = 2
"""How far (in levels of 255) R, G and B of a pixel may differ for its image to count as grey."""

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
_CHUNK = 512  # images decoded per fetch: bounds the PIL images held at once


@dataclass(frozen=True)
class ImageShape:
    """The shape of a reconstruction target: channels (1 or 3), height and width in pixels."""

    channels: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.channels not in (1, 3) or self.height < 1 or self.width < 1:
            raise ValueError(f"an image shape needs 1 or 3 channels and a positive size, got {self.as_list()}")

    def as_list(self) -> list[int]:
        """Give [C, H, W] (the form head configs and output files store)."""
        return [self.channels, self.height, self.width]

    @classmethod
    def from_list(cls, values: Sequence[int]) -> ImageShape:
        """Give the shape stored as [C, H, W]."""
        channels, height, width = (int(v) for v in values)
        return cls(channels, height, width)


@dataclass
class PixelTargets:
    """Images of some rows of a split, ready to train or score a decoder.

    Attributes:
        images: (N, C, H, W) float32 in [0, 1], row i is the image of ``ids[i]``.
        ids: (N,) row ids in the split (the ids the embedding cache stores), in the order asked for.
        labels: (N,) class indices of those rows.
    """

    images: torch.Tensor
    ids: np.ndarray
    labels: np.ndarray

    @property
    def shape(self) -> ImageShape:
        """The images' (C, H, W)."""
        return ImageShape(*(int(v) for v in self.images.shape[1:]))


def default_image_size(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """Give (height, width): the image's own size, scaled down with its aspect kept to at most ``max_side`` a side."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def parse_image_size(text: str) -> tuple[int, int]:
    """Give (height, width) from ``"28"`` (square) or ``"HxW"`` (``"64x48"``); UsageError otherwise.

    For a command-line option such as ``--image-size``.
    """
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?", text)
    if match is None or int(match.group(1)) < 1 or (match.group(2) is not None and int(match.group(2)) < 1):
        raise UsageError(f"--image-size {text!r} is not a size: give N (square) or HxW in pixels, e.g. 28 or 64x48")
    height = int(match.group(1))
    return height, int(match.group(2)) if match.group(2) is not None else height


def is_grey(rgb: np.ndarray, tolerance: int = GREY_TOLERANCE) -> bool:
    """Tell whether an (H, W, 3) uint8 image has R, G and B within ``tolerance`` of each other everywhere."""
    wide = rgb.astype(np.int16)
    return int(np.abs(wide[..., 0] - wide[..., 1]).max()) <= tolerance and int(np.abs(wide[..., 1] - wide[..., 2]).max()) <= tolerance


def require_images(data: SplitData, dataset: str) -> None:
    """Refuse a split that holds no images (UsageError, one line): reconstruction needs a pixel target."""
    if data.modality != "image":
        raise UsageError(
            f"dataset {dataset!r} holds {data.modality}, and --task reconstruction rebuilds images (there is no pixel target): "
            "use an image dataset, or --task classification"
        )


def require_image_dataset(dataset: DatasetSpec | str, split: str = "train") -> None:
    """Refuse a dataset whose ``split`` holds no images (UsageError, one line), before any model work.

    Reads the split's labels and column types only (what :func:`stitchcli.data.load_split` reads), no image.
    """
    from stitchcli.data import load_split, resolve_dataset

    spec = resolve_dataset(dataset) if isinstance(dataset, str) else dataset
    require_images(load_split(spec, split), spec.name)


def load_pixel_targets(
    dataset: DatasetSpec | str,
    split: str,
    ids: Sequence[int] | np.ndarray | None = None,
    *,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> PixelTargets:
    """Give the images of rows ``ids`` of ``split`` as (N, C, H, W) floats in [0, 1].

    Args:
        dataset: a spec from :func:`stitchcli.data.resolve_dataset`, or a name it accepts (a local folder,
            an alias, a hub id; ``packaged:`` names must be turned into their folder first).
        split: the split name.
        ids: row ids in the split (as the embedding cache stores them), in the order wanted; None for every row.
        size: (height, width); None for the default (the first requested image's own size, at most
            :data:`MAX_SIDE` a side). Pass a head's size when scoring it so targets and outputs agree.
        channels: 1 or 3; None to detect (1 when every requested image is grey). Pass a head's channels
            when scoring it.

    Raises:
        UsageError: a text dataset, an unknown split, an id that is not a row of the split, a bad size.
    """
    import torch

    from stitchcli.data import load_split, resolve_dataset

    spec = resolve_dataset(dataset) if isinstance(dataset, str) else dataset
    data = load_split(spec, split)
    require_images(data, spec.name)
    rows = np.arange(len(data), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(rows) == 0:
        raise UsageError(f"no rows of {spec.name!r}/{split} were asked for: reconstruction targets need at least one")
    bad = rows[(rows < 0) | (rows >= data.num_rows_in_split)]
    if len(bad):
        raise UsageError(f"row id {int(bad[0])} is not a row of {spec.name!r}/{split} ({data.num_rows_in_split} rows): use the ids the embeddings hold")
    if channels not in (None, 1, 3):
        raise UsageError(f"reconstruction targets have 1 (grey) or 3 (RGB) channels, not {channels}")
    if size is not None and (size[0] < 1 or size[1] < 1):
        raise UsageError(f"--image-size {size[0]}x{size[1]} is not a size: give positive pixels")
    rgb: np.ndarray | None = None
    grey = True
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        images = data.fetch([int(i) for i in chunk])
        if rgb is None:
            size = size or default_image_size(*images[0].size)
            rgb = np.empty((len(rows), size[0], size[1], 3), dtype=np.uint8)
        for offset, image in enumerate(images):
            array = _resized_rgb(image, size)
            grey = grey and is_grey(array)
            rgb[start + offset] = array
    assert rgb is not None
    channels = channels or (1 if grey else 3)
    if channels == 1:
        pixels = np.rint(rgb.astype(np.float64) @ _LUMA)[:, None].astype(np.float32) / 255.0  # (N, 1, H, W)
    else:
        pixels = rgb.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    labels = np.asarray(data.labels, dtype=np.int64)[rows]  # load_split without limit: position = row id
    return PixelTargets(torch.from_numpy(np.ascontiguousarray(pixels)), rows, labels)


def _resized_rgb(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Give an RGB image as an (H, W, 3) uint8 array of ``size`` (height, width)."""
    from PIL import Image

    image = image if image.mode == "RGB" else image.convert("RGB")
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def image_shape_of(config: dict[str, Any]) -> ImageShape:
    """Give the image shape a reconstruction head's config stores (``image_shape``: [C, H, W])."""
    try:
        return ImageShape.from_list(config["image_shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"the head's config has no valid image_shape ({exc}): train it again with `stitchcli fit-head --task reconstruction`") from None
