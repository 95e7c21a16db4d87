"""Peak resident memory and time of the relative projections at scale (issue 3, acceptance 4).

N × D float32 random rows (default 200,000 × 768) against k anchors (default 1,280). Each projection runs in
a fresh subprocess, so the peak resident set (``ru_maxrss``, read by the child at its end) is that
projection's alone, writing into a preallocated (N, k) float32 tensor. The acceptance bound is
peak < output + 1.5 GB, the inputs (N·D·4 bytes) and torch's own footprint counted inside the 1.5 GB.

Also, unless switched off: all four projections together in one process into one (N, 4, k) product space
(``relative_space``), and the L1/L∞ kernels (``cdist``, ``compiled``, ``blocked``) timed on a slice of rows.
Prints one JSON line (``--output`` also writes it to a file); progress goes to stderr.

    python benchmarks/relative_memory.py --output benchmarks/results/relative_memory_cpu2.json
    python benchmarks/relative_memory.py --rows 20000 --no-together --compare-rows 0   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

from _common import emit, processor, run_child

GB = 10**9
PROJECTIONS = ("cosine", "euclidean", "l1", "linf")


def _vm_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(job: dict) -> dict:
    """Run one measurement in this (fresh) process and give its record."""
    import torch

    from stitchcli.relative import relative_projection, relative_space
    from stitchcli.relative import compiled_lp
    from stitchcli.relative import projections as projections_module

    rss_torch = _vm_rss_bytes()
    rows, dim, k = job["rows"], job["dim"], job["anchors"]
    kernel = job["kernel"]
    gen = torch.Generator().manual_seed(job["seed"])
    x = torch.randn(rows, dim, generator=gen)
    anchors = torch.randn(k, dim, generator=gen)
    names = job["projections"]
    distances = [name for name in names if name in ("l1", "linf")]
    concrete = projections_module._resolve_kernel(
        kernel, projections_module.get_projection(distances[0] if distances else names[0]), rows * k * dim,
        torch.device("cpu"), False,
    )
    build = None
    if concrete == "compiled":
        # Build (or load from the cache folder) the compiled kernel first, timed apart.
        start = time.perf_counter()
        compiled_lp.lp_library()
        build = time.perf_counter() - start
    out_shape = (rows, len(names), k) if len(names) > 1 else (rows, k)
    out = torch.empty(out_shape)
    start = time.perf_counter()
    if len(names) > 1:
        relative_space(x, anchors, names, out=out, kernel=kernel)
    else:
        relative_projection(x, anchors, names[0], out=out, kernel=kernel)
    seconds = time.perf_counter() - start
    assert torch.isfinite(out[:: max(1, rows // 97)]).all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    inputs = x.numel() * x.element_size() + anchors.numel() * anchors.element_size()
    output = out.numel() * out.element_size()
    return {
        "projections": names,
        "kernel": kernel,
        "kernel_used": concrete if distances else None,
        "rows": rows,
        "dim": dim,
        "anchors": k,
        "chunk_rows": projections_module.chunk_rows(k, dim),
        "kernel_build_s": round(build, 2) if build is not None else None,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "rss_after_import_torch_bytes": rss_torch,
        "input_bytes": inputs,
        "output_bytes": output,
        "peak_rss_bytes": peak,
        "peak_minus_inputs_and_output_bytes": peak - inputs - output,
        "bound_bytes": output + int(1.5 * GB),
        "under_bound": peak < output + int(1.5 * GB),
    }


def _kernel_child(job: dict) -> dict:
    """Time one L1/L∞ kernel on a slice of rows, compilation excluded."""
    import torch

    from stitchcli.relative import pairwise_lp

    gen = torch.Generator().manual_seed(job["seed"])
    x = torch.randn(job["rows"], job["dim"], generator=gen)
    anchors = torch.randn(job["anchors"], job["dim"], generator=gen)
    p = 1 if job["projection"] == "l1" else float("inf")
    chunk = 4096
    pairwise_lp(x[:chunk], anchors, p, kernel=job["kernel"])  # build / warm up, not timed
    start = time.perf_counter()
    for first in range(0, x.shape[0], chunk):
        pairwise_lp(x[first : first + chunk], anchors, p, kernel=job["kernel"])
    seconds = time.perf_counter() - start
    return {
        "projection": job["projection"],
        "kernel": job["kernel"],
        "rows": job["rows"],
        "seconds": round(seconds, 3),
        "terms_per_s": round(job["rows"] * job["anchors"] * job["dim"] / seconds / 1e9, 2),
        "seconds_for_full_rows": round(seconds * job["full_rows"] / job["rows"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="samples N (default 200000)")
    parser.add_argument("--dim", type=int, default=768, help="latent dimension D (default 768)")
    parser.add_argument("--anchors", type=int, default=1280, help="anchors k (default 1280)")
    parser.add_argument("--projections", default=",".join(PROJECTIONS), help="comma-separated (default all four)")
    parser.add_argument("--kernel", default="auto", help="L1/L∞ kernel: auto, cdist, compiled, blocked (default auto)")
    parser.add_argument("--also-cdist", action="store_true", help="also run L1 and L∞ at full size with cdist (slow)")
    parser.add_argument("--no-together", action="store_true", help="skip the run of all projections in one process")
    parser.add_argument("--compare-rows", type=int, default=8192, help="rows for the kernel comparison (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="also write the JSON line to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(_kernel_child(job) if job.get("mode") == "kernel" else _child(job)))
        return

    import torch  # only for the version in the record

    names = [name.strip() for name in args.projections.split(",") if name.strip()]
    base = {"rows": args.rows, "dim": args.dim, "anchors": args.anchors, "seed": args.seed}
    started = time.time()
    separate = [run_child(__file__, {**base, "projections": [name], "kernel": args.kernel}) for name in names]
    if args.also_cdist:
        separate += [
            run_child(__file__, {**base, "projections": [name], "kernel": "cdist"}) for name in names if name in ("l1", "linf")
        ]
    together = None if args.no_together else run_child(__file__, {**base, "projections": names, "kernel": args.kernel})
    kernels = []
    if args.compare_rows:
        for name in ("l1", "linf"):
            for kernel in ("cdist", "compiled", "blocked"):
                rows = args.compare_rows if kernel != "blocked" else max(1, args.compare_rows // 4)
                kernels.append(
                    run_child(__file__, {**base, "rows": rows, "full_rows": args.rows, "projection": name, "kernel": kernel, "mode": "kernel"})
                )
    record = {
        "benchmark": "relative_memory",
        "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": processor(),
        "bound": "peak RSS < output bytes + 1.5e9 bytes (inputs and torch itself count inside the 1.5 GB)",
        "separate": separate,
        "together": together,
        "kernels": kernels,
        "total_wall_s": round(time.time() - started, 1),
    }
    emit(record, args.output)


if __name__ == "__main__":
    main()
