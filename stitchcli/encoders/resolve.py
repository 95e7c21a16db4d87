"""Model names -> :class:`ModelSpec`, cheaply, through one prefix registry (:data:`_PREFIX_RESOLVERS`).

``resolve_model`` turns what the user typed (``timm:ARCH``, ``openclip:ARCH/TAG``, ``hf:ID``, a bare timm name
or hub id, a local folder) into a spec without building a model, so a cache hit costs no model work.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from stitchcli.device import check_precision_name
from stitchcli.encoders.base import ModelSpec
from stitchcli.errors import UsageError
from stitchcli.fingerprint import file_sha256, tree_fingerprint

POOLINGS = ("cls", "mean", "last")
RANDOM_WEIGHTS = "random"

# The text models of the paper, with the pooling each was trained for (sentence-transformers
# models were trained with mean pooling; the others follow the paper's CLS default).
_KNOWN_TEXT_MODELS: dict[str, str | None] = {
    "bert-base-cased": "cls",
    "bert-base-uncased": "cls",
    "google/electra-base-discriminator": "cls",
    "roberta-base": "cls",
    "xlm-roberta-base": "cls",
    "sentence-transformers/all-MiniLM-L6-v2": "mean",
    "sentence-transformers/all-mpnet-base-v2": "mean",
    "openclip:ViT-B-32/openai": None,
}

NAME_HELP = (
    "(timm names: timm.list_models(); hub ids: hf:org/name; "
    "local folders: a path holding config.json)"
)
_OPENCLIP_HELP = "(open_clip names: open_clip.list_models(); write openclip:ARCH/TAG)"

# Files any transformers tokenizer is saved with; a folder with none of them has no tokenizer
# (transformers 5 would silently build an empty-vocabulary one instead of failing).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def known_model_names() -> list[str]:
    """Give the text model names known from the paper (used for suggestions)."""
    return list(_KNOWN_TEXT_MODELS)


@dataclass(frozen=True)
class _Request:
    """The options of one ``resolve_model`` call, validated, handed to a prefix resolver."""

    name: str
    weights: str | None
    pooling: str | None
    max_length: int | None
    precision: str
    seed: int
    revision: str | None


def resolve_model(
    name: str,
    *,
    weights: str | None = None,
    pooling: str | None = None,
    max_length: int | None = None,
    precision: str = "fp32",
    seed: int = 0,
    revision: str | None = None,
) -> ModelSpec:
    """Give the spec a model name stands for, without building the model.

    Args:
        name: ``timm:ARCH[.TAG]``, ``openclip:ARCH/TAG``, ``hf:ID``, a bare timm name, a bare hub
            id, or a local folder holding config.json.
        weights: None (pretrained), ``"random"`` (seeded random init) or a local weights file.
        pooling: text pooling, ``cls``, ``mean`` or ``last``; None picks the model's default.
        max_length: text truncation in tokens; None uses the tokenizer's limit (at most 512).
        precision: ``fp32``, ``bf16`` or ``fp16``.
        seed: seed of the random initialisation.
        revision: hub revision of a transformers hub id.

    Raises:
        UsageError: unknown name (with close matches), bad option, missing file.
    """
    name = str(name).strip()  # a pathlib.Path to a folder is fine too
    if not name:
        raise UsageError("empty model name: give a timm name, openclip:ARCH/TAG, a hub id or a folder")
    check_model_options(pooling=pooling, max_length=max_length, precision=precision)
    request = _Request(
        name=name,
        weights=_normalise_weights(weights),
        pooling=pooling,
        max_length=None if max_length is None else int(max_length),
        precision=precision,
        seed=int(seed),
        revision=revision or None,
    )
    for prefix, resolver in _PREFIX_RESOLVERS.items():
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            if not rest:
                raise UsageError(f"model name {name!r} has nothing after {prefix!r}")
            return resolver(rest, request)
    return _resolve_bare(name, request)


def check_model_options(*, pooling: str | None, max_length: int | None, precision: str | None) -> None:
    """Raise a UsageError for a pooling, max length or precision that no model accepts (None: not given)."""
    if precision is not None:
        check_precision_name(precision)
    if pooling is not None and pooling not in POOLINGS:
        raise UsageError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
    if max_length is not None and (isinstance(max_length, bool) or int(max_length) < 1):
        raise UsageError(f"--max-length must be a positive number of tokens, not {max_length!r}")


def _normalise_weights(weights: str | None) -> str | None:
    """Give None, ``"random"``, or the absolute path of an existing weights file."""
    if weights is None or weights == RANDOM_WEIGHTS:
        return weights
    path = Path(weights).expanduser()
    if not path.exists():
        raise UsageError(f"weights file {weights!r} not found (--weights takes a file or 'random')")
    if not path.is_file():
        raise UsageError(
            f"weights {weights!r} is a folder: --weights takes one file; "
            "for a transformers model pass the folder itself as the model name"
        )
    return str(path.resolve())


def _resolve_bare(name: str, request: _Request) -> ModelSpec:
    """Give the spec of a name without prefix: a local folder, a timm name, or a hub id."""
    if _looks_like_path(name) or Path(name).expanduser().exists():
        return _resolve_transformers(name, request)
    arch = name.split(".", 1)[0]
    # timm archs are lower-case with no dashes: other names (bert-base-cased) skip importing timm.
    if "/" not in name and "-" not in arch and arch == arch.lower():
        import timm

        if timm.is_model(arch):
            return _resolve_timm(name, request)
        # A snake_case name close to a timm arch is a typo, not a hub id that would only fail
        # later with a less helpful download error.
        if "_" in arch:
            close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.8)
            if close:
                raise _unknown_model(name, close)
    return _resolve_transformers(name, request)


def _looks_like_path(name: str) -> bool:
    """Tell whether a name is written as a file-system path rather than a hub id."""
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or name in (".", "..")
        or name.count("/") > 1
        or "\\" in name
    )


def _unknown_model(name: str, close: Sequence[str], help_text: str = NAME_HELP) -> UsageError:
    """Give the one-line error for an unknown name, with close matches when there are some."""
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    return UsageError(f"unknown model {name!r}{hint} {help_text}")


def _reject_revision(request: _Request, what: str) -> None:
    """Raise if ``--revision`` was given for a model that has no hub revision."""
    if request.revision is not None:
        raise UsageError(f"--revision applies to Hugging Face hub ids, not to {what}")


def _resolve_timm(rest: str, request: _Request) -> ModelSpec:
    """Give the spec of a timm ``ARCH[.TAG]``, with the default pretrained tag made explicit."""
    import timm
    from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg

    arch, _, tag = rest.partition(".")
    if not timm.is_model(arch):
        candidates = timm.list_models() + known_model_names()
        raise _unknown_model(rest, difflib.get_close_matches(arch, candidates, n=5, cutoff=0.6))
    _reject_revision(request, f"timm model {arch!r} (pin weights with a tag: ARCH.TAG)")
    try:
        cfg = get_pretrained_cfg(rest)
    except RuntimeError:
        tags = [t.split(".", 1)[1] for t in get_arch_pretrained_cfgs(arch) if "." in t]
        raise UsageError(
            f"unknown pretrained tag {tag!r} for timm {arch!r}; known tags: {', '.join(tags) or 'none'}"
        ) from None

    if request.weights is None and cfg is None:
        raise UsageError(f"timm {arch!r} has no pretrained weights: use --weights random or --weights FILE")
    # Bare arch and arch.default_tag must share one cache key, hence the tag timm resolved.
    pretrained = f"{arch}.{cfg.tag}" if cfg is not None and cfg.tag else arch
    return _arch_spec("timm", arch, pretrained, request)


def _resolve_openclip(rest: str, request: _Request) -> ModelSpec:
    """Give the spec of an open_clip ``ARCH/TAG`` (the tag may be left out with local/random weights)."""
    import open_clip

    arch, _, tag = rest.partition("/")
    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5, cutoff=0.6)
        raise _unknown_model(f"openclip:{rest}", close, _OPENCLIP_HELP)
    _reject_revision(request, f"open_clip model {arch!r} (pin weights with openclip:ARCH/TAG)")
    tags = list(open_clip.list_pretrained_tags_by_model(arch))
    known = ", ".join(tags) or "none (use --weights random or --weights FILE)"
    if tag and tag not in tags:
        raise UsageError(f"unknown pretrained tag {tag!r} for open_clip {arch!r}; known tags: {known}")

    if request.weights is None and not tag:
        raise UsageError(f"openclip:{arch} needs a pretrained tag, openclip:{arch}/TAG; known tags: {known}")
    return _arch_spec("openclip", arch, f"{arch}/{tag}", request)


def _arch_spec(backend: str, arch: str, pretrained: str, request: _Request) -> ModelSpec:
    """Give the spec of an image/CLIP architecture: ``pretrained`` names its pretrained weights.

    With random or local weights the source is the bare arch: a pretrained tag only chooses
    weights that ``--weights`` replaces, so it must not split the cache key.
    """
    local = request.weights not in (None, RANDOM_WEIGHTS)
    return ModelSpec(
        name=request.name,
        backend=backend,  # type: ignore[arg-type]
        source=pretrained if request.weights is None else arch,
        weights=request.weights,
        weights_fingerprint=file_sha256(request.weights) if local else None,  # type: ignore[arg-type]
        precision=request.precision,  # type: ignore[arg-type]
        seed=request.seed,
    )


def _resolve_transformers(rest: str, request: _Request) -> ModelSpec:
    """Give the spec of a transformers hub id or local folder holding config.json."""
    if request.weights not in (None, RANDOM_WEIGHTS):
        raise UsageError(
            f"--weights FILE applies to timm and open_clip models; for transformers model {rest!r} "
            "pass a local folder holding config.json and the weights as the model name instead"
        )
    folder = Path(rest).expanduser()
    if _looks_like_path(rest) or folder.exists():
        return _resolve_transformers_folder(folder, request)
    if not _HUB_ID.match(rest):
        raise _unknown_model(rest, [])
    pooling = request.pooling or _hub_default_pooling(rest)
    return ModelSpec(
        name=request.name,
        backend="transformers",
        source=rest,
        weights=request.weights,
        revision=request.revision,
        pooling=pooling,
        max_length=request.max_length,
        precision=request.precision,  # type: ignore[arg-type]
        seed=request.seed,
    )


def _resolve_transformers_folder(folder: Path, request: _Request) -> ModelSpec:
    """Give the spec of a local transformers folder, keyed by the hash of its content."""
    if not folder.exists():
        raise UsageError(f"model folder '{folder}' not found")
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise UsageError(
            f"'{folder}' is not a transformers model folder: it holds no config.json "
            "(for timm weights use timm:ARCH --weights FILE)"
        )
    _reject_revision(request, f"a local folder ('{folder}'), identified by its content")
    vision_only = _is_vision_only_folder(folder)
    pooling = None if vision_only else (request.pooling or _folder_default_pooling(folder))
    return ModelSpec(
        name=request.name,
        backend="transformers",
        source=str(folder.resolve()),
        weights=request.weights,
        weights_fingerprint=tree_fingerprint(folder),
        pooling=pooling,
        max_length=None if vision_only else request.max_length,
        precision=request.precision,  # type: ignore[arg-type]
        seed=request.seed,
    )


def _is_vision_only_folder(folder: Path) -> bool:
    """Tell whether a folder holds an image processor and no tokenizer (text options do not apply)."""
    has_tokenizer = any((folder / f).is_file() for f in TOKENIZER_FILES)
    return (folder / "preprocessor_config.json").is_file() and not has_tokenizer


# sentence-transformers pooling modes (its ``pooling_mode``; before v6 one ``pooling_mode_*`` flag each) that
# stitchcli computes, and the --pooling each is; the others (max, weightedmean, ...) are refused, not replaced.
_SENTENCE_TRANSFORMERS_POOLING = {"cls": "cls", "mean": "mean", "lasttoken": "last"}
_LEGACY_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def _folder_default_pooling(folder: Path) -> str:
    """Give the pooling a sentence-transformers folder was trained with, else the one its config calls for.

    Without a sentence-transformers Pooling module: ``mean`` for an encoder-decoder or its encoder saved alone
    (T5's encoder puts no token first that stands for the text), ``last`` for a causal language model (its first token sees no
    other) and for a dual encoder such as CLIP (its causal text tower pools its end-of-text token; its final text
    embedding is the model's own, the pooling applies to ``--layers``), else the paper's ``cls``.

    Raises:
        UsageError: the folder pools in a way stitchcli does not compute (max, weighted mean, several modes).
    """
    modes = _sentence_transformers_pooling(folder)
    if modes is not None:
        if len(modes) == 1 and modes[0] in _SENTENCE_TRANSFORMERS_POOLING:
            return _SENTENCE_TRANSFORMERS_POOLING[modes[0]]
        raise UsageError(
            f"model folder '{folder}' pools its tokens with sentence-transformers' {' + '.join(modes) or 'no mode'}, "
            "which stitchcli does not compute: give --pooling cls, mean or last"
        )
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return "cls"
    if not isinstance(config, dict):
        return "cls"
    architectures = [str(a) for a in config.get("architectures") or () if isinstance(a, str)]
    if config.get("is_encoder_decoder") or any(a.endswith("EncoderModel") for a in architectures):  # T5EncoderModel
        return "mean"
    if config.get("is_decoder") or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "last"
    if isinstance(config.get("text_config"), dict) and isinstance(config.get("vision_config"), dict):
        return "last"  # a dual encoder (CLIP): its text tower is causal, and pools its last (end-of-text) token
    return "cls"


def _sentence_transformers_pooling(folder: Path) -> list[str] | None:
    """Give the pooling modes of a sentence-transformers folder's Pooling module, None if it has none."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
        for module in modules:
            if str(module.get("type", "")).endswith("Pooling"):
                config = json.loads((folder / module.get("path", "") / "config.json").read_text())
                mode = config.get("pooling_mode")
                if mode is not None:  # sentence-transformers 6 and later: a mode or a list of modes
                    return [str(m) for m in mode] if isinstance(mode, (list, tuple)) else [str(mode)]
                return [name for flag, name in _LEGACY_POOLING_FLAGS.items() if config.get(flag)]
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # not a sentence-transformers folder (or an unreadable one)
    return None


def _hub_default_pooling(repo_id: str) -> str:
    """Give the default pooling of a hub id from its name alone.

    The hub's modules.json is not consulted, even from the local cache: the answer would then
    depend on what happens to be cached, and the same name would change cache key after its
    first download.
    """
    known = _KNOWN_TEXT_MODELS.get(repo_id)
    if known is not None:
        return known
    return "mean" if repo_id.startswith("sentence-transformers/") else "cls"


_PREFIX_RESOLVERS: dict[str, Callable[[str, _Request], ModelSpec]] = {
    "timm:": _resolve_timm,
    "openclip:": _resolve_openclip,
    "hf:": _resolve_transformers,
}
