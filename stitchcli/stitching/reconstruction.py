"""The reconstruction task of a sweep (``--task reconstruction``): decoder heads and rows scored on pixels.

A reconstruction head is trained and cached as a classification head is (same anchors, projections,
transform, aggregation, seeds; :mod:`stitchcli.stitching.heads_cache`), but rebuilds the training rows' images
(:mod:`stitchcli.reconstruction`). A row feeds the encoder's evaluation features to the decoder's heads and
scores the reconstructions against the evaluation images: MSE, PSNR and SSIM, mean ± std over seeds, and the
accuracy of a digit (class) classifier trained on the training split's *pixels* (no model's latents) reading
them: does the class survive the trip through another model's space?
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from stitchcli.errors import UsageError
from stitchcli.heads import FittedHead
from stitchcli.progress import Reporter
from stitchcli.settings import StitchSettings
from stitchcli.stitching.data import ModelView, SweepData

if TYPE_CHECKING:
    from stitchcli.reconstruction.semantic import TrainedPixelClassifier
    from stitchcli.reconstruction.targets import PixelTargets
    from stitchcli.stitching.heads_cache import HeadRequest
    from stitchcli.stitching.report import StitchReport

RowKey = tuple[str, str, str, tuple[str, ...], "str | None"]
"""(encoder, decoder, method, projections, aggregation): one row of a sweep."""
KEEP = (None, "grid", "all")
PIXEL_CLASSIFIER_SEED = 0


def decoder_identity() -> dict[str, Any]:
    """Give what a reconstruction head's cache identity holds beyond a classification head's."""
    from stitchcli.reconstruction.decoder import DEFAULT_ARCHITECTURE, DEFAULT_BASE_CHANNELS, TASK

    return {"task": TASK, "decoder": {"architecture": DEFAULT_ARCHITECTURE, "base_channels": DEFAULT_BASE_CHANNELS}}


def require_image_task(settings: StitchSettings, dataset: Any) -> None:
    """Refuse ``--task reconstruction`` on a dataset without images (one line, before any model work)."""
    if settings.task == "reconstruction":
        from stitchcli.reconstruction.targets import require_image_dataset

        require_image_dataset(dataset, settings.train_split)


def train_targets(data: SweepData, view: ModelView, split: str | None = None) -> PixelTargets:
    """Give the images of the rows ``view``'s training embeddings hold, in their order (default size and channels)."""
    from stitchcli.reconstruction.targets import load_pixel_targets

    split = split or str(view.train.metadata.get("split") or "train")
    return load_pixel_targets(data.dataset, split, ids=_ids(view.train.ids, view.train.rows))


def _ids(ids: np.ndarray | None, rows: int) -> np.ndarray:
    return np.arange(rows, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)


def train_reconstruction_head(
    data: SweepData,
    view: ModelView,
    request: HeadRequest,
    settings: StitchSettings,
    x: torch.Tensor,
    targets: PixelTargets,
    device: torch.device,
    *,
    reporter: Reporter,
    what: str,
) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """Give (the trained decoder, its training record, its config fields) of one head request."""
    from stitchcli.reconstruction.decoder import build_decoder, decoder_config, train_decoder
    from stitchcli.stitching.heads_cache import head_shape

    if not np.array_equal(targets.ids, _ids(view.train.ids, view.train.rows)):
        raise AssertionError("the pixel targets are not the rows of the training embeddings")
    module = build_decoder(request.kind, targets.shape, settings.head, **head_shape(data, request, x))
    record = train_decoder(
        module, x, targets.images, settings.head, seed=request.seed, labels=data.train_labels, device=device,
        progress=lambda epoch, point: reporter.status(
            f"training {view.name}'s {what} decoder, seed {request.seed}: epoch {epoch} of at most {settings.head.epochs}, "
            f"validation MSE {point['val_loss']:.4f}"
        ),
    )
    return module, record.to_dict(), decoder_config(module)


@dataclass
class ReconstructionOutputs:
    """The reconstructions a sweep kept (first seed's head), for grids (``--plot``) and files (``--save-outputs``).

    Attributes:
        originals: (n, C, H, W) the evaluation images kept, in [0, 1].
        ids: (n,) their row ids in the evaluation split.
        rows: row key -> (n, C, H, W) reconstructions of the same images.
        grid: positions (into ``originals``) of the images a grid shows.
    """

    originals: torch.Tensor
    ids: np.ndarray
    rows: dict[RowKey, torch.Tensor] = field(default_factory=dict)
    grid: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


class ReconstructionRows:
    """Scores a sweep's reconstruction rows: the training and evaluation images and the pixel classifier, read once.

    Args:
        data: the sweep's data.
        settings: the sweep's settings (split, train split, seeds).
        device: where decoders and the pixel classifier run.
        keep: None, ``"grid"`` (keep the first seed's reconstructions of the grid's images) or ``"all"``
            (of every evaluation image, for ``--save-outputs``).
        reporter: where progress goes.
    """

    def __init__(self, data: SweepData, settings: StitchSettings, device: torch.device, *, keep: str | None = None, reporter: Reporter | None = None) -> None:
        if keep not in KEEP:
            raise ValueError(f"keep must be one of {KEEP}, not {keep!r}")
        self.data, self.settings, self.device, self.keep = data, settings, device, keep
        self.reporter = reporter or Reporter()
        self._train: dict[bytes, PixelTargets] = {}
        self._eval: PixelTargets | None = None
        self._classifier: TrainedPixelClassifier | None = None
        self.outputs: ReconstructionOutputs | None = None

    def train_targets(self, view: ModelView) -> PixelTargets:
        """Give the images of ``view``'s training rows (read once per set of rows)."""
        ids = _ids(view.train.ids, view.train.rows)
        key = ids.tobytes()
        if key not in self._train:
            self.reporter.info(f"reading the {len(ids)} training images of {self.settings.train_split} (reconstruction targets)")
            self._train[key] = train_targets(self.data, view, self.settings.train_split)
        return self._train[key]

    def _evaluation(self, view: ModelView, head: FittedHead) -> PixelTargets:
        from stitchcli.reconstruction.targets import image_shape_of, load_pixel_targets

        if self._eval is None:
            if view.evaluation is None:
                raise AssertionError("a sweep always reads the evaluation split")
            shape = image_shape_of(head.config)
            self._eval = load_pixel_targets(self.data.dataset, self.settings.split, ids=_ids(view.evaluation.ids, view.evaluation.rows),
                                            size=(shape.height, shape.width), channels=shape.channels)
            if self.keep is not None:
                from stitchcli.reconstruction.figures import grid_positions

                grid = grid_positions(self._eval.labels, seed=0)
                kept = np.arange(len(self._eval.ids)) if self.keep == "all" else grid
                self.outputs = ReconstructionOutputs(self._eval.images[kept], self._eval.ids[kept],
                                                     grid=np.searchsorted(kept, grid) if self.keep == "all" else np.arange(len(grid)))
                self._kept = kept
        return self._eval

    def classifier(self, view: ModelView) -> TrainedPixelClassifier:
        """Give the pixel classifier, trained on the training images (seed 0) the first time it is needed."""
        if self._classifier is None:
            from stitchcli.reconstruction.semantic import train_pixel_classifier

            targets = self.train_targets(view)
            self.reporter.info(f"training the pixel classifier on {len(targets.ids)} training images (reads the reconstructions)")
            self._classifier = train_pixel_classifier(targets.images, targets.labels, seed=PIXEL_CLASSIFIER_SEED,
                                                      num_classes=self.data.num_classes, device=self.device)
        return self._classifier

    def score(self, key: RowKey, encoder: ModelView, heads: Sequence[FittedHead], features: torch.Tensor) -> dict[str, Any]:
        """Give a row's fields: ``task``, MSE/PSNR/SSIM and the pixel classifier's accuracy, mean ± std over the heads' seeds."""
        from stitchcli.reconstruction.decoder import reconstruct
        from stitchcli.reconstruction.scores import score_seeds

        targets = self._evaluation(encoder, heads[0])
        classifier = self.classifier(encoder)
        images = [reconstruct(head.module, features) for head in heads]
        seeds = list(self.settings.seeds) if len(heads) == len(self.settings.seeds) else [int(h.config["seed"]) for h in heads]
        row = score_seeds(images, targets.images, seeds)
        pixel = [round(classifier.accuracy(image, targets.labels), 6) for image in images]
        for entry, value in zip(row["per_seed"], pixel):
            entry["pixel_accuracy"] = value
        if self.outputs is not None:
            self.outputs.rows[key] = images[0][self._kept]
        return {
            "task": "reconstruction", "accuracy": None, "accuracy_std": None, "macro_f1": None, "macro_f1_std": None, **row,
            "pixel_accuracy": round(float(np.mean(pixel)), 6), "pixel_accuracy_std": round(float(np.std(pixel)), 6),
        }

    def summary(self) -> dict[str, Any] | None:
        """Give the pixel classifier's facts for the report: its validation accuracy and its accuracy on the original images."""
        if self._classifier is None or self._eval is None:
            return None
        return {
            "trained_on": f"{self.settings.train_split} pixels ({len(next(iter(self._train.values())).ids)} images)",
            "seed": PIXEL_CLASSIFIER_SEED,
            "val_accuracy": self._classifier.val_accuracy,
            "accuracy_on_originals": round(self._classifier.accuracy(self._eval.images, self._eval.labels), 6),
            "epochs_run": self._classifier.epochs_run,
        }


# ----- pictures and files of a report ------------------------------------------------------------------


def _row_title(row_method: str, projections: Sequence[str], aggregation: str | None, several_aggregations: bool) -> str:
    if row_method != "relative":
        return row_method
    label = "+".join(projections)
    return f"{label} [{aggregation}]" if several_aggregations else label


def write_grids(folder: str | Path, report: StitchReport) -> list[Path]:
    """Give the PNGs written: one grid per encoder → decoder pair (encoder ≠ decoder) of a reconstruction report.

    Each grid shows the kept evaluation images on the first row, the decoder's own reconstruction (its
    product-space head, first aggregation) on the second, then one row per stitched method, the same images
    in every row.
    """
    from stitchcli.reconstruction.figures import reconstruction_grid
    from stitchcli.reconstruction.outputs import file_safe

    outputs = report.reconstructions
    if outputs is None:
        raise UsageError("the sweep kept no reconstructions: run it with keep='grid' or 'all'")
    grid = outputs.grid
    several = len({row.aggregation for row in report.rows if row.method == "relative"}) > 1
    relative_sets = [tuple(row.projections) for row in report.rows if row.method == "relative"]
    own_set = max(relative_sets, key=len) if relative_sets else ()
    own_aggregation = next((row.aggregation for row in report.rows if row.method == "relative"), None)
    written = []
    pairs = list(dict.fromkeys((row.encoder, row.decoder) for row in report.rows if row.stitched))
    for encoder, decoder in pairs:
        own = outputs.rows.get((decoder, decoder, "relative", own_set, own_aggregation))
        rows: list[tuple[str, torch.Tensor]] = []
        if own is not None:
            rows.append((f"{decoder}→{decoder} ({_row_title('relative', own_set, own_aggregation, several)})", own[grid]))
        for row in report.rows:
            key = (row.encoder, row.decoder, row.method, tuple(row.projections), row.aggregation)
            if (row.encoder, row.decoder) == (encoder, decoder) and key in outputs.rows:
                rows.append((f"{encoder}→{decoder} {_row_title(row.method, row.projections, row.aggregation, several)}", outputs.rows[key][grid]))
        path = Path(folder).expanduser() / f"{file_safe(encoder)}--{file_safe(decoder)}.png"
        written.append(reconstruction_grid(path, outputs.originals[grid], rows, title=f"{encoder} → {decoder} on {report.dataset} ({report.split})"))
    return written


def write_outputs(folder: str | Path, report: StitchReport) -> list[Path]:
    """Give the files written: one ``ENCODER--DECODER--METHOD.safetensors`` per row with reconstructions (first seed)."""
    from stitchcli.reconstruction.outputs import save_reconstructions

    outputs = report.reconstructions
    if outputs is None:
        raise UsageError("the sweep kept no reconstructions: run it with keep='all'")
    several = len({row.aggregation for row in report.rows if row.method == "relative"}) > 1
    written = []
    for row in report.rows:
        key = (row.encoder, row.decoder, row.method, tuple(row.projections), row.aggregation)
        if key in outputs.rows:
            written.append(save_reconstructions(
                folder, row.encoder, row.decoder, row.method, outputs.rows[key], outputs.ids,
                projections=row.projections, aggregation=row.aggregation, name_aggregation=several,
                metadata={"dataset": report.dataset, "split": report.split, "seed": row.seeds[0] if row.seeds else None},
            ))
    return written
