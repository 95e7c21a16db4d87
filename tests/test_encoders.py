"""Model names -> specs -> encoders, with tiny random-initialised models only (no downloads)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from stitchcli.encoders import build_encoder, known_model_names, resolve_model
from stitchcli.encoders.base import ModelSpec
from stitchcli.errors import UsageError, WorkError

CPU = torch.device("cpu")
TINY_CLIP = "stitchcli-tiny-clip"  # registered by the tiny_clip fixture in conftest.py
WORDS = "the a cat dog sat on mat ran fast big small red green house tree".split()


def _images(n: int = 3) -> list[Image.Image]:
    """Give n small RGB images of different colours and sizes."""
    colours = [(255, 0, 0), (0, 128, 255), (20, 200, 40), (90, 90, 90)]
    return [Image.new("RGB", (40 + 7 * i, 30 + 5 * i), colours[i % len(colours)]) for i in range(n)]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT (hidden 32, 2 layers) with its tokenizer, saved like a hub folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    config = BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


def _save_tiny_vit(folder: Path, *, pooler: bool) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    ViTModel(config, add_pooling_layer=pooler).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder




def _single_line_usage_error(excinfo: pytest.ExceptionInfo[UsageError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ resolve_model: timm


def test_timm_bare_prefixed_and_default_tag_share_one_key() -> None:
    bare = resolve_model("test_vit")
    prefixed = resolve_model("timm:test_vit")
    tagged = resolve_model("timm:test_vit.r160_in1k")
    assert bare.backend == "timm"
    assert bare.source == "test_vit.r160_in1k"  # the default tag is made explicit
    assert bare.key() == prefixed.key() == tagged.key()
    assert bare.pooling is None and bare.max_length is None


def test_timm_random_weights_drop_the_tag_and_key_on_the_seed() -> None:
    plain = resolve_model("test_vit", weights="random")
    tagged = resolve_model("timm:test_vit.r160_in1k", weights="random")
    assert plain.source == "test_vit"
    assert plain.key() == tagged.key()
    assert resolve_model("test_vit", weights="random", seed=1).key() != plain.key()
    # the seed is not identity for pretrained weights
    assert resolve_model("test_vit", seed=1).key() == resolve_model("test_vit").key()


@pytest.mark.parametrize("name", ["vit_bsae_patch16_224", "timm:vit_bsae_patch16_224"])
def test_timm_typo_suggests_the_right_name(name: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        resolve_model(name)
    message = _single_line_usage_error(excinfo)
    assert "did you mean" in message
    assert "vit_base_patch16_224," in message
    assert "hf:org/name" in message


def test_unknown_timm_tag_lists_the_known_tags() -> None:
    with pytest.raises(UsageError) as excinfo:
        resolve_model("timm:test_vit.no_such_tag")
    assert "r160_in1k" in _single_line_usage_error(excinfo)


def test_timm_ignores_pooling_and_rejects_revision() -> None:
    assert resolve_model("test_vit", pooling="mean", max_length=12).pooling is None
    with pytest.raises(UsageError, match="--revision"):
        resolve_model("test_vit", revision="main")


# ------------------------------------------------------------------ resolve_model: hub ids


@pytest.mark.parametrize(
    ("name", "source", "pooling"),
    [
        ("bert-base-cased", "bert-base-cased", "cls"),
        ("hf:roberta-base", "roberta-base", "cls"),
        ("google/electra-base-discriminator", "google/electra-base-discriminator", "cls"),
        ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "mean"),
        ("hf:some-org/some_model", "some-org/some_model", "cls"),
    ],
)
def test_hub_ids_resolve_to_transformers(name: str, source: str, pooling: str) -> None:
    spec = resolve_model(name, revision="v1")
    assert (spec.backend, spec.source, spec.pooling, spec.revision) == ("transformers", source, pooling, "v1")
    assert spec.weights_fingerprint is None


def test_hub_id_with_a_weights_file_is_a_usage_error(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(UsageError, match="local folder"):
        resolve_model("bert-base-cased", weights=str(weights))
    assert resolve_model("bert-base-cased", weights="random").weights == "random"


def test_known_model_names_cover_the_paper_aliases() -> None:
    names = known_model_names()
    assert "sentence-transformers/all-mpnet-base-v2" in names
    assert "openclip:ViT-B-32/openai" in names
    assert len(names) == 8


# ------------------------------------------------------------------ resolve_model: open_clip


def test_openclip_names() -> None:
    spec = resolve_model("openclip:ViT-B-32/openai", pooling="mean")
    assert (spec.backend, spec.source, spec.pooling) == ("openclip", "ViT-B-32/openai", None)
    assert resolve_model("openclip:ViT-B-32", weights="random").source == "ViT-B-32"


def test_openclip_unknown_arch_suggests_close_names() -> None:
    with pytest.raises(UsageError) as excinfo:
        resolve_model("openclip:ViT-B-23/openai")
    assert "ViT-B-32" in _single_line_usage_error(excinfo)


def test_openclip_unknown_or_missing_tag_lists_known_tags() -> None:
    with pytest.raises(UsageError) as excinfo:
        resolve_model("openclip:ViT-B-32/opnai")
    assert "openai" in _single_line_usage_error(excinfo)
    with pytest.raises(UsageError, match="needs a pretrained tag.*openai"):
        resolve_model("openclip:ViT-B-32")


# ------------------------------------------------------------------ resolve_model: local folders


def _sentence_transformers_folder(root: Path, *, mean: bool) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (root / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": not mean, "pooling_mode_mean_tokens": mean})
    )
    return root


def test_local_folder_pooling_follows_sentence_transformers_config(tmp_path: Path) -> None:
    mean_folder = _sentence_transformers_folder(tmp_path / "st-mean", mean=True)
    cls_folder = _sentence_transformers_folder(tmp_path / "st-cls", mean=False)
    spec = resolve_model(str(mean_folder))
    assert spec.backend == "transformers"
    assert spec.source == str(mean_folder.resolve())
    assert spec.pooling == "mean"
    assert resolve_model(str(cls_folder)).pooling == "cls"
    assert resolve_model(f"hf:{mean_folder}", pooling="cls").pooling == "cls"  # explicit wins


def test_local_folder_without_sentence_transformers_config_defaults_to_cls(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)).pooling == "cls"


def test_local_folder_key_follows_its_content(tmp_path: Path) -> None:
    folder = _sentence_transformers_folder(tmp_path / "m", mean=True)
    before = resolve_model(str(folder))
    (folder / "model.safetensors").write_bytes(b"new weights")
    after = resolve_model(str(folder))
    assert before.weights_fingerprint and after.weights_fingerprint
    assert before.key() != after.key()


def test_path_without_config_json_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(UsageError, match="not found"):
        resolve_model(str(tmp_path / "missing" / "model"))


# ------------------------------------------------------------------ resolve_model: options


def test_weights_file_fingerprint_changes_the_key(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"first")
    first = resolve_model("timm:test_resnet", weights=str(weights))
    assert first.weights == str(weights.resolve())
    assert first.source == "test_resnet"
    weights.write_bytes(b"second, longer")
    second = resolve_model("timm:test_resnet", weights=str(weights))
    assert first.weights_fingerprint != second.weights_fingerprint
    assert first.key() != second.key()


def test_missing_weights_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        resolve_model("timm:test_resnet", weights=str(tmp_path / "nope.safetensors"))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"pooling": "max"}, "pooling"),
        ({"precision": "fp64"}, "precision"),
        ({"max_length": 0}, "max-length"),
    ],
)
def test_bad_options_are_usage_errors(options: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        resolve_model("bert-base-cased", **options)


# ------------------------------------------------------------------ build_encoder: timm


def test_timm_random_weights_are_seeded() -> None:
    images = _images()
    first = build_encoder(resolve_model("test_resnet", weights="random", seed=3), "image", CPU)
    again = build_encoder(resolve_model("test_resnet", weights="random", seed=3), "image", CPU)
    other = build_encoder(resolve_model("test_resnet", weights="random", seed=4), "image", CPU)
    batch = first.collate(images)
    a, b, c = first.encode(batch), again.encode(batch), other.encode(batch)
    assert a.shape == (3, 96) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert first.preprocessing()["data_config"]["input_size"] == [3, 160, 160]


def test_encoder_pickles_without_its_model() -> None:
    encoder = build_encoder(resolve_model("test_resnet", weights="random"), "image", CPU)
    collate = pickle.loads(pickle.dumps(encoder.collate))  # what a DataLoader worker receives
    assert torch.equal(collate(_images(2)), encoder.collate(_images(2)))
    assert pickle.loads(pickle.dumps(encoder))._model is None


def test_timm_weights_file_loads_every_backbone_key(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(11)
    source = timm.create_model("test_resnet", pretrained=False).eval()  # with its classifier
    state = source.state_dict()
    safetensors_file = tmp_path / "w.safetensors"
    save_file(state, str(safetensors_file))
    torch_file = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, torch_file)

    images = _images(2)
    for path in (safetensors_file, torch_file):
        encoder = build_encoder(resolve_model("test_resnet", weights=str(path)), "image", CPU)
        batch = encoder.collate(images)
        with torch.no_grad():
            pixels = encoder.model_input(batch)
            expected = source.forward_head(source.forward_features(pixels), pre_logits=True)
        torch.testing.assert_close(encoder.encode(batch), expected)


def test_garbage_weights_file_is_a_usage_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 definitely not weights" * 10)
    with pytest.raises(UsageError) as excinfo:
        build_encoder(resolve_model("test_resnet", weights=str(garbage)), "image", CPU)
    message = _single_line_usage_error(excinfo)
    assert message.startswith(f"cannot read weights file '{garbage.resolve()}'")
    assert "timm test_resnet" in message


def test_weights_of_another_arch_are_a_usage_error(tmp_path: Path) -> None:
    import timm

    other = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), other)
    with pytest.raises(UsageError, match="missing keys.*unexpected keys"):
        build_encoder(resolve_model("test_resnet", weights=str(other)), "image", CPU)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], not_a_dict)
    with pytest.raises(UsageError, match="not a state dict"):
        build_encoder(resolve_model("test_resnet", weights=str(not_a_dict)), "image", CPU)


def test_weights_file_changed_after_resolving_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"before")
    spec = resolve_model("test_resnet", weights=str(weights))
    weights.write_bytes(b"after!")
    with pytest.raises(UsageError, match="changed"):
        build_encoder(spec, "image", CPU)


def test_unsupported_modality_precision_or_backend_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="not text"):
        build_encoder(resolve_model("test_resnet", weights="random"), "text", CPU)
    with pytest.raises(UsageError, match="fp16"):
        build_encoder(resolve_model("test_resnet", weights="random", precision="fp16"), "image", CPU)
    array = ModelSpec(name="imported", backend="array", source="/tmp/x.npy")
    with pytest.raises(UsageError, match="from-array"):
        build_encoder(array, "image", CPU)


def test_bf16_autocast_still_returns_float32() -> None:
    encoder = build_encoder(resolve_model("test_resnet", weights="random", precision="bf16"), "image", CPU)
    assert encoder.encode(encoder.collate(_images(2))).dtype == torch.float32


# ------------------------------------------------------------------ build_encoder: transformers


def test_text_pooling_cls_and_mean(bert_folder: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    texts = ["the cat sat on the mat", "a dog ran", "big red house"]
    mean_encoder = build_encoder(resolve_model(str(bert_folder), pooling="mean"), "text", CPU)
    cls_encoder = build_encoder(resolve_model(str(bert_folder), pooling="cls"), "text", CPU)
    batch = mean_encoder.collate(texts)
    mean, cls = mean_encoder.encode(batch), cls_encoder.encode(batch)
    assert mean.shape == cls.shape == (3, 32)
    assert not torch.allclose(mean, cls)
    assert mean_encoder.preprocessing()["max_length"] == 64  # tokenizer has no limit: capped by positions

    # by hand: the masked mean of the token states, padding excluded
    tokenizer = AutoTokenizer.from_pretrained(bert_folder)
    model = AutoModel.from_pretrained(bert_folder).eval()
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state
    for i in range(len(texts)):
        n = int(tokens["attention_mask"][i].sum())
        torch.testing.assert_close(mean[i], hidden[i, :n].mean(dim=0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cls[i], hidden[i, 0], atol=1e-5, rtol=1e-5)
    # padding must not leak into the mean: the short text alone gives the same embedding
    alone = mean_encoder.encode(mean_encoder.collate(["a dog ran"]))
    torch.testing.assert_close(alone[0], mean[1], atol=1e-5, rtol=1e-5)


def test_text_max_length_truncates(bert_folder: Path) -> None:
    encoder = build_encoder(resolve_model(str(bert_folder), max_length=5), "text", CPU)
    batch = encoder.collate(["the cat sat on the big red mat"])
    assert batch["input_ids"].shape == (1, 5)
    assert encoder.preprocessing()["max_length"] == 5


def test_text_random_weights_are_seeded(bert_folder: Path) -> None:
    texts = ["the cat", "a tree"]
    first = build_encoder(resolve_model(str(bert_folder), weights="random", seed=5), "text", CPU)
    again = build_encoder(resolve_model(str(bert_folder), weights="random", seed=5), "text", CPU)
    pretrained = build_encoder(resolve_model(str(bert_folder)), "text", CPU)
    batch = first.collate(texts)
    assert torch.equal(first.encode(batch), again.encode(batch))
    assert not torch.allclose(first.encode(batch), pretrained.encode(batch))


def test_folder_without_tokenizer_is_a_usage_error(tmp_path: Path, bert_folder: Path) -> None:
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((bert_folder / name).read_bytes())
    with pytest.raises(UsageError, match="no tokenizer"):
        build_encoder(resolve_model(str(tmp_path)), "text", CPU)
    with pytest.raises(UsageError, match="no image processor"):
        build_encoder(resolve_model(str(tmp_path)), "image", CPU)


@pytest.mark.parametrize(("pooler", "features"), [(True, "pooler_output"), (False, "cls_token")])
def test_vision_folder_gives_pooled_features(tmp_path: Path, pooler: bool, features: str) -> None:
    folder = _save_tiny_vit(tmp_path / "vit", pooler=pooler)
    spec = resolve_model(str(folder), pooling="mean")
    assert spec.pooling is None  # an image model: text pooling does not apply
    encoder = build_encoder(spec, "image", CPU)
    out = encoder.encode(encoder.collate(_images(3)))
    assert out.shape == (3, 32) and out.dtype == torch.float32
    assert encoder.preprocessing()["features"] == features
    assert not torch.allclose(out[0], out[1])


def test_hub_download_without_network_is_a_work_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WorkError) as excinfo:
        build_encoder(resolve_model("hf:stitchcli-tests/not-a-cached-model"), "text", CPU)
    message = str(excinfo.value)
    assert "could not download 'stitchcli-tests/not-a-cached-model'" in message
    assert "offline alternatives" in message and "\n" not in message


# ------------------------------------------------------------------ build_encoder: open_clip


def test_openclip_image_and_text_towers(tiny_clip: str) -> None:
    spec = resolve_model(f"openclip:{tiny_clip}", weights="random")
    assert spec.source == tiny_clip
    image_encoder = build_encoder(spec, "image", CPU)
    text_encoder = build_encoder(spec, "text", CPU)
    images = image_encoder.encode(image_encoder.collate(_images(3)))
    tokens = text_encoder.collate(["a photo of a cat", "a dog"])
    assert tokens.shape == (2, 16)  # the arch's context length
    texts = text_encoder.encode(tokens)
    assert images.shape == (3, 16) and texts.shape == (2, 16)
    assert text_encoder.preprocessing()["context_length"] == 16
    collate = pickle.loads(pickle.dumps(text_encoder.collate))
    assert torch.equal(collate(["a dog"]), tokens[1:])
    again = build_encoder(spec, "text", CPU)
    assert torch.equal(again.encode(tokens), texts)  # seeded


def test_openclip_arch_without_tags_needs_weights(tiny_clip: str) -> None:
    with pytest.raises(UsageError, match="random"):
        resolve_model(f"openclip:{tiny_clip}")


def test_openclip_garbage_weights_file_is_a_usage_error(tiny_clip: str, tmp_path: Path) -> None:
    garbage = tmp_path / "clip.pt"
    garbage.write_bytes(b"not a checkpoint")
    spec = resolve_model(f"openclip:{tiny_clip}", weights=str(garbage))
    assert spec.weights_fingerprint is not None
    with pytest.raises(UsageError, match="cannot read weights file"):
        build_encoder(spec, "image", CPU)


def test_hub_vision_model_without_network_is_a_work_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    # the image processor loader hides the network cause: the failure must still say "no network"
    with pytest.raises(WorkError, match="offline alternatives"):
        build_encoder(resolve_model("hf:stitchcli-tests/not-a-cached-vit"), "image", CPU)


@pytest.mark.parametrize(("name", "says"), [
    ("nosuch", "'nosuch' is no timm architecture or packaged model (minilm, mpnet, lite0, lite2) either"),
    ("lite2x", "if 'lite2x' is a typo: did you mean lite2?"),
    ("roberta-bse", "did you mean roberta-base?"),
    ("stitchcli-tests/nosuch", None),  # an organisation's id is taken as written
    ("vit_tiny_patch16_224", None),  # a timm name that exists: its weights could not be fetched, no typo
])
def test_a_failed_download_of_a_bare_name_says_it_may_be_a_typo(monkeypatch: pytest.MonkeyPatch, name: str, says: str | None) -> None:
    """Offline, a misspelt name and a real hub id both fail to download: the line says which names it is not."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WorkError, match="no network") as raised:
        build_encoder(resolve_model(name), "image" if "_" in name else "text", CPU)
    message = str(raised.value)
    assert (says in message) if says else ("typo" not in message and "either" not in message)


def _noise_images() -> list[Image.Image]:
    """Give images of varied sizes and modes with noise in them (flat colours would hide rounding)."""
    import numpy as np

    rng = np.random.default_rng(5)
    sizes = [(61, 47), (300, 200), (224, 224), (97, 311)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    return images + [images[1].convert("L"), images[2].convert("RGBA")]


def test_image_batches_cross_as_uint8_and_finish_to_the_transforms_own_values() -> None:
    import open_clip
    import timm
    from torchvision import transforms

    from stitchcli.encoders import ImageCollator

    images = _noise_images()
    model = timm.create_model("test_vit", pretrained=False, num_classes=0)
    timm_transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    clip_transform = open_clip.image_transform(64, is_train=False)
    for transform in (timm_transform, clip_transform):
        collate = ImageCollator(transform)
        batch = collate(images)
        assert batch.dtype == torch.uint8 and batch.shape[-1] == 3  # (batch, height, width, channels)
        expected = torch.stack([transform(image.convert("RGB")) for image in images])
        assert torch.equal(collate.finish(batch), expected)  # bit for bit
        assert torch.equal(pickle.loads(pickle.dumps(collate))(images), batch)

    # A transform that does more after Normalize is applied whole, per image, as before.
    extra = transforms.Compose([*timm_transform.transforms, transforms.Lambda(lambda x: x * 2)])
    collate = ImageCollator(extra)
    batch = collate(images)
    assert batch.dtype == torch.float32
    assert torch.equal(collate.finish(batch), torch.stack([extra(image.convert("RGB")) for image in images]))


@pytest.mark.slow
@pytest.mark.parametrize("amx", [False, True])
def test_bf16_on_the_cpu_casts_the_weights_once_and_uses_matmul_attention_without_amx(monkeypatch, amx) -> None:
    import stitchcli.encoders.torch_encoder

    monkeypatch.setattr(stitchcli.encoders.torch_encoder, "cpu_has_amx", lambda: amx)
    images = _noise_images()[:4]
    full = build_encoder(resolve_model("test_vit", weights="random", seed=2), "image", CPU)
    half = build_encoder(resolve_model("test_vit", weights="random", seed=2, precision="bf16"), "image", CPU)
    assert all(p.dtype == torch.float32 for p in full._model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in half._model.parameters())
    fused = [m.fused_attn for m in half._model.modules() if hasattr(m, "fused_attn")]
    assert fused and all(fused) == amx and (any(fused) or not amx)  # AMX: timm's fused kernel; else matmul attention
    assert all(m.fused_attn for m in full._model.modules() if hasattr(m, "fused_attn"))  # fp32 keeps timm's choice
    batch = full.collate(images)
    a, b = full.encode(batch), half.encode(batch)
    assert b.dtype == torch.float32 and b.shape == a.shape
    cosine = torch.nn.functional.cosine_similarity(a, b)
    assert float(cosine.min()) > 0.999 and not torch.equal(a, b)


@pytest.mark.slow
def test_compiled_encoder_equals_eager_and_pads_a_short_last_batch() -> None:
    images = _noise_images()
    eager = build_encoder(resolve_model("test_vit", weights="random", seed=1), "image", CPU)
    compiled = build_encoder(resolve_model("test_vit", weights="random", seed=1), "image", CPU)
    compiled.compile()
    first, last = compiled.collate(images[:4]), compiled.collate(images[4:])
    torch.testing.assert_close(compiled.encode(first), eager.encode(first), rtol=1e-4, atol=1e-5)
    out = compiled.encode(last)  # 2 rows, padded to the compiled 4 and cut back
    assert out.shape == (2, eager.encode(last).shape[1])
    torch.testing.assert_close(out, eager.encode(last), rtol=1e-4, atol=1e-5)
    assert compiled.compiled and compiled.compile_error is None


def test_amx_is_read_from_the_cpu_flags(monkeypatch, tmp_path) -> None:
    import builtins

    from stitchcli.encoders import cpu_has_amx

    real_open = builtins.open
    for flags, expected in (("fpu avx512_bf16 amx_bf16 amx_tile", True), ("fpu avx512_bf16 amx_tile", False)):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(info if path == "/proc/cpuinfo" else path, *a, **k))
        cpu_has_amx.cache_clear()
        try:
            assert cpu_has_amx() is expected
        finally:
            monkeypatch.setattr(builtins, "open", real_open)
            cpu_has_amx.cache_clear()


def test_a_failed_compilation_falls_back_to_the_eager_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(model: object, **kwargs: object) -> object:
        def run(*args: object, **kw: object) -> object:
            raise RuntimeError("InductorError: no working C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    encoder = build_encoder(resolve_model("test_vit", weights="random", seed=1), "image", CPU)
    eager = build_encoder(resolve_model("test_vit", weights="random", seed=1), "image", CPU)
    encoder.compile()
    batch = encoder.collate(_noise_images()[:3])
    assert torch.equal(encoder.encode(batch), eager.encode(batch))
    assert not encoder.compiled and "C++ compiler" in (encoder.compile_error or "")


def test_batch_norm_models_keep_fp32_weights_under_bf16_and_run_channels_last() -> None:
    encoder = build_encoder(resolve_model("test_resnet", weights="random", seed=2, precision="bf16"), "image", CPU)
    reference = build_encoder(resolve_model("test_resnet", weights="random", seed=2), "image", CPU)
    assert all(p.dtype == torch.float32 for p in encoder._model.parameters())  # autocast, not cast whole
    conv = next(m for m in encoder._model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    batch = encoder.collate(_noise_images()[:3])
    cosine = torch.nn.functional.cosine_similarity(encoder.encode(batch), reference.encode(batch))
    assert float(cosine.min()) > 0.99
