"""Models beyond the paper's: causal and encoder-decoder text models, sentence-transformers' pooling modes, dual
encoders (CLIP), vision transformers without a class token, timm models with several branches. Tiny random
models saved the way their libraries save them; no downloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from stitchcli.encoders import build_encoder, resolve_model
from stitchcli.encoders.layers import layer_encoder
from stitchcli.errors import UsageError

CPU = torch.device("cpu")
TEXTS = ["the cat sat on the mat", "a dog ran", "big red house and a tree"]
WORDS = "the a cat dog sat on mat ran fast big small red green house tree and".split()


def _images(n: int = 3) -> list[Image.Image]:
    colours = [(255, 0, 0), (0, 128, 255), (20, 200, 40)]
    return [Image.new("RGB", (40 + 7 * i, 30 + 5 * i), colours[i % 3]) for i in range(n)]


def _bpe_tokenizer(folder: Path, **special: str) -> int:
    """Save a GPT-2 style byte-level BPE tokenizer (no padding token, nothing added around a text); give its size."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 3, vocab_size=300, special_tokens=["<|endoftext|>"])
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, **special)
    tokenizer.save_pretrained(folder)
    return len(tokenizer)


def _bert_tokenizer(folder: Path) -> int:
    from transformers import BertTokenizerFast

    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_input_names=["input_ids", "attention_mask"]).save_pretrained(folder)
    return 5 + len(WORDS)


@pytest.fixture(scope="module")
def gpt2_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny GPT-2 saved as GPT2Model and as GPT2LMHeadModel, with a tokenizer that has no padding token."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

    folders = []
    for cls in (GPT2Model, GPT2LMHeadModel):
        folder = tmp_path_factory.mktemp(cls.__name__)
        size = _bpe_tokenizer(folder, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>")
        torch.manual_seed(0)
        cls(GPT2Config(vocab_size=size, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0)).save_pretrained(folder)
        folders.append(folder)
    return folders[0], folders[1]


def test_a_causal_model_pools_its_last_real_token_and_pads_with_its_end_of_text_token(gpt2_folders: tuple[Path, Path]) -> None:
    from transformers import AutoModel, AutoTokenizer

    base, lm_head = gpt2_folders
    assert AutoTokenizer.from_pretrained(base).pad_token is None
    assert resolve_model(str(lm_head)).pooling == "last"  # saved as a causal LM: the default follows
    with pytest.raises(UsageError, match="causal.*--pooling last") as excinfo:  # a base GPT2Model: cls refused, not pooled
        build_encoder(resolve_model(str(base)), "text", CPU)
    assert "\n" not in str(excinfo.value)

    encoder = build_encoder(resolve_model(str(base), pooling="last"), "text", CPU)
    out = encoder.encode(encoder.collate(TEXTS))
    model = AutoModel.from_pretrained(base).eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    for i, text in enumerate(TEXTS):  # each text alone, unpadded: its last token's state
        with torch.no_grad():
            alone = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0, -1]
        torch.testing.assert_close(out[i], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0], out[1])

    layers = layer_encoder(encoder)
    assert [name for name, _ in layers.layers] == ["embeddings", "layer.0", "layer.1"]
    stacked = layers.encode(layers.collate(TEXTS))
    torch.testing.assert_close(stacked[:, -32:], out, atol=1e-5, rtol=1e-5)  # the last layer pooled as the final one


def test_cls_and_last_pooling_read_the_mask_on_either_padding_side() -> None:
    from stitchcli.encoders.transformers_backend import pool_tokens

    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool_tokens(hidden, right, "cls").flatten().tolist() == [0.0, 4.0]
    assert pool_tokens(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool_tokens(hidden, left, "cls").flatten().tolist() == [2.0, 4.0]
    assert pool_tokens(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool_tokens(hidden, left, "mean").flatten().tolist() == [2.5, 5.5]


@pytest.mark.parametrize("saved_as", ["T5Model", "T5EncoderModel"])
def test_t5_gives_its_encoder_with_mean_pooling(tmp_path: Path, saved_as: str) -> None:
    import transformers
    from transformers import T5Config, T5EncoderModel

    folder = tmp_path / saved_as
    folder.mkdir()
    size = _bert_tokenizer(folder)
    config = T5Config(vocab_size=size, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, pad_token_id=0, decoder_start_token_id=0)
    torch.manual_seed(0)
    getattr(transformers, saved_as)(config).save_pretrained(folder)
    spec = resolve_model(str(folder))
    assert spec.pooling == "mean"
    encoder = build_encoder(spec, "text", CPU)
    out = encoder.encode(encoder.collate(TEXTS))
    reference = T5EncoderModel.from_pretrained(folder).eval()
    batch = encoder.collate(TEXTS)
    with torch.no_grad():
        hidden = reference(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(out, (hidden * mask).sum(1) / mask.sum(1), atol=1e-5, rtol=1e-5)
    assert [name for name, _ in layer_encoder(encoder).layers] == ["embeddings", "layer.0", "layer.1"]


def test_cls_pooling_is_refused_when_the_tokenizer_puts_no_special_token_first(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    size = _bpe_tokenizer(tmp_path, eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    with pytest.raises(UsageError, match="no special token.*first word"):
        build_encoder(resolve_model(str(tmp_path)), "text", CPU)
    assert build_encoder(resolve_model(str(tmp_path), pooling="mean"), "text", CPU).spec.pooling == "mean"


def _pooling_folder(root: Path, pooling_config: dict) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
    ]))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    return root


@pytest.mark.parametrize(("config", "pooling"), [
    ({"embedding_dimension": 32, "pooling_mode": "mean", "include_prompt": True}, "mean"),  # sentence-transformers 6
    ({"pooling_mode": "cls"}, "cls"),
    ({"pooling_mode": "lasttoken"}, "last"),
    ({"pooling_mode": ["lasttoken"]}, "last"),
    ({"pooling_mode_lasttoken": True, "pooling_mode_mean_tokens": False}, "last"),  # before 6
    ({"pooling_mode_mean_tokens": True}, "mean"),
    ({"pooling_mode": "max"}, None),
    ({"pooling_mode": ["cls", "mean"]}, None),
    ({"pooling_mode_weightedmean_tokens": True}, None),
])
def test_sentence_transformers_pooling_modes_are_followed_or_refused(tmp_path: Path, config: dict, pooling: str | None) -> None:
    folder = _pooling_folder(tmp_path / "st", config)
    if pooling is None:
        with pytest.raises(UsageError, match="does not compute: give --pooling cls, mean or last"):
            resolve_model(str(folder))
        assert resolve_model(str(folder), pooling="mean").pooling == "mean"  # an explicit pooling is taken
    else:
        assert resolve_model(str(folder)).pooling == pooling


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIPModel (both towers, projection 16) saved with a tokenizer and an image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("clip")
    size = _bert_tokenizer(folder)
    tower = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config = CLIPConfig(text_config=dict(vocab_size=size, max_position_embeddings=64, **tower),
                        vision_config=dict(image_size=32, patch_size=8, **tower), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_a_clip_model_folder_embeds_images_and_texts_in_its_shared_space(clip_folder: Path) -> None:
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(clip_folder).eval()
    image = build_encoder(resolve_model(str(clip_folder)), "image", CPU)
    batch = image.collate(_images())
    with torch.no_grad():
        expected = model.get_image_features(**batch)
    expected = expected if isinstance(expected, torch.Tensor) else expected.pooler_output
    torch.testing.assert_close(image.encode(batch), expected, atol=1e-5, rtol=1e-5)
    assert image.encode(batch).shape == (3, 16)

    spec = resolve_model(str(clip_folder))
    assert spec.pooling == "last"  # its text tower is causal (used by --layers)
    text = build_encoder(spec, "text", CPU)
    assert text.encode(text.collate(TEXTS)).shape == (3, 16)
    assert [name for name, _ in layer_encoder(image).layers] == ["embeddings", "layer.0", "layer.1"]


def test_vision_tokens_without_a_class_token_are_averaged_not_read_at_the_first_patch(tmp_path: Path) -> None:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel, SwinConfig, SwinModel, ViTImageProcessor

    siglip, swin = tmp_path / "siglip", tmp_path / "swin"
    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                         image_size=32, patch_size=8)).save_pretrained(siglip)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(siglip)
    SwinModel(SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4)).save_pretrained(swin)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(swin)

    for folder, model_class in ((siglip, SiglipVisionModel), (swin, SwinModel)):
        encoder = layer_encoder(build_encoder(resolve_model(str(folder)), "image", CPU))
        batch = encoder.collate(_images())
        out = encoder.encode(batch)
        model = model_class.from_pretrained(folder).eval()
        with torch.no_grad():
            output = model(**batch, output_hidden_states=True)
        states = getattr(output, "reshaped_hidden_states", None) or output.hidden_states
        expected = torch.cat([s.mean(dim=(2, 3)) if s.dim() == 4 else s.mean(dim=1) for s in states], dim=1)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_timm_layers_have_unique_names_and_distilled_deit_pools_both_tokens() -> None:
    import timm

    crossvit = layer_encoder(build_encoder(resolve_model("crossvit_tiny_240", weights="random"), "image", CPU))
    names = [name for name, _ in crossvit.layers]
    assert len(names) == 6 and len(set(names)) == 6  # two branches of three blocks: one cache entry each

    encoder = build_encoder(resolve_model("deit_tiny_distilled_patch16_224", weights="random"), "image", CPU)
    layers = layer_encoder(encoder, ["blocks.11"])
    batch = layers.collate(_images(2))
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=0)
    model.load_state_dict(encoder._model.state_dict())
    with torch.no_grad():
        tokens = model.eval().forward_intermediates(layers.model_input(batch), indices=[11], intermediates_only=True,
                                                     output_fmt="NLC", return_prefix_tokens=True)[0][1]
    torch.testing.assert_close(layers.encode(batch), tokens[:, :2].mean(dim=1), atol=1e-4, rtol=1e-4)


def test_the_embeddings_layer_of_a_cls_pooled_model_varies_with_the_input(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel, ViTConfig, ViTImageProcessor, ViTModel

    text, image = tmp_path / "bert", tmp_path / "vit"
    text.mkdir()
    size = _bert_tokenizer(text)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(text)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)).save_pretrained(image)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(image)
    for folder, modality, inputs in ((text, "text", TEXTS), (image, "image", _images())):
        encoder = layer_encoder(build_encoder(resolve_model(str(folder)), modality, CPU), ["embeddings"])
        rows = encoder.encode(encoder.collate(inputs))
        assert rows.std(dim=0).max() > 1e-3, modality  # the class token there would be one constant row
