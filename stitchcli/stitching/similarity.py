"""The similarity table of ``eval``: how alike two models' representations of the same evaluation rows are.

Every measure comes from the similarity registry (:func:`stitchcli.similarity.get_measure`; eval's ``cka`` is
its ``linear-cka``), the one implementation ``stitchcli similarity`` uses too. On plain arrays a registered
measure runs eval's function of :mod:`stitchcli.metrics`, so eval's numbers are what they always were.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from stitchcli.settings import METRICS, StitchSettings
from stitchcli.stitching.data import SweepData
from stitchcli.stitching.report import SimilarityRow

ACROSS_SPACES_NOTE = "mrr and cosine compare vectors across spaces: defined in the relative spaces only"


def similarity_rows(
    data: SweepData, names: Sequence[str], spaces: Mapping[str, torch.Tensor], projections: Sequence[str], settings: StitchSettings
) -> list[SimilarityRow]:
    """Give the similarity of every unordered model pair: per projection (relative), and CKA/Jaccard of the absolute latents."""
    rows: list[SimilarityRow] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            n = int(spaces[a].shape[0])
            for index, projection in enumerate(projections):
                x, y = spaces[a][:, index], spaces[b][:, index]
                rows.append(SimilarityRow(a, b, projection, **_measures(x, y, settings, shared=True), rows=n))
            xa = data.models[a].evaluation.embeddings
            xb = data.models[b].evaluation.embeddings
            rows.append(SimilarityRow(a, b, "absolute", **_measures(xa, xb, settings, shared=False), rows=n, note=ACROSS_SPACES_NOTE))
    return rows


def _measures(x: Any, y: Any, settings: StitchSettings, *, shared: bool) -> dict[str, float | None]:
    """Give eval's measures (settings.metrics; None for the others) between x and y, through the registry.

    ``shared``: x and y live in the same coordinates (relative spaces on the same anchors); otherwise the
    measures that compare x_i with y_i directly (mrr, cosine) are None.
    """
    from stitchcli.similarity import get_measure

    values: dict[str, float | None] = {}
    for metric in METRICS:
        found = get_measure(metric)
        wanted = metric in settings.metrics and (shared or not found.shared_space)
        values[metric] = found(x, y, **found.options_from({"k": settings.k})) if wanted else None
    return values
