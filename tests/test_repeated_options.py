"""Comma-list options may be repeated: ``--seeds 0 --seeds 1`` is ``--seeds 0,1`` and ``-m a -m b,c`` is ``-m a,b,c``, in
every command (a repeated option once kept only its last occurrence, silently). Run in-process with the library calls
replaced by a capture, so no model is built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stitchcli.cli import app
from stitchcli.cli.settings_options import REPEATABLE
from stitchcli.errors import UsageError
from stitchcli.settings import EVAL, FIT_HEAD, STITCH, Declared, settings_of
from test_settings import captured_settings


def two_values(declared: Declared) -> tuple[str, str]:
    """Give two valid, different values of a repeatable setting, the last one not its default alone."""
    if declared.option.choices is not None:
        choices = [c for c in declared.option.choices() if c != "shared"]  # shared: one space for all, refused beside others
        return choices[-2], choices[-1]
    if declared.item_type is int:
        return "4", "5"
    return "title", "body"  # --input-column


def repeatable(command: str) -> list[Declared]:
    return [d for d in settings_of(command) if d.repeatable]


def test_every_comma_list_setting_is_declared_repeatable():
    """The list settings and --input-column (a comma list of text columns); a new list setting is one of them at once."""
    names = {d.name for command in (STITCH, EVAL, FIT_HEAD) for d in repeatable(command)}
    assert {"projection", "aggregation", "seeds", "baselines", "bridge", "metrics", "input_column"} <= names


@pytest.mark.parametrize("command", [STITCH, EVAL, FIT_HEAD])
def test_a_repeated_setting_is_the_comma_list_and_keeps_every_occurrence(command, monkeypatch, tmp_path):
    declared = repeatable(command)
    assert declared
    for setting in declared:
        first, second = two_values(setting)
        comma = captured_settings(monkeypatch, command, [setting.flag, f"{first},{second}"], tmp_path)
        repeated = captured_settings(monkeypatch, command, [setting.flag, first, setting.flag, second], tmp_path)
        last_only = captured_settings(monkeypatch, command, [setting.flag, second], tmp_path)
        assert repeated["settings"] == comma["settings"], setting.name
        assert setting.get(repeated["settings"]) != setting.get(last_only["settings"]), setting.name  # not truncated
        short = [flag for flag in setting.option.flags if not flag.startswith("--")]
        if short:  # -p a --projection b mixes the spellings
            mixed = captured_settings(monkeypatch, command, [short[0], first, setting.flag, second], tmp_path)
            assert mixed["settings"] == comma["settings"], setting.name
        if command == STITCH:
            assert repeated["explicit"] == comma["explicit"] == {setting.name}


def test_seeds_repeated_and_comma_separated_mix_in_order(monkeypatch, tmp_path):
    seen = captured_settings(monkeypatch, STITCH, ["--seeds", "3", "--seeds", "1,2"], tmp_path)
    assert seen["settings"].seeds == (3, 1, 2)


@pytest.mark.parametrize(("args", "same_as"), [
    (["--seeds", "0", "--seeds", "0"], ["--seeds", "0,0"]),
    (["--baselines", "none", "--baselines", "affine"], ["--baselines", "none,affine"]),
    (["--seeds", "0", "--seeds", "one"], ["--seeds", "0,one"]),
    (["--projection", "cosine", "--projection", ""], None),
])
def test_a_bad_repeat_is_refused_as_the_same_comma_list_is(args, same_as):
    def run(extra: list[str]) -> Any:
        return CliRunner().invoke(app, ["stitch", "a", "b", "-d", "nowhere", *extra])

    result = run(args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    if same_as is not None:
        assert result.output == run(same_as).output
    if "none" in args:  # `none` stands alone: said so, not called an unknown baseline
        assert "--baselines none means no baseline: give it alone, not with affine" in result.output


def test_all_among_repeats_expands_as_in_one_list(monkeypatch, tmp_path):
    repeated = captured_settings(monkeypatch, STITCH, ["--bridge", "all", "--bridge", "auto"], tmp_path)
    comma = captured_settings(monkeypatch, STITCH, ["--bridge", "all,auto"], tmp_path)
    assert repeated["settings"].bridges == comma["settings"].bridges and repeated["settings"].bridges[-1] == "auto"


# ----- the commands' own list options ---------------------------------------------------------------------


def _capture(monkeypatch: pytest.MonkeyPatch, *targets: tuple[Any, str]) -> dict[str, Any]:
    """Replace each (module, function) with one that records its arguments and stops the command."""
    seen: dict[str, Any] = {}

    def capture(*args: Any, **kwargs: Any) -> Any:
        seen.update(args=args, kwargs=kwargs)
        raise UsageError("captured")

    for module, name in targets:
        monkeypatch.setattr(module, name, capture)
    return seen


def _invoke(seen: dict[str, Any], args: list[str]) -> dict[str, Any]:
    seen.clear()
    result = CliRunner().invoke(app, args)
    assert "captured" in result.output, result.output
    return dict(seen)


def test_similarity_models_measures_projections_and_layers_may_be_repeated(monkeypatch, tmp_path):
    import stitchcli.similarity.cached as cached

    seen = _capture(monkeypatch, (cached, "compare_cached"))
    base = ["similarity", "-d", "nowhere", "--cache-dir", str(tmp_path)]

    def call(*args: str) -> tuple[list[str], Any, dict[str, Any]]:
        captured = _invoke(seen, [*base, *args])
        store, refs, settings, chosen = captured["args"]
        return [ref.name for ref in refs], chosen, {key: value for key, value in captured["kwargs"].items() if key != "reporter"}

    comma = call("-m", "lite0,lite2,tvit,tvit2", "--measures", "linear-cka,cknna", "-p", "cosine,l1", "--layers", "blocks.1,blocks.2")
    repeated = call("-m", "lite0,lite2", "--models", "tvit", "-m", "tvit2", "--measures", "linear-cka", "--measures", "cknna",
                    "-p", "cosine", "--projection", "l1", "--layers", "blocks.1", "--layers", "blocks.2")
    assert repeated == comma
    names, chosen, kwargs = repeated
    assert names == ["lite0", "lite2", "tvit", "tvit2"] and chosen == ["linear-cka", "cknna"]
    assert kwargs["projections"] == ("cosine", "l1") and kwargs["layers"] == ("blocks.1", "blocks.2")
    # two models given one at a time are two models (this was "give at least two (--models names 1)")
    assert call("-m", "lite0", "-m", "lite2")[0] == ["lite0", "lite2"]
    # `all` among other projections expands as in stitch (it was refused as an unknown projection)
    every = call("-m", "a,b", "-p", "all")[2]["projections"]
    assert call("-m", "a,b", "-p", "cosine", "-p", "all")[2]["projections"] == every == ("cosine", "euclidean", "l1", "linf")


@pytest.mark.parametrize(("args", "needle"), [
    (["-m", "lite0", "-m", "lite0"], "model lite0 is listed twice in --models"),
    (["-m", "a,b", "--measures", "cknna", "--measures", "cknna"], "--measures lists cknna twice"),
    (["-m", "a,b", "-p", "cosine", "-p", "cosine"], "--projection lists a projection twice: cosine,cosine"),
    (["-m", "a,b", "--layers", "all", "--layers", "blocks.1"], "--layers all means every layer"),
])
def test_similarity_refuses_a_value_repeated_across_occurrences_in_one_line(args, needle, tmp_path):
    result = CliRunner().invoke(app, ["similarity", "-d", "nowhere", "--cache-dir", str(tmp_path), *args])
    assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output, result.output


def test_eval_models_may_be_repeated(monkeypatch, tmp_path):
    import stitchcli.stitching as stitching

    seen = _capture(monkeypatch, (stitching, "evaluate"))
    base = ["eval", "-d", "nowhere", "--cache-dir", str(tmp_path)]
    comma = _invoke(seen, [*base, "--models", "a,b,c"])["args"][1]
    repeated = _invoke(seen, [*base, "-m", "a", "--models", "b,c"])["args"][1]
    assert [ref.name for ref in repeated] == [ref.name for ref in comma] == ["a", "b", "c"]


@pytest.fixture
def embed_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    import stitchcli.embedding as embedding
    import stitchcli.embedding.layers as layers

    seen = _capture(monkeypatch, (embedding, "embed"), (layers, "embed_layers"))  # called alike: (refs, dataset, splits, ...)

    def call(*args: str) -> dict[str, Any]:
        captured = _invoke(seen, ["embed", "-d", "nowhere", "--cache-dir", str(tmp_path / "cache"), *args])
        refs = captured["args"][0]
        return {"models": [ref.name for ref in refs], "splits": captured["args"][2], **captured["kwargs"]}

    return call


def test_embed_models_splits_and_arrays_may_be_comma_separated_or_repeated(embed_calls):
    assert embed_calls("-m", "lite0,lite2")["models"] == embed_calls("-m", "lite0", "-m", "lite2")["models"] == ["lite0", "lite2"]
    assert embed_calls("-m", "a", "-m", "b,c")["models"] == ["a", "b", "c"]
    assert tuple(embed_calls("-m", "a", "-s", "train,test")["splits"]) == tuple(embed_calls("-m", "a", "-s", "train", "--split", "test")["splits"])
    tables = embed_calls("-m", "a", "-s", "train=x/train.csv,test=x/test.csv")["splits"]
    assert tuple(tables) == ("train=x/train.csv", "test=x/test.csv")
    arrays = embed_calls("-m", "a", "-s", "train,test", "--from-array", "train=a.npy,test=b.npy")["from_array"]
    assert tuple(arrays) == tuple(embed_calls("-m", "a", "-s", "train,test", "--from-array", "train=a.npy", "--from-array", "test=b.npy")["from_array"])
    assert embed_calls("-m", "a", "--layers", "blocks.1", "--layers", "blocks.2")["layers"] == ("blocks.1", "blocks.2")
    columns = embed_calls("-m", "a", "--input-column", "title", "--input-column", "body")["dataset_options"]
    assert columns.input_column == "title,body"


def test_a_path_that_exists_is_one_value_even_with_a_comma_in_its_name(embed_calls, tmp_path, monkeypatch):
    folder = tmp_path / "my,model"
    folder.mkdir()
    (tmp_path / "a,b.npy").write_bytes(b"")
    (tmp_path / "t,1.csv").write_text("text,label\n")
    monkeypatch.chdir(tmp_path)
    assert embed_calls("-m", str(folder), "-m", "lite0")["models"] == [str(folder), "lite0"]
    assert embed_calls("-m", "my,model")["models"] == ["my,model"]
    assert embed_calls("-m", "a", "-s", "train", "--from-array", "a,b.npy")["from_array"] == ("a,b.npy",)
    assert embed_calls("-m", "a", "-s", "train=t,1.csv")["splits"] == ("train=t,1.csv",)


def test_similarity_and_eval_keep_a_model_folder_with_a_comma_whole_as_embed_does(monkeypatch, tmp_path):
    import stitchcli.similarity.cached as cached
    import stitchcli.stitching as stitching

    folder = tmp_path / "my,bert"
    folder.mkdir()
    seen = _capture(monkeypatch, (cached, "compare_cached"), (stitching, "evaluate"))
    similarity = _invoke(seen, ["similarity", "-d", "x", "-m", str(folder), "-m", "lite0", "--cache-dir", str(tmp_path / "c")])
    assert [ref.name for ref in similarity["args"][1]] == [str(folder), "lite0"]
    evaluated = _invoke(seen, ["eval", "-d", "x", "-m", f"{folder}", "-m", "lite0", "--cache-dir", str(tmp_path / "c")])
    assert [ref.name for ref in evaluated["args"][1]] == [str(folder), "lite0"]


def test_embed_refuses_a_model_repeated_across_occurrences(tmp_path):
    for args in (["-m", "test_vit", "-m", "test_vit"], ["-m", "test_vit,test_vit"]):
        result = CliRunner().invoke(app, ["embed", *args, "-d", str(tmp_path / "missing"), "--cache-dir", str(tmp_path / "cache")])
        assert result.exit_code == 2 and "--model lists a model twice: test_vit, test_vit" in result.output, result.output


def test_anchor_and_similarity_join_repeated_input_columns(monkeypatch, tmp_path):
    import stitchcli.anchors as anchors
    import stitchcli.similarity.cached as cached

    seen = _capture(monkeypatch, (anchors, "choose_anchors"))
    base = ["anchor", "-d", "nowhere", "--cache-dir", str(tmp_path)]
    assert _invoke(seen, [*base, "--input-column", "title", "--input-column", "body"])["kwargs"]["dataset_options"].input_column == "title,body"
    seen = _capture(monkeypatch, (cached, "compare_cached"))
    settings = _invoke(seen, ["similarity", "-d", "x", "-m", "a,b", "--input-column", "title", "--input-column", "body,tags"])["args"][2]
    assert settings.data.input_column == "title,body,tags"


def test_every_option_that_takes_a_comma_list_may_be_repeated_and_says_so():
    """Any option whose help speaks of a comma-separated list is a repeatable one (click's ``multiple``), and its
    help says it may be repeated: a new list option that forgets it fails here."""
    import typer.main

    group = typer.main.get_command(app)
    checked = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        for param in command.params:
            text = (getattr(param, "help", None) or "").lower()
            if "comma-separated" in text or getattr(param, "multiple", False):
                checked.append(f"{name} {param.opts[0]}")
                assert getattr(param, "multiple", False), f"{name} {param.opts[0]} takes a comma list but keeps only its last occurrence"
                assert REPEATABLE.lower() in text, f"{name} {param.opts[0]}: the help does not say it may be repeated"
    assert {"embed --model", "embed --split", "similarity --models", "eval --models", "stitch --seeds", "stitch --input-column"} <= set(checked)
