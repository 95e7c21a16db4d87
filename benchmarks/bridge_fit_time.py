"""Fit time of every bridge on 1280 anchors of 1280-d latents (issue 20, acceptance 5), on synthetic latents.

Two "models" of 4000 rows: the encoder's latents come from 64 latent factors through a random 64 -> 1280 map
plus noise, the decoder's are a random nonlinear image of them (tanh of a random 1280 -> 1280 map, plus
noise), so the maps have something real to fit. The first 1280 rows are the anchors; bridges that use rows get
all 4000 rows of each side (the decoder's shuffled), as the MNIST training split would give. Each bridge is
fitted --repeats times; the median wall time is recorded with torch's thread count, the CPU and the load.

    python benchmarks/bridge_fit_time.py --threads 2 --output benchmarks/results/bridge_fit_time-cpu2.json

On a shared machine the load averages in the record say how far to trust the figures.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from _common import emit, load, processor
from stitchcli.bridges import fit_bridge, get_bridge, list_bridges, select_bridge


def synthetic_pair(rows: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Give (encoder latents, decoder latents) of the same ``rows`` synthetic inputs, both (rows, dim)."""
    g = torch.Generator().manual_seed(seed)
    factors = torch.randn(rows, 64, generator=g, dtype=torch.float64)
    source = factors @ torch.randn(64, dim, generator=g, dtype=torch.float64) / 8 + 0.1 * torch.randn(rows, dim, generator=g, dtype=torch.float64)
    target = torch.tanh(source @ torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5) + 0.05 * torch.randn(rows, dim, generator=g, dtype=torch.float64)
    return source, target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anchors", type=int, default=1280)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--selection", action="store_true", help="also time auto (5 folds over every bridge)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source, target = synthetic_pair(args.rows, args.dim, seed=0)
    shuffled = target[torch.randperm(args.rows, generator=torch.Generator().manual_seed(1))]
    anchors_s, anchors_t = source[: args.anchors], target[: args.anchors]
    load_before = load()
    results = {}
    for name in list_bridges():
        rows = get_bridge(name).uses_rows
        times, fitted = [], None
        for _ in range(args.repeats):
            started = time.perf_counter()
            fitted = fit_bridge(name, anchors_s, anchors_t, source_rows=source if rows else None, target_rows=shuffled if rows else None)
            times.append(time.perf_counter() - started)
        results[name] = {"median_s": round(statistics.median(times), 3), "all_s": [round(t, 3) for t in times], "fit": fitted.config["fit"] if fitted else None}
        print(f"{name}: {results[name]['median_s']} s", flush=True)
    record = {
        "benchmark": "bridge_fit_time", "anchors": args.anchors, "dim": args.dim, "rows": args.rows, "threads": torch.get_num_threads(),
        "repeats": args.repeats, "processor": processor(), "torch": torch.__version__, "load_before": load_before, "bridges": results,
    }
    if args.selection:
        head_weights = torch.randn(args.dim, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        started = time.perf_counter()
        selection = select_bridge(list_bridges(), anchors_s, anchors_t, head=lambda z: z.double() @ head_weights, source_rows=source, target_rows=shuffled, refit=False)
        record["selection_s"] = round(time.perf_counter() - started, 2)
        record["selection_candidate_s"] = {c.name: round(c.seconds, 2) for c in selection.candidates}
    record["load_after"] = load()
    emit(record, args.output)


if __name__ == "__main__":
    main()
