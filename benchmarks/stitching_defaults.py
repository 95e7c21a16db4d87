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

from stitchcli.assets import PACKAGED_MODELS
from stitchcli.data.packaged import packaged_dataset
from stitchcli.embedding import load_embeddings
from stitchcli.heads import build_classifier, predict, stratified_split, train_classifier
from stitchcli.metrics import accuracy
from stitchcli.relative import DEFAULT_PROJECTIONS
from stitchcli.settings import HeadSettings
from stitchcli.stitching.features import product_values
from stitchcli.store import EmbeddingStore
from stitchcli.translations import AffineTranslation, LatentTranslation

PAIRS = {"bbc-news": ("minilm", "mpnet"), "mnist5k": ("lite0", "lite2")}


def load_pair(store: EmbeddingStore, dataset: str, models: tuple[str, str]) -> dict[str, np.ndarray]:
    """Give each model's full training embeddings and the labels (rows aligned by id)."""
    path = packaged_dataset(f"packaged:{dataset}", store.root / "assets")
    entries = {m: load_embeddings(store, m, path, "train") for m in models}
    first = entries[models[0]]
    for entry in entries.values():
        assert np.array_equal(entry.ids, first.ids)
    return {"labels": first.labels, **{m: entries[m].embeddings for m in models}}


def projection_subsets(which: str) -> list[tuple[str, ...]]:
    """Give the projection sets of the grid: each alone and all four (``singles``), or every non-empty subset (``all``)."""
    if which == "singles":
        return [(p,) for p in DEFAULT_PROJECTIONS] + [DEFAULT_PROJECTIONS]
    return [s for n in range(1, len(DEFAULT_PROJECTIONS) + 1) for s in itertools.combinations(DEFAULT_PROJECTIONS, n)]


def score_config(data: dict[str, np.ndarray], models: tuple[str, str], *, transform: str, aggregation: str,
                 num_anchors: int, seeds: list[int], settings: HeadSettings, device: torch.device,
                 sets: list[tuple[str, ...]]) -> list[dict]:
    """Give one record per (projection set, decoder, encoder): mean validation accuracy over seeds."""
    labels = data["labels"]
    fit_rows, val_rows = stratified_split(labels, 0.2, seed=0)
    rng = np.random.default_rng(0)
    anchor_rows = np.sort(rng.choice(fit_rows, size=min(num_anchors, len(fit_rows)), replace=False))
    spaces = {
        m: product_values(data[m], np.ascontiguousarray(data[m][anchor_rows]), DEFAULT_PROJECTIONS, transform, device)
        for m in models
    }
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
                        settings: HeadSettings, device: torch.device, ridges: list[float]) -> list[dict]:
    """Give the validation accuracy of the orthogonal translation and of the affine map at each ridge, both directions."""
    labels = data["labels"]
    fit_rows, val_rows = stratified_split(labels, 0.2, seed=0)
    anchor_rows = np.sort(np.random.default_rng(0).choice(fit_rows, size=min(num_anchors, len(fit_rows)), replace=False))
    methods = {"translation": (None, LatentTranslation.fit)}
    methods.update({f"affine-{ridge:g}": (ridge, lambda s, t, ridge=ridge: AffineTranslation.fit(s, t, ridge)) for ridge in ridges})
    records = []
    for decoder in models:
        accs: dict[tuple[str, str], list[float]] = {(m, e): [] for m in methods for e in models}
        for seed in seeds:
            module = build_classifier("absolute", int(labels.max()) + 1, settings, input_dim=data[decoder].shape[1], seed=seed)
            train_classifier(module, torch.from_numpy(data[decoder][fit_rows]), labels[fit_rows], settings, seed=seed, device=device)
            for (method, encoder), scores in accs.items():
                mapped = methods[method][1](data[encoder][anchor_rows], data[decoder][anchor_rows])(data[encoder][val_rows])
                scores.append(accuracy(labels[val_rows], predict(module, mapped)))
        for (method, encoder), scores in accs.items():
            records.append({"method": method.split("-")[0], "ridge": methods[method][0], "num_anchors": len(anchor_rows),
                            "decoder": decoder, "encoder": encoder, "stitched": encoder != decoder,
                            "val_accuracy": float(np.mean(scores)), "val_accuracy_std": float(np.std(scores))})
    return records


def print_tables(path: Path) -> None:
    """Print the markdown tables of docs/RESULTS.md §3 from a results file: stitched validation accuracy %."""
    records = [r for r in json.loads(path.read_text())["records"] if r["stitched"]]
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        mine = [r for r in records if r["dataset"] == dataset]
        directions = list(dict.fromkeys(f"{r['encoder']}→{r['decoder']}" for r in mine))
        for k, aggregation in dict.fromkeys((r["num_anchors"], r.get("aggregation")) for r in mine if r["method"] == "relative"):
            rel = [r for r in mine if r["method"] == "relative" and r["num_anchors"] == k and r["aggregation"] == aggregation]
            transforms = list(dict.fromkeys(r["transform"] for r in rel))
            print(f"\n{dataset}, {k} anchors, {aggregation}: stitched validation accuracy % ({' / '.join(directions)})\n")
            print("| projections | " + " | ".join(transforms) + " |")
            print("| --- " * (len(transforms) + 1) + "|")
            for subset in sorted(dict.fromkeys(tuple(r["projections"]) for r in rel), key=lambda s: (len(s), [DEFAULT_PROJECTIONS.index(p) for p in s])):
                cells = []
                for transform in transforms:
                    values = {f"{r['encoder']}→{r['decoder']}": r["val_accuracy"] for r in rel if r["transform"] == transform and tuple(r["projections"]) == subset}
                    cells.append(" / ".join(f"{100 * values[d]:.1f}" for d in directions) if len(values) == len(directions) else "-")
                print(f"| {'+'.join(subset)} | " + " | ".join(cells) + " |")
        for k in dict.fromkeys(r["num_anchors"] for r in mine if r["method"] != "relative"):
            maps = [r for r in mine if r["method"] != "relative" and r["num_anchors"] == k]
            print(f"\n{dataset}, {k} anchors: latent translation, stitched validation accuracy % ({' / '.join(directions)})\n")
            print("| map | accuracy |\n| --- | --- |")
            for method, ridge in dict.fromkeys((r["method"], r.get("ridge")) for r in maps):
                values = {f"{r['encoder']}→{r['decoder']}": r["val_accuracy"] for r in maps if (r["method"], r.get("ridge")) == (method, ridge)}
                name = "orthogonal (translation)" if method == "translation" else f"affine, ridge {ridge:g}"
                print(f"| {name} | " + " / ".join(f"{100 * values[d]:.1f}" for d in directions) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, help="the cache holding the demo's full embeddings (required unless --table)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/stitching_defaults.json"))
    parser.add_argument("--seeds", default="0", help="head seeds of the grid (comma-separated)")
    parser.add_argument("--transforms", default="none,center,standardize")
    parser.add_argument("--aggregations", default="mlp-sum,concat,sum,self-attention")
    parser.add_argument("--anchors", default="1280", help="numbers of anchors of the grid (comma-separated)")
    parser.add_argument("--datasets", default="bbc-news,mnist5k")
    parser.add_argument("--sets", choices=("singles", "all"), default="singles",
                        help="projection sets: each alone and all four, or every non-empty subset")
    parser.add_argument("--ridges", default="0.01,0.1,1", help="ridge strengths of the affine baseline (comma-separated)")
    parser.add_argument("--table", action="store_true", help="print the markdown tables of --out and exit")
    args = parser.parse_args()
    if args.table:
        print_tables(args.out)
        return
    if args.cache_dir is None:
        parser.error("--cache-dir is required")
    assert set(m for pair in PAIRS.values() for m in pair) <= set(PACKAGED_MODELS)
    store = EmbeddingStore(args.cache_dir)
    device = torch.device("cpu")
    settings = HeadSettings()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {"python": platform.python_version(), "torch": torch.__version__, "seeds": seeds, "head": settings.to_dict(),
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "records": []}
    if args.out.exists():
        results["records"] = json.loads(args.out.read_text())["records"]  # resume: configurations already scored are kept
    done = {(r["dataset"], r.get("method", "relative"), r.get("transform"), r.get("aggregation"), r["num_anchors"],
             tuple(r.get("projections") or ()), r.get("ridge")) for r in results["records"]}
    ridges = [float(r) for r in args.ridges.split(",")]
    for dataset in args.datasets.split(","):
        models = PAIRS[dataset]
        data = load_pair(store, dataset, models)
        for num in (int(n) for n in args.anchors.split(",")):
            k = min(num, len(stratified_split(data["labels"], 0.2, 0)[0]))
            if any((dataset, "affine", None, None, k, (), ridge) not in done for ridge in ridges):
                results["records"] = [r for r in results["records"] if not (r["dataset"] == dataset and r.get("method") in ("translation", "affine") and r["num_anchors"] == k)]
                for record in translation_records(data, models, num_anchors=num, seeds=seeds, settings=settings, device=device, ridges=ridges):
                    results["records"].append({"dataset": dataset, **record})
            for transform, aggregation in itertools.product(args.transforms.split(","), args.aggregations.split(",")):
                sets = [s for s in projection_subsets(args.sets) if (dataset, "relative", transform, aggregation, k, s, None) not in done]
                if not sets:
                    continue
                started = time.perf_counter()
                records = score_config(data, models, transform=transform, aggregation=aggregation, num_anchors=num,
                                       seeds=seeds, settings=settings, device=device, sets=sets)
                for record in records:
                    results["records"].append({"dataset": dataset, "method": "relative", **record})
                for subset in sets:
                    stitched = [r["val_accuracy"] for r in records if tuple(r["projections"]) == subset and r["stitched"]]
                    print(f"{dataset} k={k} {transform:11s} {aggregation:14s} {'+'.join(subset):28s} stitched val acc "
                          f"{' / '.join(f'{a:.3f}' for a in stitched)}", flush=True)
                print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1) + "\n")
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
