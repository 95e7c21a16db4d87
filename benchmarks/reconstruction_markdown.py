"""Markdown tables of a reconstruction_sweep.py result: one table per decoder, its own and the stitched column.

    python benchmarks/reconstruction_markdown.py benchmarks/results/reconstruction_sweep-mnist5k.json

Cells: MSE ± std · PSNR (dB) · SSIM ± std · the pixel classifier's accuracy (%) ± std, mean (population std)
over the head seeds.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def cell(row: dict[str, Any] | None) -> str:
    """Give one table cell of a row's scores, or n/a."""
    if row is None:
        return "n/a"
    return (f"{row['mse']:.4f} ± {row['mse_std']:.4f} · {row['psnr']:.2f} · {row['ssim']:.3f} ± {row['ssim_std']:.3f}"
            f" · {100 * row['pixel_accuracy']:.1f} ± {100 * row['pixel_accuracy_std']:.1f}")


def setting(method: str, projections: list[str]) -> str:
    """Give a row's setting as the classification tables write it."""
    return f"{'+'.join(projections)} [mlp-sum]" if method == "relative" else method


def tables(document: dict[str, Any]) -> str:
    """Give the markdown: a heading line per decoder, then its table."""
    rows = document["rows"]
    lookup = {(r["encoder"], r["decoder"], r["method"], tuple(r["projections"])): r for r in rows}
    settings = list(dict.fromkeys((r["method"], tuple(r["projections"])) for r in rows))
    settings.sort(key=lambda s: (s[0] != "relative", len(s[1]) > 1, 0))  # singles, products, then baselines (stable)
    out = []
    models = document["models"]
    for decoder in models:
        other = [m for m in models if m != decoder]
        header = [f"{decoder}→{decoder} (own)"] + [f"{m}→{decoder} (stitched)" for m in other]
        out.append(f"| setting | {' | '.join(header)} |")
        out.append("| --- |" + " --- |" * len(header))
        for method, projections in settings:
            own = lookup.get((decoder, decoder, method if method in ("relative", "absolute") else "absolute", projections))
            if method in ("translation", "affine"):
                own = lookup.get((decoder, decoder, "absolute", ()))  # a space mapped to itself: the absolute head
            cells = [cell(own)] + [cell(lookup.get((m, decoder, method, projections))) for m in other]
            out.append(f"| {setting(method, list(projections))} | {' | '.join(cells)} |")
        out.append("")
    if "mean_training_image" in document:
        out.append(f"The mean training image, the floor any decoder must beat: {cell({**document['mean_training_image'], 'mse_std': 0, 'ssim_std': 0, 'pixel_accuracy_std': 0})}.")
    reader = document["pixel_classifier"]
    out.append(f"Pixel classifier on the original test images: {100 * reader['test_accuracy_on_originals']:.1f}% "
               f"(validation {100 * reader['val_accuracy']:.1f}%).")
    return "\n".join(out)


if __name__ == "__main__":
    print(tables(json.loads(open(sys.argv[1]).read())))
