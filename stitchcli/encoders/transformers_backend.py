"""transformers encoders: text with CLS or mean pooling, images through the image processor."""

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
    """A transformers text model whose token states are pooled by CLS or attention-masked mean."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self._model(**batch).last_hidden_state
        if self.spec.pooling == "mean":
            return masked_mean(hidden, batch["attention_mask"])
        return hidden[:, 0]


class VisionEncoder(TorchEncoder):
    """A transformers vision model: its pooled output, or its CLS token when it has no trained pooler."""

    def __init__(self, *args: Any, use_pooler: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._use_pooler = use_pooler

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return vision_features(self._model(**batch), self._use_pooler)


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Give the mean of the token states over the tokens the attention mask keeps (not padding)."""
    hidden = hidden.float()  # summed in fp32 even when the model ran in bf16
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def vision_features(output: Any, use_pooler: bool) -> torch.Tensor:
    """Give (batch, dim) features: ``pooler_output``, else the CLS token (or spatial mean of a map)."""
    pooled = getattr(output, "pooler_output", None)
    if use_pooler and pooled is not None:
        return pooled.flatten(1)
    hidden = output.last_hidden_state
    if hidden.dim() == 4:  # convolutional feature map (batch, channels, h, w)
        return hidden.mean(dim=(2, 3))
    return hidden[:, 0]


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
        # Longer inputs are truncated; a longer --max-length would run past the position embeddings.
        most = min(n for n in (getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None), 10**9) if isinstance(n, int) and n > 0)
        if spec.max_length is not None and spec.max_length > most:
            raise UsageError(f"--max-length {spec.max_length} is more than '{spec.name}' takes: give --max-length {most} or less (longer texts are truncated)")
        model, _ = _load_model(spec, config, options)
        max_length = spec.max_length or _default_max_length(tokenizer, config, _sentence_transformers_limit(spec))
        preprocessing.update(
            tokenizer=type(tokenizer).__name__,
            max_length=max_length,
            pooling=spec.pooling or "cls",
            padding="longest",
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


def _load_model(spec: ModelSpec, config: Any, options: dict[str, Any]) -> tuple[Any, set[str]]:
    """Give (model, names of weights missing from the checkpoint); seeded for random weights."""
    if spec.weights == RANDOM_WEIGHTS:
        torch.manual_seed(spec.seed)  # every process builds the same random model
        return AutoModel.from_config(config, trust_remote_code=options["trust_remote_code"]), set()
    model, info = AutoModel.from_pretrained(spec.source, config=config, output_loading_info=True, **options)
    return model, set(info.get("missing_keys", ()))


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
