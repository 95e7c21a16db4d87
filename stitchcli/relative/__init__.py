"""The method: relative projections, absolute transforms, the product space and its aggregations.

    from stitchcli.relative import relative_projection, relative_space, build_aggregation

    rel = relative_projection(x, anchors, "cosine")          # (N, D), (k, D) -> (N, k)
    space = relative_space(x, anchors, ["cosine", "l1"])      # space.values: (N, 2, k)
    phi = build_aggregation("mlp-sum", space.num_subspaces, space.num_anchors)
    features = phi(space.values)                              # (N, k)

The names below load their module (and torch) on first use, so importing this package stays cheap for the
command line.
"""

from __future__ import annotations

from stitchcli.lazy import lazy_exports

from stitchcli.errors import unknown_name as unknown_name  # the registries' error, re-exported for them

_EXPORTS = {  # module: the names it gives this package
    "projections": "DEFAULT_MEMORY_BUDGET DISTANCE_KERNELS Projection chunk_rows get_projection list_projections pairwise_lp register_projection relative_projection",
    "to_file": "relative_projection_to_file",
    "transforms": "Transform fit_transform l2_normalize_rows list_transforms register_transform",
    "product": "DEFAULT_PROJECTIONS ProductSpace relative_space",
    "aggregation": "Aggregation Concat MLPSum SelfAttention Sum build_aggregation list_aggregations register_aggregation",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, globals())
