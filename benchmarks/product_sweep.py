"""The product space alone (no single-projection rows) across numbers of anchors and aggregations, on the
offline demo's real pairs, test split, both directions.

For each number of anchors K (drawn uniformly, seed 0, from the training split; "all" = every training
row) and each aggregation, `stitchcli.stitching.evaluate` with the defaults of `stitch` otherwise (or the
--projections and --transform given): the product's rows, and the translation and affine baselines
(fitted on the same anchors). Heads are cached like `stitch`'s, so a rerun only reads. One JSON line per
(dataset, K, aggregation) on stdout (and appended to --out), and markdown tables at the end
(`--table` prints them again from the --out file).

Needs the demo's full embeddings in the cache (else they are computed, which takes long):

    stitchcli demo --full --cache-dir CACHE
    python benchmarks/product_sweep.py --cache-dir CACHE --anchors 100,300,640,1280,all --out anchors.jsonl
    python benchmarks/product_sweep.py --cache-dir CACHE --aggregations mlp-sum,concat,sum,self-attention \
        --projections cosine,euclidean,l1,linf --transform center --out aggregations.jsonl
    python benchmarks/product_sweep.py --out anchors.jsonl --table
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from stitchcli.data.packaged import packaged_dataset
from stitchcli.embedding import load_embeddings
from stitchcli.models import ModelRef
from stitchcli.stitching import StitchSettings, evaluate
from stitchcli.store import EmbeddingStore

PAIRS = {"packaged:bbc-news": ("minilm", "mpnet"), "packaged:mnist5k": ("lite0", "lite2")}


def print_tables(table: list[tuple[str, int, str, dict]], seeds: str) -> None:
    """Print per dataset: the product's four cells per (anchors, aggregation), then the translations per anchors."""
    def cell(value: list[float] | tuple[float, float]) -> str:
        return f"{100 * value[0]:.1f} ± {100 * value[1]:.1f}"

    for dataset in dict.fromkeys(name for name, *_ in table):
        a, b = PAIRS[dataset]
        mine = [(num, aggregation, cells) for name, num, aggregation, cells in table if name == dataset]
        directions = [(a, a), (b, a), (b, b), (a, b)]
        print(f"\n{dataset}, product: accuracy % (mean ± std over seeds {seeds}), encoder→decoder\n")
        print("| anchors | aggregation | " + " | ".join(f"{e}→{d}" for e, d in directions) + " |")
        print("| --- " * 6 + "|")
        for num, aggregation, cells in mine:
            print(f"| {num} | {aggregation} | " + " | ".join(cell(cells[f"{e}->{d} relative"]) for e, d in directions) + " |")
        stitched = [(b, a), (a, b)]
        print(f"\n{dataset}, latent translations fitted on the same anchors: stitched accuracy %\n")
        print("| anchors | " + " | ".join(f"{m} {e}→{d}" for m in ("translation", "affine") for e, d in stitched) + " |")
        print("| --- " * 5 + "|")
        for num in dict.fromkeys(num for num, *_ in mine):
            cells = next(c for n, _, c in mine if n == num)
            print(f"| {num} | " + " | ".join(cell(cells[f"{e}->{d} {m}"]) for m in ("translation", "affine") for e, d in stitched) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, help="the cache holding the demo's full embeddings (required unless --table)")
    parser.add_argument("--anchors", default="100,300,640,1280,all", help="numbers of anchors (comma-separated; all = every training row)")
    parser.add_argument("--datasets", default=",".join(PAIRS), help="comma-separated packaged datasets")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--aggregations", default=None, help="comma-separated aggregations (default: stitch's)")
    parser.add_argument("--projections", default=None, help="comma-separated projections of the product (default: stitch's)")
    parser.add_argument("--transform", default=None, help="absolute transform (default: stitch's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines to this file")
    parser.add_argument("--table", action="store_true", help="print the markdown tables of the --out file and exit")
    args = parser.parse_args()
    if args.table:
        lines = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
        print_tables([(d["dataset"], d["num_anchors"], d["aggregation"], d["accuracy"]) for d in lines],
                     ",".join(map(str, lines[0]["seeds"])) if lines else args.seeds)
        return
    if args.cache_dir is None:
        parser.error("--cache-dir is required")
    store = EmbeddingStore(args.cache_dir)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    base = StitchSettings(dataset="", seeds=seeds, singles=False, metrics=(), baselines=("translation", "affine"))
    if args.projections:
        base = replace(base, projections=tuple(args.projections.split(",")))
    if args.transform:
        base = replace(base, transform=args.transform)
    aggregations = args.aggregations.split(",") if args.aggregations else list(base.aggregations)
    table: list[tuple[str, int, str, dict]] = []
    out = args.out.open("a") if args.out else None
    for dataset in args.datasets.split(","):
        models = [ModelRef(name) for name in PAIRS[dataset]]
        for count in args.anchors.split(","):
            if count == "all":  # every training row (the embeddings are cached by the first K)
                count = str(len(load_embeddings(store, models[0].name, packaged_dataset(dataset, store.root / "assets"), "train").labels))
            for aggregation in aggregations:
                settings = replace(base, dataset=dataset, num_anchors=int(count), aggregations=(aggregation,))
                settings.check()
                report = evaluate(store, models, settings)
                cells = {f"{row.encoder}->{row.decoder} {row.method}": (row.accuracy, row.accuracy_std) for row in report.rows}
                line = json.dumps({"dataset": dataset, "num_anchors": report.anchors["num"], "projections": list(settings.projections),
                                   "aggregation": aggregation, "transform": settings.transform, "seeds": list(seeds), "accuracy": cells})
                print(line, flush=True)
                if out is not None:
                    out.write(line + "\n")
                    out.flush()
                table.append((dataset, report.anchors["num"], aggregation, cells))
    print_tables(table, args.seeds)

if __name__ == "__main__":
    main()
