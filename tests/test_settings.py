"""The settings declarations: every declared setting reaches the settings object from the command line and from a
recipe, and ``--head`` refuses what the user gave with another value than the head's (and only that)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from stitchcli.cli import app
from stitchcli.errors import UsageError
from stitchcli.settings import (
    EVAL,
    FIT_HEAD,
    STITCH,
    Declared,
    HeadSettings,
    StitchSettings,
    by_name,
    declared_settings,
    settings_of,
)

COMMANDS = {STITCH: ["stitch", "enc", "dec"], EVAL: ["eval", "--models", "enc,dec"], FIT_HEAD: ["fit-head", "--model", "enc"]}
LIBRARY_CALL = {STITCH: "stitch", EVAL: "evaluate", FIT_HEAD: "fit_head"}


def other_value(declared: Declared) -> tuple[str, Any]:
    """Give (a command-line value, the typed value it stands for) that differs from the setting's default."""
    if declared.name == "device":
        return "cpu", "cpu"
    if declared.name == "anchor_strategy":  # fps and kmeans need --anchor-model as well
        return "class-balanced", "class-balanced"
    if declared.option.choices is not None:
        choices = list(declared.option.choices())
        default = declared.default if declared.is_list else (declared.default,)
        pick = next(c for c in reversed(choices) if (c,) != tuple(default))
        return pick, (pick,) if declared.is_list else pick
    if declared.is_list:  # seeds
        return "4,5", (4, 5)
    if declared.item_type is bool:
        return "", True
    if declared.item_type is int:
        value = 3 if declared.default is None else declared.default + 2
        return str(value), value
    if declared.item_type is float:
        value = declared.default / 2 if declared.default else 0.25
        return repr(value), value
    return f"given-{declared.name}", f"given-{declared.name}"


def captured_settings(monkeypatch: pytest.MonkeyPatch, command: str, args: list[str], tmp_path: Path) -> dict[str, Any]:
    """Give what the command passed to the library (settings and explicit names), the library call replaced."""
    import stitchcli.stitching as stitching

    seen: dict[str, Any] = {}

    def capture(store: Any, *models: Any, **kwargs: Any) -> Any:
        seen["settings"] = models[-1]
        seen["explicit"] = kwargs.get("explicit")
        raise UsageError("captured")

    monkeypatch.setattr(stitching, LIBRARY_CALL[command], capture)
    result = CliRunner().invoke(app, [*COMMANDS[command], "--dataset", "d", *args, "--cache-dir", str(tmp_path / "cache")])
    assert "captured" in result.output, result.output
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("command", [STITCH, EVAL, FIT_HEAD])
def test_every_declared_setting_of_a_command_reaches_its_settings(command, monkeypatch, tmp_path):
    declared = settings_of(command)
    assert declared, command
    for setting in declared:
        text, value = other_value(setting)
        args = [setting.flag] if setting.item_type is bool and not setting.is_list else [setting.flag, text]
        seen = captured_settings(monkeypatch, command, args, tmp_path)
        assert setting.get(seen["settings"]) == value, setting.name
        if command == STITCH:
            assert set(seen["explicit"]) == {setting.name}


@pytest.mark.parametrize("command", [STITCH, EVAL, FIT_HEAD])
def test_defaults_on_the_command_line_are_the_declared_defaults(command, monkeypatch, tmp_path):
    seen = captured_settings(monkeypatch, command, [], tmp_path)
    expected = StitchSettings(dataset=seen["settings"].dataset)
    if command == FIT_HEAD:  # one head: its seed, and its own model chooses fps/kmeans anchors
        expected = StitchSettings(dataset=expected.dataset, seeds=(0,), anchor_model="enc")
    assert seen["settings"] == expected
    if command == STITCH:
        assert seen["explicit"] == frozenset()


def test_every_setting_is_on_some_command_and_every_recipe_key_is_unique():
    declared = declared_settings()
    assert all(d.option.commands for d in declared)
    keys = [d.option.recipe for d in declared if d.option.recipe is not None]
    assert len(keys) == len(set(keys))
    flags = [flag for d in declared for flag in d.option.flags]
    assert len(flags) == len(set(flags))
    # every head setting and dataset option is declared, and lives where its path says
    assert {d.path for d in declared if d.path.startswith("head.")} == {f"head.{name}" for name in HeadSettings.__dataclass_fields__}
    assert all(d.get(StitchSettings(dataset="x")) == d.default for d in declared)


def test_help_names_every_registered_projection_aggregation_and_transform():
    """The help texts list the registries' names (written out, so that --help imports no torch): they must not drift."""
    from stitchcli.relative import list_aggregations, list_projections, list_transforms

    for name, registry in (("projection", list_projections()), ("aggregation", list_aggregations()), ("transform", list_transforms())):
        assert all(entry in by_name(name).option.help for entry in registry), name


def test_a_command_cannot_declare_a_setting_itself():
    from stitchcli.cli.settings_options import takes_settings

    def command(epochs: int = 3) -> None:
        """A command that would hide --epochs."""

    with pytest.raises(TypeError, match="epochs"):
        takes_settings(STITCH)(command)


def test_a_recipe_sets_every_declared_recipe_key(tmp_path):
    from stitchcli.recipes import load_recipe

    lines: dict[str, list[str]] = {}
    expected = {}
    for declared in declared_settings():
        key = declared.option.recipe
        if key is None or key == "anchors.name":  # a saved manifest excludes the other anchor keys
            continue
        _, value = other_value(declared)
        if declared.name == "anchor_model":
            value = "enc"
        if declared.name == "anchor_strategy":
            value = "fps"  # needs anchors.model: given above
        if declared.name == "limit":
            value = 50  # above k and anchors.num
        if declared.name in ("split", "train_split"):
            value = {"split": "holdout", "train_split": "fit"}[declared.name]
        toml = repr(list(value)) if isinstance(value, tuple) else repr(value)
        table, _, leaf = key.rpartition(".")
        lines.setdefault(table, []).append(f"{leaf} = {toml}".replace("'", '"'))
        expected[declared.name] = value
    text = 'dataset = "d"\nmodels = ["enc", "dec"]\n' + "\n".join(lines.pop(""))
    for table, entries in lines.items():
        text += f"\n[{table}]\n" + "\n".join(entries)
    path = tmp_path / "all.toml"
    path.write_text(text + "\n")
    settings = load_recipe(path).settings
    for name, value in expected.items():
        assert by_name(name).get(settings) == value, name


# ----- --head: the head fixes its settings; options equal to the head's are accepted -----------------------


@pytest.fixture
def fitted_head(tmp_path, cache_dir):
    """Give (dataset folder, head file) of a relative head trained with --epochs 5 --limit 120 on imported arrays."""
    from test_stitching import write_clusters

    from stitchcli.embedding import EmbedOptions, embed
    from stitchcli.store import EmbeddingStore

    data = tmp_path / "clusters"
    latents = write_clusters(data)
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(latents["train"].shape[1],) * 2))[0]
    for name, transform in (("A", lambda z: z), ("B", lambda z: z @ rotation)):
        files = []
        for split, z in latents.items():
            np.save(tmp_path / f"{name}-{split}.npy", transform(z).astype(np.float32))
            files.append(f"{split}={tmp_path / f'{name}-{split}.npy'}")
        embed([name], str(data), ["train", "test"], store=EmbeddingStore(), options=EmbedOptions(limit=120), from_array=files)
    out = tmp_path / "head"
    result = CliRunner().invoke(app, ["fit-head", "-m", "B", "-d", str(data), "--epochs", "5", "--limit", "120", "--num-anchors", "30",
                                      "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return data, out.with_suffix(".safetensors")


@pytest.mark.slow
def test_head_accepts_its_own_values_and_refuses_others_even_the_defaults(fitted_head):
    data, head = fitted_head
    base = ["stitch", "A", "B", "-d", str(data), "--head", str(head), "--baselines", "none", "-q"]

    same = CliRunner().invoke(app, [*base, "--limit", "120", "--epochs", "5", "--num-anchors", "30", "--seeds", "0", "--json"])
    assert same.exit_code == 0, same.output
    document = json.loads(same.stdout)
    assert document["rows"] and "similarity" not in document  # only eval computes the similarity table

    for extra, flag in ((["--epochs", "40"], "--epochs"), (["--limit", "100"], "--limit"), (["--projection", "cosine"], "--projection"),
                        (["--seeds", "0,1,2"], "--seeds"), (["--num-anchors", "20"], "--num-anchors")):
        refused = CliRunner().invoke(app, [*base, *extra])
        assert refused.exit_code == 2, (extra, refused.output)
        assert "--head fixes" in refused.output and f"drop {flag}" in refused.output


def test_head_refusal_names_every_differing_option_in_one_line(fitted_head, tmp_path):
    from stitchcli.models import ModelRef
    from stitchcli.stitching import stitch
    from stitchcli.store import EmbeddingStore

    data, head = fitted_head
    settings = StitchSettings(dataset=str(data), limit=120, head=HeadSettings(epochs=40, lr=0.01), baselines=())
    with pytest.raises(UsageError) as caught:
        stitch(EmbeddingStore(), ModelRef("A"), ModelRef("B"), settings, head_file=head, explicit={"epochs", "lr", "limit"})
    message = str(caught.value)
    assert "\n" not in message and "drop --epochs, --lr" in message and "--limit" not in message


@pytest.mark.slow
def test_training_a_head_reports_every_epoch_as_it_goes(fitted_head):
    """While heads train, the status line moves with every epoch (not one line for minutes)."""
    from stitchcli.models import ModelRef
    from stitchcli.progress import Reporter
    from stitchcli.stitching import fit_head
    from stitchcli.store import EmbeddingStore

    data, _ = fitted_head
    statuses: list[str] = []
    settings = StitchSettings(dataset=str(data), limit=120, num_anchors=30, head=HeadSettings(epochs=4, patience=10))
    _, cached, _ = fit_head(EmbeddingStore(), ModelRef("B"), settings, seed=7, reporter=Reporter(status=statuses.append))
    assert not cached
    epochs = [line for line in statuses if "epoch" in line]
    assert [f"epoch {n} of at most 4" in line for n, line in enumerate(epochs, start=1)] == [True] * 4, statuses
