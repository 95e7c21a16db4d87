"""Heads: an aggregation plus a classifier trained on one model's representations, saved as safetensors + JSON.

A *relative* head reads a product space (N, n, k): the aggregation φ of docs/METHOD.md §3 (one LayerNorm per
subspace, then concat, sum, mlp-sum or self-attention) followed by the classifier of docs/METHOD.md §4,
LayerNorm → Linear(in, h) → SiLU → Dropout → Linear(h, C). An *absolute* head is the same classifier on the
raw latents (N, D); the absolute and latent-translation baselines use it.

Training uses the decoder's training split only: a seeded class-stratified validation part of it picks the
epoch (early stopping on validation accuracy), and the weights of the best epoch are kept.

A saved head is one safetensors file (the module's tensors, the JSON config in the metadata) with the same
config beside it as ``.json`` for people; :func:`load_head` reads the safetensors file alone, and uses it only
when it passes the checksums its metadata carries (see :mod:`stitchcli.store`).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from stitchcli.errors import UsageError
from stitchcli.relative.aggregation import Aggregation, build_aggregation
from stitchcli.settings import HeadSettings
from stitchcli.store import CHECKSUM_FIELD, CorruptEntry, canonical_json, read_header, write_safetensors, write_text_atomically

HEAD_FORMAT = 1
HEAD_KINDS = ("relative", "absolute")
DEFAULT_TASK = "classification"
"""The task of a head whose config names none (every head saved before reconstruction heads existed)."""


class Classifier(nn.Module):
    """An optional aggregation, then LayerNorm → Linear(in, h) → SiLU → Dropout → Linear(h, C).

    Attributes:
        aggregation: the product-space aggregation (relative heads), or None (absolute heads).
        mlp: the classifier.
    """

    def __init__(self, input_size: int, num_classes: int, *, hidden: int, dropout: float, aggregation: Aggregation | None = None) -> None:
        super().__init__()
        self.aggregation = aggregation
        self.mlp = nn.Sequential(
            nn.LayerNorm(input_size),
            nn.Linear(input_size, hidden),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Give the (N, C) logits of (N, n, k) product-space features, or of (N, D) latents without aggregation."""
        if self.aggregation is not None:
            features = self.aggregation(features)
        return self.mlp(features)


@dataclass(kw_only=True)
class TrainingRun:
    """What training did, whatever the task: the curve, the chosen epoch, the rows and the time.

    Each task's record adds its scores of the kept weights (:class:`TrainingRecord` for classification,
    ``ReconstructionRecord`` for reconstruction).
    """

    epochs_run: int
    best_epoch: int
    train_rows: int
    val_rows: int
    seconds: float
    curve: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def of(cls, fit: EarlyStoppedFit, train_rows: np.ndarray, val_rows: np.ndarray, started: float, **scores: float) -> Any:
        """Give the record of ``fit`` (begun at ``perf_counter`` time ``started``), with the task's ``scores``."""
        return cls(
            epochs_run=len(fit.curve),
            best_epoch=fit.best_epoch,
            train_rows=len(train_rows),
            val_rows=len(val_rows),
            seconds=round(time.perf_counter() - started, 3),
            curve=fit.curve,
            **{name: round(value, 6) for name, value in scores.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """Give the record as a JSON-ready dict."""
        return asdict(self)


@dataclass(kw_only=True)
class TrainingRecord(TrainingRun):
    """A classification head's training: the run, and the accuracies of the kept weights."""

    train_accuracy: float
    val_accuracy: float


@dataclass
class FittedHead:
    """A trained head and the config that says what it reads.

    Attributes:
        module: the classifier or, for ``task`` reconstruction, the decoder (with its aggregation for relative
            heads), in eval mode.
        config: the JSON config saved with it (kind, task, model, dataset, anchors, projections, aggregation,
            transform, classes, settings, seed, training record, versions).
        path: where it was saved, if it was.
    """

    module: nn.Module
    config: dict[str, Any]
    path: Path | None = None

    @property
    def kind(self) -> str:
        """``relative`` or ``absolute``."""
        return str(self.config["kind"])

    @property
    def task(self) -> str:
        """``classification`` (also when the config names no task) or ``reconstruction``."""
        return str(self.config.get("task") or DEFAULT_TASK)

    @property
    def projections(self) -> tuple[str, ...]:
        """The projections the head reads, in subspace order (empty for an absolute head)."""
        return tuple(self.config.get("projections") or ())

    @property
    def num_classes(self) -> int:
        """The number of classes it predicts."""
        return int(self.config["num_classes"])

    @property
    def training(self) -> dict[str, Any]:
        """The training record."""
        return dict(self.config.get("training") or {})

    def predict(self, features: torch.Tensor | np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
        """Give the predicted class of every row of ``features`` ((N, n, k) or (N, D)), in batches."""
        if self.task != DEFAULT_TASK:
            raise ValueError(f"a {self.task} head predicts no classes: use stitchcli.reconstruction.decoder.reconstruct")
        return predict(self.module, features, batch_size=batch_size)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def predict(module: nn.Module, features: torch.Tensor | np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
    """Give the arg-max class of ``module``'s logits for every row of ``features``, computed in batches."""
    device = _device_of(module)
    x = torch.as_tensor(features)
    was_training = module.training
    module.eval()
    out = [module(x[i : i + batch_size].to(device=device, dtype=torch.float32)).argmax(dim=1).cpu() for i in range(0, len(x), batch_size)]
    module.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Give (train positions, validation positions): about ``fraction`` of every class held out, seeded.

    A class with at least two rows gives at least one row to validation and keeps at least one for
    training; a class with a single row stays in training. Both arrays are sorted.
    """
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) < 2:
            continue
        count = min(len(rows) - 1, max(1, int(round(fraction * len(rows)))))
        held.append(rng.choice(rows, size=count, replace=False))
    val = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, val


def build_classifier(
    kind: str,
    num_classes: int,
    settings: HeadSettings,
    *,
    input_dim: int | None = None,
    aggregation: str | None = None,
    num_subspaces: int | None = None,
    num_anchors: int | None = None,
    seed: int | None = None,
) -> Classifier:
    """Give a new (untrained) classifier: relative with an aggregation over (n, k), or absolute over D.

    With ``seed`` the initial weights come from a generator seeded with it (torch's global random state is
    left as it was); without, from the global state.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_classifier(
                kind, num_classes, settings, input_dim=input_dim, aggregation=aggregation,
                num_subspaces=num_subspaces, num_anchors=num_anchors,
            )
    if kind == "relative":
        if aggregation is None or num_subspaces is None or num_anchors is None:
            raise ValueError("a relative head needs aggregation, num_subspaces and num_anchors")
        phi = build_aggregation(aggregation, num_subspaces, num_anchors)
        return Classifier(phi.output_size, num_classes, hidden=settings.hidden, dropout=settings.dropout, aggregation=phi)
    if kind == "absolute":
        if input_dim is None:
            raise ValueError("an absolute head needs input_dim")
        return Classifier(input_dim, num_classes, hidden=settings.hidden, dropout=settings.dropout)
    raise ValueError(f"unknown head kind {kind!r}")


def train_classifier(
    module: Classifier,
    features: torch.Tensor,
    labels: np.ndarray,
    settings: HeadSettings,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainingRecord:
    """Give the training record after training ``module`` in place on ``features`` with early stopping.

    The validation part is a seeded class-stratified ``settings.val_fraction`` of the rows; training stops
    after ``settings.patience`` epochs without a better validation accuracy (ties go to the lower validation
    loss) and the module keeps the weights of its best epoch. Shuffling and dropout draw from generators
    seeded with ``seed`` without touching torch's global random state.

    Args:
        module: a fresh classifier (see :func:`build_classifier`, whose ``seed`` fixes the initial weights).
        features: (N, n, k) product-space values or (N, D) latents, on any device.
        labels: (N,) class indices.
        settings: the training settings.
        seed: the seed of the validation split, shuffling and dropout.
        device: where to train.
        progress: called after every epoch with (epoch, its curve point).
    """
    started = time.perf_counter()
    device = torch.device(device)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(features):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    if len(np.unique(labels)) < 2:
        raise UsageError(f"a head tells classes apart, and all {len(labels)} training rows are of one class: use a training split with two or more classes")
    train_rows, val_rows = stratified_split(labels, settings.val_fraction, seed)
    if len(val_rows) == 0:
        raise UsageError(
            f"a head needs a validation part for early stopping, and {len(labels)} training rows give none: "
            "embed more rows (at least two of some class)"
        )
    x = torch.as_tensor(features).to(device=device, dtype=torch.float32)
    y = torch.as_tensor(labels).to(device)
    fit = fit_with_early_stopping(
        module, x, y, train_rows, val_rows, settings, seed=seed, loss_fn=nn.CrossEntropyLoss(),
        metric=("accuracy", _count_correct), progress=progress,
    )
    return TrainingRecord.of(fit, train_rows, val_rows, started, train_accuracy=fit.train_metric, val_accuracy=fit.val_metric)


def _count_correct(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Give how many rows' arg-max class is their label (a batch's share of the accuracy)."""
    return int((logits.argmax(dim=1) == labels).sum())


@dataclass
class EarlyStoppedFit:
    """What :func:`fit_with_early_stopping` did: the curve and the kept (best) epoch's scores.

    ``val_loss`` is the kept epoch's mean validation loss; ``val_metric`` its validation metric and
    ``train_metric`` the metric of the kept weights on the training rows (both 0.0 without a metric).
    """

    curve: list[dict[str, float]]
    best_epoch: int
    val_loss: float
    val_metric: float
    train_metric: float


def fit_with_early_stopping(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    settings: HeadSettings,
    *,
    seed: int,
    loss_fn: nn.Module,
    metric: tuple[str, Callable[[torch.Tensor, torch.Tensor], float]] | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> EarlyStoppedFit:
    """Give the curve and kept epoch after training ``module`` in place with Adam and early stopping.

    The loop every head shares (classifiers here, reconstruction decoders in :mod:`stitchcli.reconstruction`).
    Each epoch shuffles ``train_rows`` and takes Adam steps on ``loss_fn`` over batches of
    ``settings.batch_size``, then scores ``val_rows``. With ``metric`` (a name and a function giving a batch's
    *sum* of a score where higher is better, such as its count of correct rows), patience counts epochs
    without a better validation metric and ties go to the lower validation loss; without, patience counts
    epochs without a lower validation loss. The module keeps the weights of its best epoch and ends in eval
    mode. Shuffling and dropout draw from generators seeded with ``seed`` (torch's global random state is
    left as it was).

    Args:
        module: the module to train (already built and seeded).
        x: the inputs, on the device to train on (its rows are indexed by ``train_rows`` and ``val_rows``).
        y: the targets, on the same device, one row per row of ``x``.
        train_rows, val_rows: row positions of the training and validation parts (validation non-empty).
        settings: epochs, lr, batch size, weight decay and patience.
        seed: seeds shuffling and dropout.
        loss_fn: the mean loss of a batch (outputs, targets).
        metric: (name, batch sum of the score), or None to select on the validation loss alone.
        progress: called after every epoch with (epoch, its curve point).
    """
    device = x.device
    train_idx = torch.as_tensor(train_rows, device=device)
    val_idx = torch.as_tensor(val_rows, device=device)
    name, score = metric if metric is not None else (None, None)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        module.to(device)
        optimizer = torch.optim.Adam(module.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        shuffle = torch.Generator(device="cpu").manual_seed(seed)
        # (validation metric, -validation loss) with a metric, (-validation loss,) without: larger is better
        best: tuple[float, ...] = (-float("inf"), -float("inf")) if score is not None else (-float("inf"),)
        best_state: dict[str, torch.Tensor] = copy.deepcopy(module.state_dict())
        best_epoch, stale = 0, 0
        curve: list[dict[str, float]] = []
        for epoch in range(1, settings.epochs + 1):
            module.train()
            order = train_idx[torch.randperm(len(train_idx), generator=shuffle).to(device)]
            total_loss, total_score = 0.0, 0.0
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                outputs = module(x[batch])
                loss = loss_fn(outputs, y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * len(batch)
                if score is not None:
                    total_score += score(outputs.detach(), y[batch])
            val_loss, val_score = _evaluate(module, x, y, val_idx, loss_fn, score, settings.batch_size)
            point: dict[str, float] = {"epoch": epoch, "train_loss": round(total_loss / len(order), 6)}
            if name is not None:
                point[f"train_{name}"] = round(total_score / len(order), 6)
            point["val_loss"] = round(val_loss, 6)
            if name is not None:
                point[f"val_{name}"] = round(val_score, 6)
            curve.append(point)
            if progress is not None:
                progress(epoch, point)
            # Patience counts epochs without a better metric; the loss only breaks ties in which weights to keep
            # (on easy data it keeps falling long after the accuracy stopped rising).
            key = (val_score, -val_loss) if score is not None else (-val_loss,)
            stale = 0 if key[0] > best[0] else stale + 1
            if key > best:
                best, best_epoch = key, epoch
                best_state = copy.deepcopy(module.state_dict())
            if stale >= settings.patience:
                break
    module.load_state_dict(best_state)
    module.eval()
    _, train_score = _evaluate(module, x, y, train_idx, loss_fn, score, settings.batch_size) if score is not None else (0.0, 0.0)
    return EarlyStoppedFit(
        curve=curve,
        best_epoch=best_epoch,
        val_loss=-best[-1],
        val_metric=best[0] if score is not None else 0.0,
        train_metric=train_score,
    )


@torch.no_grad()
def _evaluate(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    rows: torch.Tensor,
    loss_fn: nn.Module,
    score: Callable[[torch.Tensor, torch.Tensor], float] | None,
    batch_size: int,
) -> tuple[float, float]:
    """Give (mean loss, mean score, 0.0 without ``score``) of ``module`` in eval mode on the given rows."""
    was_training = module.training
    module.eval()
    total_loss, total_score = 0.0, 0.0
    for start in range(0, len(rows), max(batch_size, 1024)):
        batch = rows[start : start + max(batch_size, 1024)]
        outputs = module(x[batch])
        total_loss += float(loss_fn(outputs, y[batch])) * len(batch)
        if score is not None:
            total_score += score(outputs, y[batch])
    module.train(was_training)
    return total_loss / len(rows), total_score / len(rows)


# ----- identity, saving and loading ---------------------------------------------------------------


def head_digest(identity: dict[str, Any]) -> str:
    """Give the short digest of what defines a head (its inputs and training settings) for cache file names."""
    import hashlib

    return hashlib.sha256(canonical_json({"format": HEAD_FORMAT, **identity}).encode()).hexdigest()[:20]


def save_head(path: str | Path, head: FittedHead) -> Path:
    """Give the path the head was written to: safetensors (tensors + config), and the config as ``.json`` beside it."""
    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    state = {name: tensor.detach().cpu().contiguous().numpy() for name, tensor in head.module.state_dict().items()}
    write_safetensors(path, state, head.config)
    write_text_atomically(path.with_suffix(".json"), json.dumps(head.config, indent=2, sort_keys=True, default=str) + "\n")
    head.path = path
    return path


def load_head(path: str | Path, *, device: torch.device | str = "cpu") -> FittedHead:
    """Give the head saved at ``path`` (a ``.safetensors`` file written by :func:`save_head`).

    Raises:
        UsageError: the file is missing, unreadable, not a stitchcli head, from another head format, or fails
            its checksum (truncated, bit rot, edited by hand, or written before heads carried one).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        # save_head adds the suffix to the whole name ("heads/mnist.lite0" -> "mnist.lite0.safetensors")
        candidates = (path.with_name(path.name + ".safetensors"), path.with_suffix(".safetensors"))
        path = next((candidate for candidate in candidates if candidate.is_file()), path)
    if not path.is_file():
        raise UsageError(f"head file {str(path)!r} does not exist: train one with `stitchcli fit-head --out FILE`")
    if path.suffix == ".json" and path.with_suffix(".safetensors").is_file():  # the readable sidecar of the head
        raise UsageError(f"{str(path)!r} is the description written beside a head: pass the head itself, {str(path.with_suffix('.safetensors'))!r}")
    retrain = "train it again with `stitchcli fit-head`, or copy it again from where it came"
    try:
        header = read_header(path)  # never unpickled: a file that is not safetensors + JSON stops here
    except CorruptEntry as exc:
        raise UsageError(f"cannot read head {str(path)!r}: {exc}") from None
    config = {key: value for key, value in header.metadata.items() if key != CHECKSUM_FIELD}  # what save_head was given
    is_head = config.get("format") == HEAD_FORMAT and config.get("kind") in HEAD_KINDS
    if is_head or header.has_checksum:  # an intact file of another kind is told apart below, as such
        try:
            header.verify()
        except CorruptEntry as exc:
            raise UsageError(f"head {str(path)!r} cannot be used: {exc}; {retrain}") from None
    if not is_head:
        raise UsageError(
            f"{str(path)!r} is not a stitchcli head of format {HEAD_FORMAT} "
            f"(kind {config.get('kind')!r}, format {config.get('format')!r}): train it again with `stitchcli fit-head`"
        )
    task = str(config.get("task") or DEFAULT_TASK)
    if task not in HEAD_TASKS:
        raise UsageError(f"head {str(path)!r} is a {task!r} head, which this stitchcli cannot read (it knows {', '.join(HEAD_TASKS)}): update stitchcli")
    try:
        settings = HeadSettings.from_dict(dict(config["settings"]))
        module = HEAD_TASKS[task](config, settings)
        tensors = header.read_tensors()
        module.load_state_dict({name: torch.from_numpy(array) for name, array in tensors.items()}, strict=True)
    except CorruptEntry as exc:
        raise UsageError(f"head {str(path)!r} cannot be used: {exc}; {retrain}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, UsageError) as exc:
        raise UsageError(f"head {str(path)!r} is damaged or inconsistent with its config: {str(exc).splitlines()[0]}") from None
    module.to(device).eval()
    return FittedHead(module, config, path)


def _classifier_from_config(config: dict[str, Any], settings: HeadSettings) -> nn.Module:
    """Give the untrained classifier a saved classification head's config describes."""
    return build_classifier(
        config["kind"],
        int(config["num_classes"]),
        settings,
        input_dim=config.get("input_dim"),
        aggregation=config.get("aggregation"),
        num_subspaces=len(config.get("projections") or ()) or None,
        num_anchors=config.get("num_anchors"),
    )


def _decoder_from_config(config: dict[str, Any], settings: HeadSettings) -> nn.Module:
    """Give the untrained decoder a saved reconstruction head's config describes."""
    from stitchcli.reconstruction.decoder import decoder_from_config

    return decoder_from_config(config, settings)


HEAD_TASKS: dict[str, Callable[[dict[str, Any], HeadSettings], nn.Module]] = {
    "classification": _classifier_from_config,
    "reconstruction": _decoder_from_config,
}
"""task -> the untrained module a saved head's config describes (``load_head`` then fills in its tensors)."""


def check_head(
    head: FittedHead,
    *,
    task: str | None = None,
    dataset_id: str | None = None,
    dataset_fingerprint: str | None = None,
    num_classes: int | None = None,
    model: str | None = None,
    anchor_ids: Sequence[int] | None = None,
    anchors_name: str | None = None,
    projections: Sequence[str] | None = None,
    aggregation: str | None = None,
    transform: str | None = None,
) -> None:
    """Refuse a head that was trained for other data, anchors, projections or classes than requested.

    ``None`` means "not requested": whatever the head has is fine. Raises UsageError naming the mismatch.
    """
    config = head.config
    where = str(head.path) if head.path else "the head"
    if task is not None and head.task != task:
        raise UsageError(f"head {where} is a {head.task} head, not a {task} head: train one with `stitchcli fit-head --task {task}`")
    if dataset_id is not None and config.get("dataset_id") != dataset_id:
        raise UsageError(
            f"head {where} was trained on dataset {config.get('dataset_id')!r}, not the requested {dataset_id!r}: "
            "train one on this dataset with `stitchcli fit-head`"
        )
    if dataset_fingerprint is not None and config.get("dataset_fingerprint") != dataset_fingerprint:
        raise UsageError(f"the data of {config.get('dataset')!r} changed since head {where} was trained: train it again with `stitchcli fit-head`")
    if num_classes is not None and head.num_classes != num_classes:
        raise UsageError(f"head {where} predicts {head.num_classes} classes but the dataset has {num_classes}: train one on this dataset")
    if model is not None and config.get("model") != model:
        raise UsageError(f"head {where} was trained on the latents of {config.get('model')!r}, not of {model!r}: pass {config.get('model')} as the decoder")
    if head.kind != "relative":
        return
    head_anchors = config.get("anchors") or {}
    if anchor_ids is not None and [int(i) for i in head_anchors.get("ids") or []] != [int(i) for i in anchor_ids]:
        raise UsageError(
            f"head {where} was trained with anchors {head_anchors.get('name')!r}, not the requested {anchors_name!r}: "
            "drop --anchors to use the head's own, or train a head with these anchors"
        )
    if projections is not None and tuple(projections) != head.projections:
        raise UsageError(
            f"head {where} reads projections {','.join(head.projections)}, not the requested {','.join(projections)}: "
            "drop --projection to use the head's own, or train a head for these"
        )
    if aggregation is not None and config.get("aggregation") != aggregation:
        raise UsageError(f"head {where} aggregates with {config.get('aggregation')!r}, not the requested {aggregation!r}: drop --aggregation or train a head for it")
    if transform is not None and config.get("transform") != transform:
        raise UsageError(f"head {where} was trained with --transform {config.get('transform')}, not {transform}: drop --transform or train a head for it")
