"""Images as every model receives them: decoded, upright, in 8-bit RGB.

Done here, in the data layer, so each model of a comparison sees the same pixels:

- EXIF orientation is applied (``ImageOps.exif_transpose``): a photo is seen upright, as a viewer shows
  it, as ``datasets``' Image feature and transformers' ``load_image`` decode it.
- Transparency (RGBA, LA, PA, a palette or grey image with a transparent colour) is composited onto a
  white background, as transformers' ``convert_to_rgb`` does; dropping the alpha channel instead would
  show whatever colour the transparent pixels happen to store (often black, hiding a black drawing).
- 16-bit grey (``I;16`` PNG and TIFF, and 32-bit ``I``) is scaled from 0..65535 to 0..255 (value / 257);
  Pillow's own conversion clips it at 255 and gives a white image. Float images (``F``) in [0, 1] are
  scaled by 255, others clipped to 0..255, as arrays are.
- Every other mode (1-bit, grey, palette, CMYK, YCbCr) is converted by Pillow (CMYK without a colour
  profile: the plain formula).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stitchcli.data.base import first_line, printable
from stitchcli.errors import UsageError

if TYPE_CHECKING:
    from PIL import Image

_ORIENTATION = 0x0112  # the EXIF tag; 1 means upright
_WHITE = (255, 255, 255, 255)
# Images are decoded only while embedding, which keeps the shards it finished: say so, since a bad
# file is often found hours into a run.
SHARDS_KEPT = " (finished shards are kept and reused)"
"""The end of an undecodable image's message, which is true of embed's shards only (predict keeps nothing)."""
_FIX = "fix or remove it, then run the same command again" + SHARDS_KEPT


def to_rgb_image(value: Any, base_dir: str | None = None) -> "Image.Image":
    """Give an upright 8-bit RGB PIL image from a PIL image, array, encoded bytes, a path or a {"bytes","path"} record.

    Relative paths are taken relative to ``base_dir`` (the folder of the table file that names them).
    """
    from PIL import Image

    if isinstance(value, Image.Image):
        return as_rgb(value, "an image value")
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return open_image(io.BytesIO(bytes(value)), "an encoded image value in the dataset")
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.is_file():
            raise UsageError(f"image file {printable(path)} does not exist (or is not a file); fix the path in the dataset")
        return open_image(path, f"image file {printable(path)}")
    if isinstance(value, np.ndarray):
        array = value
        if array.dtype.kind not in "biuf" or array.ndim not in (2, 3) or array.size == 0:
            raise UsageError(f"cannot read an image from an array of shape {array.shape} ({array.dtype}); pass an image --input-column")
        if array.dtype != np.uint8:
            array = _to_uint8(array)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        try:
            image = Image.fromarray(array)
        except (TypeError, ValueError):
            raise UsageError(f"cannot read an image from an array of shape {value.shape}; pass an image --input-column") from None
        return as_rgb(image, "an image array in the dataset")
    raise UsageError(f"cannot read an image from a {type(value).__name__} value; pass an image --input-column")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Give 8-bit pixel values: 16-bit ones scaled (value / 257), floats in [0, 1] times 255, others clipped."""
    if array.dtype == np.uint16:
        return np.round(array / 257.0).astype(np.uint8)
    floats = array.dtype.kind == "f"
    array = np.nan_to_num(np.asarray(array, dtype=np.float64))
    if floats and float(array.max()) <= 1.0:
        array = array * 255.0  # float images in [0, 1]
    return np.clip(array, 0, 255).astype(np.uint8)


def image_errors() -> tuple[type[BaseException], ...]:
    """Give what Pillow raises for a file that is not a readable image.

    UnidentifiedImageError and truncated data are OSErrors, an image that claims billions of pixels a
    DecompressionBombError, a mode it cannot convert a ValueError.
    """
    from PIL import Image

    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def as_rgb(image: "Image.Image", what: str) -> "Image.Image":
    """Give ``image`` upright in 8-bit RGB (see the module docstring); UsageError naming ``what`` when it cannot be."""
    try:
        return _upright_rgb(image)
    except image_errors() as exc:
        raise UsageError(f"cannot convert {what} (mode {image.mode}) to RGB: {first_line(exc)}; fix or remove it") from None


def _upright_rgb(image: "Image.Image") -> "Image.Image":
    from PIL import Image, ImageOps

    if _orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode == "I" or mode.startswith("I;16"):
        pixels = np.clip(np.asarray(image, dtype=np.int64), 0, 65535).astype(np.uint16)
        return Image.fromarray(_to_uint8(pixels)).convert("RGB")
    if mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image))).convert("RGB")
    if {"A", "a"} & set(image.getbands()) or "transparency" in image.info:  # "a": premultiplied alpha (RGBa, La)
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return image.convert("RGB")


def _orientation(image: "Image.Image") -> int:
    """Give the EXIF orientation (1 = as stored); a damaged EXIF block leaves the image as stored, not refused."""
    try:
        return int(image.getexif().get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - Pillow's EXIF parser raises struct, type and value errors on bad blocks
        return 1


def open_image(source: Any, what: str) -> "Image.Image":
    """Give the upright RGB image decoded from a path or file object; UsageError naming ``what`` when it is not one."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            image.load()  # decodes the whole file: a truncated one fails here
            rgb = _upright_rgb(image)
            return rgb if rgb is not image else image.copy()  # a copy outlives the file
    except UnidentifiedImageError:
        empty = (isinstance(source, Path) and source.stat().st_size == 0) or (
            isinstance(source, io.BytesIO) and not source.getbuffer().nbytes
        )
        reason = "it is empty" if empty else "not an image format Pillow reads"
        raise UsageError(f"cannot decode {what}: {reason}; {_FIX}") from None
    except image_errors() as exc:
        raise UsageError(f"cannot decode {what}: {first_line(exc)}; {_FIX}") from None
