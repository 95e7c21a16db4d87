"""timm image encoders: pooled pre-logit features, preprocessing from timm's own data config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch

from stitchcli.encoders.base import ModelSpec
from stitchcli.encoders.resolve import RANDOM_WEIGHTS
from stitchcli.encoders.torch_encoder import ImageCollator, TorchEncoder
from stitchcli.encoders.weights import UnreadableWeights, read_weights_file
from stitchcli.errors import UsageError

# Keys under which training scripts nest the state dict in a checkpoint, in order of preference.
_CHECKPOINT_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


class TimmEncoder(TorchEncoder):
    """A timm model without its classifier: ``forward`` gives the pooled pre-logit features."""

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type in ("cuda", "cpu"):
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self._model(batch)


def build_encoder(spec: ModelSpec, modality: str, device: torch.device, *, trust_remote_code: bool = False) -> TimmEncoder:
    """Give the timm encoder of ``spec`` (pretrained, seeded random, or a local weights file).

    ``trust_remote_code`` is unused: timm models are built from timm's own code, and their weights read
    as safetensors or with ``weights_only`` (here and in timm).
    """
    arch = spec.source.split(".", 1)[0]
    if spec.weights is None:
        model = timm.create_model(spec.source, pretrained=True, num_classes=0)
    else:
        if spec.weights == RANDOM_WEIGHTS:
            # Seeded right before building so every process (and rank) builds the same model.
            torch.manual_seed(spec.seed)
        model = timm.create_model(arch, pretrained=False, num_classes=0)
        if spec.weights != RANDOM_WEIGHTS:
            load_weights_file(model, Path(spec.weights), arch)
    model.eval().to(device)
    if device.type in ("cuda", "cpu"):
        # Channels-last convolutions: faster for convolutional networks, in fp32 and under bf16 autocast (see
        # docs/PERFORMANCE.md); a ViT has one convolution and is unaffected.
        model = model.to(memory_format=torch.channels_last)

    data_config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**data_config, is_training=False)
    preprocessing = {
        "backend": "timm",
        "features": "pooled pre-logits (num_classes=0)",
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        "transform": repr(transform),
        "dim": int(model.num_features),
    }
    return TimmEncoder(spec, modality, model, ImageCollator(transform), device, preprocessing)


def read_state_dict(path: Path, arch: str) -> dict[str, torch.Tensor]:
    """Give the tensors of a safetensors file or a torch state dict (read with ``weights_only``).

    Raises:
        UsageError: the file is neither, or holds something other than named tensors.
    """
    try:
        state: Any = read_weights_file(path)
    except UnreadableWeights as exc:
        raise _weights_error(path, arch, str(exc)) from None
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        nested = next((state[k] for k in _CHECKPOINT_KEYS if isinstance(state.get(k), dict)), None)
        if nested is not None:
            state = nested
    if not isinstance(state, dict) or not state:
        raise _weights_error(path, arch, f"holds a {type(state).__name__}, not a state dict")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise _weights_error(path, arch, "not a mapping of parameter names to tensors")
    if all(k.startswith("module.") for k in state):
        # Saved from DataParallel / DistributedDataParallel.
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_weights_file(model: torch.nn.Module, path: Path, arch: str) -> None:
    """Load a local weights file into a classifier-less timm model, every backbone key matched.

    Classifier weights in the file are dropped (the model has ``num_classes=0``); any other key
    that is missing, unexpected or of the wrong shape is an error, not a silent partial load.
    """
    state = read_state_dict(path, arch)
    expected = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier") or ()
    prefixes = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(prefixes)}

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{len(keys)} {label} keys (e.g. {', '.join(keys[:2])})")
        raise _weights_error(path, arch, "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _weights_error(path: Path, arch: str, reason: str) -> UsageError:
    return UsageError(
        f"cannot read weights file '{path}': {reason}; "
        f"expected a safetensors file or a torch state dict for timm {arch}"
    )
