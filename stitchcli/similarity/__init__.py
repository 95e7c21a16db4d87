"""Similarity between models: calibrated measures, layer pairs, all pairs of many models (issue 23).

    from stitchcli.similarity import measure, get_measure, permutation_null, layer_matrix, compare_models

    measure(x, y, "cknna", k=10)                       # one float; x (N, p), y (N, q)
    get_measure("procrustes").higher_is_more_alike     # False: a distance
    permutation_null(x, y, "linear-cka", permutations_count=20).calibrated
    layer_matrix(layers_a, layers_b, "linear-cka", null=10).best
    compare_models({"a": xa, "b": xb, "c": xc}, ["linear-cka", "mutual-knn"], null=10).records

docs/SIMILARITY.md describes every measure (direction, invariances, cost) and the calibration. The names
below load their module (and torch) on first use, so importing this package stays cheap for the command line.
"""

from __future__ import annotations

from stitchcli.lazy import lazy_exports

_EXPORTS = {  # module: the names it gives this package
    "registry": "Measure get_measure list_measures measure register_measure takes_neighbours",
    "representation": "Representation",
    "calibration": "Calibrated calibrate permutation_null permutations",
    "layers": "FINAL_LAYER BestPair LayerMatrix layer_label layer_matrix",
    "pairs": "SimilarityRecord SimilarityReport compare_models relative_representations",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, globals())
