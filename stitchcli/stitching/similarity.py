"""The similarity table of ``eval``: how alike two models' representations of the same evaluation rows are."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from stitchcli.settings import StitchSettings
from stitchcli.stitching.data import SweepData
from stitchcli.stitching.report import SimilarityRow


def similarity_rows(
    data: SweepData, names: Sequence[str], spaces: Mapping[str, torch.Tensor], projections: Sequence[str], settings: StitchSettings
) -> list[SimilarityRow]:
    """Give the similarity of every unordered model pair: per projection (relative), and CKA/Jaccard of the absolute latents."""
    from stitchcli.metrics import jaccard_at_k, linear_cka, mean_cosine, mrr_at_k

    metrics = set(settings.metrics)
    rows: list[SimilarityRow] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            n = int(spaces[a].shape[0])
            for index, projection in enumerate(projections):
                x, y = spaces[a][:, index], spaces[b][:, index]
                rows.append(SimilarityRow(
                    a, b, projection,
                    cka=linear_cka(x, y) if "cka" in metrics else None,
                    jaccard=jaccard_at_k(x, y, settings.k) if "jaccard" in metrics else None,
                    mrr=mrr_at_k(x, y, settings.k) if "mrr" in metrics else None,
                    cosine=mean_cosine(x, y) if "cosine" in metrics else None,
                    rows=n,
                ))
            xa = data.models[a].evaluation.embeddings
            xb = data.models[b].evaluation.embeddings
            rows.append(SimilarityRow(
                a, b, "absolute",
                cka=linear_cka(xa, xb) if "cka" in metrics else None,
                jaccard=jaccard_at_k(xa, xb, settings.k) if "jaccard" in metrics else None,
                mrr=None,
                cosine=None,
                rows=n,
                note="mrr and cosine compare vectors across spaces: defined in the relative spaces only",
            ))
    return rows
