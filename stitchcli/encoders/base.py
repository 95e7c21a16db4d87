"""Records that describe a model, the interface every encoder backend implements, and :func:`short_reason`,
which the backends share to put an exception in a one-line message."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, Sequence

if TYPE_CHECKING:
    import torch

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides what a model's embeddings are: the model half of the cache key.

    Cheap to build: resolving a name into a spec reads no weights and builds no model, so that a
    cache hit costs no model work.

    Attributes:
        name: the name later commands use (what the user typed, or the ``--name`` it was saved as).
        backend: ``timm``, ``openclip``, ``transformers`` or ``array``.
        source: timm ``arch.tag``; open_clip ``ARCH/TAG``; a hub id; or an absolute local path
            (a transformers folder, or the imported array file).
        weights: None for the backend's pretrained weights, ``"random"`` for a seeded random
            initialisation, or the absolute path of a local weights file.
        weights_fingerprint: content hash of the weights file or local model folder, if local.
        revision: hub revision (transformers), if the user pinned one.
        pooling: text pooling, ``cls`` or ``mean``; None where it does not apply.
        max_length: text truncation length in tokens; None where it does not apply.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; embeddings are stored as float32).
        seed: seed of the random initialisation (only meaningful with ``weights="random"``).
    """

    name: str
    backend: Literal["timm", "openclip", "transformers", "array"]
    source: str
    weights: str | None = None
    weights_fingerprint: str | None = None
    revision: str | None = None
    pooling: str | None = None
    max_length: int | None = None
    precision: Precision = "fp32"
    seed: int = 0

    def key(self) -> dict[str, Any]:
        """Give the fields that identify the embeddings (``name`` is a label, not identity)."""
        d = asdict(self)
        d.pop("name")
        if self.weights != "random":
            d.pop("seed")
        return d

    @property
    def storage_name(self) -> str:
        """Give the cache folder name: backend and source, so every alias of one model shares entries."""
        return f"{self.backend}-{self.source}"

    def to_dict(self) -> dict[str, Any]:
        """Give a JSON-ready description (what ``--name`` saves)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        """Rebuild a spec saved by :meth:`to_dict`."""
        return cls(**data)


class Encoder(ABC):
    """A loaded model that turns a batch of inputs into a (batch, dim) float32 tensor.

    The embedding loop calls ``collate`` in DataLoader workers (so it must not touch the model and
    must be picklable), then ``encode`` in the main process on the collated batch.
    """

    spec: ModelSpec
    modality: str

    @abstractmethod
    def collate(self, inputs: Sequence[Any]) -> Any:
        """Turn raw inputs (PIL images or strings) into a CPU batch for :meth:`encode`."""

    @abstractmethod
    def encode(self, batch: Any) -> "torch.Tensor":
        """Give the float32 embeddings of one collated batch, shape (batch, dim), on the CPU."""

    @abstractmethod
    def preprocessing(self) -> dict[str, Any]:
        """Give a JSON-ready description of the preprocessing (stored as provenance)."""

    @property
    @abstractmethod
    def device(self) -> "torch.device":
        """The device the model runs on."""


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """Give the first line of an exception's message, shortened to ``limit`` characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) < 12:  # a bare code such as pickle's "105" says nothing without the exception's name
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
