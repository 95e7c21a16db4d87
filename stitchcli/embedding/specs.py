"""Model names -> model specs (a name saved with --name, else the backend registries), and the cache key of an entry."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stitchcli.assets import PACKAGED_MODELS
from stitchcli.data.base import NO_LABELS, DatasetSpec
from stitchcli.encoders.base import ModelSpec
from stitchcli.errors import UsageError
from stitchcli.fingerprint import path_identity
from stitchcli.models import MODEL_OPTIONS, ModelRef
from stitchcli.provenance import library_versions
from stitchcli.store import EmbeddingStore, EntryKey, canonical_json

if TYPE_CHECKING:
    pass


def resolve_model_spec(store: EmbeddingStore, model: ModelRef | str, *, seed: int = 0) -> ModelSpec:
    """Give the spec a model stands for: a name saved with --name, else the backend registry's.

    A saved name keeps its weights; the run-time options given with it (precision, text pooling and
    length) are applied on top, so they change the cache key as they would for the full name.
    ``precision`` None means the saved spec's own, else fp32. ``seed`` seeds ``--weights random``.
    Resolutions are memoised in the cache (keyed by the arguments, the backend library versions and the
    identity of any local file they name), so a cache hit needs neither torch nor timm.
    """
    ref = ModelRef.of(model)
    name = ref.name
    weights, pooling, max_length, precision, revision = (ref.option(key) for key in MODEL_OPTIONS)
    saved = store.load_name(name)
    if saved is None and name in PACKAGED_MODELS:  # lite0, minilm… on any dataset, not only after a packaged one
        from stitchcli.assets import register_packaged_models

        register_packaged_models(store, [name])
        saved = store.load_name(name)
    if saved is not None:
        return _with_options(ModelSpec.from_dict(saved), name, weights=weights, pooling=pooling,
                             max_length=max_length, precision=precision, revision=revision)
    precision = precision or "fp32"
    args = {
        "name": name,
        "weights": weights,
        "pooling": pooling,
        "max_length": max_length,
        "precision": precision,
        "seed": seed,
        "revision": revision,
    }
    memo_key = canonical_json(
        {
            "args": args,
            "versions": library_versions(),
            "name_stat": path_identity(name) if name else None,
            "weights_stat": path_identity(weights) if weights not in (None, "random") else None,
        }
    )
    cached = store.memo_get(memo_key)
    if cached is not None:
        return ModelSpec.from_dict(cached)
    from stitchcli.encoders import resolve_model

    spec = resolve_model(
        name,
        weights=weights,
        pooling=pooling,
        max_length=max_length,
        precision=precision,
        seed=seed,
        revision=revision,
    )
    _refuse_near_miss_of_saved_name(store, name, spec)
    store.memo_put(memo_key, spec.to_dict())
    return spec


def _with_options(
    spec: ModelSpec,
    name: str,
    *,
    weights: str | None,
    pooling: str | None,
    max_length: int | None,
    precision: str | None,
    revision: str | None,
) -> ModelSpec:
    """Give a saved spec with the user's run-time options applied; refuse options that do not apply."""

    from stitchcli.encoders import check_model_options

    if weights is not None or revision is not None:
        raise UsageError(
            f"{name!r} is a saved model spec with its own weights: --weights and --revision apply to the "
            f"model it was saved from ({spec.backend}: {spec.source}); save that under another --name"
        )
    if spec.backend == "array":
        if pooling is not None or max_length is not None or precision not in (None, "fp32"):
            raise UsageError(f"{name!r} holds imported arrays: --precision, --pooling and --max-length do not apply")
        return spec
    check_model_options(pooling=pooling, max_length=max_length, precision=precision)
    if (pooling is not None or max_length is not None) and spec.pooling is None:
        raise UsageError(f"--pooling and --max-length apply to text models; {name!r} is {spec.backend}: {spec.source}")
    given = {"precision": precision, "pooling": pooling, "max_length": max_length}
    return replace(spec, **{field: value for field, value in given.items() if value is not None})


def check_new_name(store: EmbeddingStore, name: str, spec: ModelSpec, *, force: bool) -> None:
    """Refuse a name for --name or --from-array that would hide a model or silently replace a saved one."""
    from stitchcli.encoders import known_model_names

    saved = store.load_name(name)
    if saved is not None:
        old = {k: v for k, v in saved.items() if k != "name"}
        new = {k: v for k, v in spec.to_dict().items() if k != "name"}
        if old != new and not force:
            raise UsageError(
                f"the name {name!r} is already saved for {saved.get('backend')}: {saved.get('source')}; "
                "choose another name, or pass --force to replace it"
            )
        return
    arch = name.split(".", 1)[0]
    taken = name in known_model_names() or name in PACKAGED_MODELS or Path(name).expanduser().exists()
    if not taken and "-" not in arch and arch == arch.lower():
        import timm

        taken = timm.is_model(arch)
    if taken:
        raise UsageError(f"the name {name!r} already means a model (or a path): choose another name so both stay usable")


def _refuse_near_miss_of_saved_name(store: EmbeddingStore, name: str, spec: ModelSpec) -> None:
    """Raise a UsageError when a bare name headed for the hub is a typo of a name saved with --name.

    Only bare names (no '/', no prefix) that resolved to a hub id are checked: an explicit
    ``hf:`` id or a local folder is taken as written.
    """
    import difflib

    if spec.backend != "transformers" or "/" in name or ":" in name or Path(spec.source).exists():
        return
    close = difflib.get_close_matches(name, store.list_names(), n=3, cutoff=0.8)
    if close:
        raise UsageError(
            f"unknown model {name!r}; did you mean the saved name {' or '.join(repr(c) for c in close)}? "
            f"(saved names: {', '.join(store.list_names())}; for a hub id write hf:{name})"
        )


def entry_key(
    spec: ModelSpec, data: DatasetSpec, split: str, *, limit: int | None, seed: int, layer: str | None = None
) -> EntryKey:
    """Give the cache key of a model's embeddings of one split (of one layer's, with ``layer``).

    The columns are the ones the user named (None: inferred). Whether an inferred reading finds a label column
    depends only on the data, which the fingerprint covers, so a split with no label column needs no mark of
    its own: its key could never belong to a labelled reading of the same data. Data read
    with ``--label-column none`` is told apart by ``"labels": "none"``, a field only such keys hold: a labelled
    entry's key is the one it always had, whatever its label column is called.
    """
    from stitchcli.data import dataset_fingerprint

    columns: dict[str, Any] = {"input": list(data.input_columns), "label": data.label_column}
    if data.label_column == NO_LABELS:
        columns = {"input": list(data.input_columns), "label": None, "labels": NO_LABELS}
    return EntryKey(
        model=spec.key(),
        dataset_id=data.dataset_id,
        dataset_fingerprint=dataset_fingerprint(data, split),
        split=split,
        limit=limit,
        limit_seed=seed if limit is not None else None,
        columns=columns,
        layer=layer,
    )


