"""transformers encoders: text with CLS, mean or last-token pooling, images through the image processor."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

from stitchcli.encoders.base import ModelSpec, short_reason
from stitchcli.encoders.resolve import RANDOM_WEIGHTS, TOKENIZER_FILES
from stitchcli.encoders.torch_encoder import TorchEncoder
from stitchcli.errors import UsageError

# Longest text a tokenizer is asked to keep when the model does not say (the paper's BERT limit).
MAX_TOKENS = 512


class TokenizerCollator:
    """Turns strings into padded, truncated token tensors; picklable, model-free."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            [str(t) for t in texts],
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return dict(encoded)


class ImageProcessorCollator:
    """Turns PIL images into pixel tensors with the model's image processor; picklable, model-free."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, images: Sequence[Any]) -> dict[str, torch.Tensor]:
        from PIL import Image

        rgb = [(im if isinstance(im, Image.Image) else Image.fromarray(im)).convert("RGB") for im in images]
        return {"pixel_values": self.processor(images=rgb, return_tensors="pt")["pixel_values"]}


class TextEncoder(TorchEncoder):
    """A transformers text model whose token states are pooled by CLS, attention-masked mean or last token."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        output = self._model(**batch)
        if isinstance(self._model, DualEncoderTower):  # CLIP's text embedding: the model pools and projects
            return output.pooler_output
        return pool_tokens(output.last_hidden_state, batch["attention_mask"], self.spec.pooling or "cls")


class VisionEncoder(TorchEncoder):
    """A transformers vision model: its pooled output, or its CLS token when it has no trained pooler."""

    def __init__(self, *args: Any, use_pooler: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._use_pooler = use_pooler

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        model = self._model.model if isinstance(self._model, DualEncoderTower) else self._model
        return vision_features(self._model(**batch), self._use_pooler, batch.get("pixel_values"), vision_patch_size(model.config))


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Give the mean of the token states over the tokens the attention mask keeps (not padding)."""
    hidden = hidden.float()  # summed in fp32 even when the model ran in bf16
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Give (batch, dim) token states pooled as ``pooling`` says, padding never read, whichever side it is on.

    ``cls``: the first token the mask keeps; ``last``: the last one (a causal model's only token that has
    seen the whole text); ``mean``: the mean over the kept tokens.
    """
    if pooling == "mean":
        return masked_mean(hidden, attention_mask)
    kept = attention_mask.bool()
    positions = torch.arange(kept.shape[1], device=kept.device).expand_as(kept)
    if pooling == "last":
        index = torch.where(kept, positions, -1).amax(dim=1).clamp(min=0)
    else:
        index = torch.where(kept, positions, kept.shape[1]).amin(dim=1).clamp(max=kept.shape[1] - 1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


class DualEncoderTower(torch.nn.Module):
    """One tower of a dual encoder (CLIP, SigLIP, ALIGN), whose whole forward needs both texts and images: its
    ``get_text_features`` or ``get_image_features``, the embedding in the shared space as ``pooler_output``."""

    def __init__(self, model: Any, modality: str) -> None:
        super().__init__()
        self.model = model
        self.modality = modality

    def forward(self, **batch: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        features = self.model.get_text_features if self.modality == "text" else self.model.get_image_features
        output = features(**batch)
        if isinstance(output, torch.Tensor):  # transformers 4 gives the embeddings alone
            return BaseModelOutputWithPooling(pooler_output=output)
        return output


def is_dual_encoder(model: Any) -> bool:
    """Tell whether a model embeds texts and images apart into one space (CLIP, SigLIP): its forward needs both."""
    return callable(getattr(model, "get_text_features", None)) and callable(getattr(model, "get_image_features", None))


def pool_vision_tokens(hidden: torch.Tensor, pixels: torch.Tensor | None, patch_size: Any) -> torch.Tensor:
    """Give (batch, dim) of a vision model's state: the spatial mean of a feature map; of a token sequence, its
    class token (the first), or the mean of its tokens when it has exactly one token per patch (no class token:
    SigLIP's vision tower; pooling its first token would take the top-left patch)."""
    if hidden.dim() == 4:  # convolutional feature map (batch, channels, h, w)
        return hidden.mean(dim=(2, 3))
    if hidden.dim() != 3:
        return hidden.flatten(1)
    if pixels is not None and pixels.dim() == 4 and patch_size:
        ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)[:2]
        if hidden.shape[1] == (pixels.shape[2] // ph) * (pixels.shape[3] // pw):
            return hidden.mean(dim=1)
    return hidden[:, 0]


def vision_patch_size(config: Any) -> Any:
    """Give a vision config's patch size (that of its vision tower's config for a dual encoder), None if none."""
    config = getattr(config, "vision_config", None) or config
    return getattr(config, "patch_size", None)


def vision_features(output: Any, use_pooler: bool, pixels: torch.Tensor | None = None, patch_size: Any = None) -> torch.Tensor:
    """Give (batch, dim) features: ``pooler_output``, else the CLS token (or the mean of a map, or of tokens
    that hold no class token, :func:`pool_vision_tokens`)."""
    pooled = getattr(output, "pooler_output", None)
    if use_pooler and pooled is not None:
        return pooled.flatten(1)
    return pool_vision_tokens(output.last_hidden_state, pixels, patch_size)


def build_encoder(spec: ModelSpec, modality: str, device: torch.device, *, trust_remote_code: bool = False) -> TorchEncoder:
    """Give the text or vision encoder of a transformers hub id or local folder.

    ``trust_remote_code`` is passed to every transformers loader as given (never left to transformers, which
    would ask on a terminal): off, a model that ships its own code is refused with a UsageError.
    """
    local = Path(spec.source).is_dir()
    options: dict[str, Any] = {"revision": spec.revision, "local_files_only": local, "trust_remote_code": trust_remote_code}
    preprocessing: dict[str, Any] = {"backend": "transformers", "modality": modality}
    # The config first: for a hub id without network it fails with the cause intact (the tokenizer
    # and image processor loaders replace it with a generic "can't load" message).
    with _refusing_remote_code(spec):
        config = AutoConfig.from_pretrained(spec.source, **options)
        return _build_with_config(spec, modality, device, config, options, local, preprocessing)


@contextlib.contextmanager
def _refusing_remote_code(spec: ModelSpec) -> Iterator[None]:
    """Turn transformers' refusal to run a model's own code (without trust_remote_code) into one UsageError line."""
    try:
        yield
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        where = spec.source if Path(spec.source).is_dir() else f"https://hf.co/{spec.source}"
        raise UsageError(
            f"model {spec.name!r} ships its own Python code (auto_map in its config), which stitchcli runs only "
            f"with --trust-remote-code: read the code at {where} first, then add the flag if you trust it"
        ) from None


def _build_with_config(
    spec: ModelSpec, modality: str, device: torch.device, config: Any, options: dict[str, Any], local: bool, preprocessing: dict[str, Any]
) -> TorchEncoder:
    """Give the encoder of :func:`build_encoder` once the model's config is loaded."""
    if modality == "text":
        if local and not any((Path(spec.source) / f).is_file() for f in TOKENIZER_FILES):
            raise UsageError(
                f"model folder '{spec.source}' has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): "
                "save one next to the model with tokenizer.save_pretrained(folder)"
            )
        tokenizer = AutoTokenizer.from_pretrained(spec.source, **options)
        _prepare_padding(spec, tokenizer)
        _check_pooling(spec, config, tokenizer)
        # Longer inputs are truncated; a longer --max-length would run past the position embeddings.
        most = min(n for n in (getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None), 10**9) if isinstance(n, int) and n > 0)
        if spec.max_length is not None and spec.max_length > most:
            raise UsageError(f"--max-length {spec.max_length} is more than '{spec.name}' takes: give --max-length {most} or less (longer texts are truncated)")
        model, _ = _load_model(spec, config, options, text=True)
        if is_dual_encoder(model):
            model = DualEncoderTower(model, "text")
        max_length = spec.max_length or _default_max_length(tokenizer, config, _sentence_transformers_limit(spec))
        preprocessing.update(
            tokenizer=type(tokenizer).__name__,
            max_length=max_length,
            pooling="the model's own (get_text_features)" if isinstance(model, DualEncoderTower) else spec.pooling or "cls",
            padding="longest",
            pad_token=tokenizer.pad_token,
        )
        model.eval().to(device)
        return TextEncoder(spec, modality, model, TokenizerCollator(tokenizer, max_length), device, preprocessing)

    if local and not (Path(spec.source) / "preprocessor_config.json").is_file():
        raise UsageError(
            f"model folder '{spec.source}' has no image processor (preprocessor_config.json): "
            "save one next to the model with image_processor.save_pretrained(folder)"
        )
    try:
        processor = AutoImageProcessor.from_pretrained(spec.source, **options)
    except (OSError, ValueError) as exc:
        if local and "trust_remote_code" not in str(exc):
            raise UsageError(f"cannot read the image processor of '{spec.source}': {short_reason(exc)}") from exc
        raise
    model, missing = _load_model(spec, config, options)
    if is_dual_encoder(model):
        model = DualEncoderTower(model, "image")
    model.eval().to(device)
    # A checkpoint trained without the pooler (e.g. a classifier saved as ViTForImageClassification)
    # leaves it randomly initialised: its output would be noise, so use the CLS token instead.
    pooler_untrained = any(k.split(".")[0] == "pooler" for k in missing)
    use_pooler = not pooler_untrained and _has_pooler_output(model, processor, device)
    preprocessing.update(
        image_processor=type(processor).__name__,
        image_processor_config=processor.to_dict(),
        features="pooler_output" if use_pooler else "cls_token",
    )
    collator = ImageProcessorCollator(processor)
    return VisionEncoder(spec, modality, model, collator, device, preprocessing, use_pooler=use_pooler)


def _load_model(spec: ModelSpec, config: Any, options: dict[str, Any], *, text: bool = False) -> tuple[Any, set[str]]:
    """Give (model, names of weights missing from the checkpoint); seeded for random weights.

    For text, the model transformers maps to text encoding where that is not the whole model (T5's encoder,
    also from a folder saved by T5EncoderModel, whose config still says t5); any other encoder-decoder (BART)
    gives its encoder: the whole model's forward needs decoder inputs, and the text's representation is the
    encoder's.
    """
    auto: Any = AutoModel
    encoder_decoder = text and bool(getattr(config, "is_encoder_decoder", False))
    if text:
        from transformers import AutoModelForTextEncoding
        from transformers.models.auto.modeling_auto import MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES, MODEL_MAPPING_NAMES

        model_type = getattr(config, "model_type", None)
        if model_type in MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES and MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES[model_type] != MODEL_MAPPING_NAMES.get(model_type):
            auto = AutoModelForTextEncoding
    if spec.weights == RANDOM_WEIGHTS:
        torch.manual_seed(spec.seed)  # every process builds the same random model
        model, missing = auto.from_config(config, trust_remote_code=options["trust_remote_code"]), set()
    else:
        model, info = auto.from_pretrained(spec.source, config=config, output_loading_info=True, **options)
        missing = set(info.get("missing_keys", ()))
    if encoder_decoder and auto is AutoModel:
        if not hasattr(model, "get_encoder"):
            raise UsageError(f"model {spec.name!r} is an encoder-decoder whose encoder stitchcli cannot reach (no get_encoder)")
        model = model.get_encoder()
    return model, missing


def _prepare_padding(spec: ModelSpec, tokenizer: Any) -> None:
    """Give a tokenizer saved without a padding token (GPT-2 and most causal models) its end-of-text token (or
    its unknown token) to pad with, and pad on the right: every pooling reads the attention mask, so padding
    is never pooled, and models with absolute positions see the text at the positions they were trained on.

    Raises:
        UsageError: the tokenizer has no padding, end-of-text or unknown token to pad with.
    """
    if tokenizer.pad_token is None:
        stand_in = tokenizer.eos_token or tokenizer.unk_token
        if stand_in is None:
            raise UsageError(
                f"the tokenizer of {spec.name!r} has no padding token (nor an end-of-text or unknown token to pad with): "
                "save one with tokenizer.add_special_tokens({'pad_token': ...}) and tokenizer.save_pretrained(folder)"
            )
        tokenizer.pad_token = stand_in
    tokenizer.padding_side = "right"


def _check_pooling(spec: ModelSpec, config: Any, tokenizer: Any) -> None:
    """Refuse ``cls`` pooling where the first token does not stand for the text, instead of pooling it silently.

    A causal language model's first token has seen no other token, and a tokenizer that puts no special token
    first (T5, GPT-2) makes the "CLS token" the first word.
    """
    if (spec.pooling or "cls") != "cls":
        return
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    causal = not getattr(config, "is_encoder_decoder", False) and (
        bool(getattr(config, "is_decoder", False))
        or (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    )
    if causal:
        raise UsageError(
            f"model {spec.name!r} is a causal ({model_type}) model: its first token sees no other, so cls pooling "
            "would give every text the same vector; give --pooling last (the last token, which has read the whole text) or mean"
        )
    first = tokenizer("a")["input_ids"][:1]
    if first and first[0] not in set(tokenizer.all_special_ids):
        raise UsageError(
            f"the tokenizer of {spec.name!r} puts no special token (such as [CLS]) first, so cls pooling would take "
            "the first word: give --pooling mean (or last)"
        )


def _default_max_length(tokenizer: Any, config: Any, trained_limit: int | None) -> int:
    """Give the length a sentence-transformers model was trained with, else the tokenizer's limit.

    Either is capped at 512 and at the model's position embeddings (a tokenizer saved without a
    limit reports a huge sentinel value).
    """
    limits = [MAX_TOKENS, int(min(getattr(tokenizer, "model_max_length", MAX_TOKENS), MAX_TOKENS))]
    if trained_limit:
        limits = [MAX_TOKENS, trained_limit]
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    return min(limits)


def _sentence_transformers_limit(spec: ModelSpec) -> int | None:
    """Give ``max_seq_length`` from a sentence-transformers model's sentence_bert_config.json, if any."""
    import json

    folder = Path(spec.source)
    try:
        if folder.is_dir():
            path = folder / "sentence_bert_config.json"
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(spec.source, "sentence_bert_config.json", revision=spec.revision))
        value = json.loads(path.read_text()).get("max_seq_length")
    except Exception:  # not a sentence-transformers model (or no such file): no trained limit
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def _has_pooler_output(model: Any, processor: Any, device: torch.device) -> bool:
    """Tell whether the model's forward returns a ``pooler_output`` (one blank image decides)."""
    from PIL import Image

    pixels = ImageProcessorCollator(processor)([Image.new("RGB", (64, 64))])
    with torch.inference_mode():
        output = model(**{k: v.to(device) for k, v in pixels.items()})
    return getattr(output, "pooler_output", None) is not None
