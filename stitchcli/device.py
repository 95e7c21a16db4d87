"""Device and precision: one helper decides where a model runs and how it computes."""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, ContextManager

from stitchcli.errors import UsageError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")


def check_device_name(name: str) -> str:
    """Give ``name`` back if it names a device kind stitchcli knows (no torch import), else raise a UsageError."""
    if name not in DEVICES and not re.fullmatch(r"cuda:(0|[1-9][0-9]*)", name, re.ASCII):
        raise UsageError(f"unknown device {name!r}: use one of {', '.join(DEVICES)} (or cuda:N)")
    return name


def resolve_device(name: str = "auto") -> "torch.device":
    """Give the torch device for ``auto|cpu|cuda|mps|cuda:N``; auto picks cuda, then mps, then cpu."""
    check_device_name(name)
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = name.split(":", 1)[0]
    if base == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for, but no CUDA GPU is visible: use --device cpu or auto")
    if base == "cuda" and ":" in name and int(name.split(":", 1)[1]) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UsageError(
            f"--device {name} asked for, but {count} CUDA GPU{'s are' if count != 1 else ' is'} visible "
            f"(cuda:0 to cuda:{count - 1}): choose one of them, or --device cuda (check CUDA_VISIBLE_DEVICES)"
        )
    if base == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise UsageError(f"--device {name} asked for, but MPS is not available: use --device cpu or auto")
    return torch.device(name)


def check_precision_name(precision: str) -> str:
    """Give ``precision`` back if it is one stitchcli knows, else raise a UsageError listing them."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision


def check_precision(precision: str, device: "torch.device | str") -> str:
    """Give ``precision`` back if the device (a torch.device or a device name) can run it, else raise a UsageError."""
    check_precision_name(precision)
    device_type = getattr(device, "type", str(device).split(":", 1)[0])
    if precision == "fp16" and device_type == "cpu":
        raise UsageError("--precision fp16 needs a GPU; on the CPU use bf16 or fp32")
    return precision


def autocast(device: "torch.device", precision: str) -> ContextManager[object]:
    """Give the autocast context for a precision (a no-op for fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


_OUT_OF_MEMORY_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "cublas_status_alloc_failed")


def is_out_of_memory(exc: BaseException) -> bool:
    """Tell whether an exception raised by a forward pass means the batch did not fit in memory.

    torch's OutOfMemoryError (CUDA), a plain MemoryError, or a RuntimeError from an allocator that says so:
    the CPU's ("DefaultCPUAllocator: can't allocate memory"), MPS's ("MPS backend out of memory"), cuBLAS's.
    As timm's ``check_batch_size_retry``, an illegal memory access is not retried: it leaves CUDA unusable.
    """
    import torch

    if isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError), torch.cuda.OutOfMemoryError)):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return "illegal" not in text and any(marker in text for marker in _OUT_OF_MEMORY_MARKERS)
