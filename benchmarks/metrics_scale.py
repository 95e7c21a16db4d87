"""Time and peak memory of the latent similarity measures at scale (issue 6): CKA, Jaccard@k and MRR@k.

N rows (default 100,000), seeded: x (N, 768) standard normal. For ``linear_cka`` and ``jaccard_at_k``,
y (N, 384) = x W + noise with W a random 768×384 map (a second space of another width); for ``mrr_at_k``,
which compares vectors across the two spaces, y (N, 768) = x + 5 × noise (so the counterpart is not always
first). k = 10, every other option at its default (``chunk_size`` 8192 rows for CKA, 1024 for the neighbour
measures).

Each metric runs in a fresh process (``--child``), so its peak resident memory is its own: ``peak_rss`` is
``ru_maxrss`` read at the end of that process, ``rss_before`` the resident set just before the call (torch
and the inputs), and ``peak_rss - rss_before`` what the call itself added at its worst.

For the neighbour measures the same process also times the bare block products they cannot avoid
(``x_unit[rows] @ x_unit.T``, and the same for y), over the first ``--gemm-blocks`` blocks of rows, and
extrapolates that to all N rows (``gemm_only_s``): the rest of the time is the neighbour search, the
normalisation and the bookkeeping.

Prints one JSON line (``--output`` also writes it); progress goes to stderr.

    python benchmarks/metrics_scale.py --output benchmarks/results/metrics_scale-cpu2.json
    python benchmarks/metrics_scale.py --rows 20000                     # a quick look
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

METRICS = ("linear_cka", "jaccard_at_k", "mrr_at_k")


def _vm_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _inputs(metric: str, rows: int, dim_x: int, dim_y: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim_x, generator=gen)
    if metric == "mrr_at_k":
        y = x + 5.0 * torch.randn(rows, dim_x, generator=gen)
    else:
        w = torch.randn(dim_x, dim_y, generator=gen) / dim_x**0.5
        y = x @ w
        y += 0.5 * torch.randn(rows, dim_y, generator=gen)
    return x, y


def _gemm_only(metric: str, x, y, chunk: int, blocks: int) -> float:
    """Give the seconds of the neighbour measures' block products for all rows, extrapolated from ``blocks``."""
    from stitchcli.relative.transforms import l2_normalize_rows

    n = x.shape[0]
    x_unit, y_unit = l2_normalize_rows(x), l2_normalize_rows(y)
    timed_rows = 0
    started = time.perf_counter()
    for start in range(0, min(n, blocks * chunk), chunk):
        rows = slice(start, min(start + chunk, n))
        if metric == "mrr_at_k":  # one cross-space product per block
            x_unit[rows] @ y_unit.T
        else:  # Jaccard@k: one product per space per block
            x_unit[rows] @ x_unit.T
            y_unit[rows] @ y_unit.T
        timed_rows += rows.stop - rows.start
    return (time.perf_counter() - started) * n / timed_rows


def _child(job: dict) -> dict:
    import torch

    from stitchcli import metrics

    x, y = _inputs(job["metric"], job["rows"], job["dim_x"], job["dim_y"], job["seed"])
    function = getattr(metrics, job["metric"])
    options = {} if job["metric"] == "linear_cka" else {"k": job["k"]}
    rss_before = _vm_rss_bytes()
    started = time.perf_counter()
    value = function(x, y, **options)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record = {
        "metric": job["metric"],
        "rows": job["rows"],
        "dim_x": x.shape[1],
        "dim_y": y.shape[1],
        "k": job["k"] if options else None,
        "value": round(value, 6),
        "seconds": round(seconds, 2),
        "input_bytes": x.numel() * x.element_size() + y.numel() * y.element_size(),
        "rss_before_bytes": rss_before,
        "peak_rss_bytes": peak,
        "peak_minus_before_bytes": peak - rss_before,
        "torch_threads": torch.get_num_threads(),
    }
    if job["metric"] != "linear_cka" and job["gemm_blocks"]:
        gemm = _gemm_only(job["metric"], x, y, 1024, job["gemm_blocks"])
        record["gemm_only_s"] = round(gemm, 1)
        record["gemm_share"] = round(gemm / seconds, 3)
        record["gemm_blocks_timed"] = job["gemm_blocks"]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="samples N (default 100000)")
    parser.add_argument("--dim-x", type=int, default=768, help="width of x (default 768)")
    parser.add_argument("--dim-y", type=int, default=384, help="width of y for CKA and Jaccard@k (default 384)")
    parser.add_argument("--k", type=int, default=10, help="neighbours for Jaccard@k and MRR@k (default 10)")
    parser.add_argument("--metrics", default=",".join(METRICS), help="comma-separated (default all three)")
    parser.add_argument("--gemm-blocks", type=int, default=8, help="blocks timed for gemm_only_s (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="also write the JSON line to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    import torch  # only for the version in the record

    started = time.time()
    names = [name.strip() for name in args.metrics.split(",") if name.strip()]
    records = [
        run_child(
            __file__,
            {"metric": name, "rows": args.rows, "dim_x": args.dim_x, "dim_y": args.dim_y, "k": args.k,
             "seed": args.seed, "gemm_blocks": args.gemm_blocks}
        )
        for name in names
    ]
    record = {
        "benchmark": "metrics_scale",
        "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "processor": processor(),
        "memory": "peak_rss = ru_maxrss of a fresh process per metric, read at its end (includes torch and the inputs)",
        "metrics": records,
        "total_wall_s": round(time.time() - started, 1),
    }
    emit(record, args.output)


if __name__ == "__main__":
    main()
