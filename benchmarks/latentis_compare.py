"""stitchcli against latentis, side by side: the relative projections and linear CKA (issue 6).

latentis (https://github.com/Flegyas/latentis, the reference library of the "From Bricks to Bridges" group) is
not a dependency of stitchcli; this benchmark needs it installed in the same environment (see
docs/PERFORMANCE.md for how it was installed without touching torch). Without it, the script says so in one
line and exits with status 2.

Same seeded float32 data for both libraries (torch's CPU generator): N × D samples (default 20,000 × 768)
against k anchors (default 1,280) for the projections; for CKA, X (M × D) and Y = tanh(X W) + noise (M × k),
M = --cka-rows (default 4,000: latentis's CKA builds M × M Gram and centring matrices, O(M³) time and O(M²)
memory). Jobs, each computed by both libraries in its own fresh process:

    cosine           stitchcli relative_projection(x, a, "cosine")     latentis cosine_proj
    euclidean        ... "euclidean"                                     latentis euclidean_proj (cdist p=2)
    l1               ... "l1"                                            latentis l1_proj (cdist p=1)
    linf             ... "linf"                                          latentis lp_proj(p=inf): it has no
                                                                         named L∞ projection, only generic lp
    cosine+center    ... "cosine", transform="center"                    RelativeProjection(cosine_proj,
                                                                         abs_transform=Centering())
    cka              stitchcli.metrics.linear_cka(X, Y)                  latentis linear_cka (N×N HSIC form)

Per job and library, in a fresh process: the first call, which is also the memory measurement (peak resident
set above the resident set after imports and input data, from VmHWM reset through /proc/self/clear_refs; raw
peaks reported too) and gives the output. Then per job one more process imports both libraries, warms each
up with one call and times --repeats rounds of one call each, the two interleaved (alternating which goes
first) so a change of load on a shared machine falls on both alike; the median is the figure. Outputs are
compared entry by entry (max abs and max rel difference; "equal" means |s - l| <= rtol·|l| + atol·max|l|
everywhere). Ratios are stitchcli / latentis: below 1 means stitchcli is faster or smaller. Prints one JSON
line (``--output`` also writes it); progress goes to stderr.

    python benchmarks/latentis_compare.py --output benchmarks/results/latentis_compare-cpu2.json
    python benchmarks/latentis_compare.py --rows 2000 --cka-rows 500 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, processor, run_child

JOBS = ("cosine", "euclidean", "l1", "linf", "cosine+center", "cka")
LIBRARIES = ("latentis", "stitchcli")
RTOL = 1e-4
ATOL = 1e-5  # times the largest |latentis value| of the job

CALLS = {
    ("stitchcli", "cosine"): 'stitchcli.relative.relative_projection(x, anchors, "cosine")',
    ("stitchcli", "euclidean"): 'stitchcli.relative.relative_projection(x, anchors, "euclidean")',
    ("stitchcli", "l1"): 'stitchcli.relative.relative_projection(x, anchors, "l1")  # kernel="auto"',
    ("stitchcli", "linf"): 'stitchcli.relative.relative_projection(x, anchors, "linf")  # kernel="auto"',
    ("stitchcli", "cosine+center"): 'stitchcli.relative.relative_projection(x, anchors, "cosine", transform="center")',
    ("stitchcli", "cka"): "stitchcli.metrics.linear_cka(X, Y)",
    ("latentis", "cosine"): "latentis.transform.projection.relative_projection(x, anchors, projection_fn=cosine_proj)",
    ("latentis", "euclidean"): "latentis.transform.projection.relative_projection(x, anchors, projection_fn=euclidean_proj)",
    ("latentis", "l1"): "latentis.transform.projection.relative_projection(x, anchors, projection_fn=l1_proj)",
    ("latentis", "linf"): (
        "latentis.transform.projection.relative_projection(x, anchors, "
        "projection_fn=functools.partial(lp_proj, p=float('inf')))"
    ),
    ("latentis", "cosine+center"): (
        "latentis.transform.projection.RelativeProjection(cosine_proj, "
        "abs_transform=latentis.transform.base.Centering()).fit(anchors).transform(x)[0]"
    ),
    ("latentis", "cka"): "latentis.measure.functional.cka.linear_cka(X, Y)",
}


# ---------------------------------------------------------------------------------------------- the child


def _status_bytes(field: str) -> int | None:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def _reset_peak() -> bool:
    """Reset VmHWM (the peak resident set) to the current resident set; Linux only."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _data(job: dict):
    import torch

    gen = torch.Generator().manual_seed(job["seed"])
    if job["op"] == "cka":
        x = torch.randn(job["cka_rows"], job["dim"], generator=gen)
        w = torch.randn(job["dim"], job["anchors"], generator=gen) / job["dim"] ** 0.5
        y = torch.tanh(x @ w) + 0.5 * torch.randn(job["cka_rows"], job["anchors"], generator=gen)
        return x, y
    x = torch.randn(job["rows"], job["dim"], generator=gen)
    anchors = torch.randn(job["anchors"], job["dim"], generator=gen)
    if job["op"] == "cosine+center":
        x += 3.0  # an offset, so that centring matters
        anchors += 3.0
    return x, anchors


def _function(library: str, op: str):
    """Give ``f(first, second)`` computing ``op`` with ``library`` (its modules imported here)."""
    if library == "stitchcli":
        if op == "cka":
            from stitchcli.metrics import linear_cka

            return lambda x, y: linear_cka(x, y)
        from stitchcli.relative import relative_projection

        if op == "cosine+center":
            return lambda x, a: relative_projection(x, a, "cosine", transform="center")
        return lambda x, a: relative_projection(x, a, op)

    import functools

    import latentis  # noqa: F401  (its package import is part of the cost of using it)

    if op == "cka":
        from latentis.measure.functional.cka import linear_cka

        return lambda x, y: linear_cka(x, y)
    from latentis.transform.base import Centering
    from latentis.transform.projection import (
        RelativeProjection,
        cosine_proj,
        euclidean_proj,
        l1_proj,
        lp_proj,
        relative_projection,
    )

    if op == "cosine+center":
        return lambda x, a: RelativeProjection(cosine_proj, abs_transform=Centering()).fit(a).transform(x)[0]
    projection = {
        "cosine": cosine_proj,
        "euclidean": euclidean_proj,
        "l1": l1_proj,
        "linf": functools.partial(lp_proj, p=float("inf")),
    }[op]
    return lambda x, a: relative_projection(x, a, projection_fn=projection)


def _memory_child(job: dict) -> dict:
    """One library, one job, in this fresh process: the first call, its peak memory, its output saved."""
    started = time.perf_counter()
    import numpy as np
    import torch

    function = _function(job["library"], job["op"])
    import_s = time.perf_counter() - started
    rss_after_imports = _status_bytes("VmRSS")
    first, second = _data(job)
    baseline = _status_bytes("VmRSS")
    reset = _reset_peak()
    start = time.perf_counter()
    result = function(first, second)
    first_s = time.perf_counter() - start
    peak = _status_bytes("VmHWM") if reset else None
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if job["op"] == "cka":
        value = float(result)
    else:
        np.save(job["out"], result.numpy())
        value = None
    return {
        "library": job["library"],
        "op": job["op"],
        "value": value,
        "import_s": round(import_s, 2),
        "first_call_s": round(first_s, 3),
        "rss_after_imports_bytes": rss_after_imports,
        "rss_baseline_bytes": baseline,
        "peak_rss_bytes": peak,
        "peak_above_baseline_bytes": peak - baseline if peak is not None else ru_maxrss - baseline,
        "ru_maxrss_bytes": ru_maxrss,
        "torch_threads": torch.get_num_threads(),
    }


def _timing_child(job: dict) -> dict:
    """Both libraries, one job, in one process: one warm-up call each, then rounds of one call each,
    interleaved, so a change of load on the (shared) machine falls on both alike."""
    functions = {library: _function(library, job["op"]) for library in LIBRARIES}
    first, second = _data(job)
    for function in functions.values():
        function(first, second)
    seconds: dict[str, list[float]] = {library: [] for library in LIBRARIES}
    for round_ in range(job["repeats"]):
        order = LIBRARIES if round_ % 2 == 0 else LIBRARIES[::-1]
        for library in order:
            start = time.perf_counter()
            result = functions[library](first, second)
            seconds[library].append(time.perf_counter() - start)
            del result
    return {
        library: {"seconds": [round(t, 3) for t in times], "median_s": round(statistics.median(times), 3)}
        for library, times in seconds.items()
    }


# --------------------------------------------------------------------------------------------- the parent


def _compare(ours, theirs) -> dict:
    """Give the differences of stitchcli's output ``ours`` from latentis's ``theirs`` (arrays or floats)."""
    import numpy as np

    a = np.asarray(ours, dtype=np.float64).reshape(-1)
    b = np.asarray(theirs, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        return {"equal": False, "why": f"shapes differ: {a.shape} vs {b.shape}"}
    scale = float(np.abs(b).max()) if b.size else 0.0
    max_abs = max_rel = 0.0
    within = True
    for start in range(0, a.size, 1 << 22):
        x, y = a[start : start + (1 << 22)], b[start : start + (1 << 22)]
        diff = np.abs(x - y)
        max_abs = max(max_abs, float(diff.max()))
        # relative to the entry; entries below 1e-3 of the largest are left out (cosines near 0)
        big = np.abs(y) >= 1e-3 * scale
        if big.any():
            max_rel = max(max_rel, float((diff[big] / np.abs(y[big])).max()))
        within = within and bool((diff <= RTOL * np.abs(y) + ATOL * scale).all())
    return {
        "equal": within,
        "max_abs_diff": max_abs,
        "max_abs_diff_over_max_value": max_abs / scale if scale else 0.0,
        "max_rel_diff": max_rel,
        "max_abs_value": scale,
    }


def _git_state() -> dict:
    """Give the commit of the checkout this script sits in and whether stitchcli/ differs from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*arguments: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *arguments], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    import hashlib

    changed = git("status", "--porcelain", "--", "stitchcli")
    diff = git("diff", "HEAD", "--", "stitchcli") if changed else None
    return {
        "commit": git("rev-parse", "HEAD"),
        "stitchcli_modified": None if changed is None else bool(changed),
        # identifies the uncommitted state of stitchcli/ that was measured (untracked files not included)
        "stitchcli_diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="samples N for the projections (default 20000)")
    parser.add_argument("--dim", type=int, default=768, help="latent dimension D (default 768)")
    parser.add_argument("--anchors", type=int, default=1280, help="anchors k; also Y's width for CKA (default 1280)")
    parser.add_argument("--cka-rows", type=int, default=4000, help="samples M for CKA (default 4000)")
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, from {', '.join(JOBS)} (default all)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per job, after a warm-up (default 7)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="also write the JSON line to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(_timing_child(job) if job["library"] == "both" else _memory_child(job)))
        return
    if importlib.util.find_spec("latentis") is None:
        print(
            f"latentis is not installed in this environment ({sys.executable}): "
            "pip install --no-deps latentis==0.0.8 plus its imports (see docs/PERFORMANCE.md)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    jobs = [name.strip() for name in args.jobs.split(",") if name.strip()]
    unknown = [name for name in jobs if name not in JOBS]
    if unknown:
        parser.error(f"unknown job(s) {', '.join(unknown)}: use {', '.join(JOBS)}")

    import numpy as np
    import torch
    from importlib.metadata import version

    started = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="latentis-compare-") as scratch:
        for op in jobs:
            records = {}
            for library in LIBRARIES:
                out = str(Path(scratch) / f"{library}-{op.replace('+', '_')}.npy")
                job = {
                    "library": library, "op": op, "rows": args.rows, "dim": args.dim, "anchors": args.anchors,
                    "cka_rows": args.cka_rows, "seed": args.seed, "repeats": args.repeats, "out": out,
                }
                records[library] = run_child(__file__, job)
                records[library]["call"] = CALLS[(library, op)]
            timing = run_child(__file__, {**job, "library": "both", "out": None}) if args.repeats else {}
            for library in LIBRARIES:
                records[library].update(
                    timing.get(library, {"seconds": [], "median_s": records[library]["first_call_s"]})
                )
            ours, theirs = records["stitchcli"], records["latentis"]
            if op == "cka":
                equality = _compare(ours["value"], theirs["value"])
            else:
                paths = [Path(scratch) / f"{library}-{op.replace('+', '_')}.npy" for library in ("stitchcli", "latentis")]
                equality = _compare(*(np.load(path, mmap_mode="r") for path in paths))
                for path in paths:
                    path.unlink()
            time_ratio = ours["median_s"] / theirs["median_s"]
            memory_ratio = ours["peak_above_baseline_bytes"] / max(1, theirs["peak_above_baseline_bytes"])
            results.append({
                "job": op,
                "shape": [args.cka_rows, args.dim, args.anchors] if op == "cka" else [args.rows, args.dim, args.anchors],
                "equality": equality,
                "time_ratio": round(time_ratio, 3),
                "first_call_ratio": round(ours["first_call_s"] / theirs["first_call_s"], 3),
                "memory_ratio": round(memory_ratio, 3),
                "stitchcli_not_slower": time_ratio <= 1.0,
                "stitchcli": ours,
                "latentis": theirs,
            })
    record = {
        "benchmark": "latentis_compare",
        "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "latentis": version("latentis"),
        "stitchcli": version("stitchcli"),
        "git": _git_state(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": processor(),
        "settings": {
            "rows": args.rows, "dim": args.dim, "anchors": args.anchors, "cka_rows": args.cka_rows,
            "repeats": args.repeats, "seed": args.seed, "dtype": "float32",
            "equal_if": f"|stitchcli - latentis| <= {RTOL}*|latentis| + {ATOL}*max|latentis| for every entry",
            "ratios": "stitchcli / latentis (time: median of the interleaved rounds; memory: peak RSS of the first call above the RSS after imports and data)",
        },
        "not_matched": {
            "linf": "latentis 0.0.8 registers no L-infinity projection; compared with its generic lp_proj(p=inf) (torch.cdist)",
            "standardize": "not compared: latentis's StandardScaling divides by the Bessel-corrected std (N-1), "
                           "stitchcli's standardize by the population std (N); distances differ by sqrt(k/(k-1))",
            "cka": "latentis computes linear CKA from N x N centred Gram matrices (H K H), in the input dtype; "
                   "stitchcli from the feature-space form in float64 (docs/METHOD.md section 6)",
            "latentis.project.relative": "does not import in 0.0.8 (ImportError: ProjectionFunc); "
                                         "latentis.transform.projection is used",
        },
        "results": results,
        "all_equal": all(r["equality"]["equal"] for r in results),
        "stitchcli_never_slower": all(r["stitchcli_not_slower"] for r in results),
        "total_wall_s": round(time.time() - started, 1),
    }
    emit(record, args.output)


if __name__ == "__main__":
    main()
