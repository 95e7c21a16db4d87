"""The batch size of reconstruction heads at the demo's size: 256 (classification's default) against 64 and 32.

Lite2's relative decoder (cosine+euclidean, centred, mlp-sum, every one of the 300 training rows an anchor,
seed 0; the other settings HeadSettings' defaults) on the 300-row stratified subsets ``--limit 300`` embeds;
the test subset's reconstructions from Lite2 itself and stitched from Lite0 are scored (MSE, PSNR, SSIM) and
read by a pixel classifier trained on every MNIST training image. The mean training image is printed as the
floor any decoder must beat. This is the evidence for ``DEFAULT_SETTINGS`` in stitchcli/reconstruction/decoder.py.

    python benchmarks/reconstruction_batch.py --cache-dir /work/cache --out benchmarks/results/reconstruction_batch-mnist5k-300.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from _common import emit, load, processor
from stitchcli.data import stratified_subset
from stitchcli.data.packaged import packaged_dataset
from stitchcli.embedding import load_embeddings
from stitchcli.settings import HeadSettings
from stitchcli.reconstruction.decoder import build_decoder, reconstruct, train_decoder
from stitchcli.reconstruction.scores import reconstruction_scores
from stitchcli.reconstruction.semantic import train_pixel_classifier
from stitchcli.reconstruction.targets import load_pixel_targets
from stitchcli.relative import relative_space
from stitchcli.store import EmbeddingStore

LIMIT = 300
CANDIDATES = [(256, 1e-3), (64, 1e-3), (32, 1e-3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=os.environ.get("STITCHCLI_CACHE"), required=os.environ.get("STITCHCLI_CACHE") is None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = EmbeddingStore(args.cache_dir)
    dataset = packaged_dataset("packaged:mnist5k", store.root / "assets")
    entries = {(m, s): load_embeddings(store, m, dataset, s) for m in ("lite0", "lite2") for s in ("train", "test")}
    keep = {s: stratified_subset(entries[("lite2", s)].labels, LIMIT, 0) for s in ("train", "test")}  # embed --limit's rows
    train = load_pixel_targets(dataset, "train", entries[("lite2", "train")].ids[keep["train"]])
    test = load_pixel_targets(dataset, "test", entries[("lite2", "test")].ids[keep["test"]], size=(28, 28), channels=1)
    every = load_pixel_targets(dataset, "train")
    reader = train_pixel_classifier(every.images, every.labels, seed=0)

    def space(model: str, split: str) -> torch.Tensor:
        anchors = torch.from_numpy(entries[(model, "train")].embeddings[keep["train"]])
        latents = torch.from_numpy(entries[(model, split)].embeddings[keep[split]])
        return relative_space(latents, anchors, ("cosine", "euclidean"), transform="center").values

    def scored(images: torch.Tensor) -> dict[str, float]:
        return {**{k: round(v, 6) for k, v in reconstruction_scores(images, test.images).items()},
                "pixel_accuracy": round(reader.accuracy(images, test.labels), 6)}

    mean_image = train.images.mean(dim=0, keepdim=True).expand_as(test.images).contiguous()
    results = []
    for batch_size, lr in CANDIDATES:
        settings = HeadSettings(batch_size=batch_size, lr=lr)
        module = build_decoder("relative", train.shape, settings, aggregation="mlp-sum", num_subspaces=2, num_anchors=LIMIT, seed=0)
        record = train_decoder(module, space("lite2", "train"), train.images, settings, seed=0, labels=train.labels)
        result = {"batch_size": batch_size, "lr": lr, "epochs_run": record.epochs_run, "best_epoch": record.best_epoch,
                  "train_seconds": record.seconds, "val_mse": record.val_mse,
                  "lite2_own": scored(reconstruct(module, space("lite2", "test"))),
                  "lite0_stitched": scored(reconstruct(module, space("lite0", "test")))}
        print(result, file=sys.stderr, flush=True)
        results.append(result)
    emit({"benchmark": "reconstruction_batch", "rows": LIMIT, "mean_training_image": scored(mean_image),
          "pixel_classifier_on_originals": round(reader.accuracy(test.images, test.labels), 6), "results": results,
          "threads": args.threads, "processor": processor(), "load_after": load(),
          "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(["python", *sys.argv])}, args.out)


if __name__ == "__main__":
    main()
