"""Reading a local weights file (``--weights FILE``) without running any code it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stitchcli.encoders.base import short_reason


class UnreadableWeights(ValueError):
    """A weights file that is neither safetensors nor a torch checkpoint of plain tensors; the message says why."""


def read_weights_file(path: Path) -> Any:
    """Give what a local weights file holds, read without running any of its code: safetensors, or a torch
    checkpoint through ``torch.load(weights_only=True)`` (the extension picks which is tried first).

    Raises:
        UnreadableWeights: neither; a pickle that would build arbitrary Python objects (and so could run code)
            is refused as such, never unpickled.
    """
    readers = [_read_safetensors_weights, _read_torch_weights]
    if path.suffix != ".safetensors":
        readers.reverse()
    errors: list[BaseException] = []
    for reader in readers:
        try:
            return reader(path)
        except Exception as exc:  # any parse failure means "not this format"
            errors.append(exc)
    if any("weights only load failed" in str(exc).lower() for exc in errors):
        raise UnreadableWeights(
            "it is a pickle that would build Python objects beyond tensors (and so could run code): torch.load with "
            "weights_only=True refused it, and stitchcli loads weights no other way; save the state dict as safetensors"
        )
    raise UnreadableWeights(short_reason(errors[0]))


def _read_safetensors_weights(path: Path) -> Any:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def _read_torch_weights(path: Path) -> Any:
    import warnings

    import torch

    with warnings.catch_warnings():  # e.g. torch's note on a pickle protocol: the refusal, if any, says enough
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)
