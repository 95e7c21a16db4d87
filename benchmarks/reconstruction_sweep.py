"""Reconstruction stitching on the real EfficientNet-Lite0/Lite2 MNIST embeddings, both directions.

For every decoder model B and seed: one relative reconstruction head per projection set (each projection
alone, cosine+euclidean — stitch's default product — and the paper's product of all four; transform
``center``, aggregation ``mlp-sum``, the uniform seed-0 anchors ``stitch`` draws) and one absolute head.
Every encoder A (B itself: the non-stitched reference; the other model: stitched) is fed to them: its own
relative representation against its own anchors, or its raw latents (``absolute``), or its latents mapped
into B's space by the orthogonal (``translation``) or ridge-affine (``affine``) map fitted on the anchors
alone. Each row gives MSE, PSNR, SSIM of the test reconstructions and the accuracy of a digit classifier
trained on the MNIST training pixels reading them (its accuracy on the original test images is the ceiling),
mean ± std over the seeds. Grids (seed 0's heads, the same 10 test digits in every row) go to ``--plots``.

Heads are cached in ``--work-dir`` (safetensors + JSON, as ``fit-head`` writes them), and each finished
head's scores are appended to ``WORK_DIR/heads.jsonl``, so an interrupted run resumes where it stopped.

    # full data (4000 train / 1000 test rows, 1280 anchors), 3 seeds: hours on a busy 2-core CPU
    python benchmarks/reconstruction_sweep.py --cache-dir /work/cache --work-dir /tmp/recon-sweep \\
        --out benchmarks/results/reconstruction_sweep-mnist5k.json --plots docs/plots/reconstruction
    # the offline demo's size (300 rows per split, every training row an anchor, its projections): timing
    python benchmarks/reconstruction_sweep.py --cache-dir /work/cache --limit 300 --demo --work-dir /tmp/recon-300 \\
        --out benchmarks/results/reconstruction_sweep-mnist5k-300.json

Needs both models' embeddings of packaged:mnist5k in the cache (``stitchcli demo --full`` makes them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import load, processor
from stitchcli.data import stratified_subset
from stitchcli.data.packaged import packaged_dataset
from stitchcli.embedding import load_embeddings
from stitchcli.heads import HEAD_FORMAT, FittedHead, HeadSettings, load_head, save_head
from stitchcli.reconstruction.decoder import DEFAULT_SETTINGS, build_decoder, decoder_config, reconstruct, train_decoder
from stitchcli.reconstruction.figures import grid_positions, reconstruction_grid
from stitchcli.reconstruction.outputs import method_label, save_reconstructions
from stitchcli.reconstruction.scores import per_image_mse, per_image_psnr, per_image_ssim
from stitchcli.reconstruction.semantic import PixelClassifier, pixel_accuracy, train_pixel_classifier
from stitchcli.reconstruction.targets import load_pixel_targets
from stitchcli.relative import DEFAULT_PROJECTIONS
from stitchcli.stitching.features import product_values
from stitchcli.translations import AffineTranslation, LatentTranslation
from stitchcli.store import EmbeddingStore

AGGREGATION = "mlp-sum"
TRANSFORM = "center"
DEFAULT_PRODUCT = ("cosine", "euclidean")
BASELINES = ("absolute", "translation", "affine")
RIDGE = 0.1
MAPS = {  # baseline -> fit(encoder anchors, decoder anchors) -> a map of the encoder's latents into the decoder's space
    "absolute": lambda source, target: (lambda x: x),
    "translation": lambda source, target: LatentTranslation.fit(source, target),
    "affine": lambda source, target: AffineTranslation.fit(source, target, RIDGE),
}


def projection_sets(demo: bool) -> list[tuple[str, ...]]:
    """Give the relative rows: the demo's (cosine, euclidean, their product) or every single one and both products."""
    if demo:
        return [("cosine",), ("euclidean",), DEFAULT_PRODUCT]
    return [(p,) for p in DEFAULT_PROJECTIONS] + [DEFAULT_PRODUCT, DEFAULT_PROJECTIONS]


def load_data(store: EmbeddingStore, dataset: str, models: list[str], limit: int | None) -> dict[str, Any]:
    """Give each model's train/test latents (rows aligned by id; a stratified seed-0 subset with ``limit``) and the labels."""
    data: dict[str, Any] = {"latents": {}}
    for split in ("train", "test"):
        entries = {m: load_embeddings(store, m, dataset, split) for m in models}
        first = entries[models[0]]
        for entry in entries.values():
            assert np.array_equal(entry.ids, first.ids), "the models hold different rows"
        keep = stratified_subset(first.labels, limit, 0) if limit is not None else np.arange(first.rows)  # embed --limit's subset
        data[f"{split}_ids"], data[f"{split}_labels"] = first.ids[keep], first.labels[keep]
        for m in models:
            data["latents"][(m, split)] = np.ascontiguousarray(entries[m].embeddings[keep])
    return data


def scores(images: torch.Tensor, originals: torch.Tensor, labels: np.ndarray, reader: torch.nn.Module) -> dict[str, float]:
    """Give the mean MSE, PSNR, SSIM of ``images`` against ``originals`` and the pixel classifier's accuracy on them."""
    return {
        "mse": float(per_image_mse(images, originals).mean()),
        "psnr": float(per_image_psnr(images, originals).mean()),
        "ssim": float(per_image_ssim(images, originals).mean()),
        "pixel_accuracy": pixel_accuracy(reader, images, labels),
    }


def obtain_pixel_classifier(work: Path, targets: torch.Tensor, labels: np.ndarray) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Give the pixel classifier (trained once on every training image's pixels, seed 0; cached in ``work``) and its record."""
    from safetensors.torch import load_file, save_file

    path, info_path = work / "pixel-classifier.safetensors", work / "pixel-classifier.json"
    module = PixelClassifier(int(targets.shape[1]), int(labels.max()) + 1)
    if path.is_file() and info_path.is_file():
        module.load_state_dict(load_file(path))
        return module.eval(), json.loads(info_path.read_text())
    trained = train_pixel_classifier(targets, labels, seed=0)
    save_file(trained.module.state_dict(), path)
    info = {"val_accuracy": trained.val_accuracy, "epochs_run": trained.epochs_run, "seconds": trained.seconds}
    info_path.write_text(json.dumps(info))
    return trained.module, info


def obtain_head(work: Path, name: str, build, features_fn, images: torch.Tensor, labels: np.ndarray,
                settings: HeadSettings, seed: int, config: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Give a decoder (read from ``work`` when cached, else trained and saved there) and its training record."""
    path = work / "heads" / f"{name}.safetensors"
    if path.is_file():
        head = load_head(path)
        return head.module, head.config["training"]
    module = build()
    record = train_decoder(module, features_fn(), images, settings, seed=seed, labels=labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_head(path, FittedHead(module, {**config, **decoder_config(module), "training": record.to_dict()}))
    return module, record.to_dict()


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    store = EmbeddingStore(args.cache_dir)
    dataset = packaged_dataset(args.dataset, store.root / "assets")
    models = args.models.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = replace(DEFAULT_SETTINGS, batch_size=args.batch_size or DEFAULT_SETTINGS.batch_size,
                       epochs=args.epochs or DEFAULT_SETTINGS.epochs)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = load_data(store, dataset, models, args.limit)
    train_targets = load_pixel_targets(dataset, "train", data["train_ids"])
    test_targets = load_pixel_targets(dataset, "test", data["test_ids"], size=(train_targets.shape.height, train_targets.shape.width),
                                      channels=train_targets.shape.channels)
    originals, test_labels = test_targets.images, data["test_labels"]
    timing: dict[str, float] = {"data_s": round(time.perf_counter() - started, 1)}

    tick = time.perf_counter()
    every_train_image = train_targets if args.limit is None else load_pixel_targets(dataset, "train")  # the reader sees every training digit
    reader, reader_info = obtain_pixel_classifier(work, every_train_image.images, every_train_image.labels)
    reader_info["test_accuracy_on_originals"] = pixel_accuracy(reader, originals, test_labels)
    mean_image = train_targets.images.mean(dim=0, keepdim=True).expand_as(originals).contiguous()
    floor = {k: round(v, 6) for k, v in scores(mean_image, originals, test_labels, reader).items()}  # what any decoder must beat
    timing["pixel_classifier_s"] = round(time.perf_counter() - tick, 1)

    train_rows = len(data["train_ids"])
    num_anchors = min(args.num_anchors, train_rows)
    anchor_rows = np.sort(np.random.default_rng(0).choice(train_rows, size=num_anchors, replace=False))  # stitch's uniform seed-0 draw
    anchors = {m: np.ascontiguousarray(data["latents"][(m, "train")][anchor_rows]) for m in models}
    device = torch.device("cpu")
    tick = time.perf_counter()
    spaces = {(m, split): product_values(data["latents"][(m, split)], anchors[m], DEFAULT_PROJECTIONS, TRANSFORM, device)
              for m in models for split in ("train", "test")}
    timing["relative_spaces_s"] = round(time.perf_counter() - tick, 1)

    sets = projection_sets(args.demo)
    shown = grid_positions(test_labels, 10, seed=0)
    per_seed: dict[tuple, list[dict[str, float]]] = {}
    grid_images: dict[tuple, torch.Tensor] = {}
    heads_log: list[dict[str, Any]] = []
    tag = f"n{train_rows}-k{num_anchors}-e{settings.epochs}-b{settings.batch_size}"
    decoders = args.decoders.split(",") if args.decoders else models
    for seed in seeds:
        for decoder in decoders:
            jobs = [("relative", subset) for subset in sets] + [("absolute", ())]
            for kind, subset in jobs:
                index = [DEFAULT_PROJECTIONS.index(p) for p in subset]
                name = f"{decoder}-{method_label(kind, subset)}-s{seed}-{tag}"
                base = {"format": HEAD_FORMAT, "kind": kind, "model": decoder, "num_classes": 10, "projections": list(subset),
                        "aggregation": AGGREGATION if kind == "relative" else None, "transform": TRANSFORM if kind == "relative" else None,
                        "num_anchors": num_anchors if kind == "relative" else None,
                        "input_dim": int(anchors[decoder].shape[1]) if kind == "absolute" else None,
                        "settings": settings.to_dict(), "seed": seed}

                def build(kind=kind, subset=subset):
                    return build_decoder(kind, train_targets.shape, settings, input_dim=base["input_dim"], aggregation=base["aggregation"],
                                         num_subspaces=len(subset) or None, num_anchors=base["num_anchors"], seed=seed)

                def features(kind=kind, index=index):
                    return spaces[(decoder, "train")][:, index] if kind == "relative" else torch.from_numpy(data["latents"][(decoder, "train")])

                tick, cpu = time.perf_counter(), time.process_time()
                module, record = obtain_head(work, name, build, features, train_targets.images, data["train_labels"], settings, seed, base)
                entry = {"head": name, "decoder": decoder, "method": kind, "projections": list(subset), "seed": seed,
                         "epochs_run": record["epochs_run"], "best_epoch": record["best_epoch"], "val_mse": record["val_mse"],
                         "train_seconds": record["seconds"], "obtained_s": round(time.perf_counter() - tick, 1),
                         "obtained_cpu_s": round(time.process_time() - cpu, 1)}
                heads_log.append(entry)
                print(json.dumps(entry), file=sys.stderr, flush=True)
                for encoder in models:
                    if kind == "relative":
                        outputs = {"relative": reconstruct(module, spaces[(encoder, "test")][:, index])}
                    else:
                        latents = data["latents"][(encoder, "test")]
                        methods = ("absolute",) if encoder == decoder else BASELINES
                        outputs = {m: reconstruct(module, torch.from_numpy(np.ascontiguousarray(
                            MAPS[m](anchors[encoder], anchors[decoder])(latents)))) for m in methods}
                    for method, images in outputs.items():
                        key = (encoder, decoder, method, tuple(subset))
                        per_seed.setdefault(key, []).append({"seed": seed, **scores(images, originals, test_labels, reader)})
                        if seed == seeds[0]:
                            grid_images[key] = images[shown]
                            if args.save_outputs:
                                save_reconstructions(args.save_outputs, encoder, decoder, method, images, data["test_ids"],
                                                     projections=subset, aggregation=base["aggregation"], metadata={"seed": seed})
    timing["total_s"] = round(time.perf_counter() - started, 1)
    timing["total_cpu_s"] = round(time.process_time(), 1)  # this process's CPU time: far less sensitive to other jobs than wall time

    rows = []
    for (encoder, decoder, method, subset), values in per_seed.items():
        row: dict[str, Any] = {"encoder": encoder, "decoder": decoder, "method": method, "projections": list(subset),
                               "aggregation": AGGREGATION if method == "relative" else None, "stitched": encoder != decoder}
        for metric in ("mse", "psnr", "ssim", "pixel_accuracy"):
            array = np.array([v[metric] for v in values])
            row[metric], row[f"{metric}_std"] = round(float(array.mean()), 6), round(float(array.std()), 6)
        row["per_seed"] = [{k: round(v, 6) if isinstance(v, float) else v for k, v in s.items()} for s in values]
        rows.append(row)

    plots = []
    if args.plots:
        by_key = {(r["encoder"], r["decoder"], r["method"], tuple(r["projections"])): r for r in rows}
        for encoder in models:
            for decoder in decoders:
                if encoder == decoder:
                    continue
                own_key = (decoder, decoder, "relative", DEFAULT_PRODUCT if DEFAULT_PRODUCT in sets else sets[-1])
                lines = [(f"{decoder} → {decoder} (own) {describe(by_key[own_key])}", grid_images[own_key])]
                for method, subset in [("relative", s) for s in sets] + [(m, ()) for m in BASELINES]:
                    key = (encoder, decoder, method, subset)
                    lines.append((f"{method_label(method, subset)} {describe(by_key[key])}", grid_images[key]))
                path = Path(args.plots) / f"{encoder}--{decoder}{'-' + str(args.limit) if args.limit else ''}.png"
                reconstruction_grid(path, originals[shown], lines,
                                    title=f"{encoder} → {decoder}'s decoders, MNIST test digits (seed-{seeds[0]} heads; scores: mean over seeds {','.join(map(str, seeds))})")
                plots.append(str(path))
    return {
        "benchmark": "reconstruction_sweep",
        "dataset": args.dataset,
        "models": models,
        "train_rows": train_rows,
        "test_rows": len(data["test_ids"]),
        "image_shape": train_targets.shape.as_list(),
        "anchors": {"num": num_anchors, "strategy": "uniform", "seed": 0},
        "transform": TRANSFORM,
        "aggregation": AGGREGATION,
        "ridge": RIDGE,
        "seeds": seeds,
        "settings": settings.to_dict(),
        "pixel_classifier": reader_info,
        "mean_training_image": floor,
        "rows": rows,
        "heads": heads_log,
        "timing": timing,
        "plots": plots,
        "threads": args.threads,
        "processor": processor(),
        "load_after": load(),
        "command": " ".join(["python", *sys.argv]),
    }


def describe(row: dict[str, Any]) -> str:
    """Give a grid label's scores: MSE, SSIM and the pixel classifier's accuracy."""
    return f"· MSE {row['mse']:.3f} · SSIM {row['ssim']:.2f} · read {100 * row['pixel_accuracy']:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=os.environ.get("STITCHCLI_CACHE"), required=os.environ.get("STITCHCLI_CACHE") is None)
    parser.add_argument("--dataset", default="packaged:mnist5k")
    parser.add_argument("--models", default="lite0,lite2")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--decoders", default=None, help="train and score only these decoders (parallel runs sharing --work-dir)")
    parser.add_argument("--num-anchors", type=int, default=1280)
    parser.add_argument("--limit", type=int, default=None, help="a stratified subset of this many rows per split (the demo's 300)")
    parser.add_argument("--demo", action="store_true", help="the demo's relative rows only: cosine, euclidean and their product")
    parser.add_argument("--epochs", type=int, default=None, help="override the reconstruction heads' default epochs")
    parser.add_argument("--batch-size", type=int, default=None, help="override the reconstruction heads' default batch size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", required=True, help="cached heads and the pixel classifier (resumable)")
    parser.add_argument("--plots", default=None, help="folder for one grid PNG per stitched pair")
    parser.add_argument("--save-outputs", default=None, help="folder for the seed-0 reconstructions of every row (safetensors)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    record = run(args)
    text = json.dumps(record, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(json.dumps({k: record[k] for k in ("timing", "pixel_classifier", "train_rows", "test_rows")}))


if __name__ == "__main__":
    main()
