"""Compare models from the cache: what ``stitchcli similarity`` runs (embeddings built when missing).

    from stitchcli.models import ModelRef
    from stitchcli.settings import StitchSettings
    from stitchcli.similarity.cached import compare_cached

    settings = StitchSettings(dataset="packaged:mnist5k")          # split "test", the stitch anchor defaults
    models, report = compare_cached(store, [ModelRef("lite0"), ModelRef("lite2")], settings,
                                    ["linear-cka", "cknna"], layers="all", null=20)

Every model's cached embeddings of ``settings.split`` are read (embedded first when missing, as ``stitch``
does), with ``layers`` its layers' entries too (``embed --layers``), and with relative projections each model's
embeddings of the anchors (the sweep's anchors: ``settings.anchors``, else the default draw of
``settings.num_anchors`` training rows, saved in the cache). The measures then run on the device
``settings.device`` names (a GPU when ``auto`` finds one).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stitchcli.data.base import DatasetSpec
from stitchcli.errors import NotCached, UsageError
from stitchcli.models import ModelRef
from stitchcli.progress import Reporter
from stitchcli.settings import StitchSettings
from stitchcli.store import CachedEmbeddings, EmbeddingStore

LayerChoice = Sequence[str] | str | None
"""None: final representations only; ``"all"`` or layer names: those layers and the final representation."""


@dataclass
class CachedModels:
    """The representations of the models compared, as :func:`~stitchcli.similarity.compare_models` takes them.

    Attributes:
        refs: the models.
        dataset: the dataset, resolved.
        split: the split whose rows are compared.
        samples: N, the rows every representation describes (in the same order).
        models: by model, then layer name (None: the final representation, last), an (N, d) matrix.
        anchors: the same structure, each model's (and layer's) embeddings of the anchors; None without projections.
        anchors_name: the anchor manifest's name, None without projections.
        label: the dataset as the user named it (``packaged:bbc-news``, a hub name, a path): what tables,
            plot titles and JSON show, where ``dataset`` holds the resolved source (a folder in the cache).
    """

    refs: list[ModelRef]
    dataset: DatasetSpec
    split: str
    samples: int
    models: dict[str, dict[Hashable, np.ndarray]]
    anchors: dict[str, dict[Hashable, np.ndarray]] | None = None
    anchors_name: str | None = None
    label: str = ""

    def summary(self) -> list[dict[str, Any]]:
        """Give the JSON-ready facts of each model: name, embed options, width of each layer."""
        return [
            {
                "name": ref.name,
                "options": dict(ref.options),
                "layers": [{"layer": layer, "dim": int(matrix.shape[1])} for layer, matrix in self.models[ref.name].items()],
            }
            for ref in self.refs
        ]


def load_models(
    store: EmbeddingStore,
    refs: Sequence[ModelRef],
    settings: StitchSettings,
    *,
    layers: LayerChoice = None,
    relative: bool = False,
    reporter: Reporter | None = None,
) -> CachedModels:
    """Give every model's representations of ``settings.split`` (and of the anchors when ``relative``).

    Args:
        store: the cache.
        refs: the models (at least two, none twice).
        settings: the data and anchor settings (split, limit, embed seed, anchors, device, dataset options).
        layers: None (final representations), ``"all"`` or layer names (every model must have them).
        relative: also load each model's embeddings of the sweep's anchors (for relative projections).
        reporter: where progress goes.
    """
    from stitchcli.stitching.data import ensure_embeddings, prepare, resolve_sweep_dataset

    reporter = reporter or Reporter()
    names = [ref.name for ref in refs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"model {', '.join(repeated)} is listed twice: name each model once")
    if len(refs) < 2:
        raise UsageError("give at least two models to compare")
    settings.check(heads=False)  # no head is trained: any split may be compared, the training split too
    data = resolve_sweep_dataset(store, settings, names, reporter)
    if relative:
        sweep = prepare(store, refs, settings, data, reporter=reporter, heads=False)
        finals = {name: view.evaluation for name, view in sweep.models.items()}
        trains = {name: view.train for name, view in sweep.models.items()}
        manifest = sweep.manifest
    else:
        finals = {ref.name: ensure_embeddings(store, ref, data, settings.split, settings, reporter) for ref in refs}
    models: dict[str, dict[Hashable, np.ndarray]] = {}
    anchors: dict[str, dict[Hashable, np.ndarray]] | None = {} if relative else None
    first = finals[names[0]]
    for ref in refs:
        entries: dict[Hashable, CachedEmbeddings] = {}
        if layers is not None:
            entries.update(ensure_layers(store, ref, data, settings.split, layers, settings, reporter))
        entries[None] = finals[ref.name]
        for layer, entry in entries.items():
            _check_same_rows(first, entry, names[0], ref.name if layer is None else f"{ref.name} layer {layer}", settings.split)
        models[ref.name] = {layer: np.asarray(entry.embeddings) for layer, entry in entries.items()}
        if anchors is not None:
            from stitchcli.anchors import select_anchor_rows

            train: dict[Hashable, CachedEmbeddings] = {}
            if layers is not None:
                train.update(ensure_layers(store, ref, data, settings.train_split, layers, settings, reporter))
            train[None] = trains[ref.name]
            anchors[ref.name] = {
                layer: np.asarray(select_anchor_rows(manifest, entry, model=ref.name).embeddings, dtype=np.float32)
                for layer, entry in train.items()
            }
    return CachedModels(list(refs), data, settings.split, first.rows, models, anchors, manifest.name if relative else None,
                        label=str(settings.dataset))


def ensure_layers(
    store: EmbeddingStore, ref: ModelRef, data: DatasetSpec, split: str, layers: Sequence[str] | str, settings: StitchSettings, reporter: Reporter
) -> dict[str, CachedEmbeddings]:
    """Give a model's layer entries of one split (arrays loaded, depth order), embedding them first if missing."""
    from stitchcli.embedding import EmbedOptions
    from stitchcli.embedding.layers import embed_layers, load_layer_embeddings

    def load() -> dict[str, CachedEmbeddings]:
        return load_layer_embeddings(store, ref, data, split, layers=layers, limit=settings.limit, seed=settings.embed_seed)

    try:
        return load()
    except NotCached:
        pass
    reporter.info(f"{ref.name} has no cached layers of {settings.dataset}/{split}: embedding them now")
    options = EmbedOptions(batch_size=settings.embed_batch_size, device=settings.device, limit=settings.limit, seed=settings.embed_seed,
                           trust_remote_code=settings.trust_remote_code)
    embed_layers([ref], data, [split], store=store, layers=layers, options=options, reporter=reporter)
    return load()


def _check_same_rows(reference: CachedEmbeddings, entry: CachedEmbeddings, reference_name: str, name: str, split: str) -> None:
    if not (np.array_equal(reference.ids, entry.ids) and np.array_equal(reference.labels, entry.labels)):
        raise UsageError(
            f"{name} and {reference_name} hold different rows of split {split!r} ({entry.rows} and {reference.rows} rows): "
            "embed both with the same --limit and --seed"
        )


def compare_cached(
    store: EmbeddingStore,
    refs: Sequence[ModelRef],
    settings: StitchSettings,
    measures: Sequence[str],
    *,
    layers: LayerChoice = None,
    projections: Sequence[str] = (),
    null: int = 0,
    seed: int = 0,
    reporter: Reporter | None = None,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> tuple[CachedModels, Any]:
    """Give (the models' representations, the :class:`~stitchcli.similarity.SimilarityReport` of every pair).

    Args:
        store, refs, settings, layers: as for :func:`load_models`.
        measures: registered measure names; the shared-space ones (mrr, cosine) run in the projections only.
        projections: relative projections to compare in besides the absolute latents (each model against its
            own embeddings of the same anchors, with ``settings.transform``).
        null: permutations of the rows for the calibration (0: none).
        seed: seeds the permutations (and the row draw of RBF CKA and RSA).
        reporter: where the loading reports, and the comparison's progress bar (over the cells).
        progress: called with a line as each family of measures and model starts.
        **options: measure options (``k=10``, ``max_rows=1000``...).
    """
    from stitchcli.similarity import compare_models, takes_neighbours

    models = load_models(store, refs, settings, layers=layers, relative=bool(projections), reporter=reporter)
    k = options.get("k")
    if isinstance(k, int) and k >= models.samples and takes_neighbours(measures):
        raise UsageError(f"--k {k} neighbours need more than the {models.samples} rows compared: pass a smaller --k")
    device = _device(settings.device)
    samples = {name: {layer: _on(matrix, device) for layer, matrix in group.items()} for name, group in models.models.items()}
    anchors = None
    if models.anchors is not None:
        anchors = {name: {layer: _on(matrix, device) for layer, matrix in group.items()} for name, group in models.anchors.items()}
    transform = None if settings.transform == "none" else settings.transform
    report = compare_models(samples, measures, null=null, seed=seed, projections=(None, *projections), anchors=anchors,
                            transform=transform, progress=progress, reporter=reporter, **options)
    return models, report


def _device(name: str) -> Any:
    from stitchcli.device import resolve_device

    return resolve_device(name)


def _on(matrix: np.ndarray, device: Any) -> Any:
    """Give the matrix as the measures take it: a tensor on a CUDA GPU, else the numpy array itself (the measures
    run on MPS's host, which has float64)."""
    if device.type != "cuda":
        return matrix
    import torch

    return torch.as_tensor(matrix).to(device)
