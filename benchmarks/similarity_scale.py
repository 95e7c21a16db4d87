"""Similarity measures at scale (issue 23): stitchcli against a straightforward implementation, and all
pairs of many models × layers.

Part 1, side by side (``compare``): two synthetic models with ``--layers`` layers each (N × ``--dim`` float64,
seeded: a shared latent, each layer tanh of a random map of the previous one plus noise), every measure over
the full layer × layer matrix, at each N of ``--compare-rows``. Two implementations of the same measures:

- ``plain``: the formulas as they are usually written, recomputed for every pair: N×N Gram matrices for the
  CKA variants (the unbiased HSIC with its N×N matrix product, as platonic-rep writes it), full N×N
  similarity matrices sorted per row for the k-NN measures, platonic-rep's dense N×N masks for CKNNA, a full
  SVD for SVCCA, the SVD of XᵀY for Procrustes, scipy's pdist + spearmanr for RSA. All torch float64 on the
  CPU except RSA (numpy/scipy).
- ``stitchcli``: :func:`stitchcli.similarity.compare_models` (each layer prepared once, no N×N matrix for
  the feature-space and k-NN measures), with ``max_rows`` = N so that RBF CKA and RSA use every row, as plain.

Each (implementation, N, measure) runs in its own fresh process (``--child``), so its time and peak memory
are its own (a call under a second is repeated, up to 7 runs or a second in all, and ``seconds`` is the
median): ``peak_rss`` is ``ru_maxrss`` at the end, ``rss_before`` the resident set before the call (torch and
the inputs). Both give the full matrix of values; ``max_abs_diff`` is their largest difference (k = 10).
``speedup`` = plain seconds / stitchcli seconds. A stitchcli run of all measures together (families sharing
their preparation) is timed too.

Part 2, scale (``--scale``): ``--models`` models × ``--layers-scale`` layers × ``--rows`` rows of width
``--dim-scale`` (float32, synthetic as above), :func:`compare_models` over every model pair and every layer
pair (models·(models-1)/2 · layers² cells per measure) for ``--scale-measures``, one process: the time of each
family of measures (from the progress lines), total time, peak memory above the resident set after the
inputs and a warm-up call on 40 rows (which loads the linear-algebra libraries), the inputs' bytes.

Timings on a shared machine are noisy: the recorded figures must be re-measured on a quiet one. Prints one
JSON line (``--output`` also writes it); progress goes to stderr.

    python benchmarks/similarity_scale.py --output benchmarks/results/similarity_scale-cpu2.json
    python benchmarks/similarity_scale.py --compare-rows 300 --layers 2 --no-scale          # a quick look
    python benchmarks/similarity_scale.py --no-compare --scale --models 10 --layers-scale 12 --rows 10000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

from _common import emit, processor, run_child

MEASURES = ("linear-cka", "unbiased-cka", "rbf-cka", "mutual-knn", "cknna", "svcca", "procrustes", "rsa", "jaccard")
K = 10
SVCCA_COMPONENTS = 10
FAST_REPEATS = 7
"""A call that takes under a second is repeated (up to this many runs, or a second in all) and its median kept."""


def _vm_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _layers(rows: int, layers: int, dim: int, model_seed: int, dtype, latent_seed: int = 0) -> dict:
    """Give one synthetic model: ``layers`` representations (rows × dim) of the same samples, by name."""
    import torch

    latent = torch.randn(rows, 64, generator=torch.Generator().manual_seed(latent_seed))
    gen = torch.Generator().manual_seed(1000 + model_seed)
    out, h = {}, latent
    for layer in range(layers):
        w = torch.randn(h.shape[1], dim, generator=gen) / h.shape[1] ** 0.5
        h = torch.tanh(h @ w * 1.5) + 0.3 * torch.randn(rows, dim, generator=gen)
        out[f"layer{layer:02d}"] = h.to(dtype)
    return out


# ------------------------------------------------------------------------------ the plain implementations


def _plain():
    """Give the straightforward implementations by measure name (float64 torch, N×N matrices, per pair)."""
    import torch
    from scipy.spatial.distance import pdist
    from scipy.stats import spearmanr

    def centre(x):
        return x - x.mean(0)

    def hsic_biased(k, l):
        n = k.shape[0]
        h = torch.eye(n, dtype=k.dtype) - 1.0 / n
        return torch.trace(k @ h @ l @ h)

    def hsic_unbiased(k, l):
        m = k.shape[0]
        kt, lt = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)
        value = (kt * lt.T).sum() + kt.sum() * lt.sum() / ((m - 1) * (m - 2)) - 2 * (kt @ lt).sum() / (m - 2)
        return value / (m * (m - 3))

    def cka(k, l, hsic):
        return float(hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l)))

    def linear_cka(x, y):
        x, y = centre(x), centre(y)
        k, l = x @ x.T, y @ y.T
        return float((k * l).sum() / (k.norm() * l.norm()))  # tr(KL) of centred features: the Gram form

    def unbiased_cka(x, y):
        return cka(x @ x.T, y @ y.T, hsic_unbiased)

    def rbf(x):
        squared = torch.cdist(x, x).square()
        flat = squared.flatten()
        median = (flat.kthvalue((flat.numel() + 1) // 2).values + flat.kthvalue(flat.numel() // 2 + 1).values) / 2
        return torch.exp(-squared / (2 * median))

    def rbf_cka(x, y):
        return cka(rbf(x), rbf(y), hsic_biased)

    def unit(x):
        return x / x.norm(dim=1, keepdim=True)

    def knn(x, k):
        s = unit(x) @ unit(x).T
        s.fill_diagonal_(float("-inf"))
        return s.argsort(dim=1, descending=True)[:, :k]

    def masks(x, y, k):
        n = x.shape[0]
        a = torch.zeros(n, n, dtype=torch.float64).scatter_(1, knn(x, k), 1.0)
        b = torch.zeros(n, n, dtype=torch.float64).scatter_(1, knn(y, k), 1.0)
        return a, b

    def mutual_knn(x, y):
        a, b = masks(x, y, K)
        return float(((a * b).sum(1) / K).mean())

    def jaccard(x, y):
        a, b = masks(x, y, K)
        shared = (a * b).sum(1)
        return float((shared / (2 * K - shared)).mean())

    def cknna(x, y):
        kx, ly = unit(x) @ unit(x).T, unit(y) @ unit(y).T

        def similarity(p, q):
            n = p.shape[0]
            ph, qh = p.clone().fill_diagonal_(float("-inf")), q.clone().fill_diagonal_(float("-inf"))
            mp = torch.zeros(n, n, dtype=p.dtype).scatter_(1, ph.topk(K, dim=1).indices, 1.0)
            mq = torch.zeros(n, n, dtype=p.dtype).scatter_(1, qh.topk(K, dim=1).indices, 1.0)
            mask = mp * mq
            return hsic_unbiased(mask * p, mask * q)

        return float(similarity(kx, ly) / torch.sqrt(similarity(kx, kx) * similarity(ly, ly)))

    def svcca(x, y):
        ux = torch.linalg.svd(centre(x), full_matrices=False).U[:, :SVCCA_COMPONENTS]
        uy = torch.linalg.svd(centre(y), full_matrices=False).U[:, :SVCCA_COMPONENTS]
        return float(torch.linalg.svdvals(ux.T @ uy).mean())

    def procrustes(x, y):
        x, y = centre(x), centre(y)
        x, y = x / x.norm(), y / y.norm()
        nuclear = torch.linalg.svdvals(x.T @ y).sum()
        return float(torch.sqrt((2 - 2 * nuclear).clamp(min=0)))

    def rsa(x, y):
        return float(spearmanr(pdist(x.numpy()), pdist(y.numpy())).statistic)

    return {
        "linear-cka": linear_cka, "unbiased-cka": unbiased_cka, "rbf-cka": rbf_cka, "mutual-knn": mutual_knn,
        "cknna": cknna, "svcca": svcca, "procrustes": procrustes, "rsa": rsa, "jaccard": jaccard,
    }


# -------------------------------------------------------------------------------------------- children


def _compare_child(job: dict) -> dict:
    import torch

    torch.manual_seed(0)
    a = _layers(job["rows"], job["layers"], job["dim"], 1, torch.float64)
    b = _layers(job["rows"], job["layers"], job["dim"], 2, torch.float64)
    names = job["measures"]
    if job["impl"] == "plain":
        function = _plain()[names[0]]

        def run(first: dict, second: dict):
            return [[function(first[la], second[lb]) for lb in second] for la in first]
    else:
        from stitchcli.similarity import compare_models

        def run(first: dict, second: dict):
            report = compare_models({"a": first, "b": second}, names, k=K, max_rows=job["rows"], components=SVCCA_COMPONENTS)
            values = {m.measure: m.values.tolist() for m in report.matrices if m.model_a == "a"}
            return values[names[0]] if len(names) == 1 else values

    # One call on 40 rows first: imports, thread pools and first-call set-up are not what is measured.
    run({name: t[:40] for name, t in a.items()}, {name: t[:40] for name, t in b.items()})
    rss_before = _vm_rss_bytes()
    started = time.perf_counter()
    values = run(a, b)
    times = [time.perf_counter() - started]
    while sum(times) < 1.0 and len(times) < FAST_REPEATS:  # a sub-second call varies by tens of percent: a median
        started = time.perf_counter()
        run(a, b)
        times.append(time.perf_counter() - started)
    seconds = sorted(times)[len(times) // 2]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "impl": job["impl"], "rows": job["rows"], "layers": job["layers"], "dim": job["dim"],
        "measure": names[0] if len(names) == 1 else "all", "seconds": round(seconds, 3), "repeats": len(times),
        "values": values,
        "rss_before_bytes": rss_before, "peak_rss_bytes": peak, "peak_minus_before_bytes": peak - rss_before,
        "torch_threads": torch.get_num_threads(),
    }


def _scale_child(job: dict) -> dict:
    import torch

    from stitchcli.similarity import compare_models

    dtype = torch.float32
    models = {f"model{m:02d}": _layers(job["rows"], job["layers"], job["dim"], m, dtype) for m in range(job["models"])}
    if job["device"] != "cpu":
        models = {name: {layer: t.to(job["device"]) for layer, t in layers.items()} for name, layers in models.items()}
    input_bytes = sum(t.numel() * t.element_size() for layers in models.values() for t in layers.values())
    # A first call on 40 rows loads the linear-algebra libraries, so that the peak below is the work's own.
    compare_models({name: {layer: t[:40] for layer, t in layers.items()} for name, layers in list(models.items())[:2]},
                   job["measures"], k=K)
    rss_before = _vm_rss_bytes()
    marks: list[tuple[float, str]] = []

    def progress(line: str) -> None:
        marks.append((time.perf_counter(), line))
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    report = compare_models(models, job["measures"], null=job["null"], k=K, progress=progress)
    seconds = time.perf_counter() - started
    ended = time.perf_counter()
    families: dict[str, float] = {}
    for (at, line), (until, _) in zip(marks, marks[1:] + [(ended, "")]):
        family = line.split(":", 1)[0]
        families[family] = round(families.get(family, 0.0) + until - at, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record = {
        "models": job["models"], "layers": job["layers"], "rows": job["rows"], "dim": job["dim"], "dtype": "float32",
        "device": job["device"], "measures": job["measures"], "null": job["null"], "k": K,
        "cells": len(report.records), "seconds": round(seconds, 1), "family_seconds": families,
        "input_bytes": input_bytes, "rss_before_bytes": rss_before, "peak_rss_bytes": peak,
        "peak_minus_before_bytes": peak - rss_before, "torch_threads": torch.get_num_threads(),
    }
    if job["device"].startswith("cuda"):
        record["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    return record


# ---------------------------------------------------------------------------------------------- parent


def _max_diff(one, other) -> float:
    import numpy as np

    return float(np.nanmax(np.abs(np.asarray(one, dtype=float) - np.asarray(other, dtype=float))))


def _compare(args: argparse.Namespace, measures: list[str]) -> list[dict]:
    results = []
    for rows in args.compare_rows:
        together = run_child(__file__, {"kind": "compare", "impl": "stitchcli", "rows": rows, "layers": args.layers,
                                        "dim": args.dim, "measures": measures})
        for name in measures:
            pair = {}
            for impl in ("plain", "stitchcli"):
                pair[impl] = run_child(__file__, {"kind": "compare", "impl": impl, "rows": rows, "layers": args.layers,
                                                  "dim": args.dim, "measures": [name]})
            plain, ours = pair["plain"], pair["stitchcli"]
            results.append({
                "rows": rows, "layers": args.layers, "dim": args.dim, "measure": name,
                "plain_s": plain["seconds"], "stitchcli_s": ours["seconds"],
                "speedup": round(plain["seconds"] / max(ours["seconds"], 1e-9), 2),
                "plain_peak_minus_before_bytes": plain["peak_minus_before_bytes"],
                "stitchcli_peak_minus_before_bytes": ours["peak_minus_before_bytes"],
                "max_abs_diff": _max_diff(plain["values"], ours["values"]),
                "plain_load": [plain["load_before"], plain["load_after"]],
                "stitchcli_load": [ours["load_before"], ours["load_after"]],
            })
        plain_total = sum(r["plain_s"] for r in results if r["rows"] == rows)
        results.append({
            "rows": rows, "layers": args.layers, "dim": args.dim, "measure": "all (one compare_models call)",
            "plain_s": round(plain_total, 3), "stitchcli_s": together["seconds"],
            "speedup": round(plain_total / max(together["seconds"], 1e-9), 2),
            "stitchcli_peak_minus_before_bytes": together["peak_minus_before_bytes"],
        })
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare-rows", type=lambda s: [int(v) for v in s.split(",")], default=[500, 1000, 2000],
                        help="comma-separated N for the side by side (default 500,1000,2000)")
    parser.add_argument("--layers", type=int, default=3, help="layers per model in the side by side (default 3)")
    parser.add_argument("--dim", type=int, default=384, help="width in the side by side (default 384)")
    parser.add_argument("--measures", default=",".join(MEASURES), help="comma-separated (default: all but the shared-space ones)")
    parser.add_argument("--no-compare", action="store_true", help="skip the side by side")
    parser.add_argument("--scale", dest="scale", action="store_true", default=True, help="run the scale part (default)")
    parser.add_argument("--no-scale", dest="scale", action="store_false", help="skip the scale part")
    parser.add_argument("--models", type=int, default=10, help="models in the scale part (default 10)")
    parser.add_argument("--layers-scale", type=int, default=12, help="layers per model in the scale part (default 12)")
    parser.add_argument("--rows", type=int, default=10_000, help="rows in the scale part (default 10000)")
    parser.add_argument("--dim-scale", type=int, default=384, help="width of every layer in the scale part (default 384)")
    parser.add_argument("--scale-measures", default=",".join(MEASURES), help="comma-separated (default as --measures)")
    parser.add_argument("--null", type=int, default=0, help="permutations per pair in the scale part (default 0)")
    parser.add_argument("--device", default="cpu", help="where the scale part runs (cpu, cuda)")
    parser.add_argument("--output", type=Path, help="also write the JSON line to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(_compare_child(job) if job["kind"] == "compare" else _scale_child(job)))
        return

    import torch  # only for the version in the record

    started = time.time()
    measures = [name.strip() for name in args.measures.split(",") if name.strip()]
    record = {
        "benchmark": "similarity_scale",
        "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "processor": processor(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "memory": "peak_rss = ru_maxrss of a fresh process per run, read at its end (includes torch and the inputs)",
        "compare": [] if args.no_compare else _compare(args, measures),
    }
    if args.scale:
        record["scale"] = run_child(__file__, {
            "kind": "scale", "models": args.models, "layers": args.layers_scale, "rows": args.rows, "dim": args.dim_scale,
            "measures": [m.strip() for m in args.scale_measures.split(",") if m.strip()], "null": args.null,
            "device": args.device,
        })
    record["total_wall_s"] = round(time.time() - started, 1)
    emit(record, args.output)


if __name__ == "__main__":
    main()
