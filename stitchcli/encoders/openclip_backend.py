"""open_clip encoders: the image tower on image data, the text tower on text data."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import open_clip
import torch

from stitchcli.encoders.base import ModelSpec, short_reason
from stitchcli.encoders.resolve import RANDOM_WEIGHTS
from stitchcli.encoders.torch_encoder import ImageCollator, TorchEncoder
from stitchcli.encoders.weights import UnreadableWeights, read_weights_file
from stitchcli.errors import UsageError, looks_like_network_failure


class TextCollator:
    """Turns strings into a (batch, context_length) token tensor; picklable, model-free."""

    def __init__(self, tokenizer: Callable[..., torch.Tensor]) -> None:
        self.tokenizer = tokenizer

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer([str(t) for t in texts])


class OpenClipImageEncoder(TorchEncoder):
    """The image tower of a CLIP model (unnormalised image embeddings)."""

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self._model.encode_image(batch)


class OpenClipTextEncoder(TorchEncoder):
    """The text tower of a CLIP model, which pools its own tokens (unnormalised text embeddings)."""

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self._model.encode_text(batch)


def build_encoder(spec: ModelSpec, modality: str, device: torch.device, *, trust_remote_code: bool = False) -> TorchEncoder:
    """Give the image or text tower of the open_clip model of ``spec``.

    ``trust_remote_code`` is unused: open_clip models are built from open_clip's own code. A local weights
    file is first read here as safetensors or with ``weights_only``, so that a pickle that would run code
    is refused before open_clip (whose older releases call torch.load without ``weights_only``) opens it.
    """
    arch, _, tag = spec.source.partition("/")
    if spec.weights not in (None, RANDOM_WEIGHTS):
        try:
            read_weights_file(Path(spec.weights))
        except UnreadableWeights as exc:
            raise UsageError(f"cannot read weights file '{spec.weights}': {exc}; expected an open_clip checkpoint for {arch}") from None
    if spec.weights == RANDOM_WEIGHTS:
        pretrained = None
        torch.manual_seed(spec.seed)  # every process builds the same random model
    else:
        pretrained = spec.weights or tag  # a local file, or the pretrained tag
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    except Exception as exc:
        if spec.weights in (None, RANDOM_WEIGHTS) or looks_like_network_failure(exc):
            raise
        raise UsageError(
            f"cannot read weights file '{spec.weights}': {short_reason(exc)}; "
            f"expected an open_clip checkpoint for {arch}"
        ) from exc
    model.eval().to(device)

    preprocessing: dict[str, Any] = {"backend": "openclip", "arch": arch, "pretrained": tag or None}
    if modality == "image":
        preprocessing["transform"] = repr(preprocess)
        return OpenClipImageEncoder(spec, modality, model, ImageCollator(preprocess), device, preprocessing)
    tokenizer = open_clip.get_tokenizer(arch)
    preprocessing["tokenizer"] = type(tokenizer).__name__
    preprocessing["context_length"] = getattr(tokenizer, "context_length", None)
    preprocessing["pooling"] = "text tower's own"
    return OpenClipTextEncoder(spec, modality, model, TextCollator(tokenizer), device, preprocessing)
