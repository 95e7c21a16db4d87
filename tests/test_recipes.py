"""Recipes: the shipped ones parse and resolve offline; every kind of mistake is one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from stitchcli.errors import UsageError
from stitchcli.models import ModelRef
from stitchcli.recipes import ALL, list_recipes, load_recipe, validate_recipe
from stitchcli.settings import BASELINES, METRICS, HeadSettings, StitchSettings

REPO_RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SHIPPED = list_recipes(REPO_RECIPES)

MINIMAL = 'dataset = "cifar10"\nmodels = ["rexnet_100", "vit_small_patch16_224"]\n'


def write(tmp_path: Path, text: str, name: str = "recipe.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    """Give the message of the UsageError that loading and validating ``path`` raises (one line)."""
    with pytest.raises(UsageError) as caught:
        validate_recipe(load_recipe(path))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


def test_the_paper_recipes_are_shipped() -> None:
    assert {p.name for p in SHIPPED} >= {"paper-vision.toml", "paper-text.toml"}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_recipe_parses_and_resolves_offline(path: Path) -> None:
    recipe = load_recipe(path)
    validate_recipe(recipe)
    assert recipe.datasets and all(len(recipe.models_of(d)) >= 2 for d in recipe.datasets)
    assert recipe.settings.split != recipe.settings.train_split


def test_datasets_may_list_their_own_models(tmp_path: Path) -> None:
    path = tmp_path / "per-dataset.toml"
    path.write_text(
        'datasets = [{ name = "packaged:bbc-news", models = ["minilm", "mpnet"] }, "mnist"]\n'
        'models = ["rexnet_100", "vit_small_patch16_224"]\n'
    )
    recipe = load_recipe(path)
    validate_recipe(recipe)
    assert [m.name for m in recipe.models_of("packaged:bbc-news")] == ["minilm", "mpnet"]
    assert [m.name for m in recipe.models_of("mnist")] == ["rexnet_100", "vit_small_patch16_224"]
    assert recipe.model_names() == ["minilm", "mpnet", "rexnet_100", "vit_small_patch16_224"]


@pytest.mark.parametrize(
    "text, message",
    [
        ('datasets = [{ name = "mnist" }]\n', "models is missing"),
        ('datasets = [{ name = "mnist", models = ["a"] }]\n', "datasets[0].models must be a list of at least 2 models"),
        ('datasets = [{ models = ["a", "b"] }]\n', "datasets[0] has no name"),
        ('datasets = ["packaged:nope"]\nmodels = ["a", "b"]\n', "unknown packaged dataset 'packaged:nope'"),
        ('datasets = [{ name = "mnist", models = ["a", "b"] }]\nmodels = ["c", "d"]\n', "models is used by no dataset"),
    ],
)
def test_per_dataset_models_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        validate_recipe(load_recipe(path))
    assert message in str(info.value) and "bad.toml" in str(info.value)


def test_paper_recipes_hold_the_paper_settings() -> None:
    from stitchcli.relative import list_projections

    vision = load_recipe(REPO_RECIPES / "paper-vision.toml")
    text = load_recipe(REPO_RECIPES / "paper-text.toml")
    assert vision.datasets == ["cifar10", "cifar100", "mnist", "fashion_mnist"]
    assert text.datasets == ["trec", "dbpedia_14", "ag_news"]
    assert "openclip:ViT-B-32/openai" in vision.model_names()
    assert text.model_names() == [
        "bert-base-cased",
        "bert-base-uncased",
        "google/electra-base-discriminator",
        "roberta-base",
        "xlm-roberta-base",
    ]
    for recipe in (vision, text):
        settings = recipe.settings
        assert sorted(settings.projections) == sorted(list_projections())
        assert settings.aggregations[0] == "mlp-sum"
        anchors = (settings.num_anchors, settings.anchor_strategy, settings.anchor_seed, settings.anchors, settings.anchor_model)
        assert anchors == (1280, "uniform", 0, None, None)
        assert settings.seeds == (0, 1, 2)


def test_defaults_are_filled_when_keys_are_left_out(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL))
    settings = recipe.settings
    assert recipe.datasets == ["cifar10"]
    assert recipe.models == [ModelRef("rexnet_100", {}), ModelRef("vit_small_patch16_224", {})]
    assert (settings.split, settings.train_split, settings.limit, settings.k) == ("test", "train", None, 10)
    # what stitch does by default (chosen on validation data, docs/RESULTS.md): centred cosine x Euclidean, mlp-sum
    assert (settings.transform, settings.projections, settings.aggregations) == ("center", ("cosine", "euclidean"), ("mlp-sum",))
    assert settings == StitchSettings(dataset="cifar10")  # every setting a recipe leaves out is stitch's default
    assert settings.seeds == (0, 1, 2)
    assert settings.metrics == METRICS
    anchors = (settings.num_anchors, settings.anchor_strategy, settings.anchor_seed, settings.anchors, settings.anchor_model)
    assert anchors == (None, "uniform", 0, None, None)
    assert recipe.given == {} and recipe.description == ""
    assert settings.baselines == ("absolute", "translation", "affine") and settings.ridge == 0.1


def test_baselines_and_ridge_reach_the_settings(tmp_path: Path) -> None:
    from stitchcli.recipes import recipe_sweeps

    assert load_recipe(write(tmp_path, MINIMAL)).settings.baselines == BASELINES
    (_, settings), = recipe_sweeps(load_recipe(write(tmp_path, MINIMAL + 'baselines = ["affine"]\nridge = 2.5\n')))
    assert settings.baselines == ("affine",) and settings.ridge == 2.5
    (_, settings), = recipe_sweeps(load_recipe(write(tmp_path, MINIMAL + "baselines = []\n")))
    assert settings.baselines == () and settings.ridge == StitchSettings(dataset="x").ridge


def test_all_expands_to_every_registered_name(tmp_path: Path) -> None:
    from stitchcli.relative import list_aggregations

    recipe = load_recipe(write(tmp_path, MINIMAL + f'aggregations = "{ALL}"\nprojections = ["l1"]\n'))
    assert recipe.settings.aggregations == tuple(list_aggregations())
    assert recipe.settings.projections == ("l1",)


def test_model_tables_keep_their_options(tmp_path: Path) -> None:
    text = (
        'datasets = ["trec"]\n'
        'models = [{ name = "bert-base-cased", pooling = "mean", max_length = 128, precision = "bf16", revision = "main" },\n'
        '          "roberta-base", { name = "timm:rexnet_100", weights = "random" }]\n'
        "[head]\nhidden = 256\nlr = 0.0005\nval_fraction = 0.1\nweight_decay = 0\n"
        '[dataset_options]\ninput_column = "text"\nlabel_column = "fine_label"\n'
    )
    recipe = load_recipe(write(tmp_path, text))
    assert recipe.models[0] == ModelRef(
        "bert-base-cased", {"pooling": "mean", "max_length": 128, "precision": "bf16", "revision": "main"}
    )
    assert recipe.models[1] == ModelRef("roberta-base", {})
    assert recipe.models[2].options == {"weights": "random"}
    assert recipe.settings.head == HeadSettings(hidden=256, lr=0.0005, val_fraction=0.1, weight_decay=0.0)
    assert recipe.given == {"hidden": 256, "lr": 0.0005, "val_fraction": 0.1, "weight_decay": 0.0,
                            "input_column": "text", "label_column": "fine_label"}
    assert recipe.settings.data.given() == {"input_column": "text", "label_column": "fine_label"}
    validate_recipe(recipe)
    # The options reach the resolver: the spec carries them.
    from stitchcli.encoders import resolve_model

    spec = resolve_model(recipe.models[0].name, **recipe.models[0].options)
    assert (spec.pooling, spec.max_length, spec.precision, spec.revision) == ("mean", 128, "bf16", "main")


def test_paths_are_relative_to_the_recipe_folder(tmp_path: Path) -> None:
    folder = tmp_path / "sweeps"
    folder.mkdir()
    (tmp_path / "w.safetensors").write_bytes(b"")
    text = (
        'dataset = "../data"\n'
        'models = [{ name = "timm:rexnet_100", weights = "../w.safetensors" }, "./model", "bert-base-cased"]\n'
        '[anchors]\nname = "./anchors.json"\n'
    )
    recipe = load_recipe(write(folder, text))
    assert recipe.datasets == [str(tmp_path / "data")]
    assert recipe.models[0].options["weights"] == str(tmp_path / "w.safetensors")
    assert recipe.models[1].name == str(folder / "model")
    assert recipe.models[2].name == "bert-base-cased"
    assert recipe.settings.anchors == str(folder / "anchors.json")
    assert recipe.settings.num_anchors is None and "anchor_strategy" not in recipe.given


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + 'projection = ["l1"]\n', "unknown key 'projection' (did you mean 'projections'?)"),
        (MINIMAL + "[anchors]\nnmu = 10\n", "unknown key 'anchors.nmu' (did you mean 'anchors.num'?)"),
        (MINIMAL + "[head]\nepoch = 3\n", "unknown key 'head.epoch' (did you mean 'head.epochs'?)"),
        ('dataset = "cifar10"\nmodels = ["rexnet_100", { name = "bert-base-cased", poling = "mean" }]\n', "models[1].poling"),
        (MINIMAL + "k = true\n", "k must be an integer, not true (a boolean)"),
        (MINIMAL + "k = 0\n", "k must be at least 1, not 0"),
        (MINIMAL + "seeds = [0, -1]\n", "seeds must be 0 or more, not -1"),
        (MINIMAL + "seeds = [0, 0]\n", "seeds lists 0 twice"),
        (MINIMAL + "seeds = []\n", "seeds must be a non-empty list"),
        (MINIMAL + "limit = 2.5\n", "limit must be an integer, not 2.5 (a number)"),
        (MINIMAL + "limit = 0\n", "limit must be a positive number of rows, not 0"),
        (MINIMAL + 'split = 3\n', "split must be a non-empty string"),
        (MINIMAL + 'train_split = "validation"\n', "train_split 'validation' looks like evaluation data"),
        (MINIMAL + 'split = "train"\n', "split and train_split are both 'train'"),
        (MINIMAL + 'projections = ["cosin", "l1"]\n', "projections: unknown projection 'cosin' (did you mean 'cosine'?)"),
        (MINIMAL + 'projections = ["l1", "l1"]\n', "projections lists 'l1' twice"),
        (MINIMAL + 'projections = "l1"\n', "projections must be a non-empty list of projection names"),
        (MINIMAL + 'aggregations = ["mlp_sum"]\n', "aggregations: unknown aggregation 'mlp_sum' (did you mean 'mlp-sum'?)"),
        (MINIMAL + 'transform = "centre"\n', "transform: unknown transform 'centre' (did you mean 'center'?)"),
        (MINIMAL + 'metrics = ["mmr"]\n', "metrics: unknown metric 'mmr' (did you mean 'mrr'?)"),
        (MINIMAL + 'baselines = ["procrustes"]\n', "baselines: unknown baseline 'procrustes'"),
        (MINIMAL + "ridge = 0\n", "ridge must be a positive number, not 0"),
        (MINIMAL + 'ridge = "big"\n', "ridge must be a number, not 'big' (a string)"),
        (MINIMAL + '[anchors]\nstrategy = "kmean"\n', "anchors.strategy: unknown anchor strategy 'kmean' (did you mean 'kmeans'?)"),
        (MINIMAL + '[anchors]\nstrategy = "fps"\n', "set anchors.model to one of the recipe's models"),
        (MINIMAL + '[anchors]\nmodel = "rexnet_100"\n', "anchors.model applies to the fps and kmeans strategies"),
        (MINIMAL + '[anchors]\nname = "saved"\nnum = 10\n', "drop anchors.num"),
        (MINIMAL + "limit = 100\n[anchors]\nnum = 200\n", "anchors.num is 200 but limit leaves 100 training rows"),
        (MINIMAL + "limit = 5\nk = 5\n[anchors]\nnum = 4\n", "k must be below limit"),
        (MINIMAL + "[head]\ndropout = 1.0\n", "head.dropout must be in [0, 1), not 1.0"),
        (MINIMAL + "[head]\nval_fraction = 0\n", "head.val_fraction must be between 0 and 1"),
        (MINIMAL + "[head]\nhidden = 1.5\n", "head.hidden must be an integer, not 1.5 (a number)"),
        (MINIMAL + '[head]\nlr = "fast"\n', "head.lr must be a number, not 'fast' (a string)"),
        (MINIMAL + "head = 3\n", "head must be a table"),
        ('models = ["rexnet_100", "vit_small_patch16_224"]\n', "give exactly one of datasets"),
        ('dataset = "mnist"\ndatasets = ["mnist"]\n' + 'models = ["rexnet_100", "vit_small_patch16_224"]\n', "give exactly one of datasets"),
        ('dataset = "cifar10"\n', "models is missing"),
        ('dataset = "cifar10"\nmodels = ["rexnet_100"]\n', "models must be a list of at least 2 models"),
        ('dataset = "cifar10"\nmodels = ["rexnet_100", "rexnet_100"]\n', "models lists 'rexnet_100' twice"),
        ('dataset = "cifar10"\nmodels = ["rexnet_100", { name = "bert-base-cased", pooling = "max" }]\n', "models[1]: unknown pooling 'max'"),
        ('dataset = "cifar10"\nmodels = ["rexnet_100", { pooling = "mean" }]\n', "models[1] has no name"),
        ('dataset = "cifar10"\nmodels = ["rexnet_100", 7]\n', "models[1] must be a model name or a table"),
    ],
)
def test_schema_errors_name_the_file_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(write(tmp_path, text))
    assert expected in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('dataset = "cifar10"\nmodels = ["rexnet_100", "vit_base_patch16_2244"]\n', "models[1]: unknown model 'vit_base_patch16_2244'; did you mean: vit_base_patch16_224"),
        ('dataset = "cifar10"\nmodels = ["rexnet_100", "openclip:ViT-B-32/opneai"]\n', "models[1]: unknown pretrained tag 'opneai'"),
        ('dataset = "cifar10"\nmodels = ["rexnet_100", { name = "bert-base-cased", weights = "missing.safetensors" }]\n', "models[1]: weights file"),
        ('datasets = ["cifar10", "fashion-mnlst"]\nmodels = ["rexnet_100", "vit_small_patch16_224"]\n', "datasets[1]: unknown dataset 'fashion-mnlst'; did you mean fashion_mnist"),
        ('dataset = "./no-such-folder"\nmodels = ["rexnet_100", "vit_small_patch16_224"]\n', "datasets[0]: dataset path"),
    ],
)
def test_names_that_do_not_resolve_name_the_file_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    load_recipe(path)  # the schema is fine: only resolving the names finds the mistake
    assert expected in error_of(path)


def test_bad_toml_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "k = = 3\n")
    message = error_of(path)
    assert "not valid TOML" in message and "line 3" in message


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(UsageError, match="nope.toml not found"):
        load_recipe(missing)
    with pytest.raises(UsageError, match="is a folder"):
        load_recipe(tmp_path)


def test_validate_with_a_store_accepts_saved_names_and_checks_saved_anchors(tmp_path: Path) -> None:
    from stitchcli.anchors import AnchorManifest, save_anchor_manifest
    from stitchcli.encoders import resolve_model
    from stitchcli.store import EmbeddingStore

    store = EmbeddingStore(tmp_path / "cache")
    # Without the cache, a near miss of a timm name is refused; saved under that name it is a model.
    path = write(tmp_path, 'dataset = "cifar10"\nmodels = ["rexnet_100", "rexnet_1000"]\n[anchors]\nname = "c10"\n')
    with pytest.raises(UsageError, match=r"recipe\.toml: models\[1\]: unknown model 'rexnet_1000'"):
        validate_recipe(load_recipe(path))
    store.save_name("rexnet_1000", resolve_model("rexnet_100").to_dict())
    with pytest.raises(UsageError, match=r"recipe\.toml: anchors\.name: unknown anchors 'c10'"):
        validate_recipe(load_recipe(path), store)
    manifest = AnchorManifest(
        name="c10", dataset="cifar10", dataset_id="uoft-cs/cifar10", dataset_fingerprint="x", split="train",
        strategy="uniform", seed=0, num=2, ids=[3, 7], labels=[0, 1], class_names=["a", "b"], pool_rows=10,
    )
    save_anchor_manifest(store, manifest)
    validate_recipe(load_recipe(path), store)
