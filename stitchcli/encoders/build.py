"""ModelSpec -> a loaded :class:`Encoder`, through the backend registry (:data:`_BACKENDS`).

Each backend lives in its own module (``timm_backend``, ``openclip_backend``, ``transformers_backend``), imported
only when a model of that kind is built.
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from stitchcli.encoders.base import Encoder, ModelSpec, short_reason
from stitchcli.encoders.resolve import NAME_HELP, RANDOM_WEIGHTS, known_model_names
from stitchcli.errors import (
    OFFLINE_MODEL_ALTERNATIVES,
    StitchError,
    UsageError,
    WorkError,
    looks_like_network_failure,
)
from stitchcli.fingerprint import file_sha256, tree_fingerprint

if TYPE_CHECKING:
    import torch

# backend -> (module that builds it, modalities it encodes)
_BACKENDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "timm": ("stitchcli.encoders.timm_backend", ("image",)),
    "openclip": ("stitchcli.encoders.openclip_backend", ("image", "text")),
    "transformers": ("stitchcli.encoders.transformers_backend", ("image", "text")),
}


def build_encoder(spec: ModelSpec, modality: str, device: "torch.device", *, trust_remote_code: bool = False) -> Encoder:
    """Give a loaded encoder for ``spec`` on ``device``, in eval mode, for ``image`` or ``text`` data.

    ``trust_remote_code`` lets a transformers model run the Python code it ships (``auto_map`` in its config);
    off, such a model is refused. It is not part of the model's spec, hence of no cache key: the code that
    runs is the model folder's (whose content is in the key) or the pinned hub revision's.

    Raises:
        UsageError: the backend cannot encode this modality, a weights file cannot be read, the
            precision does not suit the device, a local file changed since the spec was made.
        WorkError: the model could not be downloaded or loaded.
    """
    from stitchcli.device import check_precision

    if spec.backend == "array":
        raise UsageError(
            f"model {spec.name!r} holds embeddings imported with --from-array; it cannot encode new inputs"
        )
    if spec.backend not in _BACKENDS:
        raise UsageError(f"unknown backend {spec.backend!r} for model {spec.name!r}")
    module_name, modalities = _BACKENDS[spec.backend]
    if modality not in modalities:
        raise UsageError(
            f"{spec.backend} model {spec.name!r} encodes {' and '.join(modalities)}, not {modality} data: "
            "pick a model for this dataset (a hub id or openclip:ARCH/TAG for text)"
        )
    check_precision(spec.precision, device)
    _check_fingerprint(spec)
    backend = importlib.import_module(module_name)
    try:
        return backend.build_encoder(spec, modality, device, trust_remote_code=trust_remote_code)
    except StitchError:
        raise
    except Exception as exc:
        if looks_like_network_failure(exc):
            raise WorkError(
                f"could not download {spec.source!r} from the Hugging Face hub (no network?){_typo_hint(spec)}; "
                f"{OFFLINE_MODEL_ALTERNATIVES}"
            ) from exc
        missing = _missing_on_hub(exc)
        if missing:
            raise UsageError(f"{missing} for model {spec.source!r} on the Hugging Face hub {NAME_HELP}") from exc
        if isinstance(exc, OSError):
            raise WorkError(f"could not load model {spec.name!r}: {short_reason(exc)}") from exc
        raise


def _typo_hint(spec: ModelSpec) -> str:
    """Give what to say beside a failed download of a hub id, in case it is a typo: close known names, or for a
    bare name (no organisation) that it is no timm architecture or packaged model either, since offline a
    misspelt name and a real hub id fail alike. Nothing for timm and open_clip names, which exist (their
    weights could not be fetched)."""
    from stitchcli.assets import PACKAGED_MODELS

    if spec.backend != "transformers":
        return ""
    source = spec.source
    known = [*known_model_names(), *PACKAGED_MODELS]
    close = [n for n in difflib.get_close_matches(source, known, n=3, cutoff=0.85) if n != source]
    if close:
        return f" (if {source!r} is a typo: did you mean {', '.join(close)}?)"
    if "/" not in source and not Path(source).expanduser().exists():
        return (f" ({source!r} is no timm architecture or packaged model ({', '.join(PACKAGED_MODELS)}) either: "
                "check the spelling if it is not a hub id)")
    return ""


def _check_fingerprint(spec: ModelSpec) -> None:
    """Raise if a local weights file or folder changed since the spec was resolved."""
    if spec.weights_fingerprint is None:
        return
    local = spec.weights if spec.weights not in (None, RANDOM_WEIGHTS) else spec.source
    path = Path(local)  # type: ignore[arg-type]
    if not path.exists():
        raise UsageError(f"model {spec.name!r}: local file '{path}' is gone")
    now = file_sha256(path) if path.is_file() else tree_fingerprint(path)
    if now != spec.weights_fingerprint:
        raise UsageError(
            f"model {spec.name!r}: '{path}' changed since the model was resolved; resolve or register it again"
        )


def _missing_on_hub(exc: BaseException) -> str | None:
    """Give what the hub says is missing (repository or revision), if that is what failed."""
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = type(current).__name__
        if kind == "RepositoryNotFoundError":
            return "no such repository (or it is private)"
        if kind == "RevisionNotFoundError":
            return "no such revision"
        current = current.__cause__ or current.__context__
    return None
