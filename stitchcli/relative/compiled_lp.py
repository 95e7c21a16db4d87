"""The compiled L1/L∞ kernel: a small C loop built with the system's C compiler on first use.

:func:`compiled_lp` gives the (b, k) L1 or L∞ distances between samples and anchors through it; the library is
built once per CPU instruction set and compiler into the stitchcli cache folder (``kernels/``) and loaded with
ctypes. Where no compiler works, :func:`lp_library` raises RuntimeError, and the reason is remembered so that
``auto`` stops trying (:func:`kernel_failed`).

Plain C loops, no torch headers, so it builds quickly; threads come from Python (ctypes releases the GIL), so no
second OpenMP runtime enters the process. torch.compile generates about the same loop, but importing dynamo and
inductor alone keeps about 0.2 GB resident, which the projections' memory bound cannot spare (see
docs/PERFORMANCE.md).
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

# Each call walks tiles of ``rows_block`` samples × ``anchors_block`` anchors, sized (by _lp_blocks) so that a
# tile's rows and anchors stay in the core's L2 cache while every pair of them is computed: without tiles,
# every sample streams all k anchors from L3 or memory (3.9 MB at 1,280 × 768 float32), several times slower
# (see docs/PERFORMANCE.md). Within a tile, two samples against four anchors at a time: eight running sums (or
# maxima) in vector registers from six loads per element, vectorised over the latent dimension.
_LP_TILE = r"""
static void {name}(const {T}* x, const {T}* a, {T}* out, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                   int64_t k, int64_t d) {{
    int64_t i = i0;
    for (; i + 2 <= i1; i += 2) {{
        const {T} *x0 = x + i * d, *x1 = x0 + d;
        int64_t j = j0;
        for (; j + 4 <= j1; j += 4) {{
            const {T} *a0 = a + j * d, *a1 = a0 + d, *a2 = a1 + d, *a3 = a2 + d;
            {T} s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
            #pragma omp simd reduction({op}:s00,s01,s02,s03,s10,s11,s12,s13)
            for (int64_t t = 0; t < d; t++) {{
                {T} u = x0[t], v = x1[t], b0 = a0[t], b1 = a1[t], b2 = a2[t], b3 = a3[t];
                {acc_u}
                {acc_v}
            }}
            {T} *o0 = out + i * k + j, *o1 = o0 + k;
            o0[0] = s00; o0[1] = s01; o0[2] = s02; o0[3] = s03;
            o1[0] = s10; o1[1] = s11; o1[2] = s12; o1[3] = s13;
        }}
        for (; j < j1; j++) {{
            const {T}* a0 = a + j * d;
            {T} s00 = 0, s10 = 0;
            #pragma omp simd reduction({op}:s00,s10)
            for (int64_t t = 0; t < d; t++) {{
                {T} u = x0[t], v = x1[t], b0 = a0[t];
                {acc_one}
            }}
            out[i * k + j] = s00; out[(i + 1) * k + j] = s10;
        }}
    }}
    for (; i < i1; i++) {{
        const {T}* x0 = x + i * d;
        for (int64_t j = j0; j < j1; j++) {{
            const {T}* a0 = a + j * d;
            {T} s00 = 0;
            #pragma omp simd reduction({op}:s00)
            for (int64_t t = 0; t < d; t++) {{
                {T} u = x0[t], b0 = a0[t];
                {acc_single}
            }}
            out[i * k + j] = s00;
        }}
    }}
}}
"""
_LP_ENTRY = r"""
void {name}(const {T}* x, const {T}* a, {T}* out, int64_t n, int64_t k, int64_t d, int p_inf,
            int64_t rows_block, int64_t anchors_block) {{
    for (int64_t i0 = 0; i0 < n; i0 += rows_block) {{
        int64_t i1 = i0 + rows_block < n ? i0 + rows_block : n;
        for (int64_t j0 = 0; j0 < k; j0 += anchors_block) {{
            int64_t j1 = j0 + anchors_block < k ? j0 + anchors_block : k;
            if (p_inf) {name}_max(x, a, out, i0, i1, j0, j1, k, d);
            else {name}_sum(x, a, out, i0, i1, j0, j1, k, d);
        }}
    }}
}}
"""


def _lp_source() -> str:
    """Give the C source of lp_distances_f32 and lp_distances_f64 (sum of |differences|, or their maximum)."""

    def accumulate(op: str, ctype: str, absolute: str, pairs: list[tuple[str, str, str]]) -> str:
        if op == "+":
            return " ".join(f"{s} += {absolute}({v} - {b});" for s, v, b in pairs)
        # The vectorised max drops NaN (NaN > e and e > NaN are both false): compiled_lp puts it back.
        return " ".join(f"{{ {ctype} e = {absolute}({v} - {b}); {s} = {s} > e ? {s} : e; }}" for s, v, b in pairs)

    # (running value, sample value, anchor value) of each step in the template's loops
    sums = {
        "acc_u": [(f"s0{c}", "u", f"b{c}") for c in range(4)],
        "acc_v": [(f"s1{c}", "v", f"b{c}") for c in range(4)],
        "acc_one": [("s00", "u", "b0"), ("s10", "v", "b0")],
        "acc_single": [("s00", "u", "b0")],
    }
    parts = ["#include <math.h>", "#include <stdint.h>"]
    for suffix, ctype, absolute in (("f32", "float", "fabsf"), ("f64", "double", "fabs")):
        name = f"lp_distances_{suffix}"
        for kind, op in (("sum", "+"), ("max", "max")):
            steps = {field: accumulate(op, ctype, absolute, pairs) for field, pairs in sums.items()}
            parts.append(_LP_TILE.format(name=f"{name}_{kind}", T=ctype, op=op, **steps))
        parts.append(_LP_ENTRY.format(name=name, T=ctype))
    return "\n".join(parts)


_LP_SOURCE = _lp_source()
_LP_TILE_BYTES = (96 * 1024, 128 * 1024)
"""The bytes of samples and of anchors in one tile of the compiled kernel (224 KiB together: within the L2
cache of current x86 and Arm cores, 256 KiB to 2 MiB); module-level so that tests can shrink the tiles."""
# Tried in order: the host's full instruction set, then portable code; -fopenmp-simd only enables the
# vectorisation pragmas (no OpenMP runtime is linked).
# -mprefer-vector-width=512: GCC and clang keep to 256-bit vectors on AVX-512 CPUs unless told; compilers or
# targets that refuse the flag take the next set.
_LP_FLAG_SETS = (
    ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp-simd"),
    ("-O3", "-march=native", "-fopenmp-simd"),
    ("-O3", "-fopenmp-simd"),
    ("-O3",),
)
_LP_LIBRARY: list[Any] = []  # [ctypes.CDLL] once built or loaded
_LP_FAILURE: list[str] = []  # why the compiled kernel is unavailable in this process


def _host_signature() -> str:
    """Give a text naming this CPU's instruction set, so a library built with -march=native is never
    loaded on another machine sharing the cache folder."""
    from stitchcli.device import cpu_flags_line

    return cpu_flags_line() or f"{platform.machine()} {platform.processor()} {platform.platform()}"


def _kernel_folder() -> Path:
    from stitchcli.store import default_cache_dir

    folder = default_cache_dir() / "kernels"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    folder = Path(tempfile.gettempdir()) / f"stitchcli-kernels-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def kernel_loaded() -> bool:
    """Whether the compiled library is loaded in this process (a failure of the kernel is then a bug)."""
    return bool(_LP_LIBRARY)


def kernel_failed() -> bool:
    """Whether building or loading the compiled library failed in this process (``auto`` then stops trying)."""
    return bool(_LP_FAILURE)


def lp_library() -> Any:
    """Give the compiled L1/L∞ library, building it into the cache folder on first use.

    Raises:
        RuntimeError: it cannot be built or loaded here (the reason is remembered, and later calls in this
            process fail at once, so ``auto`` stops trying).
    """
    if _LP_LIBRARY:
        return _LP_LIBRARY[0]
    if not _LP_FAILURE:
        try:
            _LP_LIBRARY.append(_build_lp_library())
            return _LP_LIBRARY[0]
        except (OSError, RuntimeError) as error:
            _LP_FAILURE.append(str(error) if isinstance(error, RuntimeError) else f"{type(error).__name__}: {error}")
    raise RuntimeError(_LP_FAILURE[0])


def _build_lp_library() -> Any:
    import ctypes
    import hashlib
    import shutil
    import subprocess

    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise RuntimeError("no C compiler found (cc, gcc or clang; or set $CC)")
    identity = "\0".join([_LP_SOURCE, compiler, repr(_LP_FLAG_SETS), _host_signature()])
    key = hashlib.sha256(identity.encode()).hexdigest()[:20]
    folder = _kernel_folder()
    target = folder / f"lp_distances-{key}.so"
    if not target.exists():
        source = folder / f"lp_distances-{key}.{os.getpid()}.c"
        built = folder / f".lp_distances-{key}.{os.getpid()}.so"
        errors = []
        try:
            source.write_text(_LP_SOURCE)
            for flags in _LP_FLAG_SETS:
                command = [compiler, *flags, "-shared", "-fPIC", str(source), "-o", str(built)]
                try:
                    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
                except (OSError, subprocess.TimeoutExpired) as error:
                    errors.append(f"{type(error).__name__}: {error}")
                    break
                if result.returncode == 0:
                    os.replace(built, target)  # atomic: a concurrent builder finds a complete file or none
                    break
                errors.append((result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1])
        finally:
            source.unlink(missing_ok=True)
            built.unlink(missing_ok=True)
        if not target.exists():
            raise RuntimeError(f"{compiler} could not build it: {errors[-1] if errors else 'no output'}")
    library = ctypes.CDLL(str(target))
    for name in ("lp_distances_f32", "lp_distances_f64"):
        function = getattr(library, name)
        function.restype = None
        function.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int] + [ctypes.c_int64] * 2
    return library


def _lp_blocks(dim: int, itemsize: int) -> tuple[int, int]:
    """Give the compiled kernel's tile: (samples, anchors), even and a multiple of 4, within _LP_TILE_BYTES."""
    row = max(1, dim * itemsize)
    samples, anchors = (max(1, budget // row) for budget in _LP_TILE_BYTES)
    return max(2, samples - samples % 2), max(4, anchors - anchors % 4)


def compiled_lp(x: torch.Tensor, anchors: torch.Tensor, p: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Give the (b, k) L1/L∞ distances through the compiled C loop, rows split across torch's thread count;
    written straight into ``out`` when it is a contiguous CPU tensor of that shape and dtype (else copied)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"the compiled kernel runs float32/float64 on the CPU, not {x.dtype} on {x.device}")
    library = lp_library()
    function = library.lp_distances_f32 if x.dtype == torch.float32 else library.lp_distances_f64
    x = x.contiguous()
    anchors = anchors.to(x.dtype).contiguous()
    rows, dim = x.shape
    k = anchors.shape[0]
    direct = (
        out is not None and out.device.type == "cpu" and out.dtype == x.dtype and tuple(out.shape) == (rows, k)
        and out.is_contiguous()
    )
    result = out if out is not None and direct else torch.empty((rows, k), dtype=x.dtype)
    size = x.element_size()
    p_inf = int(p != 1)
    rows_block, anchors_block = _lp_blocks(dim, size)

    def run(first: int, last: int) -> None:
        rows_x = x.data_ptr() + first * dim * size
        rows_out = result.data_ptr() + first * k * size
        function(rows_x, anchors.data_ptr(), rows_out, last - first, k, dim, p_inf, rows_block, anchors_block)

    threads = max(1, min(torch.get_num_threads(), rows))
    if threads == 1:
        run(0, rows)
    else:
        from concurrent.futures import ThreadPoolExecutor

        edges = [rows * t // threads for t in range(threads + 1)]
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, edges[:-1], edges[1:]))
    if p_inf:
        # The vectorised max drops NaN; give NaN where a sample or an anchor holds one, as the sum does.
        result[x.isnan().any(dim=1)] = float("nan")
        result[:, anchors.isnan().any(dim=1)] = float("nan")
    return result if out is None or direct else out.copy_(result)

