"""Heads: settings, the stratified validation split, seeded training with early stopping, saving and checking."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stitchcli.errors import UsageError
from stitchcli.heads import (
    HEAD_FORMAT,
    FittedHead,
    HeadSettings,
    build_classifier,
    check_head,
    load_head,
    predict,
    save_head,
    stratified_split,
    train_classifier,
)
from stitchcli.relative import list_aggregations

# Small and quick: a few optimiser steps per epoch on a few hundred rows.
FAST = HeadSettings(hidden=32, epochs=12, batch_size=32, lr=3e-3, patience=40)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Train on one thread: on a busy two-core machine torch's spinning thread pool runs tiny steps ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def separable_space(n: int = 240, k: int = 8, classes: int = 3, margin: float = 5.0, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Give an (n, 2, k) product space and labels: the class is the entry of subspace 0 raised by ``margin``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    values = rng.normal(size=(n, 2, k)).astype(np.float32)
    values[np.arange(n), 0, labels] += margin
    return torch.from_numpy(values), labels


def relative_classifier(settings: HeadSettings = FAST, *, aggregation: str = "mlp-sum", k: int = 8, seed: int | None = 0):
    return build_classifier("relative", 3, settings, aggregation=aggregation, num_subspaces=2, num_anchors=k, seed=seed)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[name], sb[name]) for name in sa)


def without_time(record) -> dict:
    document = record.to_dict()
    document.pop("seconds")
    return document


# ----- settings -------------------------------------------------------------------------------------


def test_settings_defaults_are_the_method_defaults():
    settings = HeadSettings()
    assert (settings.hidden, settings.lr, settings.batch_size, settings.epochs) == (512, 1e-3, 256, 40)
    assert 0.0 < settings.val_fraction < 1.0 and settings.patience >= 1


@pytest.mark.parametrize(
    ("field", "value", "option"),
    [
        ("hidden", 0, "--hidden"),
        ("dropout", 1.0, "--dropout"),
        ("dropout", -0.1, "--dropout"),
        ("epochs", 0, "--epochs"),
        ("lr", 0.0, "--lr"),
        ("lr", -1e-3, "--lr"),
        ("batch_size", 0, "--batch-size"),
        ("weight_decay", -1e-4, "--weight-decay"),
        ("val_fraction", 0.0, "--val-fraction"),
        ("val_fraction", 1.0, "--val-fraction"),
        ("patience", 0, "--patience"),
    ],
)
def test_settings_refuse_an_invalid_value_naming_the_option(field, value, option):
    with pytest.raises(UsageError, match=f"^{option} ") as caught:
        HeadSettings(**{field: value})
    assert str(value) in str(caught.value)


def test_settings_from_dict_round_trips_and_refuses_unknown_keys():
    settings = HeadSettings(hidden=64, epochs=3, patience=2)
    assert HeadSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    with pytest.raises(UsageError, match="unknown head setting hiden, lr_decay: use some of .*hidden"):
        HeadSettings.from_dict({"hiden": 64, "lr_decay": 0.5})


# ----- the validation split -------------------------------------------------------------------------


@pytest.fixture
def uneven_labels() -> np.ndarray:
    counts = {0: 50, 1: 30, 2: 7, 3: 2, 4: 1}
    labels = np.concatenate([np.full(n, c) for c, n in counts.items()])
    return np.random.default_rng(3).permutation(labels)


def test_stratified_split_is_a_partition_with_every_class_on_both_sides(uneven_labels):
    train, val = stratified_split(uneven_labels, 0.2, seed=0)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(uneven_labels)))
    assert not set(train) & set(val)
    assert np.array_equal(train, np.sort(train)) and np.array_equal(val, np.sort(val))
    for label in (0, 1, 2, 3):
        assert (uneven_labels[val] == label).sum() >= 1
        assert (uneven_labels[train] == label).sum() >= 1
    assert (uneven_labels[val] == 4).sum() == 0 and (uneven_labels[train] == 4).sum() == 1  # a singleton stays in training


def test_stratified_split_respects_the_fraction_per_class(uneven_labels):
    _, val = stratified_split(uneven_labels, 0.2, seed=0)
    for label, count in ((0, 50), (1, 30), (2, 7)):
        assert abs((uneven_labels[val] == label).sum() - 0.2 * count) <= 1
    _, val = stratified_split(np.repeat(np.arange(4), 100), 0.1, seed=0)
    assert len(val) == 40


def test_stratified_split_is_seeded(uneven_labels):
    first = stratified_split(uneven_labels, 0.2, seed=7)
    again = stratified_split(uneven_labels, 0.2, seed=7)
    other = stratified_split(uneven_labels, 0.2, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])


def test_stratified_split_of_singletons_only_has_no_validation():
    train, val = stratified_split(np.arange(5), 0.5, seed=0)
    assert list(train) == [0, 1, 2, 3, 4] and len(val) == 0


# ----- building and training --------------------------------------------------------------------------


def test_same_seed_gives_bit_identical_heads_and_records():
    x, y = separable_space()
    settings = HeadSettings(hidden=32, epochs=3, batch_size=32, dropout=0.3)
    a, b = relative_classifier(settings, seed=5), relative_classifier(settings, seed=5)
    assert same_weights(a, b)
    record_a = train_classifier(a, x, y, settings, seed=1)
    record_b = train_classifier(b, x, y, settings, seed=1)
    assert same_weights(a, b)
    assert without_time(record_a) == without_time(record_b)


def test_another_seed_gives_other_weights():
    x, y = separable_space()
    settings = HeadSettings(hidden=32, epochs=2, batch_size=32)
    assert not same_weights(relative_classifier(settings, seed=0), relative_classifier(settings, seed=1))
    a, b = relative_classifier(settings, seed=0), relative_classifier(settings, seed=0)
    train_classifier(a, x, y, settings, seed=0)
    train_classifier(b, x, y, settings, seed=1)  # same start, other split, order and dropout
    assert not same_weights(a, b)


def test_building_and_training_leave_torchs_global_random_state_alone():
    x, y = separable_space(n=90)
    settings = HeadSettings(hidden=16, epochs=2, batch_size=32, dropout=0.5)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    module = relative_classifier(settings, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    train_classifier(module, x, y, settings, seed=3)
    assert torch.equal(torch.get_rng_state(), state)


def test_training_learns_separable_data_and_leaves_the_module_in_eval_mode():
    x, y = separable_space()
    module = relative_classifier()
    record = train_classifier(module, x, y, FAST, seed=0)
    assert record.val_accuracy >= 0.9 and record.train_accuracy >= 0.9
    assert (record.train_rows, record.val_rows) == (216, 24)
    assert record.epochs_run == len(record.curve) == FAST.epochs
    assert not module.training


def test_early_stopping_stops_patience_epochs_after_the_best_validation_accuracy():
    """docs/METHOD.md §4 stops on the validation accuracy: once it no longer rises, ``patience`` more epochs and stop."""
    x, y = separable_space(margin=8.0)
    settings = HeadSettings(hidden=32, epochs=40, batch_size=32, lr=1e-2, patience=2)
    record = train_classifier(relative_classifier(settings), x, y, settings, seed=0)
    accuracies = [point["val_accuracy"] for point in record.curve]
    first_best = accuracies.index(max(accuracies)) + 1
    assert first_best + settings.patience < settings.epochs  # the data is easy: stopping must come early
    assert record.epochs_run == first_best + settings.patience


def test_training_keeps_the_weights_of_the_best_epoch():
    # Noisy labels and a large step make the validation accuracy go up and down.
    x, y = separable_space(n=300, margin=1.0, seed=4)
    settings = HeadSettings(hidden=64, epochs=12, batch_size=16, lr=3e-2, patience=12)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    module = relative_classifier(settings)
    record = train_classifier(module, x, y, settings, seed=0, progress=lambda epoch, _: snapshots.update({epoch: copy.deepcopy(module.state_dict())}))
    accuracies = [point["val_accuracy"] for point in record.curve]
    assert record.val_accuracy == max(accuracies) == accuracies[record.best_epoch - 1]
    assert record.best_epoch < record.epochs_run  # the test is meaningful only if the last epoch was not the best
    kept = module.state_dict()
    assert all(torch.equal(kept[name], snapshots[record.best_epoch][name]) for name in kept)
    _, val = stratified_split(y, settings.val_fraction, seed=0)
    assert round(float((predict(module, x[val]) == y[val]).mean()), 6) == record.val_accuracy


@pytest.mark.parametrize("aggregation", list_aggregations())
def test_every_aggregation_trains(aggregation):
    x, y = separable_space()
    module = relative_classifier(aggregation=aggregation)
    record = train_classifier(module, x, y, FAST, seed=0)
    assert record.val_accuracy >= 0.85
    assert (predict(module, x) == y).mean() >= 0.85


def test_absolute_head_trains_on_latents():
    rng = np.random.default_rng(0)
    y = np.arange(240) % 4
    latents = rng.normal(size=(240, 10)).astype(np.float32) + 4.0 * np.eye(10, dtype=np.float32)[y]
    module = build_classifier("absolute", 4, FAST, input_dim=10, seed=0)
    assert module.aggregation is None
    record = train_classifier(module, torch.from_numpy(latents), y, FAST, seed=0)
    assert record.val_accuracy >= 0.9
    assert predict(module, latents).shape == (240,)


def test_build_and_train_refuse_what_cannot_work():
    with pytest.raises(ValueError, match="aggregation"):
        build_classifier("relative", 3, FAST, num_subspaces=2, num_anchors=4)
    with pytest.raises(ValueError, match="input_dim"):
        build_classifier("absolute", 3, FAST)
    with pytest.raises(UsageError, match="unknown aggregation 'mlp_sum'.*did you mean 'mlp-sum'"):
        build_classifier("relative", 3, FAST, aggregation="mlp_sum", num_subspaces=2, num_anchors=4)
    x, _ = separable_space(n=6)
    with pytest.raises(UsageError, match="validation part"):
        train_classifier(relative_classifier(), x, np.arange(6), FAST, seed=0)  # every class a singleton
    with pytest.raises(ValueError, match="6 feature rows but 5 labels"):
        train_classifier(relative_classifier(), x, np.zeros(5), FAST, seed=0)


# ----- saving and loading ------------------------------------------------------------------------------

ANCHOR_IDS = [3, 1, 4, 5, 9, 2]


def make_head(kind: str = "relative", **config) -> FittedHead:
    """Give an untrained head (seeded weights) with a complete config; ``config`` overrides entries."""
    settings = HeadSettings(hidden=16, epochs=1)
    if kind == "relative":
        module = build_classifier("relative", 3, settings, aggregation="self-attention", num_subspaces=2, num_anchors=6, seed=0)
    else:
        module = build_classifier("absolute", 3, settings, input_dim=5, seed=0)
    document = {
        "format": HEAD_FORMAT,
        "kind": kind,
        "model": "enc-b",
        "dataset": "toy",
        "dataset_id": "local:toy",
        "dataset_fingerprint": "f00d",
        "num_classes": 3,
        "class_names": ["a", "b", "c"],
        "anchors": {"name": "toy-6", "ids": ANCHOR_IDS} if kind == "relative" else None,
        "projections": ["cosine", "l1"] if kind == "relative" else [],
        "aggregation": "self-attention" if kind == "relative" else None,
        "transform": "center" if kind == "relative" else None,
        "num_anchors": 6 if kind == "relative" else None,
        "input_dim": 5 if kind == "absolute" else None,
        "settings": settings.to_dict(),
        "seed": 0,
    }
    document.update(config)
    return FittedHead(module.eval(), document)


def head_input(head: FittedHead) -> torch.Tensor:
    shape = (20, 2, 6) if head.kind == "relative" else (20, 5)
    return torch.from_numpy(np.random.default_rng(1).normal(size=shape).astype(np.float32))


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_save_and_load_round_trip(tmp_path, kind):
    head = make_head(kind)
    path = save_head(tmp_path / "head.safetensors", head)
    assert path == tmp_path / "head.safetensors" == head.path
    loaded = load_head(path)
    assert loaded.config == head.config and loaded.path == path
    assert not loaded.module.training
    x = head_input(head)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), head.module(x))
    assert np.array_equal(loaded.predict(x), head.predict(x))
    assert json.loads((tmp_path / "head.json").read_text()) == head.config
    assert loaded.projections == tuple(head.config["projections"]) and loaded.num_classes == 3


def test_save_adds_the_suffix_and_load_finds_it(tmp_path):
    head = make_head()
    path = save_head(tmp_path / "decoder-head", head)
    assert path == tmp_path / "decoder-head.safetensors" and path.is_file()
    assert (tmp_path / "decoder-head.json").is_file()
    assert load_head(tmp_path / "decoder-head").config == head.config


def test_load_finds_a_dotted_name_saved_without_suffix(tmp_path):
    """save_head("…/head.v2") writes head.v2.safetensors; the same path must load it."""
    head = make_head()
    path = save_head(tmp_path / "head.v2", head)
    assert path.name == "head.v2.safetensors"
    assert load_head(tmp_path / "head.v2").config == head.config


def assert_one_line_usage_error(path: Path, match: str) -> None:
    with pytest.raises(UsageError, match=match) as caught:
        load_head(path)
    assert "\n" not in str(caught.value)


def test_the_json_beside_a_head_is_named_as_such_with_the_file_to_pass(tmp_path):
    save_head(tmp_path / "decoder-head", make_head())
    assert_one_line_usage_error(tmp_path / "decoder-head.json", r"the description written beside a head: pass the head itself, .*decoder-head.safetensors")


def test_load_refuses_a_missing_file(tmp_path):
    assert_one_line_usage_error(tmp_path / "nothing.safetensors", "does not exist")


def test_load_refuses_a_safetensors_file_that_is_no_head(tmp_path):
    from safetensors.numpy import save_file

    from stitchcli.store import write_safetensors

    save_file({"weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "plain.safetensors"))
    assert_one_line_usage_error(tmp_path / "plain.safetensors", "cannot read head.*no stitchcli metadata")
    # a stitchcli file of another kind (an embeddings entry)
    write_safetensors(tmp_path / "entry.safetensors", {"embeddings": np.zeros((2, 3), np.float32)}, {"key": {"model": "x"}})
    assert_one_line_usage_error(tmp_path / "entry.safetensors", "is not a stitchcli head")


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_load_refuses_a_truncated_file(tmp_path, keep):
    path = save_head(tmp_path / "head.safetensors", make_head())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert_one_line_usage_error(path, "cannot read head")


@pytest.mark.parametrize(("entry", "value"), [("format", HEAD_FORMAT + 1), ("kind", "regressor")])
def test_load_refuses_another_head_format(tmp_path, entry, value):
    path = save_head(tmp_path / "head.safetensors", make_head(**{entry: value}))
    assert_one_line_usage_error(path, f"not a stitchcli head of format {HEAD_FORMAT}")


def test_load_refuses_a_config_that_does_not_fit_the_tensors(tmp_path):
    settings = HeadSettings(hidden=24, epochs=1).to_dict()  # the tensors were built with hidden=16
    path = save_head(tmp_path / "head.safetensors", make_head(settings=settings))
    assert_one_line_usage_error(path, "damaged or inconsistent")
    path = save_head(tmp_path / "other.safetensors", make_head(settings={**settings, "hiden": 16}))
    assert_one_line_usage_error(path, "damaged or inconsistent.*unknown head setting")


# ----- checking a head against a request ----------------------------------------------------------------


def test_check_head_passes_a_matching_request_and_ignores_what_is_not_requested():
    head = make_head()
    check_head(head)
    check_head(
        head,
        dataset_id="local:toy",
        dataset_fingerprint="f00d",
        num_classes=3,
        model="enc-b",
        anchor_ids=list(ANCHOR_IDS),
        anchors_name="toy-6",
        projections=("cosine", "l1"),
        aggregation="self-attention",
        transform="center",
    )


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        ({"dataset_id": "local:other"}, "trained on dataset 'local:toy', not the requested 'local:other'"),
        ({"dataset_fingerprint": "beef"}, "data of 'toy' changed"),
        ({"num_classes": 4}, "predicts 3 classes but the dataset has 4"),
        ({"model": "enc-a"}, "trained on the latents of 'enc-b', not of 'enc-a'"),
        ({"anchor_ids": [3, 1, 4, 5, 9, 7], "anchors_name": "mine"}, "trained with anchors 'toy-6', not the requested 'mine'"),
        ({"projections": ("l1", "cosine")}, "reads projections cosine,l1, not the requested l1,cosine"),
        ({"aggregation": "mlp-sum"}, "aggregates with 'self-attention', not the requested 'mlp-sum'"),
        ({"transform": "none"}, "trained with --transform center, not none"),
    ],
)
def test_check_head_names_each_mismatch(request_, match):
    with pytest.raises(UsageError, match=match):
        check_head(make_head(), **request_)


def test_check_head_of_an_absolute_head_checks_only_data_model_and_classes():
    head = make_head("absolute")
    check_head(head, dataset_id="local:toy", model="enc-b", projections=("cosine",), aggregation="sum", transform="l2")
    with pytest.raises(UsageError, match="predicts 3 classes"):
        check_head(head, num_classes=2)
