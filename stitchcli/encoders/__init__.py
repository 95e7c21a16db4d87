"""Model names -> :class:`ModelSpec` (cheap) -> :class:`Encoder` (heavy), through one prefix registry.

``resolve_model`` turns what the user typed into a spec without building a model, so a cache hit
costs no model work; ``build_encoder`` loads the model the spec describes. Each backend lives in its
own module (``timm_backend``, ``openclip_backend``, ``transformers_backend``), imported only when a
model of that kind is built.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib
import json
import re
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from stitchcli.device import check_precision_name, is_out_of_memory
from stitchcli.encoders.base import Encoder, ModelSpec
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

__all__ = [
    "Encoder",
    "ModelSpec",
    "build_encoder",
    "known_model_names",
    "resolve_model",
]

POOLINGS = ("cls", "mean")
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

_NAME_HELP = (
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
        pooling: text pooling, ``cls`` or ``mean``; None picks the model's default.
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


def _unknown_model(name: str, close: Sequence[str], help_text: str = _NAME_HELP) -> UsageError:
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


def _folder_default_pooling(folder: Path) -> str:
    """Give the pooling a sentence-transformers folder was trained with, else ``cls``."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
        for module in modules:
            if str(module.get("type", "")).endswith("Pooling"):
                config = json.loads((folder / module.get("path", "") / "config.json").read_text())
                if config.get("pooling_mode_mean_tokens"):
                    return "mean"
                if config.get("pooling_mode_cls_token"):
                    return "cls"
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # not a sentence-transformers folder (or an unreadable one): the paper's default
    return "cls"


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
            close = [n for n in difflib.get_close_matches(spec.source, known_model_names(), n=3, cutoff=0.85) if n != spec.source]
            hint = f" (if {spec.source!r} is a typo: did you mean {', '.join(close)}?)" if close else ""
            raise WorkError(
                f"could not download {spec.source!r} from the Hugging Face hub (no network?){hint}; "
                f"{OFFLINE_MODEL_ALTERNATIVES}"
            ) from exc
        missing = _missing_on_hub(exc)
        if missing:
            raise UsageError(f"{missing} for model {spec.source!r} on the Hugging Face hub {_NAME_HELP}") from exc
        if isinstance(exc, OSError):
            raise WorkError(f"could not load model {spec.name!r}: {short_reason(exc)}") from exc
        raise


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


class UnreadableWeights(ValueError):
    """A weights file that is neither safetensors nor a torch checkpoint of plain tensors; the message says why."""


def read_weights_file(path: Path) -> Any:
    """Give what a local weights file holds, read without running any of its code: safetensors, or a torch
    checkpoint through ``torch.load(weights_only=True)`` (the extension picks which is tried first).

    Raises:
        UnreadableWeights: neither; a pickle that would build arbitrary Python objects (and so could run code)
            is refused as such, never unpickled.
    """
    readers = [_read_safetensors_weights, _read_torch_weights]
    if path.suffix != ".safetensors":
        readers.reverse()
    errors: list[BaseException] = []
    for reader in readers:
        try:
            return reader(path)
        except Exception as exc:  # any parse failure means "not this format"
            errors.append(exc)
    if any("weights only load failed" in str(exc).lower() for exc in errors):
        raise UnreadableWeights(
            "it is a pickle that would build Python objects beyond tensors (and so could run code): torch.load with "
            "weights_only=True refused it, and stitchcli loads weights no other way; save the state dict as safetensors"
        )
    raise UnreadableWeights(short_reason(errors[0]))


def _read_safetensors_weights(path: Path) -> Any:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def _read_torch_weights(path: Path) -> Any:
    import warnings

    import torch

    with warnings.catch_warnings():  # e.g. torch's note on a pickle protocol: the refusal, if any, says enough
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """Give the first line of an exception's message, shortened to ``limit`` characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) < 12:  # a bare code such as pickle's "105" says nothing without the exception's name
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Shared by the backends.


class TorchEncoder(Encoder):
    """An encoder around a torch model: the backends give the forward pass, this gives the rest.

    Pickling drops the model, so DataLoader workers that receive ``encoder.collate`` get only the
    collator (a transform or tokenizer), never a copy of the weights.
    """

    def __init__(
        self,
        spec: ModelSpec,
        modality: str,
        model: Any,
        collator: Callable[[Sequence[Any]], Any],
        device: "torch.device",
        preprocessing: dict[str, Any],
    ) -> None:
        self.spec = spec
        self.modality = modality
        self._model = model
        self._collator = collator
        self._device = device
        self._preprocessing = preprocessing
        # bf16 on the CPU, for models without batch norm (transformers): the weights themselves are cast once;
        # CPU autocast would cast every weight again on every batch. Attention: on a CPU with AMX the fused
        # (flash) kernel is the fastest in bf16 (benchmarks/bf16_attention.py); on AVX-512 BF16 without AMX
        # it was no faster in bf16 than in fp32, while plain matmul attention was (2.5x fp32, against 2.1x
        # under autocast), so there timm models use matmul attention. Batch-norm models keep autocast: cast whole,
        # EfficientNet-Lite0 lost too much (mean cosine to fp32 0.9933, against 0.9989 under autocast; MiniLM
        # cast whole: 0.99996). docs/PERFORMANCE.md. Inputs are cast in ``encode``; GPUs keep autocast.
        self._weights_dtype: Any = None
        if device.type == "cpu" and spec.precision == "bf16" and model is not None and not _has_batch_norm(model):
            import torch

            self._weights_dtype = torch.bfloat16
            self._model = cast_to_bf16_for_cpu(model)

    def collate(self, inputs: Sequence[Any]) -> Any:
        """Give the CPU batch the collator makes of raw inputs."""
        return self._collator(inputs)

    @property
    def collates_each_input_alone(self) -> bool:
        """Whether a batch's collation is its inputs' collations joined (a per-image transform), so that parts
        of a batch may be collated apart; an image processor that pads to the batch's largest image is not."""
        return isinstance(self._collator, ImageCollator)

    def encode(self, batch: Any) -> "torch.Tensor":
        """Give float32 CPU embeddings of one collated batch, shape (batch, dim)."""
        import torch

        from stitchcli.device import autocast

        if self._model is None:
            raise RuntimeError("this encoder was unpickled without its model: encode in the main process")
        batch = self.model_input(batch)
        if self._weights_dtype is not None:
            context: Any = contextlib.nullcontext()
            batch = _cast_floats(batch, self._weights_dtype)
        else:
            context = autocast(self._device, self.spec.precision)
        with torch.inference_mode(), context:
            out = self._forward_compiled(batch) if self.compiled else self.forward(batch)
        return out.float().cpu()

    def compile(self) -> None:
        """Compile the model with torch.compile (inductor), from its first batch on.

        On the CPU the weights are frozen into the graph (inductor's ``freezing``), which lets it pre-pack
        them for the CPU's matmul kernels. Image batches shorter than the first (the last of a split) are
        padded to its size, so one graph serves them all instead of a second compilation. If compiling
        fails (no C compiler, an unsupported model), the model runs uncompiled and ``compile_error`` says why.
        """
        import logging

        import torch

        # torch logs a CUDA_HOME warning from its C++ build helper on machines without CUDA: not ours to show.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        options = {"freezing": True} if self._device.type == "cpu" else None
        self._eager_model = self._model
        self._model = torch.compile(self._model, options=options)
        self._compiled_rows = 0
        self.compile_error: str | None = None

    @property
    def compiled(self) -> bool:
        """Whether the model runs compiled (``compile`` was called and compiling did not fail)."""
        return getattr(self, "_eager_model", None) is not None and self._model is not self._eager_model

    def _forward_compiled(self, batch: Any) -> "torch.Tensor":
        import torch

        rows = int(batch.shape[0]) if isinstance(batch, torch.Tensor) else 0
        if rows and self._compiled_rows and rows < self._compiled_rows:
            pad = batch.new_zeros((self._compiled_rows - rows, *batch.shape[1:]))
            return self._forward_compiled(torch.cat([batch, pad]))[:rows]
        try:
            out = self.forward(batch)
        except Exception as exc:  # compilation failed: run the same batch uncompiled from now on
            if is_out_of_memory(exc):
                self._compiled_rows = 0  # the caller retries smaller slices: do not pad them back up
                raise
            if self._compiled_rows:
                raise
            self.compile_error = short_reason(exc)
            self._model = self._eager_model
            return self.forward(batch)
        self._compiled_rows = self._compiled_rows or rows
        return out

    def model_input(self, batch: Any) -> Any:
        """Give a collated batch as the model takes it: on the device, images as normalised floats."""
        batch = _to_device(batch, self._device)
        finish = getattr(self._collator, "finish", None)
        return finish(batch) if finish is not None else batch

    @abstractmethod
    def forward(self, batch: Any) -> "torch.Tensor":
        """Give the (batch, dim) embeddings of a batch already on the device."""

    def preprocessing(self) -> dict[str, Any]:
        """Give a JSON-ready description of the preprocessing."""
        return dict(self._preprocessing)

    @property
    def device(self) -> "torch.device":
        """The device the model runs on."""
        return self._device

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model"] = None
        state.pop("_eager_model", None)
        return state


def _has_batch_norm(model: Any) -> bool:
    import torch

    return any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules())


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 tiles (Intel Sapphire Rapids and later), as Linux reports its flags
    (not Linux: no way to tell here, so no)."""
    from stitchcli.device import cpu_flags_line

    return "amx_bf16" in cpu_flags_line().split()


def cast_to_bf16_for_cpu(model: Any) -> Any:
    """Give ``model`` as stitchcli runs it in bf16 on the CPU: its weights cast to bf16, and timm attention
    layers on matmul attention unless this CPU has AMX (see ``TorchEncoder``)."""
    import torch

    model = model.to(torch.bfloat16)
    if not cpu_has_amx():
        prefer_matmul_attention(model)
    return model


def prefer_matmul_attention(model: Any) -> None:
    """Make timm attention layers use plain matmul attention instead of the fused kernel (see ``TorchEncoder``)."""
    for module in model.modules():
        if isinstance(getattr(module, "fused_attn", None), bool):
            module.fused_attn = False


def _cast_floats(batch: Any, dtype: "torch.dtype") -> Any:
    """Give the batch with its floating-point tensors cast to ``dtype`` (token ids and masks stay as they are)."""
    if isinstance(batch, dict):
        return {k: _cast_floats(v, dtype) for k, v in batch.items()}
    if hasattr(batch, "is_floating_point") and batch.is_floating_point():
        return batch.to(dtype)
    return batch


def _to_device(batch: Any, device: "torch.device") -> Any:
    """Give the batch (a tensor or a dict of tensors) moved to the device."""
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if hasattr(batch, "to"):
        return batch.to(device, non_blocking=True)
    return batch


class ImageCollator:
    """Turns PIL images into one batch with an eval transform; picklable, model-free.

    When the transform is a torchvision ``Compose`` that ends in ``ToTensor`` (or timm's ``MaybeToTensor``)
    and at most one ``Normalize``, the collator runs only the steps before them (decode, resize, crop) and
    gives a uint8 (batch, height, width, channels) tensor: a quarter of float32's bytes to pass from a
    loader worker, and less work in the worker, which shares the CPU with the model. ``finish`` then does
    ``ToTensor`` and ``Normalize`` on the whole batch, with the same arithmetic, so the values are the same
    as the transform's, bit for bit. Any other transform is applied whole, per image, and ``finish`` gives
    its batch back unchanged.
    """

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        self.transform = transform
        self._image_steps, self._mean, self._std = _split_to_tensor(transform)

    def __call__(self, images: Sequence[Any]) -> "torch.Tensor":
        import numpy as np
        import torch
        from PIL import Image

        rgb = [(image if isinstance(image, Image.Image) else Image.fromarray(image)).convert("RGB") for image in images]
        if self._image_steps is not None:
            arrays = [np.asarray(_apply(self._image_steps, image)) for image in rgb]
            if all(a.shape == arrays[0].shape and a.ndim == 3 for a in arrays):
                return torch.from_numpy(np.stack(arrays))
        return torch.stack([self.transform(image) for image in rgb])

    def finish(self, batch: "torch.Tensor") -> "torch.Tensor":
        """Give the float (batch, channels, height, width) model input of a collated batch (on its device)."""
        import torch

        if batch.dtype != torch.uint8:
            return batch  # the transform was applied whole
        # As torchvision's to_tensor: channels first, contiguous, float, / 255; then normalize: - mean, / std.
        x = batch.permute(0, 3, 1, 2).contiguous().to(torch.get_default_dtype()).div(255)
        if self._mean is not None:
            mean = torch.as_tensor(self._mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.as_tensor(self._std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = x.sub_(mean).div_(std)
        return x


def _apply(steps: Sequence[Callable[[Any], Any]], image: Any) -> Any:
    for step in steps:
        image = step(image)
    return image


def _split_to_tensor(transform: Any) -> tuple[list[Any] | None, Any, Any]:
    """Give (steps before ToTensor, Normalize mean, std) of a Compose that ends in ToTensor [+ Normalize], else Nones."""
    steps = list(getattr(transform, "transforms", None) or ())
    names = [type(step).__name__ for step in steps]
    at = next((i for i, name in enumerate(names) if name in ("ToTensor", "MaybeToTensor")), None)
    if at is None:
        return None, None, None
    rest = steps[at + 1 :]
    if not rest:
        return steps[:at], None, None
    if len(rest) == 1 and type(rest[0]).__name__ == "Normalize" and not getattr(rest[0], "inplace", False):
        return steps[:at], [float(v) for v in rest[0].mean], [float(v) for v in rest[0].std]
    return None, None, None
