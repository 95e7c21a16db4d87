"""stitchcli: zero-shot stitching of pretrained encoders with product-space relative representations.

Importing this package only defines things; heavy libraries (torch, timm, transformers, open_clip,
datasets) are imported inside the functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from stitchcli.errors import StitchError, UsageError, WorkError

__all__ = ["StitchError", "UsageError", "WorkError", "__version__"]
