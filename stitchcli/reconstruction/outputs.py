"""``--save-outputs DIR``: the reconstructions of every row as safetensors, one file per row.

A file is named ``ENCODER--DECODER--METHOD.safetensors``: METHOD is the row's method, and for relative rows
``relative-`` followed by its projections joined with ``+`` (``relative-cosine+euclidean``); an aggregation
is appended as ``@AGGREGATION`` only when the caller asks (a sweep over several aggregations), so the common
case keeps the short name. Characters other than letters, digits, ``.``, ``_``, ``+``, ``@`` and ``-`` in a name
(a hub id's ``/``) become ``_``. It holds ``images`` (N×C×H×W float32 in [0, 1]) and ``ids`` (int64, the
rows' ids in the evaluation split), and a JSON metadata document saying which row it is; any safetensors
reader opens it (``safetensors.torch.load_file``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

OUTPUT_SUFFIX = ".safetensors"


def file_safe(name: str) -> str:
    """Give ``name`` with every character a file name should not hold replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._+@-]+", "_", name).strip("_") or "_"


def method_label(method: str, projections: Sequence[str] = (), aggregation: str | None = None) -> str:
    """Give a row's METHOD as file names show it: ``relative-cosine+euclidean``, ``affine``, …, ``@AGG`` when given."""
    label = f"{method}-{'+'.join(projections)}" if method == "relative" and projections else method
    return f"{label}@{aggregation}" if aggregation else label


def output_file_name(encoder: str, decoder: str, method: str, projections: Sequence[str] = (), aggregation: str | None = None) -> str:
    """Give ``ENCODER--DECODER--METHOD.safetensors`` for one row (see the module docstring)."""
    return f"{file_safe(encoder)}--{file_safe(decoder)}--{file_safe(method_label(method, projections, aggregation))}{OUTPUT_SUFFIX}"


def save_reconstructions(
    folder: str | Path,
    encoder: str,
    decoder: str,
    method: str,
    images: torch.Tensor,
    ids: np.ndarray,
    *,
    projections: Sequence[str] = (),
    aggregation: str | None = None,
    name_aggregation: bool = False,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Give the path of the file written for one row: ``images`` (N, C, H, W) in [0, 1] and their row ``ids``.

    Args:
        folder: the ``--save-outputs`` folder (created when missing).
        encoder, decoder, method, projections: the row's, as in its JSON.
        images: the reconstructions, one per id.
        ids: the rows' ids in the evaluation split.
        aggregation: the row's aggregation, recorded in the metadata.
        name_aggregation: also put the aggregation in the file name (when several are swept).
        metadata: more JSON-ready facts to record (dataset, split, seed of the head…).
    """
    from stitchcli.store import write_safetensors

    images = torch.as_tensor(images, dtype=torch.float32)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if images.ndim != 4 or len(images) != len(ids):
        raise ValueError(f"expected (N, C, H, W) images and N ids, got {tuple(images.shape)} and {len(ids)}")
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / output_file_name(encoder, decoder, method, projections, aggregation if name_aggregation else None)
    document = {
        "encoder": encoder,
        "decoder": decoder,
        "method": method,
        "projections": list(projections),
        "aggregation": aggregation,
        "image_shape": list(images.shape[1:]),
        **(metadata or {}),
    }
    write_safetensors(path, {"images": images.contiguous().numpy(), "ids": ids}, document)
    return path
