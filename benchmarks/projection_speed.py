"""Speed of the four relative projections next to torch.cdist and to one matrix multiply (issue 6, acceptance 6).

One run, one seeded random input: N × D float32 rows (default 200,000 × 768, standard normal) against k
anchors (default 1,280). Timed, in this order within each round, the rounds interleaved so that a change of
load on the machine falls on every method alike:

- ``matmul``: one float32 ``torch.mm`` of (N, D) by (D, k) into a preallocated (N, k) tensor, the yardstick
  for cosine and euclidean (their work is one such product plus O(N·k) elementwise passes);
- ``cosine``, ``euclidean``, ``l1``, ``linf``: ``relative_projection(x, anchors, name, out=out)`` with the
  default options (``kernel="auto"``: the compiled L1/L∞ kernel on the CPU), into the same preallocated tensor;
- ``cdist_p2``, ``cdist_p1``, ``cdist_pinf``: ``torch.cdist(x, anchors, p=...)`` on the whole input (its
  default compute mode: a matmul expansion for p=2). p=1 and p=∞ take about 80 s each at full size on the
  2-core development machine, so they run only in the first ``--cdist-repeats`` rounds (default 1).

Every method is warmed up first on a few rows (thread pools; the compiled kernel is built or loaded then,
not in a timed call). Reported per method: every round's seconds, the median (the figure) and the best,
rows×anchors per second from the median, and the ratios the acceptance asks for: cosine and euclidean over
one matmul (target ≤ 1.5), cdist p=1 / p=∞ over l1 / linf (target ≥ 3), and cdist p=2 over euclidean.

Accuracy, on ``--check-rows`` rows drawn at random: each library output and each cdist output against a
float64 reference (``torch.cdist`` in float64 without the matmul expansion; cosine as a float64 product of
unit rows), and each library distance against cdist's float32 output: max abs difference, max relative
difference (entry-wise, over non-zero reference entries) and the norm-wise relative difference.

``--data clustered`` draws rows around 10 centres with anchors taken from the rows themselves (so some
pairs are exact duplicates and many are close), which exercises euclidean's exact recomputation of close
pairs; the acceptance figures use the default ``gaussian``.

Prints one JSON line (``--output`` also writes it); progress goes to stderr.

    python benchmarks/projection_speed.py --output benchmarks/results/projection_speed-cpu2.json
    python benchmarks/projection_speed.py --rows 20000 --repeats 3      # a quick look (cdist p=1/∞ ~8 s each)
    python benchmarks/projection_speed.py --skip-cdist-lp --data clustered  # euclidean on close pairs
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from _common import emit, load, processor

PROJECTIONS = ("cosine", "euclidean", "l1", "linf")


def _inputs(rows: int, dim: int, k: int, seed: int, data: str):
    import torch

    gen = torch.Generator().manual_seed(seed)
    if data == "gaussian":
        x = torch.randn(rows, dim, generator=gen)
        anchors = torch.randn(k, dim, generator=gen)
    elif data == "clustered":
        # 10 centres of unit spread, rows 0.5 around them: pairs within a centre are at
        # r = d² / (‖x‖² + ‖e‖²) ≈ 0.2 after centring, and every anchor is itself a row (as when anchors come
        # from the training split).
        centres = torch.randn(10, dim, generator=gen)
        labels = torch.randint(0, 10, (rows,), generator=gen)
        x = centres[labels] + 0.5 * torch.randn(rows, dim, generator=gen) + 3.0
        anchors = x[torch.randperm(rows, generator=gen)[:k]].clone()
    else:
        raise SystemExit(f"unknown --data {data!r}: use gaussian or clustered")
    return x, anchors


def _reference(name: str, x, anchors):
    """Give the float64 reference of one projection (or cdist) on a few rows."""
    import torch

    xd, ad = x.double(), anchors.double()
    if name == "cosine":
        unit = lambda m: m / m.norm(dim=1, keepdim=True).clamp(min=1e-300)  # noqa: E731
        return unit(xd) @ unit(ad).T
    p = {"euclidean": 2.0, "l1": 1.0, "linf": float("inf")}[name]
    return torch.cdist(xd, ad, p=p, compute_mode="donot_use_mm_for_euclid_dist")


def _difference(actual, expected) -> dict:
    actual, expected = actual.double(), expected.double()
    gap = (actual - expected).abs()
    nonzero = expected != 0
    relative = gap[nonzero] / expected[nonzero].abs()
    return {
        "max_abs": float(gap.max()),
        "max_rel": float(relative.max()) if relative.numel() else 0.0,
        "normwise_rel": float(gap.norm() / expected.norm()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="samples N (default 200000; the recorded run)")
    parser.add_argument("--dim", type=int, default=768, help="latent dimension D (default 768)")
    parser.add_argument("--anchors", type=int, default=1280, help="anchors k (default 1280)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3; the figure is the median)")
    parser.add_argument(
        "--cdist-repeats", type=int, default=1, help="rounds that include cdist p=1 and p=∞ (default 1)"
    )
    parser.add_argument("--skip-cdist-lp", action="store_true", help="leave out cdist p=1 and p=∞ (the slow ones)")
    parser.add_argument("--check-rows", type=int, default=2000, help="rows compared with the references (default 2000)")
    parser.add_argument("--data", default="gaussian", help="gaussian (default) or clustered")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="also write the JSON line to this file")
    args = parser.parse_args()

    import torch

    from stitchcli.relative import relative_projection
    from stitchcli.relative import compiled_lp
    from stitchcli.relative import projections as projections_module

    started_at = time.time()
    load_before = load()
    x, anchors = _inputs(args.rows, args.dim, args.anchors, args.seed, args.data)
    n, k = x.shape[0], anchors.shape[0]
    out = torch.empty(n, k)
    check = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed + 1))[: min(args.check_rows, n)]
    check = check.sort().values
    lp = () if args.skip_cdist_lp else ("cdist_p1", "cdist_pinf")
    kept: dict[str, torch.Tensor] = {}  # the outputs on the check rows, as timed

    def run(method: str) -> None:
        if method == "matmul":
            torch.mm(x, anchors.T, out=out)
        elif method in PROJECTIONS:
            relative_projection(x, anchors, method, out=out)
            kept[method] = out[check].clone()
        else:
            p = {"cdist_p2": 2.0, "cdist_p1": 1.0, "cdist_pinf": float("inf")}[method]
            result = torch.cdist(x, anchors, p=p)
            kept[method] = result[check].clone()
            del result

    # Warm-up on a few rows: thread pools, and the compiled L1/L∞ kernel built or loaded (timed apart).
    build_started = time.perf_counter()
    compiled_lp.lp_library()
    kernel_load_s = time.perf_counter() - build_started
    few, few_out = x[:4096], torch.empty(min(4096, n), k)
    torch.mm(few, anchors.T, out=few_out)
    for name in PROJECTIONS:
        relative_projection(few, anchors, name, out=few_out, kernel="compiled" if name in ("l1", "linf") else "auto")
    for p in (2.0, 1.0, float("inf")):
        torch.cdist(few[:256], anchors, p=p)

    methods = ["matmul", *PROJECTIONS, "cdist_p2"]
    times: dict[str, list[float]] = {method: [] for method in [*methods, *lp]}
    for round_index in range(args.repeats):
        for method in methods + (list(lp) if round_index < args.cdist_repeats else []):
            began = time.perf_counter()
            run(method)
            seconds = time.perf_counter() - began
            times[method].append(seconds)
            print(f"round {round_index + 1}: {method} {seconds:.2f} s (load {load()[0]})", file=sys.stderr, flush=True)

    # ratios from the unrounded times: on small inputs a rounded time can be 0
    med = {method: statistics.median(values) for method, values in times.items()}
    best = {method: min(values) for method, values in times.items()}
    summary = {
        method: {
            "seconds": [round(value, 4) for value in values],
            "median_s": round(med[method], 4),
            "best_s": round(best[method], 4),
            "rows_x_anchors_per_s": round(n * k / med[method]),
        }
        for method, values in times.items()
    }
    ratios = {
        "cosine_over_matmul": round(med["cosine"] / med["matmul"], 3),
        "euclidean_over_matmul": round(med["euclidean"] / med["matmul"], 3),
        "cdist_p2_over_euclidean": round(med["cdist_p2"] / med["euclidean"], 2),
    }
    if lp:
        ratios["cdist_p1_over_l1"] = round(med["cdist_p1"] / med["l1"], 2)
        ratios["cdist_pinf_over_linf"] = round(med["cdist_pinf"] / med["linf"], 2)
    # The same ratios from the best rounds, for a reader who prefers them.
    ratios_best = {
        "cosine_over_matmul": round(best["cosine"] / best["matmul"], 3),
        "euclidean_over_matmul": round(best["euclidean"] / best["matmul"], 3),
    }
    targets = {
        "cosine_within_1.5x_matmul": ratios["cosine_over_matmul"] <= 1.5,
        "euclidean_within_1.5x_matmul": ratios["euclidean_over_matmul"] <= 1.5,
    }
    if lp:
        targets["l1_3x_faster_than_cdist"] = ratios["cdist_p1_over_l1"] >= 3
        targets["linf_3x_faster_than_cdist"] = ratios["cdist_pinf_over_linf"] >= 3

    xs = x[check]
    accuracy = {}
    for name in PROJECTIONS:
        reference = _reference(name, xs, anchors)
        entry = {"vs_float64": _difference(kept[name], reference)}
        twin = {"euclidean": "cdist_p2", "l1": "cdist_p1", "linf": "cdist_pinf"}.get(name)
        if twin in kept:
            entry["vs_cdist_float32"] = _difference(kept[name], kept[twin])
            entry["cdist_float32_vs_float64"] = _difference(kept[twin], reference)
        accuracy[name] = entry

    record = {
        "benchmark": "projection_speed",
        "date": time.strftime("%Y-%m-%d", time.gmtime(started_at)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": processor(),
        "data": args.data,
        "rows": n,
        "dim": args.dim,
        "anchors": k,
        "seed": args.seed,
        "dtype": "float32",
        "statistic": "median of the rounds (best also given)",
        "chunk_rows": projections_module.chunk_rows(k, args.dim),
        "kernel_load_s": round(kernel_load_s, 3),
        "methods": summary,
        "ratios": ratios,
        "ratios_best": ratios_best,
        "targets_met": targets,
        "check_rows": int(check.numel()),
        "accuracy": accuracy,
        "load_before": load_before,
        "load_after": load(),
        "total_wall_s": round(time.time() - started_at, 1),
    }
    emit(record, args.output)


if __name__ == "__main__":
    main()
