"""How cache entries are identified: canonical JSON for hashing, file-system-safe names, and the entry key."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
LAYER_POOLING_VERSION = 2
"""How intermediate layers are pooled (stitchcli/encoders/layers.py), in the key of every layer entry: raised when
that changes, so that entries pooled the old way are not read as the new. 2: a transformers model's embeddings
layer by the mean of its tokens (its class token is the same for every input), a distilled DeiT's class and
distillation tokens together, Swin's reshaped maps and SigLIP's patch tokens by their mean, CrossViT's layers
named apart."""


def canonical_json(data: Any) -> str:
    """Give a deterministic JSON text (sorted keys, no spaces) for hashing."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def slug(text: str, max_len: int = 80) -> str:
    """Give a file-system-safe name for a model or dataset name (long or path-like names get a hash)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"
    if cleaned != text or len(cleaned) > max_len:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        cleaned = f"{cleaned[: max_len - 9]}-{digest}"
    return cleaned


@dataclass(frozen=True)
class EntryKey:
    """What identifies one cache entry: the model's key, the dataset's identity, the split and subset, and the layer.

    ``layer`` names one intermediate layer's pooled representation (``embed --layers``); None is the model's
    final representation. It enters the key (hence the digest) only when set, with :data:`LAYER_POOLING_VERSION`,
    so entries of final representations keep the keys they always had.
    """

    model: dict[str, Any]
    dataset_id: str
    dataset_fingerprint: str
    split: str
    limit: int | None = None
    limit_seed: int | None = None
    columns: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Give the key as a JSON-ready dict, with the schema version (and the layer when there is one)."""
        layer = {} if self.layer is None else {"layer": self.layer, "layer_pooling": LAYER_POOLING_VERSION}
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "dataset_id": self.dataset_id,
            "dataset_fingerprint": self.dataset_fingerprint,
            "split": self.split,
            "limit": self.limit,
            "limit_seed": self.limit_seed,
            "columns": self.columns,
            **layer,
        }

    @property
    def digest(self) -> str:
        """Give the first 16 hex digits of the key's SHA-256."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()[:16]
