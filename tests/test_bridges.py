"""Bridges (stitchcli.bridges): exactness for the classes they claim, unpaired use of rows, label-free choice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from stitchcli.bridges import (
    BridgeCandidate,
    fit_bridge,
    fit_shared_space,
    get_bridge,
    list_bridges,
    load_bridge,
    register_bridge,
    select_bridge,
)
from stitchcli.bridges.refine import mutual_neighbours, unordered_subset
from stitchcli.bridges.selection import FoldOutput, fold_indices, without_rows
from stitchcli.bridges.shared_space import SharedSpace
from stitchcli.errors import UsageError

D = 24


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rows(n: int, d: int = D, seed: int = 0) -> torch.Tensor:
    """Anisotropic Gaussian rows with a non-zero mean (centring and scaling must matter)."""
    g = _generator(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.3, 3.0, d, dtype=torch.float64) + 2.0


def _twin(kind: str, seed: int = 1):
    """Give x -> a transform of the claimed class: similarity (s·xQ + t) or affine (xA + t, A invertible)."""
    g = _generator(seed)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    shift = torch.randn(D, generator=g, dtype=torch.float64) * 5
    if kind == "similarity":
        return lambda x: 2.5 * x @ q + shift
    stretch = q @ torch.diag(torch.linspace(0.2, 4.0, D, dtype=torch.float64)) @ torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0]
    return lambda x: x @ stretch + shift


def _fit(name: str, source, target, source_rows=None, target_rows=None, **options):
    rows = get_bridge(name).uses_rows
    return fit_bridge(name, source, target, source_rows=source_rows if rows else None, target_rows=target_rows if rows else None, **options)


CLAIMS = [(name, get_bridge(name).exact_for) for name in list_bridges() if get_bridge(name).exact_for != "none"]


def test_the_registry_lists_the_bridges_of_the_issue():
    names = list_bridges()
    for expected in ("orthogonal", "affine", "inverse-relative", "kernel", "refine"):
        assert expected in names
    assert get_bridge("refine").uses_rows and not get_bridge("affine").uses_rows
    assert all(get_bridge(name).source for name in names)  # every bridge cites where it comes from


def test_a_bridge_that_extends_another_takes_its_options_rows_and_claim():
    refine, coral = get_bridge("refine"), get_bridge("refine-coral")
    assert refine.defaults == {"ridge": get_bridge("affine").defaults["ridge"], "rounds": 3, "csls_k": 10, "max_rows": 5000}
    assert coral.defaults == {**refine.defaults, "epsilon": 1e-2}
    assert coral.uses_rows and (coral.exact_for, dict(coral.exact_options)) == ("affine", {"ridge": 0.0})
    assert get_bridge("refine-orthogonal").exact_for == "similarity"
    source, target = _rows(40), _rows(40, seed=1)
    rows = dict(source_rows=_rows(200, seed=2), target_rows=_rows(200, seed=3))
    # the base's options reach the base: no rounds, or max_rows 50, change what refine-coral fits
    plain = fit_bridge("refine-coral", source, target, **rows)
    unrefined = fit_bridge("refine-coral", source, target, **rows, rounds=0)
    assert unrefined.config["options"]["rounds"] == 0 and unrefined.config["fit"]["pairs_per_round"] == []
    assert plain.config["fit"]["pairs_per_round"] and not torch.allclose(plain.matrix, unrefined.matrix)
    with pytest.raises(UsageError, match="no option bogus"):
        fit_bridge("refine-coral", source, target, **rows, bogus=1)


def test_unknown_bridge_and_option_are_usage_errors_with_a_hint():
    with pytest.raises(UsageError, match="did you mean 'affine'"):
        get_bridge("afine")
    with pytest.raises(UsageError, match="no option rounds"):
        fit_bridge("affine", _rows(30), _rows(30, seed=1), rounds=3)
    with pytest.raises(ValueError, match="already registered"):
        register_bridge("affine")(lambda *a, **k: None)


@pytest.mark.parametrize("name,kind", CLAIMS)
def test_a_bridge_stitches_a_twin_of_its_claimed_class_exactly(name, kind):
    twin = _twin(kind)
    anchors, rows, test = _rows(60), _rows(200, seed=2), _rows(50, seed=3)
    target_rows = twin(rows)[torch.randperm(200, generator=_generator(4))]
    bridge = _fit(name, anchors, twin(anchors), rows, target_rows, **get_bridge(name).exact_options)
    expected = twin(test)
    error = (bridge(test, dtype=torch.float64) - expected).abs().max() / expected.abs().max()
    assert error < 1e-6, (name, float(error))


@pytest.mark.parametrize("name", [name for name, kind in CLAIMS if kind == "similarity"])
def test_a_similarity_bridge_does_not_claim_a_stretch(name):
    # the converse: an orthogonal map cannot undo a stretch, so its error on an affine twin is large
    twin = _twin("affine")
    anchors, test = _rows(60), _rows(50, seed=3)
    rows = _rows(200, seed=2)
    bridge = _fit(name, anchors, twin(anchors), rows, twin(rows), **get_bridge(name).exact_options)
    expected = twin(test)
    assert (bridge(test, dtype=torch.float64) - expected).abs().max() / expected.abs().max() > 1e-2


def _old_classes():
    from stitchcli.translations import AffineTranslation, LatentTranslation

    return LatentTranslation, AffineTranslation


@pytest.mark.parametrize("anchors,source_dim,target_dim", [(80, 24, 16), (20, 24, 30), (50, 32, 32)])
def test_orthogonal_and_affine_equal_the_old_translations(anchors, source_dim, target_dim):
    latent_translation, affine_translation = _old_classes()
    g = _generator(5)
    source = torch.randn(anchors, source_dim, generator=g, dtype=torch.float64) + 1
    target = torch.tanh(source @ torch.randn(source_dim, target_dim, generator=g, dtype=torch.float64))
    test = torch.randn(40, source_dim, generator=g, dtype=torch.float64)
    old = latent_translation.fit(source.numpy(), target.numpy())(test.numpy())
    assert np.abs(fit_bridge("orthogonal", source, target)(test).numpy() - old).max() < 1e-6
    for ridge in (0.1, 0.01):
        old = affine_translation.fit(source.numpy(), target.numpy(), ridge=ridge)(test.numpy())
        assert np.abs(fit_bridge("affine", source, target, ridge=ridge)(test).numpy() - old).max() < 1e-6


@pytest.mark.parametrize("name", [name for name in list_bridges() if get_bridge(name).uses_rows])
def test_rows_are_used_unpaired_shuffling_one_side_leaves_the_bridge_unchanged(name):
    twin = _twin("affine")
    anchors = _rows(20)
    rows = _rows(300, seed=2)
    noise = 0.3 * torch.randn(300, D, generator=_generator(9), dtype=torch.float64)
    target_rows = twin(rows) + noise
    first = _fit(name, anchors, twin(anchors), rows, target_rows)
    order = torch.randperm(300, generator=_generator(7))
    second = _fit(name, anchors, twin(anchors), rows[torch.randperm(300, generator=_generator(8))], target_rows[order])
    for key, value in first.state()[0].items():
        assert torch.allclose(value, second.state()[0][key], rtol=1e-9, atol=1e-9), key
    assert first.config["fit"]["pairs_per_round"] == second.config["fit"]["pairs_per_round"]


def test_refine_rescues_the_few_anchor_case_from_unlabeled_rows():
    # 12 anchors for a 24-d affine twin with noise: the anchors alone cannot determine the map, the rows can
    twin = _twin("affine")
    anchors, rows, test = _rows(12), _rows(400, seed=2), _rows(100, seed=3)
    noisy = lambda x: twin(x) + 0.05 * torch.randn(len(x), D, generator=_generator(len(x)), dtype=torch.float64)
    target_rows = noisy(rows)[torch.randperm(400, generator=_generator(4))]
    expected = twin(test)
    errors = {
        name: float((_fit(name, anchors, noisy(anchors), rows, target_rows)(test, dtype=torch.float64) - expected).norm() / expected.norm())
        for name in ("affine", "refine")
    }
    assert errors["refine"] < 0.5 * errors["affine"], errors


def test_kernel_bridge_follows_a_nonlinear_twin_better_than_the_affine_map():
    g = _generator(3)
    bend = torch.randn(D, generator=g, dtype=torch.float64)
    out = torch.randn(16, generator=g, dtype=torch.float64) * 8
    mix = torch.randn(D, 16, generator=g, dtype=torch.float64) / D**0.5
    twin = lambda x: (x - 2.0) @ mix + torch.tanh((x - 2.0) @ (bend / bend.norm()))[:, None] ** 2 * out
    anchors, test = _rows(300), _rows(200, seed=5)
    fitted = {name: fit_bridge(name, anchors, twin(anchors), ridge=0.01) for name in ("affine", "kernel")}
    errors = {name: float((bridge(test, dtype=torch.float64) - twin(test)).norm()) for name, bridge in fitted.items()}
    assert fitted["kernel"].config["fit"]["rbf_weight"] > 0  # GCV found the Gaussian part worth its weight
    assert errors["kernel"] < 0.92 * errors["affine"], errors  # measured: 111.4 against 125.9


def test_kernel_without_its_gaussian_part_is_the_affine_bridge():
    anchors, test = _rows(40), _rows(10, seed=3)
    target = torch.tanh(_twin("affine")(anchors) / 5)
    for ridge in (0.1, 0.01):
        kernel = fit_bridge("kernel", anchors, target, rbf_weight=0.0, ridge=ridge)(test, dtype=torch.float64)
        assert torch.allclose(kernel, fit_bridge("affine", anchors, target, ridge=ridge)(test, dtype=torch.float64), atol=1e-9)


def test_inverse_relative_gives_every_output_the_decoder_anchors_mean_norm_by_default():
    anchors, test = _rows(60), _rows(20, seed=3)
    target = _twin("affine")(anchors)
    bridge = fit_bridge("inverse-relative", anchors, target)
    norms = (bridge(test, dtype=torch.float64) - target.mean(0)).norm(dim=1)
    assert torch.allclose(norms, (target - target.mean(0)).norm(dim=1).mean().expand(20), rtol=1e-9)


@pytest.mark.parametrize("name", list_bridges())
def test_state_round_trips_through_safetensors_and_json(name):
    anchors, rows, test = _rows(40), _rows(120, seed=2), _rows(10, seed=3)
    twin = _twin("affine")
    bridge = _fit(name, anchors, twin(anchors) ** 2 / 10, rows, twin(rows) ** 2 / 10)
    tensors, config = bridge.state()
    assert all(t.dtype == torch.float64 for t in tensors.values())
    loaded = load_bridge(load_safetensors(save_safetensors(tensors)), json.loads(json.dumps(config)))
    assert torch.equal(loaded(test, dtype=torch.float64), bridge(test, dtype=torch.float64))
    assert config["bridge"] == name and config["fit"]["anchors"] == 40 and config["options"].keys() == get_bridge(name).defaults.keys()


def test_loading_a_bridge_of_another_format_or_form_is_refused():
    tensors, config = fit_bridge("affine", _rows(30), _rows(30, seed=1)).state()
    with pytest.raises(UsageError, match="format"):
        load_bridge(tensors, {**config, "format": 99})
    with pytest.raises(UsageError, match="unknown bridge form"):
        load_bridge(tensors, {**config, "form": "nope"})
    with pytest.raises(UsageError, match="damaged"):
        load_bridge({**tensors, "matrix": tensors["matrix"][:3]}, config)


@pytest.mark.parametrize(
    "source,target,options,message",
    [
        (_rows(30), _rows(29), {}, "same anchors"),
        (_rows(1), _rows(1), {}, "at least 2 anchors"),
        (torch.ones(30), _rows(30), {}, "2-D"),
        (_rows(30).index_put((torch.tensor([0]), torch.tensor([0])), torch.tensor(float("nan"), dtype=torch.float64)), _rows(30), {}, "NaN"),
    ],
)
def test_bad_anchors_are_usage_errors(source, target, options, message):
    with pytest.raises(UsageError, match=message):
        fit_bridge("affine", source, target, **options)


def test_bad_rows_and_inputs_are_usage_errors():
    anchors = _rows(30)
    with pytest.raises(UsageError, match="source_rows and target_rows"):
        fit_bridge("refine", anchors, anchors)
    with pytest.raises(UsageError, match="columns"):
        fit_bridge("refine", anchors, anchors, source_rows=_rows(50, d=D + 1), target_rows=_rows(50))
    bridge = fit_bridge("affine", anchors, anchors)
    with pytest.raises(UsageError, match=f"maps {D}-d rows"):
        bridge(_rows(5, d=D + 2))
    with pytest.raises(UsageError, match="ridge"):
        fit_bridge("affine", anchors, anchors, ridge=-1.0)


def test_mutual_neighbours_pair_a_shuffled_copy_completely():
    rows = _rows(500)
    order = torch.randperm(500, generator=_generator(1))
    left, right = mutual_neighbours(rows[order] - rows.mean(0), rows - rows.mean(0), csls_k=10)
    assert len(left) == 500 and torch.equal(order[left], right)


def test_mutual_neighbours_of_no_rows_are_no_pairs():
    left, right = mutual_neighbours(torch.zeros(0, D), _rows(5).float(), csls_k=10)
    assert left.shape == right.shape == (0,)
    left, right = mutual_neighbours(_rows(5).float(), torch.zeros(0, D), csls_k=10)
    assert left.shape == right.shape == (0,)


def test_auto_among_row_bridges_survives_an_encoder_that_gives_every_row_the_same_latent():
    # a collapsed encoder (a random text model, a constant image set): every training row equals every anchor,
    # so each fold's unlabeled rows, the anchors held out removed by value, are none at all
    source = _rows(1).repeat(11, 1)
    target = _rows(11, seed=2)
    selection = select_bridge(["affine", "refine", "refine-coral"], source, target, source_rows=source, target_rows=target, score="retrieval")
    assert selection.fitted is not None and torch.isfinite(selection.fitted(source, dtype=torch.float64)).all()


def test_unordered_subset_ignores_the_order_of_the_rows():
    rows = _rows(300)
    first = unordered_subset(rows, 100, seed=3)
    second = unordered_subset(rows[torch.randperm(300, generator=_generator(2))], 100, seed=3)
    assert torch.equal(first, second) and len(first) == 100


def test_without_rows_removes_by_value_not_position():
    rows = _rows(50)
    kept = without_rows(rows[torch.randperm(50, generator=_generator(1))], rows[[3, 7]])
    assert len(kept) == 48 and not any(torch.equal(r, rows[3]) or torch.equal(r, rows[7]) for r in kept)


def test_folds_partition_the_anchors_deterministically():
    parts = fold_indices(23, 5, seed=4)
    assert sorted(torch.cat(parts).tolist()) == list(range(23)) and {len(p) for p in parts} <= {4, 5}
    assert all(torch.equal(a, b) for a, b in zip(parts, fold_indices(23, 5, seed=4)))


# ----- auto: label-free selection ------------------------------------------------------------------


def _stitch_problem(seed: int = 0) -> dict[str, np.ndarray]:
    """Two 'models' of one labelled dataset: the decoder's latents are a nonlinear image of the encoder's."""
    g = np.random.default_rng(seed)
    centres = g.normal(size=(4, D)) * 2
    labels = g.integers(0, 4, size=700)
    x = centres[labels] + g.normal(size=(700, D))
    mix = g.normal(size=(D, D)) / D**0.5
    y = np.tanh(x @ mix) * 3 + 0.1 * g.normal(size=(700, D))
    return {"enc_train": x[:500], "dec_train": y[:500], "enc_train_labels": labels[:500], "dec_train_labels": labels[:500],
            "enc_test": x[500:], "test_labels": labels[500:]}


def _auto(problem: dict[str, np.ndarray]):
    """The `auto` pipeline as stitch runs it: a head trained on the decoder's own labels, then select_bridge."""
    y, labels = torch.from_numpy(problem["dec_train"]), torch.from_numpy(problem["dec_train_labels"])
    weights = torch.linalg.lstsq(torch.cat([y, torch.ones(len(y), 1, dtype=y.dtype)], 1), torch.nn.functional.one_hot(labels).double()).solution
    head = lambda z: torch.cat([z.double(), torch.ones(len(z), 1, dtype=torch.float64)], 1) @ weights * 5
    anchors = np.random.default_rng(1).choice(500, size=60, replace=False)
    return select_bridge(
        list_bridges(), problem["enc_train"][anchors], problem["dec_train"][anchors], head=head,
        source_rows=problem["enc_train"], target_rows=problem["dec_train"], folds=4, seed=0,
    )


@pytest.mark.slow
def test_auto_ignores_the_encoders_labels_and_the_evaluation_split():
    problem = _stitch_problem()
    first = _auto(problem)
    g = np.random.default_rng(5)
    shuffled = {**problem, "enc_train_labels": g.permutation(problem["enc_train_labels"]), "test_labels": g.permutation(problem["test_labels"]),
                "enc_test": g.normal(size=problem["enc_test"].shape)}
    second = _auto(shuffled)
    assert first.to_dict() | {"candidates": None} == second.to_dict() | {"candidates": None}
    assert [c.scores for c in first.candidates] == [c.scores for c in second.candidates]
    assert first.winner in list_bridges() and first.fitted is not None and first.fitted.name == first.winner.split(":")[0]


@pytest.mark.slow
def test_auto_scores_every_candidate_and_is_deterministic():
    problem = _stitch_problem()
    first, second = _auto(problem), _auto(problem)
    assert [c.name for c in first.candidates] == list_bridges()
    assert all(set(c.scores) == {"retrieval", "mrr", "agreement", "confidence"} for c in first.candidates)
    assert first.to_dict()["candidates"] == [
        {**c, "seconds": first.to_dict()["candidates"][i]["seconds"]} for i, c in enumerate(second.to_dict()["candidates"])
    ]
    best = max(first.candidates, key=lambda c: c.scores["confidence"])
    assert first.winner == best.name


class _ConstantCandidate:
    """A non-bridge candidate (like a relative projection set) that answers with logits only."""

    def __init__(self, name: str, logits: torch.Tensor) -> None:
        self.name, self.logits = name, logits

    def fold(self, data) -> FoldOutput:
        return FoldOutput(logits=self.logits.expand(len(data.held_source), -1))


def test_other_candidates_join_auto_through_logits():
    anchors = _rows(40)
    target = _twin("similarity")(anchors)
    head = lambda z: torch.stack([z[:, 0], -z[:, 0]], 1).float()
    sure = _ConstantCandidate("always-zero", torch.tensor([[10.0, -10.0]]))
    selection = select_bridge([sure, BridgeCandidate("orthogonal")], anchors, target, head=head, folds=4, score="agreement")
    scores = {c.name: c.scores for c in selection.candidates}
    assert scores["always-zero"]["retrieval"] is None and scores["orthogonal"]["agreement"] == 1.0
    assert selection.winner == "orthogonal"  # an exact map agrees with the head everywhere; a constant does not


def test_auto_refuses_what_it_cannot_do():
    anchors = _rows(10)
    with pytest.raises(UsageError, match="needs the decoder's absolute head"):
        select_bridge(["affine"], anchors, anchors)
    with pytest.raises(UsageError, match="folds"):
        select_bridge(["affine"], anchors, anchors, score="mrr", folds=6)
    with pytest.raises(UsageError, match="unknown selection score"):
        select_bridge(["affine"], anchors, anchors, score="accuracy")
    with pytest.raises(UsageError, match="same candidate twice"):
        select_bridge(["affine", "affine"], anchors, anchors, score="mrr")
    selection = select_bridge(["affine:ridge=0.01", "orthogonal"], _rows(40), _twin("similarity")(_rows(40)), score="mrr")
    assert [c.name for c in selection.candidates] == ["affine:ridge=0.01", "orthogonal"]


# ----- shared space --------------------------------------------------------------------------------


def test_a_shared_space_of_two_models_is_pairwise_procrustes():
    anchors, test = _rows(60), _rows(20, seed=3)
    target = torch.tanh(_twin("affine")(anchors) / 5)
    space = fit_shared_space({"a": anchors, "b": target})
    direct = fit_bridge("orthogonal", anchors, target)
    assert torch.allclose(space.bridge("a", "b")(test, dtype=torch.float64), direct(test, dtype=torch.float64), atol=1e-9)


def test_a_shared_space_maps_similarity_copies_exactly_and_round_trips():
    anchors, test = _rows(60), _rows(20, seed=3)
    copies = {"a": anchors, "b": _twin("similarity", seed=1)(anchors), "c": _twin("similarity", seed=2)(anchors)}
    space = fit_shared_space(copies)
    mapped = space.bridge("b", "c")(_twin("similarity", seed=1)(test), dtype=torch.float64)
    assert torch.allclose(mapped, _twin("similarity", seed=2)(test), atol=1e-8)
    tensors, config = space.state()
    again = SharedSpace.from_state(load_safetensors(save_safetensors(tensors)), json.loads(json.dumps(config)))
    assert torch.equal(again.bridge("a", "c").matrix, space.bridge("a", "c").matrix)
    tensors, config = space.bridge("a", "b").state()
    assert torch.equal(load_bridge(tensors, config)(test), space.bridge("a", "b")(test))


def test_shared_space_errors():
    with pytest.raises(UsageError, match="at least two models"):
        fit_shared_space({"a": _rows(10)})
    with pytest.raises(UsageError, match="same anchors"):
        fit_shared_space({"a": _rows(10), "b": _rows(11)})
    with pytest.raises(UsageError, match="not in this shared space"):
        fit_shared_space({"a": _rows(10), "b": _rows(10, seed=1)}).bridge("a", "z")


@pytest.mark.parametrize("count", [5, 23])
def test_coral_with_fewer_rows_than_dimensions_equals_the_eigen_decomposition(count):
    """The thin-SVD route of `covariance_power` (rows < dimensions) gives the matrix the d×d eigen-decomposition gives."""
    from stitchcli.bridges.refine import covariance_power

    rows = _rows(count)
    mean = rows.mean(dim=0)
    centred = rows - mean
    covariance = centred.T @ centred / (count - 1)
    regularised = covariance + 0.05 * float(covariance.diagonal().mean()) * torch.eye(D, dtype=torch.float64)
    values, vectors = torch.linalg.eigh(regularised)
    for power in (-0.5, 0.5):
        expected = (vectors * values**power) @ vectors.T
        torch.testing.assert_close(covariance_power(rows, mean, power, 0.05), expected, rtol=1e-9, atol=1e-12)
