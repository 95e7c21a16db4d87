"""This machine's dense matrix-multiply peak (GFLOP/s) in fp32 and bf16: the bound embedding throughput is
measured against (issue #6).

Square torch.mm of size N (2·N³ FLOPs each), warmed up, best of --repeats timed rounds of --iters products,
on the CPU (or --device cuda). One JSON line.

    python benchmarks/matmul_peak.py --sizes 1024,2048,4096
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import processor  # noqa: E402


def gflops(n: int, dtype: torch.dtype, device: str, iters: int, repeats: int) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):  # warm-up (thread pools, kernels)
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 * iters / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024,2048,4096", help="matrix sizes N (comma-separated)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, object] = {"benchmark": "matmul_peak", "device": args.device, "threads": args.threads,
                                 "torch": torch.__version__, "python": platform.python_version(), "processor": processor()}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        per_size = {n: round(gflops(n, dtype, args.device, args.iters, args.repeats), 1) for n in map(int, args.sizes.split(","))}
        result[f"{name}_gflops_by_size"] = per_size
        result[f"{name}_peak_gflops"] = max(per_size.values())
    result["bf16_over_fp32"] = round(float(result["bf16_peak_gflops"]) / float(result["fp32_peak_gflops"]), 2)  # type: ignore[arg-type]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
