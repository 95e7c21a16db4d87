"""The stitching library without the CLI: latent translation, settings, reports, and sweeps on imported arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_fixtures import _write_csv
from test_heads import one_torch_thread  # noqa: F401 - the autouse fixture applies here too

from stitchcli.embedding import embed
from stitchcli.errors import UsageError
from stitchcli.models import ModelRef
from stitchcli.settings import HeadSettings
from stitchcli.stitching import (
    StitchReport,
    StitchRow,
    StitchSettings,
    evaluate,
    stitch,
    stitching_matrix,
)
from stitchcli.store import EmbeddingStore
from stitchcli.translations import AffineTranslation, LatentTranslation


def random_orthogonal(rows: int, cols: int, seed: int) -> np.ndarray:
    """Give a (rows, cols) matrix with orthonormal rows (rows <= cols) or columns (rows >= cols)."""
    q = np.linalg.qr(np.random.default_rng(seed).normal(size=(max(rows, cols), min(rows, cols))))[0]
    return q if rows >= cols else q.T


# ----- latent translation ---------------------------------------------------------------------------


def test_translation_recovers_an_orthogonal_map_with_scale_and_shift():
    rng = np.random.default_rng(0)
    q, scale, shift = random_orthogonal(8, 8, seed=1), 2.5, rng.normal(size=8) * 3
    source = rng.normal(size=(40, 8))  # k = 40 anchors > d = 8
    translation = LatentTranslation.fit(source, source @ q * scale + shift)
    np.testing.assert_allclose(translation.rotation, q, atol=1e-6)
    np.testing.assert_allclose(translation.target_scale / translation.source_scale, scale, rtol=1e-6)
    samples = rng.normal(size=(25, 8))
    mapped = translation(samples)
    assert mapped.dtype == np.float32 and mapped.shape == (25, 8)
    np.testing.assert_allclose(mapped, samples @ q * scale + shift, atol=1e-5)


def test_translation_into_a_larger_space_is_exact():
    rng = np.random.default_rng(2)
    w, shift = random_orthogonal(8, 12, seed=3), rng.normal(size=12)
    np.testing.assert_allclose(w @ w.T, np.eye(8), atol=1e-12)
    source = rng.normal(size=(30, 8))
    translation = LatentTranslation.fit(source.astype(np.float32), (source @ w + shift).astype(np.float32))
    assert translation.rotation.shape == (8, 12)
    samples = rng.normal(size=(10, 8))
    mapped = translation(samples)
    assert mapped.dtype == np.float32 and mapped.shape == (10, 12)
    np.testing.assert_allclose(mapped, samples @ w + shift, atol=1e-5)


def test_translation_needs_the_same_anchors_in_both_spaces():
    with pytest.raises(UsageError, match="same anchors"):
        LatentTranslation.fit(np.zeros((10, 4)), np.zeros((9, 4)))


# ----- settings --------------------------------------------------------------------------------------


def test_default_settings_pass_the_check():
    StitchSettings(dataset="x").check()
    StitchSettings(dataset="x", anchor_strategy="fps", anchor_model="A").check()
    StitchSettings(dataset="x", split="validation", train_split="train", baselines=()).check()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"projections": ("cosin",)}, "unknown projection 'cosin' \\(did you mean 'cosine'\\?\\)"),
        ({"aggregations": ("mlp_sum",)}, "unknown aggregation 'mlp_sum' \\(did you mean 'mlp-sum'\\?\\)"),
        ({"transform": "centre"}, "unknown transform 'centre' \\(did you mean 'center'\\?\\)"),
        ({"baselines": ("translate",)}, "unknown baseline 'translate' \\(did you mean 'translation'\\?\\)"),
        ({"metrics": ("jacard",)}, "unknown metric 'jacard' \\(did you mean 'jaccard'\\?\\)"),
        ({"anchor_strategy": "kmean"}, "unknown anchor strategy 'kmean'.*kmeans"),
        ({"projections": ("cosine", "l1", "cosine")}, "--projection lists a value twice"),
        ({"aggregations": ("sum", "sum")}, "--aggregation lists a value twice"),
        ({"seeds": (0, 1, 0)}, "--seeds lists a value twice"),
        ({"projections": ()}, "--projection lists nothing"),
        ({"aggregations": ()}, "--aggregation lists nothing"),
        ({"seeds": ()}, "--seeds lists nothing"),
        ({"seeds": (0, -1)}, "seeds must be 0 or more"),
        ({"anchor_seed": -1}, "--anchor-seed must be 0 or more"),
        ({"embed_seed": -2}, "--embed-seed must be 0 or more"),
        ({"limit": 0}, "--limit must be a positive"),
        ({"num_anchors": 0}, "--num-anchors must be a positive"),
        ({"k": 0}, "--k must be at least 1"),
        ({"ridge": 0.0}, "--ridge must be a positive number"),
        ({"ridge": float("nan")}, "--ridge must be a positive number"),
        ({"split": "train"}, "--split and --train-split are both 'train'"),
        ({"train_split": "validation", "split": "test"}, "--train-split 'validation' looks like evaluation data"),
        ({"anchor_strategy": "fps"}, "--anchor-model"),
    ],
)
def test_settings_check_refuses(options, match):
    with pytest.raises(UsageError, match=match):
        StitchSettings(dataset="x", **options).check()


def test_projection_sets_give_each_projection_then_the_product():
    four = ("cosine", "euclidean", "l1", "linf")
    assert StitchSettings(dataset="x", projections=four).projection_sets() == [("cosine",), ("euclidean",), ("l1",), ("linf",), four]
    assert StitchSettings(dataset="x", projections=four, singles=False).projection_sets() == [four]
    assert StitchSettings(dataset="x").projection_sets() == [("cosine",), ("euclidean",), ("cosine", "euclidean")]  # the default
    assert StitchSettings(dataset="x", projections=("l1", "cosine"), singles=False).projection_sets() == [("l1", "cosine")]
    for singles in (True, False):
        assert StitchSettings(dataset="x", projections=("l1",), singles=singles).projection_sets() == [("l1",)]


# ----- reports -----------------------------------------------------------------------------------------

COSINE = ("relative", ("cosine",), "mlp-sum")


def make_row(encoder: str, decoder: str, accuracy: float | None, macro_f1: float | None = None, *, method: str = "relative") -> StitchRow:
    relative = method == "relative"
    return StitchRow(
        encoder, decoder, method, ["cosine"] if relative else [], "mlp-sum" if relative else None, encoder != decoder,
        accuracy, 0.0 if accuracy is not None else None, macro_f1, 0.0 if macro_f1 is not None else None, [0],
        note=None if accuracy is not None else "not defined",
    )


@pytest.fixture
def hand_made_report() -> StitchReport:
    rows = [
        make_row("A", "A", 0.8, 0.7),
        make_row("B", "B", 0.6, 0.5),
        make_row("A", "B", 0.5, 0.4),
        make_row("B", "A", 0.3, 0.1),
        make_row("C", "A", None),
        make_row("A", "A", 0.9, 0.9, method="absolute"),
        make_row("A", "B", None, method="absolute"),
    ]
    return StitchReport(dataset="toy", dataset_id="local:toy", split="test", train_split="train", anchors={}, models=[], settings={}, rows=rows)


def test_summary_gives_mean_and_population_std_of_defined_rows(hand_made_report):
    relative, absolute = hand_made_report.summary()
    assert (relative["method"], relative["projections"], relative["aggregation"]) == ("relative", ["cosine"], "mlp-sum")
    assert relative["reference_accuracy"] == pytest.approx(0.7) and relative["reference_accuracy_std"] == pytest.approx(0.1)
    assert relative["reference_macro_f1"] == pytest.approx(0.6) and relative["reference_macro_f1_std"] == pytest.approx(0.1)
    assert relative["stitched_accuracy"] == pytest.approx(0.4) and relative["stitched_accuracy_std"] == pytest.approx(0.1)
    assert relative["stitched_macro_f1"] == pytest.approx(0.25) and relative["stitched_macro_f1_std"] == pytest.approx(0.15)
    assert (relative["reference_pairs"], relative["stitched_pairs"]) == (2, 2)  # the undefined C→A row is not a pair
    assert absolute["method"] == "absolute" and absolute["reference_accuracy"] == pytest.approx(0.9)
    assert absolute["stitched_accuracy"] is None and absolute["stitched_accuracy_std"] is None
    assert (absolute["reference_pairs"], absolute["stitched_pairs"]) == (1, 0)


def test_stitching_matrix_is_encoder_by_decoder(hand_made_report):
    names = ["A", "B", "C"]
    assert stitching_matrix(hand_made_report, COSINE, names) == [[0.8, 0.5, None], [0.3, 0.6, None], [None, None, None]]
    assert stitching_matrix(hand_made_report, COSINE, ["B", "A"], "macro_f1") == [[0.5, 0.1], [0.4, 0.7]]
    assert stitching_matrix(hand_made_report, ("absolute", (), None), ["A", "B"]) == [[0.9, None], [None, None]]
    assert stitching_matrix(hand_made_report, ("translation", (), None), ["A"]) == [[None]]


# ----- sweeps on imported arrays ------------------------------------------------------------------------

CLASSES, DIM = 3, 16
PER_CLASS = {"train": 60, "test": 20}


@pytest.fixture
def clusters(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Give a CSV dataset folder (rows in class order) and Gaussian-cluster latents Z of its rows, per split.

    The clusters overlap: a head reaches about 70-90% on the test split, so equal accuracies mean something.
    """
    rng = np.random.default_rng(0)
    means = rng.normal(size=(CLASSES, DIM)) * 0.6
    root = tmp_path / "clusters"
    root.mkdir()
    latents = {}
    for split, per_class in PER_CLASS.items():
        labels = np.repeat(np.arange(CLASSES), per_class)
        latents[split] = (means[labels] + rng.normal(size=(len(labels), DIM))).astype(np.float32)
        _write_csv(root / f"{split}.csv", [(f"{split} row {i}", f"class{c}") for i, c in enumerate(labels)])
    return root, latents


def import_model(store: EmbeddingStore, dataset: Path, name: str, latents: dict[str, np.ndarray]) -> ModelRef:
    """Import one model's latents of every split (row i of an array is row i of the CSV) and give its ref."""
    files = []
    for split, values in latents.items():
        path = dataset.parent / f"{name}-{split}.npy"
        np.save(path, values.astype(np.float32))
        files.append(f"{split}={path}")
    embed([name], str(dataset), list(latents), store=store, from_array=files)
    return ModelRef(name)


def invariant_twin(latents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Give Z @ Q * 3 + t of every split (Q a random orthogonal map): centred cosine and normalised euclidean do not change."""
    q, shift = random_orthogonal(DIM, DIM, seed=5), np.random.default_rng(6).normal(size=DIM) * 5
    return {split: z @ q * 3 + shift for split, z in latents.items()}


def sweep_settings(dataset: Path) -> StitchSettings:
    return StitchSettings(
        dataset=str(dataset), seeds=(0,), projections=("cosine", "euclidean"), num_anchors=48, transform="center",
        head=HeadSettings(epochs=5, hidden=64, batch_size=32),
    )


def rows_by(report: StitchReport) -> dict[tuple, StitchRow]:
    return {(row.encoder, row.decoder, row.setting): row for row in report.rows}


def test_stitch_through_an_invariance_matches_the_reference_and_reuses_its_heads(clusters, tmp_path):
    dataset, z = clusters
    store = EmbeddingStore(tmp_path / "cache")
    a, b = import_model(store, dataset, "A", z), import_model(store, dataset, "B", invariant_twin(z))
    settings = sweep_settings(dataset)
    report = stitch(store, a, b, settings)
    rows = rows_by(report)
    relative_sets = [("relative", s, "mlp-sum") for s in settings.projection_sets()]
    assert len(report.rows) == 2 * (len(relative_sets) + 4)  # the baselines absolute, translation, affine and the bridge auto
    assert (report.heads_trained, report.heads_cached) == (len(relative_sets) + 1, 0)
    for setting in relative_sets:
        reference, stitched = rows[("B", "B", setting)], rows[("A", "B", setting)]
        assert 0.5 < reference.accuracy < 1.0, setting  # not trivial: equality below says something
        assert (stitched.accuracy, stitched.macro_f1, stitched.per_seed) == (reference.accuracy, reference.macro_f1, reference.per_seed)
        assert stitched.stitched and not reference.stitched
    reference = rows[("B", "B", ("absolute", (), None))]
    assert 0.5 < reference.accuracy < 1.0
    assert rows[("A", "B", ("translation", (), None))].accuracy == reference.accuracy
    assert rows[("A", "B", ("affine", (), None))].accuracy >= reference.accuracy - 0.05  # ridge-shrunk, nearly exact
    assert rows[("A", "B", ("absolute", (), None))].accuracy < reference.accuracy - 0.25

    again = stitch(store, a, b, settings)
    assert (again.heads_trained, again.heads_cached) == (0, report.heads_trained)
    assert [row.to_dict() for row in again.rows] == [row.to_dict() for row in report.rows]


def test_stitch_and_evaluate_refuse_too_few_models(clusters, tmp_path):
    dataset, _ = clusters
    store = EmbeddingStore(tmp_path / "cache")
    with pytest.raises(UsageError, match="stitching needs two models"):
        stitch(store, ModelRef("A"), ModelRef("A"), sweep_settings(dataset))
    with pytest.raises(UsageError, match="at least two"):
        evaluate(store, [ModelRef("A")], sweep_settings(dataset))


@pytest.mark.slow
def test_evaluate_gives_every_pair_and_the_similarity_table(clusters, tmp_path):
    dataset, z = clusters
    store = EmbeddingStore(tmp_path / "cache")
    rng = np.random.default_rng(7)
    warped = {split: np.tanh(v[:, :12]) + 0.3 * rng.normal(size=(len(v), 12)) for split, v in z.items()}  # 12-d, not invariant
    models = [import_model(store, dataset, "A", z), import_model(store, dataset, "B", invariant_twin(z)), import_model(store, dataset, "C", warped)]
    settings = sweep_settings(dataset)
    report = evaluate(store, models, settings)

    names = ["A", "B", "C"]
    settings_seen = {row.setting for row in report.rows}
    relative_sets = {("relative", s, "mlp-sum") for s in settings.projection_sets()}
    assert settings_seen == relative_sets | {("absolute", (), None), ("translation", (), None), ("affine", (), None), ("auto", (), None)}
    assert len(report.rows) == len(settings_seen) * 9
    for setting in settings_seen:
        pairs = [(row.encoder, row.decoder) for row in report.rows if row.setting == setting]
        assert sorted(pairs) == [(e, d) for e in names for d in names]
    assert all(row.stitched == (row.encoder != row.decoder) for row in report.rows)
    assert report.heads_trained == 3 * (len(relative_sets) + 1)

    rows = rows_by(report)
    for setting in relative_sets:  # A and B see the same relative representation
        assert rows[("A", "B", setting)].accuracy == rows[("B", "B", setting)].accuracy
        assert rows[("B", "A", setting)].accuracy == rows[("A", "A", setting)].accuracy
    absolute = ("absolute", (), None)
    for encoder, decoder in (("A", "C"), ("C", "A"), ("B", "C"), ("C", "B")):
        row = rows[(encoder, decoder, absolute)]
        assert row.accuracy is None and "not defined" in row.note
    assert rows[("C", "C", absolute)].accuracy is not None
    assert next(s for s in report.summary() if s["method"] == "absolute")["stitched_pairs"] == 2
    matrix = stitching_matrix(report, ("relative", ("cosine",), "mlp-sum"), names)
    assert [matrix[i][i] for i in range(3)] == [rows[(n, n, ("relative", ("cosine",), "mlp-sum"))].accuracy for n in names]

    similarity = {(row.model_a, row.model_b, row.projection): row for row in report.similarity}
    assert set(similarity) == {(a, b, p) for a, b in (("A", "B"), ("A", "C"), ("B", "C")) for p in ("cosine", "euclidean", "absolute")}
    for projection in ("cosine", "euclidean", "absolute"):
        assert similarity[("A", "B", projection)].cka == pytest.approx(1.0, abs=1e-6)
        assert similarity[("A", "C", projection)].cka < 0.95
    for projection in ("cosine", "euclidean"):
        assert similarity[("A", "B", projection)].jaccard == pytest.approx(1.0)
        assert similarity[("A", "B", projection)].mrr == pytest.approx(1.0)
    assert similarity[("A", "B", "cosine")].cosine == pytest.approx(1.0, abs=1e-6)
    assert similarity[("A", "C", "absolute")].mrr is None and similarity[("A", "C", "absolute")].cosine is None
    assert all(row.rows == CLASSES * PER_CLASS["test"] for row in report.similarity)


def test_affine_translation_recovers_a_general_affine_map():
    """A stretch and shear (not orthogonal) that Procrustes cannot undo; with a negligible ridge it is recovered."""
    rng = np.random.default_rng(0)
    matrix, shift = rng.normal(size=(8, 12)), rng.normal(size=12) * 3
    source = rng.normal(size=(60, 8)) * np.linspace(0.5, 4.0, 8)  # k = 60 anchors > d = 8
    target = source @ matrix + shift
    affine = AffineTranslation.fit(source, target, ridge=1e-9)
    np.testing.assert_allclose(affine.matrix, matrix, atol=1e-5)
    samples = rng.normal(size=(25, 8))
    mapped = affine(samples)
    assert mapped.dtype == np.float32 and mapped.shape == (25, 12)
    np.testing.assert_allclose(mapped, samples @ matrix + shift, rtol=1e-4, atol=1e-4)
    orthogonal = LatentTranslation.fit(source, target)(samples)
    assert np.abs(orthogonal - (samples @ matrix + shift)).max() > 0.5  # the orthogonal map cannot do this


@pytest.mark.parametrize(("k", "d"), [(40, 10), (10, 40)])
def test_affine_translation_is_the_ridge_solution_in_either_form(k, d):
    """The d x d (k >= d) and k x k (k < d) solves give the ridge regression solution, shrinking toward zero."""
    rng = np.random.default_rng(1)
    source, target = rng.normal(size=(k, d)), rng.normal(size=(k, 6))
    a, b = source - source.mean(0), target - target.mean(0)
    ridge = 0.5
    penalty = ridge * k * (a**2).mean()
    expected = np.linalg.lstsq(np.vstack([a, np.sqrt(penalty) * np.eye(d)]), np.vstack([b, np.zeros((d, 6))]), rcond=None)[0]
    affine = AffineTranslation.fit(source, target, ridge=ridge)
    np.testing.assert_allclose(affine.matrix, expected, atol=1e-8)
    stronger = AffineTranslation.fit(source, target, ridge=50.0)
    assert np.linalg.norm(stronger.matrix) < np.linalg.norm(affine.matrix)
    np.testing.assert_allclose(affine(source.mean(0, keepdims=True))[0], target.mean(0), atol=1e-5)  # mean to mean


def test_translation_with_fewer_anchors_than_dimensions_keeps_to_the_anchors_span():
    """k < d: the directions the anchors do not span are not given an arbitrary rotation."""
    rng = np.random.default_rng(0)
    anchors = rng.normal(size=(10, 32))
    translation = LatentTranslation.fit(anchors, anchors)
    inside = rng.normal(size=(5, 10)) @ (anchors - anchors.mean(0)) + anchors.mean(0)
    np.testing.assert_allclose(translation(inside), inside, atol=1e-4)  # identity where the anchors determine it
    outside = rng.normal(size=(5, 32))
    mapped = translation(outside)
    centred = anchors - anchors.mean(0)
    residual = (mapped - anchors.mean(0)) - ((mapped - anchors.mean(0)) @ np.linalg.pinv(centred)) @ centred
    assert np.abs(residual).max() < 1e-3  # the result stays in the anchors' span: nothing made up outside it


def test_macro_f1_of_a_row_counts_only_classes_the_test_labels_or_predictions_hold():
    from stitchcli.stitching.report import score_predictions

    # labels 1..3 (a CSV of 1.0, 2.0, 3.0 or star ratings): class 0 exists only as an id no row holds
    labels = np.array([1, 1, 2, 2, 3, 3])
    perfect = score_predictions([labels.copy()], labels, [0])
    assert perfect["accuracy"] == 1.0 and perfect["macro_f1"] == 1.0
    # one test row of a two-class dataset, predicted right
    assert score_predictions([np.array([0])], np.array([0]), [0])["macro_f1"] == 1.0
    # a class the test split lacks but a head predicts still counts, with F1 0
    assert score_predictions([np.array([0, 1, 2])], np.array([0, 1, 1]), [0])["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3, abs=1e-6)


def test_eval_similarity_table_survives_a_model_that_gives_every_row_the_same_latent():
    # identical images, or a collapsed encoder: eval stopped after training every head with
    # "x has no variance (every row is the same), so CKA is undefined", and printed no table at all
    from types import SimpleNamespace

    import torch

    from stitchcli.stitching.similarity import ACROSS_SPACES_NOTE, similarity_rows

    rng = np.random.default_rng(0)
    latents = {"flat": np.ones((8, 4), np.float32), "varied": rng.normal(size=(8, 6)).astype(np.float32)}
    data = SimpleNamespace(models={name: SimpleNamespace(evaluation=SimpleNamespace(embeddings=v)) for name, v in latents.items()})
    spaces = {"flat": torch.zeros(8, 1, 5), "varied": torch.from_numpy(rng.normal(size=(8, 1, 5)))}
    rows = similarity_rows(data, ["flat", "varied"], spaces, ["cosine"], StitchSettings(dataset="x", k=3))
    assert [(r.projection, r.cka) for r in rows] == [("cosine", None), ("absolute", None)]
    assert all(r.jaccard is not None and np.isfinite(r.jaccard) for r in rows)
    assert rows[0].note == "cka not defined: flat gives every row the same representation (no variance)"
    assert rows[1].note.endswith(ACROSS_SPACES_NOTE) and rows[1].note.startswith("cka not defined: flat gives")
    data.models["copy"], spaces["copy"] = data.models["varied"], spaces["varied"] * 2
    varied = similarity_rows(data, ["varied", "copy"], spaces, ["cosine"], StitchSettings(dataset="x", k=3))
    assert varied[0].cka == pytest.approx(1.0) and varied[0].note is None and varied[1].note == ACROSS_SPACES_NOTE


def test_class_names_that_differ_only_in_case_or_spaces_are_kept_apart_with_a_warning(tmp_path):
    from stitchcli.data import resolve_dataset
    from stitchcli.progress import Reporter
    from stitchcli.stitching.data import prepare

    root = tmp_path / "pets"
    root.mkdir()
    names = ["cat", "Cat ", "dog", "cat", "dog", "Dog"] * 4
    for split in ("train", "test"):
        _write_csv(root / f"{split}.csv", [(f"{split} row {i}", name) for i, name in enumerate(names)])
    store = EmbeddingStore(tmp_path / "cache")
    rng = np.random.default_rng(0)
    model = import_model(store, root, "A", {split: rng.normal(size=(len(names), 4)) for split in ("train", "test")})
    warnings: list[str] = []
    settings = StitchSettings(dataset=str(root), seeds=(0,), num_anchors=8)
    data = prepare(store, [model], settings, resolve_dataset(str(root)), reporter=Reporter(warn=warnings.append))
    assert data.class_names == ["Cat ", "Dog", "cat", "dog"]  # as written: no label is changed behind the user's back
    assert warnings == [
        "class names that differ only in case or surrounding spaces are different classes: 'Cat ', 'cat'; 'Dog', 'dog'; "
        "write each class one way in the label column if they are one"
    ]
