"""Print the markdown tables of docs/RESULTS.md from an `eval --json` (or `demo --json`) document.

    stitchcli demo --full --json > demo-full.json
    python benchmarks/results_markdown.py demo-full.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def cell(row: dict | None, metric: str = "accuracy") -> str:
    """Give ``mean ± std`` in percent, or the reason a row is not defined."""
    if row is None:
        return "-"
    if row[metric] is None:
        return "n/a"
    return f"{100 * row[metric]:.1f} ± {100 * row[metric + '_std']:.1f}"


def label(row: dict) -> str:
    if row["method"] != "relative":
        return row["method"]
    return f"{'+'.join(row['projections'])} [{row['aggregation']}]"


def main(path: str) -> None:
    document = json.load(open(path))
    by_dataset: dict[str, list[dict]] = defaultdict(list)
    for row in document["rows"]:
        by_dataset[row["dataset"]].append(row)
    for run in document["runs"]:
        dataset = run["dataset"]
        models = [m["name"] for m in run["models"]]
        a, b = models
        rows = by_dataset[dataset]
        index = {(label(r), r["encoder"], r["decoder"]): r for r in rows}
        settings = list(dict.fromkeys(label(r) for r in rows))
        anchors = run["anchors"]
        print(f"### {dataset}: {a} ↔ {b}\n")
        print(f"{run['models'][0]['train_rows']} training / {run['models'][0]['eval_rows']} test rows, "
              f"{anchors['num']} anchors ({anchors['strategy']}, seed {anchors['seed']}), transform {run['settings']['transform']}, seeds "
              f"{','.join(map(str, run['settings']['seeds']))}; accuracy / macro-F1 in %, mean ± std over seeds.\n")
        directions = [(a, a), (b, a), (b, b), (a, b)]
        header = " | ".join(f"{e}→{d}" for e, d in directions)
        print(f"| setting | {header} |")
        print("| --- |" + " --- |" * len(directions))
        for setting in settings:
            cells = [f"{cell(index.get((setting, e, d)))} / {cell(index.get((setting, e, d)), 'macro_f1')}" for e, d in directions]
            print(f"| {setting} | " + " | ".join(cells) + " |")
        print()
        similarity = [s for s in document["similarity"] if s["dataset"] == dataset]
        if similarity:
            print("| space | CKA | Jaccard@10 | MRR@10 | cosine |")
            print("| --- | --- | --- | --- | --- |")
            for s in similarity:
                values = [("-" if s[k] is None else f"{s[k]:.3f}") for k in ("cka", "jaccard", "mrr", "cosine")]
                print(f"| {s['projection']} | " + " | ".join(values) + " |")
            print()


if __name__ == "__main__":
    main(sys.argv[1])
