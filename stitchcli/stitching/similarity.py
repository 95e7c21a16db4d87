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
                measures, note = _defined_measures(((a, x), (b, y)), settings, shared=True)
                rows.append(SimilarityRow(a, b, projection, **measures, rows=n, note=note))
            xa = data.models[a].evaluation.embeddings
            xb = data.models[b].evaluation.embeddings
            measures, note = _defined_measures(((a, xa), (b, xb)), settings, shared=False)
            rows.append(SimilarityRow(a, b, "absolute", **measures, rows=n, note="; ".join(filter(None, [note, ACROSS_SPACES_NOTE]))))
    return rows


def _defined_measures(
    pair: tuple[tuple[str, Any], tuple[str, Any]], settings: StitchSettings, *, shared: bool
) -> tuple[dict[str, float | None], str | None]:
    """Give (the measures between the two representations of ``pair``, two (model name, rows); a note or None).

    CKA is undefined when a model gives every evaluated row the same representation (a collapsed encoder, or
    identical inputs): its value is None and the note names the model, so the rest of eval's table stands.
    """
    constant = [name for name, rep in pair if _no_variance(rep)]
    (_, x), (_, y) = pair
    measures = _measures(x, y, settings, shared=shared, cka=not constant)
    if not constant or "cka" not in settings.metrics:
        return measures, None
    who = f"{constant[0]} gives" if len(constant) == 1 else f"{' and '.join(constant)} give"
    return measures, f"cka not defined: {who} every row the same representation (no variance)"


def _no_variance(rep: Any) -> bool:
    values = torch.as_tensor(rep)
    return bool(values.shape[0] > 0 and (values == values[:1]).all())


def _measures(x: Any, y: Any, settings: StitchSettings, *, shared: bool, cka: bool = True) -> dict[str, float | None]:
    """Give eval's measures (settings.metrics; None for the others) between x and y, through the registry.

    ``shared``: x and y live in the same coordinates (relative spaces on the same anchors); otherwise the
    measures that compare x_i with y_i directly (mrr, cosine) are None.
    """
    from stitchcli.similarity import get_measure

    values: dict[str, float | None] = {}
    for metric in METRICS:
        found = get_measure(metric)
        wanted = metric in settings.metrics and (shared or not found.shared_space) and (cka or metric != "cka")
        values[metric] = found(x, y, **found.options_from({"k": settings.k})) if wanted else None
    return values
