"""Pooled representations of a model's intermediate layers (``embed --layers``), one extractor per backend.

:func:`layer_encoder` wraps a built encoder so that ``encode`` gives, for each row, the pooled representation
of every chosen layer side by side (one (batch, Σ d_layer) matrix, in depth order); ``layers`` names them and
gives their widths, so the embedding pipeline can cut the matrix into one cache entry per layer.

How each backend's layers are read and pooled (docs/SIMILARITY.md §3):

- **timm**: the feature-extraction API, ``forward_intermediates``. Models of the EfficientNet / MobileNet
  family give the stem and the output of every stage of ``model.blocks`` (``extra_blocks``: ``stem``,
  ``blocks.0`` …); other models the intermediates their ``feature_info`` lists (a ViT: every block,
  ``blocks.0`` …; a ResNet: the stem and each stage). A convolutional feature map is averaged over its
  positions (global average pooling, as the models' own heads pool); a ViT's tokens are pooled as the model
  pools its last block: its class token for ``global_pool='token'`` (a distilled DeiT: the mean of its class and
  distillation tokens, as its head), else the mean of the patch tokens. Layer names that repeat (CrossViT's two
  branches) are replaced by ``feature.0`` … so that each layer keeps its own cache entry.
  Intermediates are taken before the final norm (the residual stream as it is).
- **transformers**: ``output_hidden_states``: the embedding layer's output (``embeddings``) and each
  layer's (``layer.0`` …), pooled as the model's final representation is: CLS token, attention-masked mean
  or last token for text (the spec's pooling), CLS token for a vision transformer (the pooler applies to the
  last layer only), the mean of its tokens for one with no class token (one token per patch: SigLIP), spatial
  mean for a convolutional model's maps and for a hierarchical vision transformer's (Swin: its
  ``reshaped_hidden_states``). The embeddings are pooled by the mean of their tokens: before any layer a class
  token is the same for every input. A dual encoder (CLIP) gives the hidden states of the tower that encodes the
  data.
- **open_clip**: refused. Its towers have no intermediate-output API shared by its architectures (CLIP
  ViTs, ConvNeXts, timm towers, text transformers with their own pooling), so layer outputs could only come
  from hooks written per architecture.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Sequence

from stitchcli.encoders.torch_encoder import TorchEncoder
from stitchcli.errors import UsageError

if TYPE_CHECKING:
    import torch

Layers = list[tuple[str, "torch.Tensor"]]
"""(layer name, pooled (batch, d_layer) tensor), in depth order."""

Extractor = Callable[[TorchEncoder, Any], Layers]

_EXTRACTORS: dict[str, Extractor] = {}
_REFUSED = {
    "openclip": "open_clip models have no shared API for their towers' intermediate outputs",
    "array": "imported arrays have no layers",
}


def register_layer_extractor(backend: str) -> Callable[[Extractor], Extractor]:
    """Give a decorator registering the layer extractor of one encoder backend."""

    def register(function: Extractor) -> Extractor:
        _EXTRACTORS[backend] = function
        return function

    return register


def check_layers_supported(backend: str, model: str) -> None:
    """Raise a UsageError (one line) when ``--layers`` cannot be read from a model of ``backend``."""
    if backend not in _EXTRACTORS:
        why = _REFUSED.get(backend, f"no layer extractor is registered for {backend} models")
        raise UsageError(f"--layers: {why} ({model!r} is a {backend} model); embed its final representation without --layers")


class LayerEncoder(TorchEncoder):
    """An encoder whose ``encode`` gives the chosen layers' pooled representations side by side.

    Built by :func:`layer_encoder` from a loaded encoder (it shares the model, collation, device and
    precision). One blank input is encoded on construction to learn every layer's name and width.
    """

    def __init__(self, base: TorchEncoder, selection: Sequence[str] | None) -> None:
        self.__dict__.update(base.__dict__)
        self._extract = _EXTRACTORS[base.spec.backend]
        self._all: list[tuple[str, int]] | None = None
        self._take: list[int] | None = None
        self.encode(self.collate([_blank_input(self.modality)]))  # fills self._all
        assert self._all is not None
        names = [name for name, _ in self._all]
        if selection is None:
            self._take = list(range(len(names)))
        else:
            unknown = [name for name in selection if name not in names]
            if unknown:
                raise UsageError(
                    f"model {self.spec.name!r} has no layer {', '.join(map(repr, unknown))}: its layers are {', '.join(names)} (or give --layers all)"
                )
            self._take = [i for i, name in enumerate(names) if name in set(selection)]

    @property
    def all_layers(self) -> list[tuple[str, int]]:
        """Give (name, width) of every layer the model has, in depth order."""
        assert self._all is not None
        return list(self._all)

    @property
    def layers(self) -> list[tuple[str, int]]:
        """Give (name, width) of the chosen layers, in the order of ``encode``'s columns."""
        assert self._all is not None and self._take is not None
        return [self._all[i] for i in self._take]

    def forward(self, batch: Any) -> "torch.Tensor":
        import torch

        layers = self._extract(self, batch)
        if self._all is None:
            self._all = [(name, int(tensor.shape[1])) for name, tensor in layers]
        chosen = layers if self._take is None else [layers[i] for i in self._take]
        return torch.cat([tensor.float() for _, tensor in chosen], dim=1)

    def compile(self) -> None:
        """Refuse: the layers are read through methods torch.compile does not compile."""
        raise UsageError("--compile speeds up the final representation only: drop it with --layers")

    def preprocessing(self) -> dict[str, Any]:
        """Give the base encoder's preprocessing and the layers (names and widths, in column order)."""
        return {**super().preprocessing(), "layers": [{"name": name, "dim": dim} for name, dim in self.layers],
                "layer_pooling": _POOLING[self.spec.backend]}


def layer_encoder(encoder: TorchEncoder, selection: Sequence[str] | None = None) -> LayerEncoder:
    """Give ``encoder`` reading the pooled representations of its layers (``selection``: names; None: all).

    Raises:
        UsageError: the backend has no layer extractor (open_clip), or a selected name is not a layer.
    """
    check_layers_supported(encoder.spec.backend, encoder.spec.name)
    return LayerEncoder(encoder, selection)


def _blank_input(modality: str) -> Any:
    if modality == "text":
        return "a"
    from PIL import Image

    return Image.new("RGB", (64, 64))


_POOLING = {
    "timm": "forward_intermediates before the final norm; feature maps: mean over positions; ViT tokens: the class token "
            "(global_pool='token'; a distilled DeiT: the mean of its class and distillation tokens) or the mean of the patch tokens",
    "transformers": "hidden_states (embeddings, then each layer); text: the model's pooling (CLS, masked mean or last token); "
                    "vision: the CLS token, or the spatial mean of a feature map (Swin: of its reshaped hidden states)",
}


def _pool_map(tensor: "torch.Tensor") -> "torch.Tensor":
    """Give a (batch, d) pooling of a feature map (batch, C, H, W) or tokens (batch, L, d)."""
    if tensor.dim() == 4:
        return tensor.mean(dim=(2, 3))
    if tensor.dim() == 3:
        return tensor.mean(dim=1)
    return tensor.flatten(1)


@register_layer_extractor("timm")
def timm_layers(encoder: TorchEncoder, batch: Any) -> Layers:
    """Give the pooled intermediates of a timm model (see the module docstring)."""
    import torch

    model = encoder._model
    if not hasattr(model, "forward_intermediates"):
        raise UsageError(f"--layers: timm model {encoder.spec.source!r} has no forward_intermediates, so its layers cannot be read")
    if encoder.device.type in ("cuda", "cpu"):
        batch = batch.contiguous(memory_format=torch.channels_last)  # as TimmEncoder.forward runs it
    parameters = inspect.signature(model.forward_intermediates).parameters
    options: dict[str, Any] = {"intermediates_only": True}
    if "extra_blocks" in parameters:  # every stage of model.blocks, not only those that change resolution
        options["extra_blocks"] = True
        names = ["stem", *(f"blocks.{i}" for i in range(len(model.blocks)))]
    else:
        info = model.feature_info
        dicts = info.get_dicts() if hasattr(info, "get_dicts") else info
        names = [str(d.get("module") or f"feature.{i}") for i, d in enumerate(dicts)]
    tokens = getattr(model, "num_prefix_tokens", 0) and "return_prefix_tokens" in parameters
    if tokens:
        options.update(output_fmt="NLC", return_prefix_tokens=True)
    outputs = model.forward_intermediates(batch, **options)
    pooled = []
    for output in outputs:
        if isinstance(output, (tuple, list)):  # (patch tokens, prefix tokens)
            patches, prefix = output
            if getattr(model, "global_pool", None) != "token":
                pooled.append(patches.mean(dim=1))
            elif getattr(model, "dist_token", None) is not None:  # DeiT distilled: its head averages both tokens
                pooled.append(prefix[:, :2].mean(dim=1))
            else:
                pooled.append(prefix[:, 0])
        else:
            pooled.append(_pool_map(output))
    if len(names) != len(pooled) or len(set(names)) != len(names):  # CrossViT's two branches name the same blocks
        names = [f"feature.{i}" for i in range(len(pooled))]
    return list(zip(names, pooled))


@register_layer_extractor("transformers")
def transformers_layers(encoder: TorchEncoder, batch: Any) -> Layers:
    """Give the pooled hidden states of a transformers model (see the module docstring)."""
    from stitchcli.encoders.transformers_backend import DualEncoderTower, pool_tokens, pool_vision_tokens, vision_patch_size

    output = encoder._model(**batch, output_hidden_states=True)
    hidden = output.hidden_states
    if hidden is None:
        raise UsageError(f"--layers: {encoder.spec.source!r} gives no hidden states, so its layers cannot be read")
    # Hierarchical vision transformers (Swin) have no class token: their token states as the feature maps they are.
    hidden = getattr(output, "reshaped_hidden_states", None) or hidden
    names = ["embeddings", *(f"layer.{i}" for i in range(len(hidden) - 1))]
    model = encoder._model.model if isinstance(encoder._model, DualEncoderTower) else encoder._model
    pooled = []
    for depth, state in enumerate(hidden):
        # The embeddings (depth 0) have mixed no tokens: a class token there is the same for every input (a constant
        # row no measure can compare), and any one token holds only itself, so they are pooled by their mean.
        if encoder.modality == "text" and state.dim() == 3:
            pooled.append(pool_tokens(state, batch["attention_mask"], "mean" if depth == 0 else encoder.spec.pooling or "cls"))
        elif depth == 0 and state.dim() == 3:
            pooled.append(state.mean(dim=1))
        else:
            pooled.append(pool_vision_tokens(state, batch.get("pixel_values"), vision_patch_size(model.config)))
    return list(zip(names, pooled))
