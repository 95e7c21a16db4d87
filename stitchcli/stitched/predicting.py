"""Predictions of a stitched model on files or a dataset split, their accuracy when labelled, and the accuracy bar."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stitchcli.errors import BelowMinimum, UsageError
from stitchcli.progress import Reporter
from stitchcli.settings import DatasetOptions
from stitchcli.stitched.model import StitchedModel, softmax
from stitchcli.store import EmbeddingStore


@dataclass
class Predictions:
    """A stitched model's predictions on some rows.

    Attributes:
        model: the stitched model.
        names: what each row is called (a path, ``FILE:LINE``, ``split#id``).
        logits: the head's (N, C) logits.
        labels: the true class name of each row, or None when unlabelled.
        source: ``encoded`` (through the encoder now) or ``cache`` (the cache's embeddings of the split, read only).
        same_as_saved: on the split the model was measured on: whether the predictions equal the saved row's, row
            for row (None elsewhere).
        ids: the rows' ids in their split (dataset splits), else None.
    """

    model: StitchedModel
    names: list[str]
    logits: np.ndarray
    labels: list[str] | None = None
    source: str = "encoded"
    same_as_saved: bool | None = None
    ids: np.ndarray | None = None

    @property
    def indices(self) -> np.ndarray:
        """The predicted class index of every row (the arg-max of its logits)."""
        return self.logits.argmax(axis=1) if len(self.logits) else np.zeros(0, np.int64)

    @property
    def predicted(self) -> list[str]:
        """The predicted class name of every row."""
        classes = self.model.classes
        return [classes[int(i)] for i in self.indices]

    @property
    def probabilities(self) -> np.ndarray:
        """The (N, C) class probabilities."""
        return softmax(self.logits)

    @property
    def accuracy(self) -> float | None:
        """The fraction of rows whose predicted class name is their label's (None when unlabelled)."""
        if self.labels is None or not self.labels:
            return None
        return float(np.mean([p == t for p, t in zip(self.predicted, self.labels)]))

    def top(self, k: int) -> list[list[tuple[str, float]]]:
        """Give the ``k`` most probable (class, probability) pairs of every row, most probable first."""
        probabilities = self.probabilities
        classes = self.model.classes
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [[(classes[int(c)], float(row[c])) for c in picks] for row, picks in zip(probabilities, order)]

    def to_dict(self, top_k: int = 1) -> dict[str, Any]:
        """Give the JSON document of ``predict --json``: ``accuracy`` (when labelled) at the top, one object per row."""
        rows = []
        for position, (name, best) in enumerate(zip(self.names, self.top(max(1, top_k)))):
            row: dict[str, Any] = {"input": name, "class": best[0][0], "probability": round(best[0][1], 6)}
            if top_k > 1:
                row["top_k"] = [{"class": c, "probability": round(p, 6)} for c, p in best]
            if self.labels is not None:
                row["label"] = self.labels[position]
            rows.append(row)
        document: dict[str, Any] = {}
        if self.accuracy is not None:
            document["accuracy"] = round(self.accuracy, 6)
        document.update(
            model=str(self.model.path),
            row=self.model.label,
            rows=len(rows),
            latents=self.source,
            same_as_saved_row=self.same_as_saved,
            card_accuracy=self.model.card.get("accuracy", {}).get("stitched"),
            predictions=rows,
        )
        return document


def predict_paths(
    model: StitchedModel,
    paths: Sequence[str | Path],
    *,
    store: EmbeddingStore,
    input_column: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    reporter: Reporter | None = None,
) -> Predictions:
    """Give the predictions on image files and folders, text files (one input per line) or a table's column."""
    from stitchcli.stitched.encoding import embed_inputs
    from stitchcli.stitched.inputs import inputs_from_paths

    stitched_column = ((model.card.get("data") or {}).get("dataset_options") or {}).get("input_column")
    inputs = inputs_from_paths(paths, model.modality, input_column=input_column, stitched_column=stitched_column)
    latents = embed_inputs(model, inputs, store=store, batch_size=batch_size, device=device, reporter=reporter)
    return Predictions(model, inputs.names, model.parts.logits(latents))


def predict_dataset(
    model: StitchedModel,
    dataset: str,
    split: str,
    *,
    store: EmbeddingStore,
    limit: int | None = None,
    seed: int = 0,
    dataset_options: DatasetOptions = DatasetOptions(),
    batch_size: int | None = None,
    device: str = "auto",
    recompute: bool = False,
    reporter: Reporter | None = None,
    need_accuracy: bool = False,
) -> Predictions:
    """Give the predictions on a dataset split (any dataset ``embed`` takes), labelled when the split has labels.

    The cache's embeddings of the split are used when it holds them for exactly this encoder (read only),
    unless ``recompute``; otherwise the rows go through the encoder. Nothing is written to the cache.

    The dataset the model was stitched on is read with the options it was stitched with (``--input-column``,
    ``--label-column``, ``--dataset-revision`` on its card) that ``dataset_options`` does not set.

    Labels are compared with the model's classes by name. When none of the split's labels is one of them
    (digits named ``zero`` … against ``0`` …), the accuracy would read 0 whatever the predictions: the rows
    are then predicted unlabelled, with a warning, or refused before any work when ``need_accuracy``
    (``--min-accuracy``), as is a split without labels. Labels only partly among the classes are warned about
    (their rows count as errors).
    """
    from stitchcli.assets import resolve_given_dataset
    from stitchcli.data import load_split
    from stitchcli.stitched.build import predictions_digest
    from stitchcli.stitched.encoding import cached_latents, embed_inputs
    from stitchcli.stitched.inputs import inputs_from_dataset

    reporter = reporter or Reporter()
    data = resolve_given_dataset(store, dataset, dataset_options, reporter=reporter)
    saved = model.card.get("data") or {}
    stitched_options = {name: value for name, value in (saved.get("dataset_options") or {}).items() if value is not None}
    if data.dataset_id == saved.get("dataset_id") and set(stitched_options) - set(dataset_options.given()):
        # the dataset it was stitched on: read as it was read then (its --input-column, --label-column), unless told otherwise
        taken = {name: value for name, value in stitched_options.items() if name not in dataset_options.given()}
        dataset_options = DatasetOptions.from_given({**stitched_options, **dataset_options.given()})
        data = resolve_given_dataset(store, dataset, dataset_options, reporter=reporter)
        reporter.info(f"{dataset} is read as the model was stitched on it: "
                      + ", ".join(f"--{name.replace('_', '-')} {value}" for name, value in taken.items()))
    rows = load_split(data, split, limit=limit, seed=seed)
    if rows.modality != model.modality:  # before the labels are compared with classes of the other modality's task
        raise UsageError(f"{dataset}/{split} holds {rows.modality} inputs, and the stitched model's encoder "
                         f"{model.card['encoder']['name']} reads {model.modality}: give a dataset of {model.modality} inputs")
    if need_accuracy and not rows.labelled:
        raise UsageError(
            f"--min-accuracy needs labelled rows, and {dataset}/{split} has no labels: "
            "pass --label-column NAME naming its class column, or drop --min-accuracy"
        )
    inputs = inputs_from_dataset(rows, data)
    labels = _comparable_labels(model, inputs.labels, f"{dataset}/{split}", reporter, need_accuracy=need_accuracy)
    latents = None if recompute else cached_latents(model, store, data, split, rows.ids, limit=limit, seed=seed)
    source = "cache"
    if latents is None:
        source = "encoded"
        latents = embed_inputs(model, inputs, store=store, batch_size=batch_size, device=device, reporter=reporter)
    else:
        reporter.info(f"{model.card['encoder']['name']}'s embeddings of {dataset}/{split} read from the cache (--recompute encodes them again)")
    predictions = Predictions(model, inputs.names, model.parts.logits(latents), labels, source, ids=rows.ids)
    # the same rows as the card's evaluation: the same content (a packaged dataset lies in each cache), split and subset
    same_data = saved.get("split_fingerprint") == rows.fingerprint if saved.get("split_fingerprint") else saved.get("dataset_id") == data.dataset_id
    measured_here = (
        same_data and (model.card.get("accuracy") or {}).get("split") == split
        and saved.get("limit") == limit and (limit is None or saved.get("embed_seed") == seed)
    )
    if measured_here:
        digest = (model.card.get("evaluation") or {}).get("predictions_sha256")
        predictions.same_as_saved = digest == predictions_digest(rows.ids, predictions.indices)
    return predictions


def _comparable_labels(model: StitchedModel, labels: list[str] | None, where: str, reporter: Reporter, *, need_accuracy: bool) -> list[str] | None:
    """Give ``labels`` when some are among the model's classes (warning about those that are not), else
    None with a warning, or a UsageError when ``need_accuracy``."""
    if labels is None:
        return None
    classes = set(model.classes)
    present = list(dict.fromkeys(labels))
    foreign = [label for label in present if label not in classes]  # in the order met, for the message
    if not foreign:
        return labels

    def shown(names: Sequence[str]) -> str:
        return ", ".join(names[:5]) + (f", … ({len(names)} in all)" if len(names) > 5 else "")

    if len(foreign) == len(present):
        said = (f"the labels of {where} ({shown(present)}) are none of the model's classes ({shown(model.classes)}), "
                "so an accuracy against them would mean nothing")
        if need_accuracy:
            raise UsageError(f"{said}: --min-accuracy needs data labelled with the model's classes (pass --label-column "
                             "naming such a column), or drop --min-accuracy to see the predictions")
        reporter.warn(f"{said}: the rows are predicted without an accuracy")
        return None
    rows = sum(label not in classes for label in labels)
    reporter.warn(f"label(s) {shown(foreign)} of {where} are not among the model's classes: their {rows} row(s) count as errors")
    return labels


def parse_min_accuracy(text: str | float | None) -> float | None:
    """Give the bar as a fraction: ``0.9``, ``90`` and ``90%`` all mean 90 % (a number above 1 is a percentage)."""
    if text is None:
        return None
    raw = str(text).strip()
    try:
        value = float(raw.rstrip("%"))
    except ValueError:
        raise UsageError(f"--min-accuracy {text!r} is not a number: give a fraction (0.9) or a percentage (90 or 90%)") from None
    if raw.endswith("%") or value > 1:
        value /= 100
    if not 0 <= value <= 1:
        raise UsageError(f"--min-accuracy {text!r} is outside 0..100%: give a fraction (0.9) or a percentage (90%)")
    return value


def check_min_accuracy(what: str, accuracy: float | None, minimum: float | None) -> None:
    """Raise BelowMinimum (exit code 3) naming ``what`` when ``accuracy`` is below ``minimum``."""
    if minimum is None:
        return
    if accuracy is None:
        raise UsageError("--min-accuracy needs labelled rows: predict on a dataset split (--dataset D --split S)")
    if accuracy < minimum:
        raise BelowMinimum(f"{what}: accuracy {100 * accuracy:.2f}% is below --min-accuracy {100 * minimum:.2f}%")
