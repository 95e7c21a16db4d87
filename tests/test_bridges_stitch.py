"""Bridges in stitch and eval (`--bridge`): rows, auto's label-free choice, twins stitched exactly, the cache."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
from test_heads import one_torch_thread  # noqa: F401 - the autouse fixture applies here too
from test_stitching_lib import (  # noqa: F401 - clusters is a fixture
    clusters,
    import_model,
    invariant_twin,
    random_orthogonal,
    rows_by,
)
from typer.testing import CliRunner

from stitchcli.cli import app
from stitchcli.cli.settings_options import cli_value
from stitchcli.models import ModelRef
from stitchcli.settings import HeadSettings, StitchSettings, by_name
from stitchcli.stitching import stitch
from stitchcli.store import EmbeddingStore


def settings_of(dataset: Path, **options) -> StitchSettings:
    base = {"dataset": str(dataset), "seeds": (0,), "projections": ("cosine",), "num_anchors": 48,
            "head": HeadSettings(epochs=5, hidden=64, batch_size=32), "baselines": ("absolute",), "bridges": ("auto",)}
    return StitchSettings(**{**base, **options})


def affine_twin(latents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Give Z @ A + t of every split, A invertible and far from orthogonal (stretches of 0.1 to 10 along random axes)."""
    rotation = random_orthogonal(16, 16, seed=8)
    a = rotation @ np.diag(np.geomspace(0.1, 10.0, 16)) @ random_orthogonal(16, 16, seed=9)
    shift = np.random.default_rng(10).normal(size=16) * 3
    return {split: z @ a + shift for split, z in latents.items()}


def scores(selection: dict) -> list[tuple[str, dict]]:
    """Give each candidate's name and held-out scores (not its timing)."""
    return [(c["name"], c["scores"]) for c in selection["candidates"]]


def test_bridge_names_all_and_auto_expand_from_the_command_line():
    declared = by_name("bridge")
    everything = cli_value(declared, "all")
    assert everything[:2] == ("orthogonal", "affine") and "refine" in everything and "auto" not in everything
    assert cli_value(declared, "all,auto") == (*everything, "auto")
    assert cli_value(declared, "affine,auto") == ("affine", "auto")
    assert cli_value(declared, "none") == ()
    assert StitchSettings(dataset="x").bridges == ("auto",)


def test_a_bad_bridge_name_is_one_line_naming_the_known_bridges(tmp_path):
    result = CliRunner().invoke(app, ["stitch", "A", "B", "-d", "x", "--bridge", "afine", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "afine" in lines[0] and "affine" in lines[0] and "refine-coral" in lines[0], result.output


def test_orthogonal_and_affine_twins_are_stitched_exactly_and_a_second_run_fits_nothing(clusters, tmp_path):  # noqa: F811 - the fixture
    dataset, z = clusters
    store = EmbeddingStore(tmp_path / "cache")
    a = import_model(store, dataset, "A", z)
    rigid, stretched = import_model(store, dataset, "R", invariant_twin(z)), import_model(store, dataset, "S", affine_twin(z))
    settings = settings_of(dataset, bridges=("orthogonal", "affine", "auto"), baselines=("absolute", "translation", "affine"), ridge=1e-9)
    report = stitch(store, a, rigid, settings)
    rows = rows_by(report)
    reference = rows[("R", "R", ("absolute", (), None))]
    assert 0.5 < reference.accuracy < 1.0
    for method in ("orthogonal", "translation", "affine", "auto"):
        assert rows[("A", "R", (method, (), None))].per_seed == reference.per_seed, method
    auto = rows[("A", "R", ("auto", (), None))]
    assert auto.chosen in ("orthogonal", "affine") and {c["name"] for c in auto.selection["candidates"]} == {"orthogonal", "affine"}
    assert "chosen" not in rows[("A", "R", ("affine", (), None))].to_dict()
    # fitted: orthogonal and affine (for the baselines) and auto's selection; read back: the orthogonal row's
    # bridge and auto's winner. The affine bridge's row is the affine baseline's: given once, not twice.
    assert (report.bridges_fitted, report.bridges_cached) == (3, 2)
    assert [(row.encoder, row.method) for row in report.rows].count(("A", "affine")) == 1

    report = stitch(store, a, stretched, settings)
    rows = rows_by(report)
    reference = rows[("S", "S", ("absolute", (), None))]
    assert rows[("A", "S", ("affine", (), None))].per_seed == reference.per_seed
    assert rows[("A", "S", ("orthogonal", (), None))].per_seed != reference.per_seed  # it cannot undo a stretch
    assert rows[("A", "S", ("auto", (), None))].chosen == "affine"

    again = stitch(store, a, stretched, settings)
    assert again.bridges_fitted == 0 and again.bridges_cached == report.bridges_fitted + report.bridges_cached
    assert [row.to_dict() for row in again.rows] == [row.to_dict() for row in report.rows]


def test_auto_chooses_without_the_encoders_labels_or_the_evaluation_split(clusters, tmp_path):  # noqa: F811 - the fixture
    import torch

    from stitchcli.progress import Reporter
    from stitchcli.stitching.bridges import obtain_selection
    from stitchcli.stitching.data import prepare, resolve_sweep_dataset
    from stitchcli.stitching.heads_cache import HeadRequest, obtain_head

    dataset, z = clusters
    rng = np.random.default_rng(3)
    warped = {split: np.tanh(v @ random_orthogonal(16, 16, seed=4)) + 0.2 * rng.normal(size=v.shape) for split, v in z.items()}
    store = EmbeddingStore(tmp_path / "cache")
    import_model(store, dataset, "A", z)
    import_model(store, dataset, "B", warped)
    settings = settings_of(dataset, bridges=("orthogonal", "affine", "kernel", "refine", "auto"))
    choice = rows_by(stitch(store, ModelRef("A"), ModelRef("B"), settings))[("A", "B", ("auto", (), None))]

    # the same rows with the evaluation split's labels shuffled: another dataset, the same choice and scores
    shuffled = tmp_path / "shuffled"
    shutil.copytree(dataset, shuffled)
    lines = (shuffled / "test.csv").read_text().splitlines()
    header, body = lines[0], lines[1:]
    labels = [line.rsplit(",", 1)[1] for line in body]
    permuted = [labels[i] for i in rng.permutation(len(labels))]
    (shuffled / "test.csv").write_text("\n".join([header, *(line.rsplit(",", 1)[0] + "," + label for line, label in zip(body, permuted))]) + "\n")
    other = EmbeddingStore(tmp_path / "other")
    import_model(other, shuffled, "A", z)
    import_model(other, shuffled, "B", warped)
    again = rows_by(stitch(other, ModelRef("A"), ModelRef("B"), replace(settings, dataset=str(shuffled))))[("A", "B", ("auto", (), None))]
    assert again.chosen == choice.chosen and scores(again.selection) == scores(choice.selection)
    assert again.accuracy != choice.accuracy  # the labels did change what is measured

    # every label of the data shuffled (the encoder's training labels, the evaluation labels): the decoder's own
    # head, trained by its owner, scores the candidates exactly as before
    reporter = Reporter()
    data = prepare(store, [ModelRef("A"), ModelRef("B")], settings, resolve_sweep_dataset(store, settings, ["A", "B"], reporter), reporter=reporter)
    head, hit = obtain_head(store, data, data.models["B"], HeadRequest("absolute", (), None, 0), settings, lambda: None, torch.device("cpu"), reporter=reporter)
    assert hit
    blind = replace(data, train_labels=rng.permutation(data.train_labels), eval_labels=rng.permutation(data.eval_labels))
    fresh = EmbeddingStore(tmp_path / "fresh")  # nothing cached: the selection is made again
    record, cached = obtain_selection(fresh, blind, blind.models["A"], blind.models["B"], ["orthogonal", "affine", "kernel", "refine"], head, settings, reporter=reporter)
    assert not cached and record["winner"] == choice.chosen and scores(record) == scores(choice.selection)


def test_shared_bridge_fits_one_space_for_every_pair_and_stitches_rigid_twins_exactly(clusters, tmp_path):  # noqa: F811 - the fixture
    from stitchcli.stitching import evaluate

    dataset, z = clusters
    store = EmbeddingStore(tmp_path / "cache")
    q, shift = random_orthogonal(z["train"].shape[1], z["train"].shape[1], seed=21), np.random.default_rng(22).normal(size=z["train"].shape[1])
    models = [import_model(store, dataset, "A", z), import_model(store, dataset, "R", invariant_twin(z)),
              import_model(store, dataset, "T", {split: x @ q * 0.5 - shift for split, x in z.items()})]
    settings = settings_of(dataset, bridges=("shared",), baselines=("absolute",))
    report = evaluate(store, models, settings)
    rows = rows_by(report)
    for encoder in "ART":
        for decoder in "ART":
            own = rows[(decoder, decoder, ("absolute", (), None))]
            assert rows[(encoder, decoder, ("shared", (), None))].per_seed == own.per_seed, (encoder, decoder)
    # one space (3 maps) for the 6 stitched pairs: fitted by the first pair, read back by the other five
    assert (report.bridges_fitted, report.bridges_cached) == (1, 5)
    assert len(list((store.root / "bridges").rglob("space-*.safetensors"))) == 1
    again = evaluate(store, models, settings)
    assert again.bridges_fitted == 0 and [r.per_seed for r in again.rows] == [r.per_seed for r in report.rows]
    # a fourth model is another space: the key holds every model's entry
    wider = evaluate(store, [*models, import_model(store, dataset, "B", affine_twin(z))], settings)
    assert wider.bridges_fitted == 1 and len(list((store.root / "bridges").rglob("space-*.safetensors"))) == 2


def test_shared_is_a_bridge_name_but_not_in_all_or_autos_candidates():
    declared = by_name("bridge")
    assert "shared" not in cli_value(declared, "all")
    assert cli_value(declared, "shared,auto") == ("shared", "auto")
    from stitchcli.stitching.bridges import AUTO_CANDIDATES, auto_candidates

    assert auto_candidates(StitchSettings(dataset="x", bridges=("shared", "auto"))) == list(AUTO_CANDIDATES)
