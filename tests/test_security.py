"""What stitchcli reads never runs code, and what it writes stays in the cache.

- Artifacts are safetensors + JSON: a head, a weights file or an imported array that is a pickle is refused with
  one line, never unpickled (a payload that would create a marker file leaves none).
- A transformers model that ships its own code runs it only with --trust-remote-code.
- Model, dataset and split names become cache paths through a sanitised slug: nothing is written outside the cache.
- Recipes are TOML data: Python-looking values are names like any other, refused when they name nothing.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_text_table, make_tiny_bert, run_cli
from stitchcli.cli import app


class Payload:
    """Unpickling this runs a shell command that creates ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def pickle_payload(path: Path, marker: Path, *, torch_format: bool = False) -> Path:
    """Write a file whose unpickling would create ``marker``: a raw pickle, or torch.save's zip format."""
    if torch_format:
        import torch

        torch.save({"weight": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"weight": Payload(marker)}))
    return path


def test_the_payload_is_live(tmp_path):
    """The files below are dangerous for real: unpickled, this one creates its marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickle_payload(tmp_path / "p.pkl", marker).read_bytes())
    assert marker.exists()


def one_error_line(done) -> str:
    """Give the single stderr line of a failed command (no traceback, no warnings)."""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stitchcli: error: "), done.stderr
    return lines[0]


# ----- pickles are refused -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["head.pt", "head.safetensors"])
def test_a_head_file_that_is_a_pickle_is_refused(tmp_path, text_table, name):
    marker = tmp_path / "marker"
    head = pickle_payload(tmp_path / name, marker)
    done = run_cli("stitch", "a", "b", "--dataset", str(text_table), "--head", str(head), "--cache-dir", str(tmp_path / "cache"), "-q")
    assert done.returncode == 2
    assert f"cannot read head '{head}': unreadable safetensors file" in one_error_line(done)
    assert not marker.exists()


@pytest.mark.slow
def test_a_weights_file_that_would_run_code_is_refused(tmp_path, image_folder):
    marker = tmp_path / "marker"
    weights = pickle_payload(tmp_path / "weights.pt", marker)
    done = run_cli("embed", "--model", "timm:test_vit", "--weights", str(weights), "--dataset", str(image_folder),
                   "--split", "test", "--cache-dir", str(tmp_path / "cache"), "--num-workers", "0", "-q")
    assert done.returncode == 2
    line = one_error_line(done)
    assert f"cannot read weights file '{weights}': it is a pickle that would build Python objects beyond tensors" in line
    assert not marker.exists()
    # torch.save's zip format, in process: the same refusal
    zipped = pickle_payload(tmp_path / "weights.pth", marker, torch_format=True)
    result = CliRunner().invoke(app, ["embed", "--model", "timm:test_vit", "--weights", str(zipped), "--dataset", str(image_folder),
                                      "--split", "test", "--cache-dir", str(tmp_path / "cache"), "-q"])
    assert result.exit_code == 2 and "it is a pickle that would build Python objects" in result.output
    assert not marker.exists()


def test_an_open_clip_weights_file_that_would_run_code_is_refused_before_open_clip_reads_it(tmp_path, tiny_clip):
    import torch

    from stitchcli.encoders import build_encoder, resolve_model
    from stitchcli.errors import UsageError

    marker = tmp_path / "marker"
    weights = pickle_payload(tmp_path / "clip.pt", marker, torch_format=True)
    with pytest.raises(UsageError, match="it is a pickle that would build Python objects beyond tensors") as caught:
        build_encoder(resolve_model(f"openclip:{tiny_clip}", weights=str(weights)), "image", torch.device("cpu"))
    assert "\n" not in str(caught.value) and not marker.exists()


def test_an_imported_array_that_is_a_pickle_is_refused(tmp_path, text_table):
    marker = tmp_path / "marker"
    array = tmp_path / "embeddings.npy"
    np.save(array, np.array([[Payload(marker)]] * 8, dtype=object), allow_pickle=True)
    result = CliRunner().invoke(app, ["embed", "--model", "imported", "--from-array", str(array), "--dataset", str(text_table),
                                      "--split", "train", "--cache-dir", str(tmp_path / "cache"), "-q"])
    assert result.exit_code == 2 and f"cannot read array file '{array}'" in result.output
    assert not marker.exists()


# ----- remote code --------------------------------------------------------------------------------------------


def model_with_code(folder: Path, marker: Path) -> Path:
    """A local transformers folder whose config maps to its own Python module, which creates ``marker`` on import."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "stitchcli-marker-test",
        "auto_map": {"AutoConfig": "marker_model.MarkerConfig", "AutoModel": "marker_model.MarkerModel"},
    }))
    (folder / "marker_model.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "from transformers import PretrainedConfig, PreTrainedModel\n"
        "class MarkerConfig(PretrainedConfig):\n    model_type = 'stitchcli-marker-test'\n"
        "class MarkerModel(PreTrainedModel):\n    config_class = MarkerConfig\n"
    )
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    return folder


@pytest.fixture
def code_model(tmp_path, monkeypatch):
    """Give (folder, another folder, marker): two models whose code creates the marker; transformers' copy of
    their code goes under tmp_path too."""
    marker = tmp_path / "marker"
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    return model_with_code(tmp_path / "model-with-code", marker), model_with_code(tmp_path / "other-model", marker), marker


@pytest.mark.slow
def test_model_code_runs_only_with_trust_remote_code(code_model, tmp_path, text_table):
    folder, _, marker = code_model
    cache = str(tmp_path / "cache")
    done = run_cli("embed", "--model", str(folder), "--dataset", str(text_table), "--split", "train", "--cache-dir", cache, "-q")
    assert done.returncode == 2
    line = one_error_line(done)
    assert f"model '{folder}' ships its own Python code (auto_map in its config), which stitchcli runs only with --trust-remote-code" in line
    assert not marker.exists()
    # fit-head embeds on demand: the flag reaches the model through it (the stand-in code then fails; it did run).
    # A subprocess, so that transformers reads HF_MODULES_CACHE (where it copies the code) from this test's environment.
    run_cli("fit-head", "--model", str(folder), "--dataset", str(text_table), "--cache-dir", cache, "--trust-remote-code", "-q")
    assert marker.exists()


@pytest.mark.parametrize("command", [
    ["fit-head", "--model", "{model}"],
    ["stitch", "{model}", "{other}"],
    ["eval", "--models", "{model},{other}"],
])
def test_commands_that_embed_on_demand_refuse_model_code_without_the_flag(code_model, tmp_path, text_table, command):
    folder, other, marker = code_model
    args = [part.format(model=folder, other=other) for part in command]
    result = CliRunner().invoke(app, [*args, "--dataset", str(text_table), "--cache-dir", str(tmp_path / "cache"), "-q"])
    assert result.exit_code == 2, result.output
    assert "--trust-remote-code" in result.output and not marker.exists()


def test_the_flag_reaches_the_embedding_options_and_no_recipe_can_set_it(tmp_path):
    from stitchcli.errors import UsageError
    from stitchcli.recipes import load_recipe, recipe_sweeps
    from stitchcli.settings import build_settings

    assert build_settings("d", {"trust_remote_code": True}).trust_remote_code is True
    assert build_settings("d", {}).trust_remote_code is False
    recipe = tmp_path / "r.toml"
    recipe.write_text('datasets = ["d"]\nmodels = ["a", "b"]\n')
    assert [s.trust_remote_code for _, s in recipe_sweeps(load_recipe(recipe))] == [False]
    assert [s.trust_remote_code for _, s in recipe_sweeps(load_recipe(recipe), {"trust_remote_code": True})] == [True]
    recipe.write_text('datasets = ["d"]\nmodels = ["a", "b"]\ntrust_remote_code = true\n')
    with pytest.raises(UsageError, match="trust_remote_code"):
        load_recipe(recipe)


# ----- names never become paths outside the cache -------------------------------------------------------------


HOSTILE_NAMES = ["../../etc/x", "/tmp/y", "..", ".", "a/../../b", "..\\..\\windows", "~/.ssh/id_rsa", "x" * 300, "",
                 "name\x00with-nul", "C:/Users/x"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_every_path_a_name_becomes_lies_inside_the_cache(tmp_path, name):
    from stitchcli.stitching.heads_cache import head_cache_path
    from stitchcli.store import EmbeddingStore, EntryKey

    store = EmbeddingStore(tmp_path / "cache")
    key = EntryKey(model={"name": name}, dataset_id=name, dataset_fingerprint="f", split=name)
    paths = [store.entry_path(name, key), store.partial_dir(name, key), store.lock_path(name, key),
             store._name_path(name), head_cache_path(store, name, name, "relative", "0" * 20)]
    root = store.root.resolve()
    for path in paths:
        assert path.resolve().is_relative_to(root) and ".." not in path.relative_to(store.root).parts, path


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def test_embed_writes_nothing_outside_the_cache_whatever_the_names(tmp_path, monkeypatch):
    """A model and a dataset given as relative paths with .., a split name with .., and hostile --name values."""
    data = make_text_table(tmp_path / "data" / "texts")
    make_tiny_bert(tmp_path / "models" / "bert")
    np.save(tmp_path / "data" / "train.npy", np.ones((8, 3), np.float32))
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    cache = tmp_path / "cache"
    monkeypatch.chdir(work)
    before = _files(tmp_path)
    runner = CliRunner()

    def embed(*args: str) -> int:
        return runner.invoke(app, ["embed", *args, "--cache-dir", "../../cache", "--num-workers", "0", "-q"]).exit_code

    assert embed("--model", "../../models/bert", "--dataset", "../../data/texts", "--split", "train=../../data/texts/train.csv",
                 "--split", "../../../escaped=../../data/texts/test.csv", "--name", "bert-small") == 0
    for name in ("../../etc/x", str(tmp_path / "outside" / "y"), "..", "a/b"):
        assert embed("--model", name, "--from-array", "../../data/train.npy", "--dataset", "../../data/texts", "--split", "train") == 2
        assert embed("--model", "../../models/bert", "--name", name, "--dataset", "../../data/texts", "--split", "train") == 2
    assert embed("--model", "bert-small", "--dataset", str(data), "--split", "train") == 0  # the saved name
    created = _files(tmp_path) - before
    assert created, "nothing was embedded"
    outside = sorted(str(p) for p in created if not p.resolve().is_relative_to(cache.resolve()))
    assert outside == []
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "outside").exists()


# ----- recipes are data ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_recipe_with_python_in_it_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    payload = f"__import__('os').system('touch {marker}')"
    recipe = tmp_path / "evil.toml"
    recipe.write_text(
        f'description = "{payload}"\n'
        f'datasets = ["{payload}"]\n'
        f'models = ["{payload}", "eval(compile(\'import os\', \'x\', \'exec\'))"]\n'
        f'projections = ["cosine"]\n'
    )
    done = run_cli("eval", "--recipe", str(recipe), "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 2
    assert str(recipe) in one_error_line(done)
    assert not marker.exists()
    # a value of the wrong kind is named, with what was expected
    recipe.write_text(f'datasets = ["d"]\nmodels = ["a", "b"]\nprojections = "{payload}"\n')
    result = CliRunner().invoke(app, ["eval", "--recipe", str(recipe), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2 and "projections" in result.output and not marker.exists()
