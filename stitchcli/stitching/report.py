"""What a sweep reports: one row per (encoder, decoder, method, projection set, aggregation), and similarity rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:
    from stitchcli.stitching.reconstruction import ReconstructionOutputs


def setting_label(projections: Sequence[str], aggregation: str | None, method: str = "relative") -> str:
    """Give a short label of a row's setting: ``cosine+l1 [mlp-sum]``, or the baseline's name."""
    if method != "relative":
        return method
    return f"{'+'.join(projections)} [{aggregation}]"


TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1"),
    "reconstruction": ("mse", "psnr", "ssim", "pixel_accuracy"),
}
"""The metrics of a row of each task (each with its ``_std`` over seeds); the summary averages them."""
RECONSTRUCTION_FIELDS = ("task", "mse", "mse_std", "psnr", "psnr_std", "ssim", "ssim_std", "pixel_accuracy", "pixel_accuracy_std")


@dataclass
class StitchRow:
    """One (encoder, decoder, method, projection set, aggregation) result, mean ± std over seeds.

    ``accuracy`` and ``macro_f1`` are fractions in [0, 1]; None with a ``note`` where the row is not
    defined (absolute stitching across different latent sizes). A ``task`` reconstruction row has them None
    and holds ``mse``, ``psnr`` (dB), ``ssim`` and ``pixel_accuracy`` (a pixel classifier's accuracy on the
    reconstructions) instead.
    """

    encoder: str
    decoder: str
    method: str
    projections: list[str]
    aggregation: str | None
    stitched: bool
    accuracy: float | None
    accuracy_std: float | None
    macro_f1: float | None
    macro_f1_std: float | None
    seeds: list[int]
    per_seed: list[dict[str, float]] = field(default_factory=list)
    note: str | None = None
    task: str = "classification"
    mse: float | None = None
    mse_std: float | None = None
    psnr: float | None = None
    psnr_std: float | None = None
    ssim: float | None = None
    ssim_std: float | None = None
    pixel_accuracy: float | None = None
    pixel_accuracy_std: float | None = None
    chosen: str | None = None  # auto: the bridge it chose
    selection: dict[str, Any] | None = None  # auto: every candidate's held-out scores (docs/BRIDGES.md)

    def to_dict(self) -> dict[str, Any]:
        """Give the JSON-ready row (a classification row without the reconstruction fields, as before they existed;
        ``chosen`` and ``selection`` only on ``auto`` rows)."""
        document = asdict(self)
        if self.task == "classification":
            for name in RECONSTRUCTION_FIELDS:
                document.pop(name)
        for key in ("chosen", "selection"):
            if document[key] is None:
                del document[key]
        return document

    @property
    def setting(self) -> tuple[str, tuple[str, ...], str | None]:
        """Give (method, projections, aggregation): what the row measures, apart from the models."""
        return (self.method, tuple(self.projections), self.aggregation)


@dataclass
class SimilarityRow:
    """How alike two models' representations of the same evaluation rows are, in one space."""

    model_a: str
    model_b: str
    projection: str
    cka: float | None
    jaccard: float | None
    mrr: float | None
    cosine: float | None
    rows: int
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Give the JSON-ready row."""
        return asdict(self)


@dataclass
class StitchReport:
    """The result of a sweep: rows, similarity, and what produced them."""

    dataset: str
    dataset_id: str
    split: str
    train_split: str
    anchors: dict[str, Any]
    models: list[dict[str, Any]]
    settings: dict[str, Any]
    rows: list[StitchRow]
    similarity: list[SimilarityRow] | None = None  # eval's similarity table; None: not computed (stitch)
    heads_trained: int = 0
    heads_cached: int = 0
    bridges_fitted: int = 0
    bridges_cached: int = 0
    seconds: float = 0.0
    task: str = "classification"
    pixel_classifier: dict[str, Any] | None = None  # reconstruction: the classifier that reads the reconstructions
    reconstructions: ReconstructionOutputs | None = None  # reconstruction: images kept for --plot/--save-outputs (not in JSON)

    def summary(self) -> list[dict[str, Any]]:
        """Give mean ± std over model pairs per (method, projections, aggregation): reference and stitched.

        The reference averages the decoder→decoder rows, the stitched part the encoder→decoder rows with
        encoder ≠ decoder; each pair enters with its mean over seeds.
        """
        groups: dict[tuple[str, tuple[str, ...], str | None], dict[bool, list[StitchRow]]] = {}
        for row in self.rows:
            groups.setdefault(row.setting, {True: [], False: []})[row.stitched].append(row)
        out = []
        for (method, projections, aggregation), parts in groups.items():
            entry: dict[str, Any] = {"method": method, "projections": list(projections), "aggregation": aggregation}
            metrics = TASK_METRICS[self.task]
            for stitched, label in ((False, "reference"), (True, "stitched")):
                for metric in metrics:
                    values = [getattr(r, metric) for r in parts[stitched] if getattr(r, metric) is not None]
                    entry[f"{label}_{metric}"] = round(float(np.mean(values)), 6) if values else None
                    entry[f"{label}_{metric}_std"] = round(float(np.std(values)), 6) if values else None
                entry[f"{label}_pairs"] = sum(1 for r in parts[stitched] if getattr(r, metrics[0]) is not None)
            out.append(entry)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Give the JSON document of ``stitch --json`` and ``eval --json``."""
        return {
            "dataset": self.dataset,
            "dataset_id": self.dataset_id,
            "split": self.split,
            "train_split": self.train_split,
            "anchors": self.anchors,
            "models": self.models,
            "settings": self.settings,
            "rows": [row.to_dict() for row in self.rows],
            "summary": self.summary(),
            **({"similarity": [row.to_dict() for row in self.similarity]} if self.similarity is not None else {}),
            **({"task": self.task, "pixel_classifier": self.pixel_classifier} if self.task != "classification" else {}),
            "heads_trained": self.heads_trained,
            "heads_cached": self.heads_cached,
            "bridges_fitted": self.bridges_fitted,
            "bridges_cached": self.bridges_cached,
            "seconds": round(self.seconds, 3),
        }


def score_predictions(predictions: list[np.ndarray], labels: np.ndarray, seeds: Sequence[int]) -> dict[str, Any]:
    """Give each seed's accuracy and macro-F1, and their mean and std.

    Macro-F1 averages over the classes the evaluation labels or that seed's predictions hold (scikit-learn's
    default): a class id no evaluation row has and no head predicts (0 of labels 1..K, the gaps of 0, 3, 7, a
    training class the test split lacks) has no F1 to count, and counting it as 0 lowered the score.
    """
    from stitchcli.metrics import accuracy, macro_f1

    per_seed = [
        {"seed": seed, "accuracy": round(accuracy(labels, p), 6), "macro_f1": round(macro_f1(labels, p), 6)}
        for seed, p in zip(seeds, predictions)
    ]
    acc = np.array([s["accuracy"] for s in per_seed])
    f1 = np.array([s["macro_f1"] for s in per_seed])
    return {
        "accuracy": round(float(acc.mean()), 6),
        "accuracy_std": round(float(acc.std()), 6),
        "macro_f1": round(float(f1.mean()), 6),
        "macro_f1_std": round(float(f1.std()), 6),
        "seeds": list(seeds),
        "per_seed": per_seed,
    }




def stitching_matrix(report: StitchReport, setting: tuple[str, tuple[str, ...], str | None], names: Iterable[str], metric: str = "accuracy") -> list[list[float | None]]:
    """Give the encoder × decoder matrix of ``metric`` for one (method, projections, aggregation)."""
    names = list(names)
    lookup = {(row.encoder, row.decoder): getattr(row, metric) for row in report.rows if row.setting == setting}
    return [[lookup.get((encoder, decoder)) for decoder in names] for encoder in names]
