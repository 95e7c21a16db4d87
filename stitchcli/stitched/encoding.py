"""The stitched model's encoder on this machine, and its latents of new inputs, computed as ``embed`` computes them.

The inputs go through the embedding loop itself (:func:`stitchcli.embedding.encode.encode_split`: the same
encoder, collation, batch sizes, out-of-memory slicing, text ordering and progress), into a scratch store in a
temporary folder that is removed afterwards: nothing is written to the embedding cache. A dataset split the
cache already holds for this exact encoder is read from it instead (read only).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stitchcli.errors import WorkError
from stitchcli.progress import Reporter

if TYPE_CHECKING:
    from stitchcli.data.base import DatasetSpec
    from stitchcli.encoders.base import ModelSpec
    from stitchcli.stitched.inputs import Inputs
    from stitchcli.stitched.model import StitchedModel
    from stitchcli.store import EmbeddingStore


def _local_file(spec: ModelSpec) -> Path | None:
    """Give the local file or folder the spec loads (weights file, or a local model folder), or None."""
    from stitchcli.encoders.resolve import RANDOM_WEIGHTS

    if spec.weights not in (None, RANDOM_WEIGHTS):
        return Path(str(spec.weights))
    if spec.weights_fingerprint is not None and Path(spec.source).is_absolute():
        return Path(spec.source)
    return None


def encoder_spec_here(model: StitchedModel, store: EmbeddingStore, reporter: Reporter | None = None) -> ModelSpec:
    """Give the encoder's spec as this machine loads it: the saved one, or for a packaged model (``lite0``...)
    whose weights file lies in another cache, the same weights prepared in ``store``.

    Raises:
        WorkError: the encoder's weights are not on this machine (or differ from the ones it was stitched with).
    """
    from stitchcli.assets import PACKAGED_MODELS, register_packaged_models
    from stitchcli.encoders.base import ModelSpec

    spec = model.encoder_spec
    local = _local_file(spec)
    if local is None:
        return spec
    name = str(model.card["encoder"]["name"])
    if local.exists():
        if spec.weights_fingerprint is None or _fingerprint(local) == spec.weights_fingerprint:
            return spec
        if name not in PACKAGED_MODELS:  # a packaged model's file converted again is checked tensor by tensor below
            raise WorkError(
                f"cannot load encoder {spec.name!r}: {local} differs from the one it was stitched with (SHA-256 "
                f"{_fingerprint(local)[:12]}… here, {spec.weights_fingerprint[:12]}… on the card), and the stitched model fits those weights "
                "only: put back the files it was stitched with, or stitch and save the model again with these"
            )
    fingerprint = (spec.weights_fingerprint or "")[:12]
    if name in PACKAGED_MODELS:
        register_packaged_models(store, [name], reporter)
        saved = store.load_name(name)
        here = ModelSpec.from_dict(saved) if saved is not None else None
        if here is not None and here.backend == spec.backend and here.source == spec.source:
            saved_tensors = model.card["encoder"].get("weights_tensors_sha256")
            here_file = _local_file(here)
            if here.weights_fingerprint == spec.weights_fingerprint or (
                saved_tensors is not None and here_file is not None and weights_tensors_digest(here_file) == saved_tensors
            ):
                return replace(here, name=spec.name)
        raise WorkError(
            f"cannot load encoder {spec.name!r}: the packaged {name} weights here differ from the ones it was stitched with "
            f"(SHA-256 {fingerprint}…): install the stitchcli and packages the card names (versions), or stitch again here"
        )
    raise WorkError(
        f"cannot load encoder {spec.name!r}: {local} is not on this machine: copy it there (SHA-256 {fingerprint}…) "
        "at the same path, or stitch and save the model again here"
    )


def _fingerprint(path: Path) -> str:
    """Give the SHA-256 of a weights file, or the content fingerprint of a model folder, as the spec records it."""
    from stitchcli.fingerprint import file_sha256, tree_fingerprint

    return file_sha256(path) if path.is_file() else tree_fingerprint(path)


def weights_tensors_digest(path: str | Path) -> str | None:
    """Give the SHA-256 of a safetensors weights file's tensors (names, dtypes, shapes, bytes, by name), or None for
    another kind of file.

    The file's own SHA-256 is no test of "the same weights" for a file converted again: safetensors writes its
    metadata map in no fixed order, so two conversions of one package differ in bytes and agree in every tensor.
    """
    import hashlib

    if not str(path).endswith(".safetensors") or not Path(path).is_file():
        return None
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(path), framework="pt") as weights:
        for name in sorted(weights.keys()):
            tensor = weights.get_tensor(name).contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_stitched_encoder(spec: ModelSpec, modality: str, device: str, reporter: Reporter):  # type: ignore[no-untyped-def]
    """Give the loaded encoder on ``device`` (as embed builds it); WorkError when this machine cannot load it."""
    from stitchcli.device import check_precision, resolve_device
    from stitchcli.encoders import build_encoder
    from stitchcli.hub import prefer_offline_when_unreachable

    torch_device = resolve_device(device)
    if spec.precision == "fp16" and torch_device.type == "cpu":  # check_precision's advice names --precision, which predict has not
        raise WorkError(f"encoder {spec.name} was stitched in fp16, which runs on a GPU only, and this run is on the CPU: "
                        "predict on a machine with a GPU (--device cuda), or stitch and save again with --precision bf16 or fp32")
    check_precision(spec.precision, torch_device)
    if spec.backend in ("transformers", "openclip") and not Path(spec.source).exists():
        prefer_offline_when_unreachable()
    reporter.info(f"loading {spec.name} ({spec.backend}: {spec.source}) on {torch_device}")
    return build_encoder(spec, modality, torch_device)


def embed_inputs(
    model: StitchedModel,
    inputs: Inputs,
    *,
    store: EmbeddingStore | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    reporter: Reporter | None = None,
) -> np.ndarray:
    """Give the encoder's (N, D) float32 latents of ``inputs``, computed by the embedding loop in a scratch store."""
    from stitchcli.data.images import SHARDS_KEPT
    from stitchcli.embedding.encode import encode_split
    from stitchcli.embedding.options import EmbedOptions
    from stitchcli.errors import UsageError
    from stitchcli.store import EmbeddingStore, EntryKey

    reporter = reporter or Reporter()
    store = store or EmbeddingStore()
    spec = encoder_spec_here(model, store, reporter)
    if inputs.split.modality != model.modality:
        raise UsageError(f"the stitched model's encoder {spec.name} reads {model.modality}, and the inputs are {inputs.split.modality}: give {model.modality} inputs")
    encoder = build_stitched_encoder(spec, model.modality, device, reporter)
    options = EmbedOptions(batch_size=batch_size, device=device)
    with tempfile.TemporaryDirectory(prefix="stitchcli-predict-") as scratch_dir:
        scratch = EmbeddingStore(scratch_dir)
        key = EntryKey(model=spec.key(), dataset_id=inputs.data.dataset_id, dataset_fingerprint=inputs.split.fingerprint,
                       split=inputs.split.split, columns={"input": list(inputs.split.input_columns)})
        try:
            entry, _, _, _ = encode_split(scratch, spec, key, inputs.split, inputs.data, encoder, options, reporter)
        except UsageError as exc:  # an image that cannot be decoded: the scratch store's shards go with this run
            if str(exc).endswith(SHARDS_KEPT):
                raise UsageError(str(exc)[: -len(SHARDS_KEPT)]) from None
            raise
        if entry is None:
            raise AssertionError("one process always assembles its entry")
        latents = scratch.read(entry).embeddings
    if latents is None or latents.shape[0] != len(inputs.split):
        raise AssertionError("the scratch entry lost rows")
    if latents.shape[1] != model.card["encoder"].get("dim", latents.shape[1]):
        raise WorkError(
            f"encoder {spec.name} gives {latents.shape[1]}-d latents here, but the model was stitched with "
            f"{model.card['encoder'].get('dim')}-d ones: load the encoder the card names"
        )
    return np.asarray(latents, dtype=np.float32)


def cached_latents(
    model: StitchedModel, store: EmbeddingStore, data: DatasetSpec, split: str, ids: np.ndarray, *, limit: int | None, seed: int
) -> np.ndarray | None:
    """Give the encoder's latents of a dataset split's rows ``ids`` when the cache holds them for exactly this
    encoder (read only), else None."""
    from stitchcli.embedding.specs import entry_key
    from stitchcli.errors import NotCached

    spec = model.encoder_spec
    entry = store.lookup(spec.storage_name, entry_key(spec, data, split, limit=limit, seed=seed))
    if entry is None:
        return None
    try:
        read = store.read(entry)
    except NotCached:  # damaged: reported by the store; embed the rows instead
        return None
    if read.embeddings is None or read.ids is None or not np.array_equal(read.ids, ids):
        return None
    return np.asarray(read.embeddings, dtype=np.float32)
