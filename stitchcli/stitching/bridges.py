"""Bridges in a sweep (docs/BRIDGES.md): fitted once per (encoder, decoder, anchors, bridge), cached like heads.

A bridge maps the encoder's latents into the decoder's absolute space; the decoder's absolute head reads them.
The ``translation`` and ``affine`` baselines are the registry's ``orthogonal`` and ``affine`` bridges. ``auto``
chooses among candidate bridges by their held-out scores on the anchors (:func:`stitchcli.bridges.select_bridge`,
no label of the encoder's data, nothing of the evaluation split) and its choice is cached too, so a second run
fits nothing.

A fitted bridge is keyed by both models' training entries (their key digests), the anchor selection, the
bridge's name and options and the fit's seed; a selection also by the candidates, the head it scored with,
the folds and the score.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np
import torch

from stitchcli.bridges import FittedBridge, SharedSpace, fit_bridge, fit_shared_space, get_bridge, load_bridge, select_bridge
from stitchcli.errors import out_of_space_as_work_error
from stitchcli.heads import FittedHead
from stitchcli.progress import Reporter
from stitchcli.settings import AUTO, SHARED, StitchSettings
from stitchcli.stitching.data import ModelView, SweepData
from stitchcli.store import (
    CHECKSUM_FIELD,
    CorruptEntry,
    EmbeddingStore,
    canonical_json,
    file_lock,
    read_header,
    slug,
    write_safetensors,
    write_text_atomically,
)

BRIDGES_FOLDER = "bridges"
BRIDGE_SEED = 0
"""The seed every bridge of a sweep is fitted (and auto's folds drawn) with: a bridge does not vary with the heads' seeds."""

BASELINE_BRIDGES = {"translation": "orthogonal", "affine": "affine"}
"""The baselines that are registry bridges under another name (their rows keep the baseline's name)."""


def bridge_options(name: str, settings: StitchSettings) -> dict[str, Any]:
    """Give the options a sweep fits bridge ``name`` with: the affine bridge takes ``--ridge``, the rest their defaults."""
    return {"ridge": settings.ridge} if name == "affine" else {}


AUTO_CANDIDATES = ("affine", "refine", "refine-coral")
"""What ``auto`` alone chooses among (docs/BRIDGES.md, "The default"): the ridge affine map, best of the anchor-only
bridges but for the slower kernel; its refinement from unlabeled rows, which rescues the few-anchor case; and that
refinement recoloured to the decoder rows' covariance, the best bridge on MNIST. With these three, auto landed
within 0.5 points of the best of all seven bridges on every measured direction and draw (docs/RESULTS.md §11); the
others never beat all three by more than that and cost more."""


def auto_candidates(settings: StitchSettings) -> list[str]:
    """Give the bridges ``auto`` chooses among: the other pairwise bridges given with it, or :data:`AUTO_CANDIDATES`."""
    named = [name for name in settings.bridges if name not in (AUTO, SHARED)]
    return named or list(AUTO_CANDIDATES)


def _digest(identity: Mapping[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(canonical_json(dict(identity)).encode()).hexdigest()[:20]


def _anchors_identity(data: SweepData) -> dict[str, Any]:
    return {k: v for k, v in data.manifest.selection().items() if k not in ("notes", "params", "name")}


def _pair_identity(data: SweepData, source: ModelView, target: ModelView) -> dict[str, Any]:
    return {
        "encoder_entry": source.train.metadata.get("key_digest"),
        "decoder_entry": target.train.metadata.get("key_digest"),
        "anchors": _anchors_identity(data),
    }


def _path(store: EmbeddingStore, data: SweepData, source: ModelView, target: ModelView, what: str, digest: str, suffix: str) -> Path:
    folder = store.root / BRIDGES_FOLDER / slug(data.dataset_id) / f"{slug(source.name)}--{slug(target.name)}"
    return folder / f"{what}-{digest}{suffix}"


def _train_rows(view: ModelView) -> torch.Tensor:
    return torch.from_numpy(np.asarray(view.train.embeddings))


def obtain_bridge(
    store: EmbeddingStore, data: SweepData, source: ModelView, target: ModelView, name: str, options: Mapping[str, Any], *, reporter: Reporter
) -> tuple[FittedBridge, bool]:
    """Give (bridge ``name`` from the encoder ``source`` into the decoder ``target``, whether it came from the cache).

    Fitted on the anchors (and, for bridges that use them, the unlabeled training rows of both models) when
    missing, then saved as safetensors with checksums and its config as ``.json`` beside it.
    """
    if name == SHARED:
        space, hit = obtain_shared_space(store, data, reporter=reporter)
        bridge = space.bridge(source.name, target.name)
        bridge.config = {**bridge.config, "bridge": SHARED}
        return bridge, hit
    identity = {"kind": "bridge", **_pair_identity(data, source, target), "bridge": name, "options": dict(options), "seed": BRIDGE_SEED}
    digest = _digest(identity)
    path = _path(store, data, source, target, slug(name), digest, ".safetensors")

    def fit() -> FittedBridge:
        reporter.status(f"fitting bridge {name} from {source.name} into {target.name}")
        rows = get_bridge(name).uses_rows
        return fit_bridge(
            name, torch.from_numpy(np.asarray(source.anchors)), torch.from_numpy(np.asarray(target.anchors)),
            source_rows=_train_rows(source) if rows else None, target_rows=_train_rows(target) if rows else None,
            seed=BRIDGE_SEED, **options,
        )

    return _cached_or_fitted(path, digest, identity, "bridge", load_bridge, fit, reporter=reporter, sidecar=True,
                             extra={"encoder": source.name, "decoder": target.name, "dataset_id": data.dataset_id})


def obtain_shared_space(store: EmbeddingStore, data: SweepData, *, reporter: Reporter) -> tuple[SharedSpace, bool]:
    """Give (the generalised-Procrustes space of every model of the sweep, whether it came from the cache).

    One map per model into a consensus fitted on the anchors (:func:`stitchcli.bridges.fit_shared_space`), so an
    eval of N models fits N maps, not N·(N-1) bridges. Keyed by every model's training entry and the anchors.
    """
    views = dict(sorted(data.models.items()))
    identity = {
        "kind": "shared-space",
        "entries": {name: view.train.metadata.get("key_digest") for name, view in views.items()},
        "anchors": _anchors_identity(data),
        "options": {"whiten": False},
    }
    digest = _digest(identity)
    path = store.root / BRIDGES_FOLDER / slug(data.dataset_id) / "shared" / f"space-{digest}.safetensors"

    def fit() -> SharedSpace:
        reporter.status(f"fitting one shared space for {', '.join(views)}")
        return fit_shared_space({name: torch.from_numpy(np.asarray(view.anchors)) for name, view in views.items()})

    return _cached_or_fitted(path, digest, identity, "shared space", SharedSpace.from_state, fit, reporter=reporter,
                             extra={"dataset_id": data.dataset_id})


Fitted = TypeVar("Fitted", FittedBridge, SharedSpace)


def _cached_or_fitted(
    path: Path,
    digest: str,
    identity: Mapping[str, Any],
    what: str,
    load: Callable[[Mapping[str, torch.Tensor], dict[str, Any]], Fitted],
    fit: Callable[[], Fitted],
    *,
    reporter: Reporter,
    extra: Mapping[str, Any],
    sidecar: bool = False,
) -> tuple[Fitted, bool]:
    """Give (what ``load`` reads from ``path`` when it is there and made for ``digest``, else what ``fit`` gives,
    saved there; whether it came from the cache).

    A second process fitting the same thing waits on a lock and reads the first one's file. What is saved is the
    object's ``state()`` as safetensors with checksums, its config completed by the identity, ``extra`` and the
    time (``sidecar``: the config also as ``.json`` beside it, for people).
    """
    cached = _read_cached(path, digest, what, load, reporter)
    if cached is not None:
        return cached, True
    with file_lock(path.with_suffix(".lock"), on_wait=lambda: reporter.info(f"waiting for another process fitting the same {what} ({path})")):
        cached = _read_cached(path, digest, what, load, reporter, quiet=True)
        if cached is not None:
            return cached, True
        fitted = fit()
        tensors, config = fitted.state()
        config = {**config, "identity_digest": digest, "identity": dict(identity), **extra, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        fitted.config = config
        with out_of_space_as_work_error(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_safetensors(path, {key: value.numpy() for key, value in tensors.items()}, config)
            if sidecar:
                write_text_atomically(path.with_suffix(".json"), json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        return fitted, False


def _read_cached(
    path: Path, digest: str, what: str, load: Callable[[Mapping[str, torch.Tensor], dict[str, Any]], Fitted], reporter: Reporter, *, quiet: bool = False
) -> Fitted | None:
    """Give what ``load`` reads from ``path`` when it is there, intact and made for ``digest``; else None."""
    from stitchcli.errors import UsageError

    if not path.is_file():
        return None
    try:
        header = read_header(path)
        tensors = header.read_tensors()
        config = {key: value for key, value in header.metadata.items() if key != CHECKSUM_FIELD}
        if config.get("identity_digest") != digest:
            raise CorruptEntry("it was made for other inputs")
        return load({key: torch.from_numpy(value) for key, value in tensors.items()}, config)
    except (CorruptEntry, UsageError) as exc:
        if not quiet:
            reporter.warn(f"cached {what} {path} cannot be used ({exc}); fitting it again")
        return None


def obtain_selection(
    store: EmbeddingStore,
    data: SweepData,
    source: ModelView,
    target: ModelView,
    candidates: Sequence[str],
    head: FittedHead,
    settings: StitchSettings,
    *,
    reporter: Reporter,
) -> tuple[dict[str, Any], bool]:
    """Give (auto's selection record, whether it came from the cache): the winner and every candidate's held-out scores.

    The candidates are scored with the decoder's absolute head ``head`` (trained on the decoder's own training
    split); the winner is not refitted here (its row reads it through :func:`obtain_bridge`).
    """
    options = {name: bridge_options(name, settings) for name in candidates}
    from stitchcli.bridges.selection import DEFAULT_SCORE

    # a reconstruction head gives pixels, not logits: there auto scores by retrieval of the held-out anchors alone
    classifying = settings.task == "classification"
    score = DEFAULT_SCORE if classifying else "retrieval"
    identity = {"kind": "selection", **_pair_identity(data, source, target), "candidates": list(candidates), "options": options,
                "head": head.config.get("identity_digest") if classifying else None, "seed": BRIDGE_SEED,
                **({} if classifying else {"score": score})}
    digest = _digest(identity)
    path = _path(store, data, source, target, "auto", digest, ".json")
    if path.is_file():
        try:
            record = json.loads(path.read_text())
            if record.get("identity_digest") == digest:
                return record["selection"], True
        except (OSError, ValueError, KeyError):
            pass
        reporter.warn(f"cached bridge selection {path} cannot be used; choosing again")
    from stitchcli.bridges import BridgeCandidate
    from stitchcli.bridges.selection import DEFAULT_FOLDS

    reporter.status(f"auto: scoring {len(candidates)} bridge(s) from {source.name} into {target.name} on held-out anchors")
    module = head.module

    @torch.no_grad()
    def logits(latents: torch.Tensor) -> torch.Tensor:
        device = next(module.parameters()).device
        return module(latents.to(device=device, dtype=torch.float32)).cpu()

    # as many folds as the anchors allow (two held-out anchors a fold at least), up to the default
    folds = min(DEFAULT_FOLDS, len(source.anchors) // 2)
    if folds < 2:
        record: dict[str, Any] = {
            "winner": candidates[0], "score": None, "folds": 0, "candidates": [],
            "note": f"{len(source.anchors)} anchors are too few to score bridges on held-out anchors (4 at least): the first candidate",
        }
    else:
        uses_rows = any(get_bridge(name).uses_rows for name in candidates)
        selection = select_bridge(
            [BridgeCandidate(name, options[name], label=name) for name in candidates],
            torch.from_numpy(np.asarray(source.anchors)), torch.from_numpy(np.asarray(target.anchors)), head=logits if classifying else None, score=score,
            source_rows=_train_rows(source) if uses_rows else None, target_rows=_train_rows(target) if uses_rows else None,
            seed=BRIDGE_SEED, refit=False, folds=folds,
        )
        record = selection.to_dict()
    with out_of_space_as_work_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps({"identity_digest": digest, "identity": identity, "selection": record}, indent=2, sort_keys=True) + "\n")
    return record, False
