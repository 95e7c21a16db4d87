"""Model names -> :class:`ModelSpec` (cheap) -> :class:`Encoder` (heavy), through one prefix registry.

``resolve_model`` turns what the user typed into a spec without building a model, so a cache hit
costs no model work; ``build_encoder`` loads the model the spec describes. Each backend lives in its
own module (``timm_backend``, ``openclip_backend``, ``transformers_backend``), imported only when a
model of that kind is built.

Modules, one job each: :mod:`~stitchcli.encoders.resolve` (names -> specs, the prefix registry),
:mod:`~stitchcli.encoders.build` (specs -> encoders, the backend registry), :mod:`~stitchcli.encoders.torch_encoder`
(what the torch backends share, image collation included), :mod:`~stitchcli.encoders.weights` (reading a local
weights file), :mod:`~stitchcli.encoders.base` (the records and the interface).
"""

from __future__ import annotations

from stitchcli.encoders.base import Encoder, ModelSpec, short_reason
from stitchcli.encoders.build import build_encoder
from stitchcli.encoders.resolve import (
    POOLINGS,
    RANDOM_WEIGHTS,
    TOKENIZER_FILES,
    check_model_options,
    known_model_names,
    resolve_model,
)
from stitchcli.encoders.torch_encoder import (
    ImageCollator,
    TorchEncoder,
    cast_to_bf16_for_cpu,
    cpu_has_amx,
    prefer_matmul_attention,
)
from stitchcli.encoders.weights import UnreadableWeights, read_weights_file

__all__ = [
    "POOLINGS",
    "RANDOM_WEIGHTS",
    "TOKENIZER_FILES",
    "Encoder",
    "ImageCollator",
    "ModelSpec",
    "TorchEncoder",
    "UnreadableWeights",
    "build_encoder",
    "cast_to_bf16_for_cpu",
    "check_model_options",
    "cpu_has_amx",
    "known_model_names",
    "prefer_matmul_attention",
    "read_weights_file",
    "resolve_model",
    "short_reason",
]
