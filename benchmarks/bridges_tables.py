"""Markdown tables of a bridges_sweep.py result file (python benchmarks/bridges_sweep.py --table --out FILE).

Accuracy cells: test accuracy % through the decoder's absolute head, the mean over head seeds for each anchor
draw, then mean ± std (population) over the anchor draws, and in brackets that mean as % of the decoder's
non-stitched accuracy (its absolute head on its own test latents, same head seeds). `auto`: the bridge each
score would choose on held-out anchors (no labels), its test accuracy, and the gap to the best bridge of the
same anchor draw (in points).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any, Iterable

SCORES = ("confidence", "agreement", "mrr", "retrieval")
ORDER = ("orthogonal", "affine", "inverse-relative", "kernel", "refine", "refine-coral", "refine-orthogonal")
"""The registry's order (list_bridges()), kept here so that printing tables needs no torch."""


def _ordered(names: Iterable[str]) -> list[str]:
    names = list(names)
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), names.index(n)))


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def _groups(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], dict[int, list[dict[str, Any]]]]:
    out: dict[tuple[str, str, str], dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        out[(r["dataset"], r["encoder"], r["decoder"])][r["anchors"]].append(r)
    return out


def choice(record: dict[str, Any], score: str) -> str | None:
    """Give the candidate ``score`` picks in a record's selection (ties broken as select_bridge breaks them)."""
    selection = record.get("selection")
    if not selection:
        return None
    order = [score] + [s for s in SCORES if s != score]
    candidates = selection["candidates"]

    def key(i: int) -> tuple[Any, ...]:
        scores = candidates[i]["scores"]
        return tuple(-1.0 if scores.get(s) is None else scores[s] for s in order) + (-i,)

    return candidates[max(range(len(candidates)), key=key)]["name"]


def test_accuracy(record: dict[str, Any], name: str) -> float:
    """Give a bridge's test accuracy in a record, the mean over head seeds."""
    return statistics.mean(record["bridges"][name]["accuracy"])


def print_tables(records: list[dict[str, Any]]) -> None:
    """Print the accuracy, auto and fit-time tables of sweep records."""
    groups = _groups(records)
    for (dataset, encoder, decoder), by_count in groups.items():
        counts = sorted(by_count)
        reference = statistics.mean(next(iter(by_count.values()))[0]["reference"])
        names = _ordered(dict.fromkeys(name for rs in by_count.values() for r in rs for name in r["bridges"]))
        print(f"\n#### {dataset}: {encoder} → {decoder} (non-stitched {decoder}: {100 * reference:.1f})\n")
        draws = {count: len(rs) for count, rs in by_count.items()}
        print(f"Anchor draws per column: {', '.join(f'{c}: {n}' for c, n in draws.items())}; cells: accuracy % mean ± std over draws (% of non-stitched).\n")
        print("| bridge | " + " | ".join(f"{c} anchors" for c in counts) + " |")
        print("| --- " * (len(counts) + 1) + "|")
        for name in names:
            cells = []
            for count in counts:
                values = [100 * test_accuracy(r, name) for r in by_count[count] if name in r["bridges"]]
                if not values:
                    cells.append("–")
                    continue
                mean, std = _mean_std(values)
                cells.append(f"{mean:.1f} ± {std:.1f} ({mean / reference:.1f}%)")
            print(f"| {name} | " + " | ".join(cells) + " |")
        for score in SCORES:
            cells = []
            for count in counts:
                picks = [(choice(r, score), r) for r in by_count[count]]
                if any(p is None for p, _ in picks):
                    cells.append("–")
                    continue
                accs = [100 * test_accuracy(r, p) for p, r in picks]  # type: ignore[arg-type]
                gaps = [100 * max(test_accuracy(r, n) for n in r["bridges"]) - a for (p, r), a in zip(picks, accs)]
                chosen = ", ".join(sorted({str(p) for p, _ in picks}))
                cells.append(f"{statistics.mean(accs):.1f}, gap {statistics.mean(gaps):.1f} (max {max(gaps):.1f}); {chosen}")
            print(f"| auto by {score} | " + " | ".join(cells) + " |")
        print("\nFit time, seconds (median over draws):\n")
        print("| bridge | " + " | ".join(f"{c} anchors" for c in counts) + " |")
        print("| --- " * (len(counts) + 1) + "|")
        for name in names:
            times = {c: [r["bridges"][name]["seconds"] for r in by_count[c] if name in r["bridges"]] for c in counts}
            cells = [f"{statistics.median(times[c]):.2f}" if times[c] else "–" for c in counts]
            print(f"| {name} | " + " | ".join(cells) + " |")
        selection_seconds = [f"{statistics.median(r['selection']['seconds'] for r in by_count[c]):.1f}" if all(r.get("selection") for r in by_count[c]) else "–"
                             for c in counts]
        if any(cell != "–" for cell in selection_seconds):
            print("| auto (all folds, every candidate) | " + " | ".join(selection_seconds) + " |")
    print_score_summary(records)


def print_score_summary(records: list[dict[str, Any]]) -> None:
    """Print, for each held-out score, how far its choice lands from the best bridge over all settings."""
    rows = [r for r in records if r.get("selection")]
    if not rows:
        return
    print("\nHow each label-free score's choice lands against the best bridge (points of test accuracy), over every setting and draw:\n")
    print("| score | mean gap | max gap | draws within 1 point | rank correlation with test accuracy (mean Spearman) |")
    print("| --- | --- | --- | --- | --- |")
    for score in SCORES:
        gaps, correlations = [], []
        for r in rows:
            pick = choice(r, score)
            best = max(test_accuracy(r, n) for n in r["bridges"])
            gaps.append(100 * (best - test_accuracy(r, pick)))  # type: ignore[arg-type]
            names = [c["name"] for c in r["selection"]["candidates"] if c["scores"].get(score) is not None]
            if len(names) > 2:
                held = [next(c["scores"][score] for c in r["selection"]["candidates"] if c["name"] == n) for n in names]
                correlations.append(_spearman(held, [test_accuracy(r, n) for n in names]))
        within = sum(g <= 1.0 for g in gaps)
        corr = f"{statistics.mean(correlations):.2f}" if correlations else "–"
        print(f"| {score} | {statistics.mean(gaps):.2f} | {max(gaps):.2f} | {within}/{len(gaps)} | {corr} |")


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return num / den if den else 0.0
