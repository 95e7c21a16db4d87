"""A relative projection streamed into a file (.npy or .safetensors), chunk by chunk, never whole in memory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from stitchcli.errors import UsageError
from stitchcli.relative.projections import DEFAULT_MEMORY_BUDGET, ArrayLike, ProjectionJob, prepare_job
from stitchcli.relative.transforms import Transform
from stitchcli.store import atomic_file, write_safetensors_streamed


def relative_projection_to_file(
    x: ArrayLike,
    anchors: ArrayLike,
    projection: str,
    path: str | os.PathLike[str],
    *,
    chunk_size: int | None = None,
    transform: str | Transform | None = None,
    device: str | torch.device | None = None,
    kernel: str = "auto",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Give the path of a file holding ``relative_projection(x, anchors, projection)``, written chunk by chunk.

    The output never has to fit in memory. ``.npy`` writes a numpy array, through a memory map of the file;
    ``.safetensors`` writes one tensor named after the projection, streamed block by block through stitchcli's
    safetensors writer (so it carries its checksums, see :mod:`stitchcli.store.safetensors_io`), with
    ``metadata`` (string values) plus ``projection``, ``transform``, ``num_samples`` and ``num_anchors`` in its
    header. The file is written under a temporary name and renamed when complete, so a file at ``path`` is
    never partial.

    Raises:
        UsageError: the suffix is neither ``.npy`` nor ``.safetensors``, or as
            :func:`~stitchcli.relative.projections.relative_projection`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".safetensors"):
        raise UsageError(f"cannot write {path.name}: the relative representation goes to a .npy or .safetensors file")
    job = prepare_job(
        x, anchors, projection, chunk_size=chunk_size, transform=transform, device=device, kernel=kernel,
        memory_budget=memory_budget,
    )
    n, k = job.shape
    np_dtype = np.dtype("<f8" if job.dtype == torch.float64 else "<f4")
    if suffix == ".safetensors":
        header_meta = {
            **(metadata or {}),
            "projection": projection,
            "transform": job.transform.name if job.transform is not None else "none",
            "num_samples": str(n),
            "num_anchors": str(k),
        }
        tensors = [(projection, np_dtype, (n, k), _numpy_blocks(job))]
        write_safetensors_streamed(path, tensors, {}, extra_metadata=header_meta)
        return path
    with atomic_file(path) as partial:
        array = _npy_target(Path(partial), np_dtype, (n, k))
        job.fill(array)
        if isinstance(array, np.memmap):
            array.flush()
        del array
    return path


@torch.no_grad()
def _numpy_blocks(job: ProjectionJob) -> Iterator[np.ndarray]:
    """Yield the job's result as numpy row blocks on the CPU, in order."""
    for _, block in job.blocks():
        yield block.cpu().numpy()


def _npy_target(path: Path, dtype: np.dtype, shape: tuple[int, int]) -> np.ndarray:
    """Give a writable memory map of a new .npy file at ``path`` (an empty result is written at once)."""
    if shape[0] == 0:
        with open(path, "wb") as handle:
            np.save(handle, np.empty(shape, dtype))
        return np.empty(shape, dtype)
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
