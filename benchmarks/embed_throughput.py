"""Embedding throughput against the hardware: `stitchcli embed` end to end, the bare model, and a plain loop.

Writes N JPEG photos-like images (default 512 at 500x375, two class folders) and measures, in the same run,
round after round (so that a shared machine's slow spells hit every variant alike):

- bare: the model's forward alone on random input tensors already in memory, batch B, inference mode
  (the model as stitchcli runs it: in bf16, its weights cast, and matmul attention on CPUs without AMX),
  measured before and after the other variants of its precision, the mean of the two taken; and
  bare-with-reuse, the same in a fresh process whose allocator keeps freed memory for reuse, as stitchcli
  sets its own (stitchcli.device.keep_freed_memory_for_reuse), which tells the input pipeline's cost apart;
- stitchcli: `stitchcli embed --weights random --batch-size B` as a user runs it (a fresh process, an empty
  cache), its throughput from the entry's own timing of the encode loop (reading, decoding, preprocessing
  and the model; the process start and the model build are reported apart as the wall time), and the
  fraction of that loop spent in the model (the entry's `model_seconds`);
- plain: the loop a user writes by hand: torchvision ImageFolder with timm's eval transform, a DataLoader
  with default settings (batch B), `torch.no_grad()`, model(x) (bf16 under CPU autocast);

for each precision, plus `stitchcli embed --compile` in bf16 and, with --one-worker, `stitchcli embed --num-workers 1`. Also this machine's matmul peak (fp32, bf16; measured
before every round, the best kept)
and the model's FLOPs per image (torch's FlopCounterMode), so that each throughput is given as a fraction of
the bound they set, and the mean and minimum cosine of each non-fp32 entry's rows to the fp32 entry's.
One JSON line.

    python benchmarks/embed_throughput.py --images 512 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import processor  # noqa: E402


def write_images(root: Path, count: int, width: int, height: int) -> Path:
    """Write JPEGs with coarse structure and fine noise (so that decoding costs what a photo costs)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
        pixels = np.clip(np.asarray(coarse).astype(np.int16) + rng.integers(-20, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def build_model(name: str, precision: str):
    import timm
    import torch

    from stitchcli.encoders import cast_to_bf16_for_cpu

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    return cast_to_bf16_for_cpu(model) if precision == "bf16" else model


def flops_per_image(name: str) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(name, "fp32")
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.randn(1, 3, *model.pretrained_cfg["input_size"][1:]))
    return float(counter.get_total_flops())


def bare(name: str, precision: str, images: int, batch: int) -> float:
    """Rows/s of the forward alone on in-memory tensors (one warm-up batch first)."""
    import torch

    model = build_model(name, precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = torch.randn(batch, 3, *model.pretrained_cfg["input_size"][1:]).to(dtype)
    batches = max(1, images // batch)
    with torch.inference_mode():
        model(x)
        started = time.perf_counter()
        for _ in range(batches):
            model(x)
        return batches * batch / (time.perf_counter() - started)


def bare_with_reuse(name: str, precision: str, images: int, batch: int) -> float:
    """Rows/s of ``bare`` in a fresh process whose allocator keeps freed memory for reuse, as stitchcli's does."""
    job = json.dumps([name, precision, images, batch])
    done = subprocess.run([sys.executable, __file__, "--bare-with-reuse", job], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def plain(name: str, precision: str, root: Path, batch: int) -> float:
    """Rows/s of the hand-written loop over the same images (DataLoader defaults: no workers)."""
    import contextlib

    import timm
    import torch
    from torchvision.datasets import ImageFolder

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    loader = torch.utils.data.DataLoader(ImageFolder(str(root / "train"), transform=transform), batch_size=batch)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    rows = 0
    started = time.perf_counter()
    with torch.no_grad(), cast:
        for x, _ in loader:
            model(x)
            rows += x.shape[0]
    return rows / (time.perf_counter() - started)


def stitchcli_embed(name: str, precision: str, root: Path, batch: int, cache: Path, compile_model: bool, workers: int | None = None) -> dict:
    """Run `stitchcli embed` in a fresh process; give its encode-loop rows/s, wall time and entry path."""
    args = [sys.executable, "-m", "stitchcli", "embed", "-m", name, "--weights", "random", "-d", str(root), "--split", "train",
            "--batch-size", str(batch), "--precision", precision, "--cache-dir", str(cache), "--force", "--json", "-q"]
    if compile_model:
        args.append("--compile")
    if workers is not None:
        args += ["--num-workers", str(workers)]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"stitchcli embed failed: {done.stderr.strip().splitlines()[-1:]}")
    entry = json.loads(done.stdout)["entries"][0]
    from safetensors import safe_open

    with safe_open(entry["path"], "np") as f:
        meta = json.loads(f.metadata()["stitchcli"])
    first = meta["first_batch_seconds"]
    return {"rows_per_s": entry["rows"] / entry["seconds"], "first_batch_s": first, "wall_s": wall, "path": entry["path"],
            "after_first_rows_per_s": (entry["rows"] - batch) / (entry["seconds"] - first),
            "model_fraction": meta["model_seconds"] / meta["seconds"], "loading": meta["loading"]}


def cosine_to(reference: str, other: str) -> tuple[float, float]:
    import numpy as np
    from safetensors.numpy import load_file

    a, b = (load_file(p)["embeddings"].astype(np.float64) for p in (reference, other))
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(cos.mean()), float(cos.min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224", help="timm architecture (random weights)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", default="500x375", help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs every variant once")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--no-compile", action="store_true", help="leave out `stitchcli embed --compile` (bf16)")
    parser.add_argument("--one-worker", action="store_true",
                        help="add `stitchcli embed --num-workers 1` (a loader process beside the model, not the CPU default)")
    parser.add_argument("--bare-with-reuse", metavar="JOB", help=argparse.SUPPRESS)  # the child of bare_with_reuse
    args = parser.parse_args()
    if args.bare_with_reuse:
        from stitchcli.device import keep_freed_memory_for_reuse

        assert keep_freed_memory_for_reuse(), "this C library's allocator cannot be set (not glibc?)"
        print(bare(*json.loads(args.bare_with_reuse)))
        return
    import torch

    from matmul_peak import gflops

    width, height = map(int, args.image_size.split("x"))
    precisions = args.precisions.split(",")
    # bare runs before and after the others of its precision, and the round's bare rate is the mean of the two:
    # a shared machine's speed drifts within a round, and this keeps it from favouring either side of a ratio
    kinds = ("bare", "stitchcli", "plain", "bare-after", "bare-with-reuse") + (("stitchcli-1worker",) if args.one_worker else ())
    variants = [(kind, p) for p in precisions for kind in kinds]
    if not args.no_compile and "bf16" in precisions:
        variants.append(("stitchcli-compiled", "bf16"))
    peak = {"fp32": 0.0, "bf16": 0.0}  # the best of the rounds: a shared machine only ever slows a measurement down
    flops = flops_per_image(args.model)
    rates: dict[str, list[float]] = {f"{k} {p}": [] for k, p in variants if k != "bare-after"}
    bracket: dict[str, list[list[float]]] = {}  # bare's rate before and after, round by round
    walls: dict[str, list[float]] = {}
    firsts: dict[str, list[float]] = {}  # stitchcli's seconds to its first batch (worker start; compilation)
    steady: dict[str, list[float]] = {}  # stitchcli's rows/s after its first batch
    in_model: dict[str, list[float]] = {}  # the fraction of stitchcli's encode loop spent in the model
    loading: dict[str, str] = {}
    paths: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = write_images(Path(scratch) / "images", args.images, width, height)
        for _ in range(args.repeats):
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                peak[name] = max(peak[name], gflops(2048, dtype, "cpu", 5, 3))
            for kind, precision in variants:
                label = f"{kind} {precision}"
                if kind == "bare-after":
                    rate = bare(args.model, precision, args.images, args.batch_size)
                    print(f"{label}: {rate:.2f} rows/s", file=sys.stderr, flush=True)
                    before = rates[f"bare {precision}"][-1]
                    rates[f"bare {precision}"][-1] = round((before + rate) / 2, 3)
                    bracket.setdefault(f"bare {precision}", []).append([before, round(rate, 3)])
                    continue
                if kind == "bare":
                    rate = bare(args.model, precision, args.images, args.batch_size)
                elif kind == "bare-with-reuse":
                    rate = bare_with_reuse(args.model, precision, args.images, args.batch_size)
                elif kind == "plain":
                    rate = plain(args.model, precision, root, args.batch_size)
                else:
                    run = stitchcli_embed(args.model, precision, root, args.batch_size, Path(scratch) / f"cache-{kind}-{precision}",
                                          compile_model=kind.endswith("compiled"), workers=1 if kind.endswith("1worker") else None)
                    rate = run["rows_per_s"]
                    walls.setdefault(label, []).append(round(run["wall_s"], 2))
                    firsts.setdefault(label, []).append(run["first_batch_s"])
                    steady.setdefault(label, []).append(round(run["after_first_rows_per_s"], 3))
                    in_model.setdefault(label, []).append(round(run["model_fraction"], 3))
                    loading[label] = run["loading"]
                    paths[label] = run["path"]
                rates[label].append(round(rate, 3))
                print(f"{label}: {rate:.2f} rows/s", file=sys.stderr, flush=True)
        median = {label: statistics.median(values) for label, values in rates.items()}

        def ratio(a: str, b: str) -> float:  # the median of the per-round ratios: both measured in the same round
            return round(statistics.median(x / y for x, y in zip(rates[a], rates[b])), 3)

        result: dict[str, object] = {
            "benchmark": "embed_throughput", "model": args.model, "images": args.images, "image_size": args.image_size,
            "batch_size": args.batch_size, "repeats": args.repeats, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "cpus": os.cpu_count(), "processor": processor(),
            "matmul_peak_gflops": {k: round(v, 1) for k, v in peak.items()}, "gflop_per_image": round(flops / 1e9, 3),
            "rows_per_s": rates, "rows_per_s_median": {k: round(v, 2) for k, v in median.items()}, "stitchcli_wall_s": walls,
            "stitchcli_first_batch_s": firsts, "stitchcli_rows_per_s_after_first_batch": steady,
            "bare_before_and_after": bracket, "stitchcli_loading": loading, "stitchcli_fraction_of_loop_in_model": in_model,
            "fraction_of_matmul_bound": {label: round(median[label] * flops / 1e9 / peak[label.split()[-1]], 3) for label in median},
        }
        ratios = {}
        for p in precisions:
            ratios[f"stitchcli/bare {p}"] = ratio(f"stitchcli {p}", f"bare {p}")
            ratios[f"stitchcli/plain {p}"] = ratio(f"stitchcli {p}", f"plain {p}")
            ratios[f"plain/bare {p}"] = ratio(f"plain {p}", f"bare {p}")
            ratios[f"stitchcli/bare-with-reuse {p}"] = ratio(f"stitchcli {p}", f"bare-with-reuse {p}")
            if args.one_worker:
                ratios[f"stitchcli/stitchcli-1worker {p}"] = ratio(f"stitchcli {p}", f"stitchcli-1worker {p}")
            ratios[f"bare-with-reuse/bare {p}"] = ratio(f"bare-with-reuse {p}", f"bare {p}")
        if "fp32" in precisions:
            for label in rates:
                if not label.endswith("fp32") and not label.startswith(("bare-with-reuse", "stitchcli-1worker")):
                    ratios[f"{label} / stitchcli fp32"] = ratio(label, "stitchcli fp32")
                    ratios[f"{label} / plain fp32"] = ratio(label, "plain fp32")
                    if label in paths:
                        result[f"cosine to fp32 (mean, min): {label}"] = cosine_to(paths["stitchcli fp32"], paths[label])
        result["ratios"] = ratios
    print(json.dumps(result))


if __name__ == "__main__":
    main()
