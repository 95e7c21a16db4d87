"""A stitched model: the encoder's latents through the decoder's frozen head, saved as a checked directory.

Two pipelines fit the one format (see docs/STITCHED.md):

- ``relative``: the encoder's latents against the encoder's own anchor embeddings (the transform fitted on those
  anchors, then each projection), then the decoder's relative head (aggregation + classifier);
- ``map``: the encoder's latents through a fitted latent map (:mod:`stitchcli.stitched.maps`: the absolute,
  translation and affine baselines, or any registered map), then the decoder's absolute head.

:func:`save_stitched` writes the directory; :func:`load_stitched` checks every file against the manifest before
reading any of them (:func:`~stitchcli.stitched.files.verify_directory`) and gives a :class:`StitchedModel`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from stitchcli.errors import UsageError
from stitchcli.stitched import files
from stitchcli.stitched.maps import LatentMap, rebuild_map

if TYPE_CHECKING:
    import torch

    from stitchcli.encoders.base import ModelSpec
    from stitchcli.heads import FittedHead
    from stitchcli.progress import Reporter
    from stitchcli.store import EmbeddingStore

PIPELINES = ("relative", "map")
_BATCH = 4096  # rows per forward pass of the head, as heads.predict uses (the same batches give the same logits)


@dataclass
class StitchedParts:
    """What a stitched model computes with.

    Attributes:
        head: the decoder's head (relative for the ``relative`` pipeline, absolute for ``map``).
        encoder_anchors: relative: the anchors embedded by the encoder, (k, D) float32.
        anchor_ids: relative: the anchors' row ids in the training split.
        transform: relative: the absolute transform fitted on the encoder's anchors (``center``...).
        map_kind: map: the registered map kind (``affine``...).
        map_tensors: map: its tensors.
        map_options: map: its JSON options.
    """

    head: FittedHead
    encoder_anchors: np.ndarray | None = None
    anchor_ids: np.ndarray | None = None
    transform: str | None = None
    map_kind: str | None = None
    map_tensors: dict[str, np.ndarray] = field(default_factory=dict)
    map_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._map: LatentMap | None = rebuild_map(self.map_kind, self.map_tensors, self.map_options) if self.map_kind is not None else None

    @property
    def pipeline(self) -> str:
        """``relative`` or ``map``."""
        return "relative" if self.head.kind == "relative" else "map"

    def describe(self) -> dict[str, Any]:
        """Give the card's ``pipeline`` section: what is computed, in order."""
        if self.pipeline == "relative":
            assert self.encoder_anchors is not None
            return {
                "kind": "relative",
                "transform": self.transform,
                "projections": list(self.head.projections),
                "aggregation": self.head.config.get("aggregation"),
                "num_anchors": int(self.encoder_anchors.shape[0]),
                "encoder_dim": int(self.encoder_anchors.shape[1]),
            }
        return {"kind": "map", "map": self.map_kind, "options": dict(self.map_options),
                "decoder_dim": self.head.config.get("input_dim")}

    def features(self, latents: np.ndarray) -> torch.Tensor:
        """Give what the head reads for the encoder's ``latents`` (N, D): the product space, or the mapped latents."""
        import torch

        if self.pipeline == "relative":
            from stitchcli.stitching.features import product_values

            assert self.encoder_anchors is not None and self.transform is not None
            latents = np.asarray(latents, dtype=np.float32)
            return product_values(latents, self.encoder_anchors, self.head.projections, self.transform, torch.device("cpu"))
        assert self._map is not None
        return torch.from_numpy(np.ascontiguousarray(self._map(latents)))

    def mapped(self, latents: np.ndarray) -> np.ndarray:
        """Give the encoder's ``latents`` mapped into the decoder's space (map pipeline only)."""
        assert self._map is not None
        return self._map(latents)

    def logits(self, latents: np.ndarray) -> np.ndarray:
        """Give the head's (N, C) logits for the encoder's ``latents``, in the batches ``FittedHead.predict`` uses."""
        import torch

        module = self.head.module
        x = self.features(latents)
        with torch.no_grad():
            out = [module(x[i : i + _BATCH].to(dtype=torch.float32)) for i in range(0, len(x), _BATCH)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.head.num_classes), np.float32)


def save_stitched(directory: str | Path, parts: StitchedParts, card: Mapping[str, Any]) -> Path:
    """Give the directory a stitched model was written to: the head, the encoder's anchors or the map, the card.

    ``card`` says what was stitched and how well it did (see :func:`stitchcli.stitched.build.stitched_from_sweep`);
    its ``pipeline`` section is written from ``parts``. An earlier stitched model at ``directory`` is replaced;
    a folder of other files is refused (UsageError).
    """
    from stitchcli.heads import save_head
    from stitchcli.store import write_safetensors, write_text_atomically

    if parts.pipeline == "relative" and (parts.encoder_anchors is None or parts.transform is None):
        raise ValueError("a relative stitched model needs the encoder's anchors and the transform")
    if parts.pipeline == "map" and parts.map_kind is None:
        raise ValueError("a stitched model with an absolute head needs a map kind")
    document = {"format": files.FORMAT, "format_version": files.FORMAT_VERSION, **dict(card), "pipeline": parts.describe()}
    document.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def fill(folder: Path) -> None:
        save_head(folder / files.HEAD, parts.head)
        if parts.pipeline == "relative":
            assert parts.encoder_anchors is not None
            ids = np.asarray(parts.anchor_ids if parts.anchor_ids is not None else np.arange(len(parts.encoder_anchors)), dtype=np.int64)
            write_safetensors(folder / files.ANCHORS, {"embeddings": np.asarray(parts.encoder_anchors, dtype=np.float32), "ids": ids},
                              {"kind": "encoder_anchors", "transform": parts.transform})
        else:
            write_safetensors(folder / files.MAP, {name: np.asarray(value) for name, value in parts.map_tensors.items()},
                              {"kind": "latent_map", "map": parts.map_kind, "options": dict(parts.map_options)})
        write_text_atomically(folder / files.CARD, json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")

    return files.write_directory(directory, fill)


class StitchedModel:
    """A loaded stitched model: ``predict`` / ``predict_proba`` on new inputs, ``card`` for what it is.

    Attributes:
        path: the directory.
        card: the JSON card (what was stitched, on which data, measured accuracies, versions, the encoder's spec).
        parts: the head and the anchors or map.
    """

    def __init__(self, path: Path, card: dict[str, Any], parts: StitchedParts) -> None:
        self.path = path
        self.card = card
        self.parts = parts

    def __repr__(self) -> str:
        return f"StitchedModel({str(self.path)!r}, {self.label})"

    @property
    def label(self) -> str:
        """Give ``ENCODER→DECODER setting (seed S)`` as the card names the saved row."""
        row = self.card.get("row") or {}
        return f"{self.card['encoder']['name']}→{self.card['decoder']['name']} {row.get('label')} (seed {row.get('seed')})"

    @property
    def classes(self) -> list[str]:
        """The class names, in the order of ``predict_proba``'s columns."""
        return list(self.card["classes"])

    @property
    def modality(self) -> str:
        """``image`` or ``text``: what the encoder reads."""
        return str(self.card["encoder"].get("modality") or "image")

    @property
    def encoder_spec(self) -> ModelSpec:
        """The encoder's model spec as it was stitched (name, backend, weights and their hash, pooling, precision)."""
        from stitchcli.encoders.base import ModelSpec

        return ModelSpec.from_dict(dict(self.card["encoder"]["spec"]))

    def predict_latents(self, latents: np.ndarray) -> np.ndarray:
        """Give the predicted class index of every row of the encoder's ``latents`` (N, D)."""
        return self.parts.logits(latents).argmax(axis=1)

    def predict_proba_latents(self, latents: np.ndarray) -> np.ndarray:
        """Give the (N, C) class probabilities (softmax of the logits) for the encoder's ``latents``."""
        return softmax(self.parts.logits(latents))

    # ----- from inputs -------------------------------------------------------------------------------

    def embed(
        self,
        inputs: Sequence[Any] | Any,
        *,
        store: EmbeddingStore | None = None,
        batch_size: int | None = None,
        device: str = "auto",
        reporter: Reporter | None = None,
    ) -> np.ndarray:
        """Give the encoder's (N, D) latents of ``inputs``: images (paths, folders, PIL images, arrays, encoded bytes) or
        texts (strings); one value or a collection of them (a list, a pandas Series, a NumPy array; no value: no rows).

        The encoder is built and batched as ``embed`` does; nothing is written to the cache (``store`` is where
        packaged model weights are found or written, default the usual cache folder).
        """
        from stitchcli.stitched.encoding import embed_inputs
        from stitchcli.stitched.inputs import inputs_from_values

        rows = inputs_from_values(inputs, self.modality)
        if not rows.names:  # no input, no encoder to load: (0, D) latents give (0, C) probabilities and no classes
            return np.zeros((0, int(self.card["encoder"].get("dim") or 0)), np.float32)
        return embed_inputs(self, rows, store=store, batch_size=batch_size, device=device, reporter=reporter)

    def predict_proba(self, inputs: Sequence[Any] | Any, **options: Any) -> np.ndarray:
        """Give the (N, C) class probabilities of ``inputs`` (see :meth:`embed` for inputs and options)."""
        return self.predict_proba_latents(self.embed(inputs, **options))

    def predict(self, inputs: Sequence[Any] | Any, **options: Any) -> list[str]:
        """Give the predicted class name of every input (see :meth:`embed` for inputs and options)."""
        names = self.classes
        return [names[int(i)] for i in self.predict_latents(self.embed(inputs, **options))]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Give the row-wise softmax of (N, C) logits (float64 sums, so a row adds up to 1)."""
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits, axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True)


def load_stitched(directory: str | Path) -> StitchedModel:
    """Give the stitched model saved at ``directory`` after checking every file against its manifest.

    Raises:
        UsageError: not a stitched model, a file damaged, edited, missing or not one it may hold (see
            :func:`~stitchcli.stitched.files.verify_directory`), or parts that do not fit together.
    """
    from stitchcli.heads import load_head
    from stitchcli.store import CorruptEntry, read_header

    root = Path(directory).expanduser()
    files.verify_directory(root)  # before anything in the folder is parsed
    try:
        card = json.loads((root / files.CARD).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
        raise UsageError(f"{root / files.CARD} cannot be read ({exc}): save the stitched model again") from None
    resave = "save the stitched model again with `stitchcli stitch ... --save DIR`"
    pipeline = card.get("pipeline") if isinstance(card, dict) else None
    if not isinstance(pipeline, dict) or pipeline.get("kind") not in PIPELINES or not isinstance(card.get("encoder"), dict) \
            or not isinstance(card.get("classes"), list):
        raise UsageError(f"{root / files.CARD} is incomplete (no pipeline, encoder or classes): {resave}")
    head = load_head(root / files.HEAD)
    if head.num_classes != len(card["classes"]):
        raise UsageError(f"the head of {root} predicts {head.num_classes} classes but its card names {len(card['classes'])}: {resave}")
    try:
        if pipeline["kind"] == "relative":
            if head.kind != "relative":
                raise UsageError(f"the head of {root} is absolute, but the card says relative: {resave}")
            tensors = read_header(root / files.ANCHORS).read_tensors()
            anchors = tensors["embeddings"]
            if anchors.ndim != 2 or anchors.shape[0] != head.config.get("num_anchors"):
                raise UsageError(f"the encoder's anchors in {root} ({anchors.shape}) do not fit its head ({head.config.get('num_anchors')} anchors): {resave}")
            parts = StitchedParts(head, anchors, tensors.get("ids"), str(pipeline["transform"]))
            return StitchedModel(root, card, parts)
        if head.kind != "absolute":
            raise UsageError(f"the head of {root} is relative, but the card says it reads mapped latents: {resave}")
        header = read_header(root / files.MAP)
        tensors = header.read_tensors()
        kind, options = str(header.metadata.get("map")), dict(header.metadata.get("options") or {})
        parts = StitchedParts(head, map_kind=kind, map_tensors=tensors, map_options=options)
        return StitchedModel(root, card, parts)
    except CorruptEntry as exc:
        raise UsageError(f"stitched model {root} cannot be used: {exc}; {resave}") from None
    except KeyError as exc:
        raise UsageError(f"stitched model {root} lacks {exc}: {resave}") from None
