"""stitchcli: zero-shot stitching of pretrained encoders with product-space relative representations.

Importing this package only defines things; heavy libraries (torch, timm, transformers, open_clip,
datasets) are imported inside the functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

import os
from typing import TYPE_CHECKING

from stitchcli.errors import StitchError, UsageError, WorkError

if TYPE_CHECKING:
    from stitchcli.stitched.model import StitchedModel

__all__ = ["StitchError", "UsageError", "WorkError", "__version__", "load_stitched"]


def load_stitched(directory: str | os.PathLike[str]) -> StitchedModel:
    """Give the stitched model saved by ``stitchcli stitch ... --save DIR`` (see :mod:`stitchcli.stitched`)."""
    from stitchcli.stitched import load_stitched as load

    return load(directory)
