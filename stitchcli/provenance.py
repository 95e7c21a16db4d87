"""The library versions recorded beside every cache entry and head, so a result says what produced it."""

from __future__ import annotations

import importlib.metadata
import platform

_VERSIONED = ("stitchcli", "torch", "timm", "transformers", "open_clip_torch", "datasets", "safetensors", "numpy")


def library_versions() -> dict[str, str]:
    """Give the versions of the libraries that shape the embeddings (read from metadata, no imports)."""
    versions = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
