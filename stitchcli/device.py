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


# glibc malloc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_ALLOCATOR_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def keep_freed_memory_for_reuse(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Make this process's glibc malloc serve blocks under ``mmap_threshold`` bytes from its heap and keep up
    to ``trim_threshold`` bytes of freed heap for reuse; give whether the mmap threshold asked for was set
    (glibc before 2.35 caps it at 32 MiB: that is set instead, and False given).

    A forward pass on the CPU allocates its activations anew on every batch, and glibc serves blocks over
    32 MB (and, until its adaptive threshold has grown, smaller ones) with a fresh mmap, so every batch pays
    for faulting in and zeroing pages it had just freed. With these settings the bare forward of
    vit_small_patch16_224 at batch 32 on 2 cores ran 1.23x faster in fp32 (1.03x in bf16, whose blocks are
    half the size; benchmarks/embed_throughput.py, docs/PERFORMANCE.md). The price: freed memory below the
    trim threshold stays with the process instead of going back to the system (the peak of ``embed`` was
    measured unchanged and flat in the dataset size). Nothing is changed where the C library is not glibc, or
    where the user set glibc's malloc variables or preloads another allocator (jemalloc, tcmalloc) in the
    environment. The command line does this once at start; library users may call it.

    Raises:
        ValueError: a threshold outside 0 to 2**31 - 1 (mallopt takes a C int).
    """
    import os

    for value in (mmap_threshold, trim_threshold):
        if not 0 <= int(value) < 1 << 31:
            raise ValueError(f"malloc thresholds are C ints (0 to 2**31 - 1 bytes), not {value}")
    if (any(os.environ.get(name) for name in _ALLOCATOR_ENVIRONMENT) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
            or "malloc" in os.environ.get("LD_PRELOAD", "")):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except Exception:  # not glibc (macOS, Windows, musl: confstr has no such name), or no ctypes
        return False
    libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))
    if libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)):
        return True
    libc.mallopt(_M_MMAP_THRESHOLD, min(int(mmap_threshold), 32 << 20))  # the most an older glibc takes
    return False


def cpu_flags_line() -> str:
    """Give the line of /proc/cpuinfo that lists the CPU's instruction-set flags ("flags" on x86, "Features"
    on Arm), or "" where there is none to read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""
