"""Choose stitch's defaults on the real offline pairs by validation accuracy (never the test split).

For each real pair of the offline demo (MiniLM <-> MPNet on BBC News, EfficientNet-Lite0 <-> Lite2 on
MNIST), the training split is cut into a class-stratified 80% part and a 20% validation part (seed 0).
Anchors are drawn from the 80% part; every head is trained on the decoder's 80% part (with its own
early-stopping hold-out inside it, as `stitch` does) and scored on the validation part, non-stitched
(decoder -> decoder) and stitched (encoder -> decoder), in both directions. The grid covers the
absolute transforms, the aggregations and every projection set, then the number of anchors.

Needs the demo's full embeddings in the cache first:

    stitchcli demo --full --cache-dir CACHE
    python benchmarks/stitching_defaults.py --cache-dir CACHE --out benchmarks/results/stitching_defaults.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from stitchcli.demo import DEMO_MODELS, packaged_dataset
from stitchcli.embedding import load_embeddings
from stitchcli.heads import HeadSettings, build_classifier, predict, stratified_split, train_classifier
from stitchcli.metrics import accuracy
from stitchcli.relative import DEFAULT_PROJECTIONS
from stitchcli.stitching import LatentTranslation, product_values
from stitchcli.store import EmbeddingStore

PAIRS = {"bbc-news": ("minilm", "mpnet"), "mnist5k": ("lite0", "lite2")}


def load_pair(store: EmbeddingStore, dataset: str, models: tuple[str, str]) -> dict[str, np.ndarray]:
    """Give each model's full training embeddings and the labels (rows aligned by id)."""
    path = packaged_dataset(store, f"packaged:{dataset}")
    entries = {m: load_embeddings(store, m, path, "train") for m in models}
    first = entries[models[0]]
    for entry in entries.values():
        assert np.array_equal(entry.ids, first.ids)
    return {"labels": first.labels, **{m: entries[m].embeddings for m in models}}


def score_config(data: dict[str, np.ndarray], models: tuple[str, str], *, transform: str, aggregation: str,
                 num_anchors: int, seeds: list[int], settings: HeadSettings, device: torch.device) -> list[dict]:
    """Give one record per (projection set, decoder, encoder): mean validation accuracy over seeds."""
    labels = data["labels"]
    fit_rows, val_rows = stratified_split(labels, 0.2, seed=0)
    rng = np.random.default_rng(0)
    anchor_rows = np.sort(rng.choice(fit_rows, size=min(num_anchors, len(fit_rows)), replace=False))
    spaces = {
        m: product_values(data[m], np.ascontiguousarray(data[m][anchor_rows]), DEFAULT_PROJECTIONS, transform, device)
        for m in models
    }
    sets = [(p,) for p in DEFAULT_PROJECTIONS] + [DEFAULT_PROJECTIONS]
    records = []
    for subset in sets:
        index = [DEFAULT_PROJECTIONS.index(p) for p in subset]
        for decoder in models:
            scores: dict[str, list[float]] = {m: [] for m in models}
            for seed in seeds:
                module = build_classifier("relative", int(labels.max()) + 1, settings, aggregation=aggregation,
                                          num_subspaces=len(subset), num_anchors=len(anchor_rows), seed=seed)
                train_classifier(module, spaces[decoder][fit_rows][:, index], labels[fit_rows], settings, seed=seed, device=device)
                for encoder in models:
                    scores[encoder].append(accuracy(labels[val_rows], predict(module, spaces[encoder][val_rows][:, index])))
            for encoder in models:
                records.append({
                    "projections": list(subset), "aggregation": aggregation, "transform": transform, "num_anchors": len(anchor_rows),
                    "decoder": decoder, "encoder": encoder, "stitched": encoder != decoder,
                    "val_accuracy": float(np.mean(scores[encoder])), "val_accuracy_std": float(np.std(scores[encoder])),
                })
    return records


def translation_records(data: dict[str, np.ndarray], models: tuple[str, str], *, num_anchors: int, seeds: list[int],
                        settings: HeadSettings, device: torch.device) -> list[dict]:
    """Give the latent-translation baseline's validation accuracy for both directions (and the absolute reference)."""
    labels = data["labels"]
    fit_rows, val_rows = stratified_split(labels, 0.2, seed=0)
    anchor_rows = np.sort(np.random.default_rng(0).choice(fit_rows, size=min(num_anchors, len(fit_rows)), replace=False))
    records = []
    for decoder in models:
        accs: dict[str, list[float]] = {m: [] for m in models}
        for seed in seeds:
            module = build_classifier("absolute", int(labels.max()) + 1, settings, input_dim=data[decoder].shape[1], seed=seed)
            train_classifier(module, torch.from_numpy(data[decoder][fit_rows]), labels[fit_rows], settings, seed=seed, device=device)
            for encoder in models:
                mapped = LatentTranslation.fit(data[encoder][anchor_rows], data[decoder][anchor_rows])(data[encoder][val_rows])
                accs[encoder].append(accuracy(labels[val_rows], predict(module, mapped)))
        for encoder in models:
            records.append({"method": "translation", "num_anchors": len(anchor_rows), "decoder": decoder, "encoder": encoder,
                            "stitched": encoder != decoder, "val_accuracy": float(np.mean(accs[encoder])),
                            "val_accuracy_std": float(np.std(accs[encoder]))})
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/stitching_defaults.json"))
    parser.add_argument("--seeds", default="0", help="head seeds of the grid (comma-separated)")
    parser.add_argument("--transforms", default="none,center,standardize")
    parser.add_argument("--aggregations", default="mlp-sum,concat,sum,self-attention")
    parser.add_argument("--anchors", default="1280", help="numbers of anchors of the grid (comma-separated)")
    parser.add_argument("--datasets", default="bbc-news,mnist5k")
    args = parser.parse_args()
    assert set(m for pair in PAIRS.values() for m in pair) <= set(DEMO_MODELS)
    store = EmbeddingStore(args.cache_dir)
    device = torch.device("cpu")
    settings = HeadSettings()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {"python": platform.python_version(), "torch": torch.__version__, "seeds": seeds, "head": settings.to_dict(),
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "records": []}
    if args.out.exists():
        results["records"] = json.loads(args.out.read_text())["records"]  # resume: configurations already scored are kept
    done = {(r["dataset"], r.get("method", "relative"), r.get("transform"), r.get("aggregation"), r["num_anchors"]) for r in results["records"]}
    for dataset in args.datasets.split(","):
        models = PAIRS[dataset]
        data = load_pair(store, dataset, models)
        for num in (int(n) for n in args.anchors.split(",")):
            k = min(num, len(stratified_split(data["labels"], 0.2, 0)[0]))
            if (dataset, "translation", None, None, k) not in done:
                for record in translation_records(data, models, num_anchors=num, seeds=seeds, settings=settings, device=device):
                    results["records"].append({"dataset": dataset, **record})
            for transform, aggregation in itertools.product(args.transforms.split(","), args.aggregations.split(",")):
                if (dataset, "relative", transform, aggregation, k) in done:
                    continue
                started = time.perf_counter()
                records = score_config(data, models, transform=transform, aggregation=aggregation, num_anchors=num,
                                       seeds=seeds, settings=settings, device=device)
                for record in records:
                    results["records"].append({"dataset": dataset, "method": "relative", **record})
                product = [r for r in records if len(r["projections"]) == 4 and r["stitched"]]
                print(f"{dataset} k={k} {transform:11s} {aggregation:14s} product stitched val acc "
                      f"{np.mean([r['val_accuracy'] for r in product]):.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1) + "\n")
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
