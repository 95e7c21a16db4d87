"""Which decoder architecture for reconstruction heads: mlp against deconv, same features, settings and budget.

Absolute decoders on EfficientNet-Lite0's MNIST latents (4000 training rows, the 1000 test rows scored), the
default HeadSettings except the epoch budget (every architecture runs all ``--epochs``, no early stop), seed 0:
the validation MSE curve, the test MSE/PSNR/SSIM and the training time of each. This is the evidence for
``mlp`` being the default (stitchcli/reconstruction/decoder.py).

    python benchmarks/reconstruction_architectures.py --cache-dir /work/cache --epochs 12 \\
        --out benchmarks/results/reconstruction_architectures-mnist5k.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from _common import emit, load, processor
from stitchcli.data.packaged import packaged_dataset
from stitchcli.embedding import load_embeddings
from stitchcli.settings import HeadSettings
from stitchcli.reconstruction.decoder import build_decoder, reconstruct, train_decoder
from stitchcli.reconstruction.scores import reconstruction_scores
from stitchcli.reconstruction.targets import load_pixel_targets
from stitchcli.store import EmbeddingStore

CANDIDATES = [("mlp", 16), ("deconv", 8), ("deconv", 16)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=os.environ.get("STITCHCLI_CACHE"), required=os.environ.get("STITCHCLI_CACHE") is None)
    parser.add_argument("--model", default="lite0")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = EmbeddingStore(args.cache_dir)
    dataset = packaged_dataset("packaged:mnist5k", store.root / "assets")
    train = load_embeddings(store, args.model, dataset, "train")
    test = load_embeddings(store, args.model, dataset, "test")
    targets = load_pixel_targets(dataset, "train", train.ids)
    train_images = targets.images
    test_images = load_pixel_targets(dataset, "test", test.ids, size=(28, 28), channels=1).images
    settings = HeadSettings(epochs=args.epochs, patience=args.epochs)
    results = []
    for architecture, base_channels in CANDIDATES:
        module = build_decoder("absolute", targets.shape, settings, input_dim=train.dim,
                               architecture=architecture, base_channels=base_channels, seed=0)
        record = train_decoder(module, torch.from_numpy(train.embeddings), train_images, settings, seed=0, labels=train.labels)
        scores = reconstruction_scores(reconstruct(module, torch.from_numpy(test.embeddings)), test_images)
        result = {"architecture": architecture, "base_channels": base_channels if architecture == "deconv" else None,
                  "parameters": sum(p.numel() for p in module.parameters()), "train_seconds": record.seconds,
                  "val_mse_curve": [point["val_loss"] for point in record.curve], "val_mse": record.val_mse,
                  **{f"test_{k}": round(v, 6) for k, v in scores.items()}}
        print(json.dumps(result), file=sys.stderr, flush=True)
        results.append(result)
    emit({"benchmark": "reconstruction_architectures", "model": args.model, "epochs": args.epochs, "threads": args.threads,
          "settings": settings.to_dict(), "results": results, "processor": processor(), "load_after": load(),
          "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(["python", *sys.argv])}, args.out)


if __name__ == "__main__":
    main()
