"""The defaults of stitch, eval, fit-head and recipes, in one light module (no torch import).

The projection set, transform and aggregation were chosen on the validation part of the training split of
the offline demo's real pairs, both directions (benchmarks/stitching_defaults.py; docs/RESULTS.md §3):
the product of centred cosine and Euclidean with ``mlp-sum`` did best on average and stays within 1.5
points of the best single projection on both pairs, where the product of all four does not. The affine
baseline's ridge was chosen the same way.
"""

from __future__ import annotations

PROJECTIONS: tuple[str, ...] = ("cosine", "euclidean")
TRANSFORM = "center"
AGGREGATION = "mlp-sum"
SEEDS: tuple[int, ...] = (0, 1, 2)
METRICS: tuple[str, ...] = ("cka", "jaccard", "mrr", "cosine")
BASELINES: tuple[str, ...] = ("absolute", "translation", "affine")
RIDGE = 0.1
