"""The similarity measures, their calibration, layer matrices and all-pairs (stitchcli.similarity).

Each measure is checked against an independent computation written here in plain numpy/scipy/scikit-learn,
all in float64 and holding every N×N matrix in memory: the Gram (HSIC) forms of the CKA variants (the
unbiased one on uncentred features, as platonic-rep computes it), Kornblith's ``gram_rbf``, scikit-learn's
brute-force cosine NearestNeighbors for the k-NN sets, platonic-rep's dense-mask CKNNA, numpy's SVD with
scipy's principal angles for SVCCA, scipy's orthogonal_procrustes, and scipy's Spearman correlation of
pdist vectors for RSA. The fast tests use synthetic data; the slow ones, real MiniLM embeddings.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes, subspace_angles
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr
from sklearn.neighbors import NearestNeighbors

from stitchcli.errors import UsageError
from stitchcli.metrics import jaccard_at_k, linear_cka
from stitchcli.similarity import (
    Representation,
    calibrate,
    compare_models,
    get_measure,
    layer_matrix,
    list_measures,
    measure,
    permutation_null,
)
from stitchcli.similarity.representation import subsample_rows

TOLERANCE = 1e-6
NOT_SHARED = [name for name in list_measures() if not get_measure(name).shared_space]
RIGID = ["linear-cka", "unbiased-cka", "rbf-cka", "svcca", "procrustes", "rsa"]  # invariant to Q, s, t
COSINE_BASED = ["mutual-knn", "cknna", "jaccard"]  # invariant to Q and s, not to translation


# ------------------------------------------------------------------------------------------ references


def centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0)


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    h = np.eye(n) - 1.0 / n
    return float(np.trace(k @ h @ l @ h))


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012) eq. 5, as platonic-rep writes it."""
    m = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    value = (kt * lt.T).sum() + kt.sum() * lt.sum() / ((m - 1) * (m - 2)) - 2.0 * (kt @ lt).sum() / (m - 2)
    return float(value / (m * (m - 3)))


def cka_from_grams(k: np.ndarray, l: np.ndarray, hsic) -> float:
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def rbf_gram(x: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    """Kornblith et al.'s gram_rbf: bandwidth from the median squared distance (diagonal included)."""
    dot = x @ x.T
    norms = np.diag(dot)
    squared = -2.0 * dot + norms[:, None] + norms[None, :]
    return np.exp(-squared / (2.0 * threshold**2 * np.median(squared)))


def cosine_neighbour_sets(x: np.ndarray, k: int) -> list[set[int]]:
    finder = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(x)
    return [set(row.tolist()) for row in finder.kneighbors(return_distance=False)]


def mutual_knn_reference(x: np.ndarray, y: np.ndarray, k: int) -> float:
    return float(np.mean([len(a & b) / k for a, b in zip(cosine_neighbour_sets(x, k), cosine_neighbour_sets(y, k))]))


def jaccard_reference(x: np.ndarray, y: np.ndarray, k: int) -> float:
    return float(np.mean([len(a & b) / len(a | b) for a, b in zip(cosine_neighbour_sets(x, k), cosine_neighbour_sets(y, k))]))


def cknna_reference(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """platonic-rep's cknna (unbiased, no epsilon) on unit rows, with dense N×N masks."""
    def unit(m: np.ndarray) -> np.ndarray:
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    kx, ly = unit(x) @ unit(x).T, unit(y) @ unit(y).T

    def mask(kernel: np.ndarray) -> np.ndarray:
        hat = kernel.copy()
        np.fill_diagonal(hat, -np.inf)
        chosen = np.zeros_like(kernel)
        np.put_along_axis(chosen, np.argsort(-hat, axis=1, kind="stable")[:, :k], 1.0, axis=1)
        return chosen

    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        both = mask(a) * mask(b)
        return hsic_unbiased(both * a, both * b)

    return similarity(kx, ly) / np.sqrt(similarity(kx, kx) * similarity(ly, ly))


def svcca_reference(x: np.ndarray, y: np.ndarray, components: int) -> float:
    ux = np.linalg.svd(centred(x), full_matrices=False)[0][:, :components]
    uy = np.linalg.svd(centred(y), full_matrices=False)[0][:, :components]
    return float(np.cos(subspace_angles(ux, uy)).mean())


def procrustes_reference(x: np.ndarray, y: np.ndarray) -> float:
    width = max(x.shape[1], y.shape[1])
    def normalised(m: np.ndarray) -> np.ndarray:
        m = np.pad(centred(m), ((0, 0), (0, width - m.shape[1])))
        return m / np.linalg.norm(m)

    a, b = normalised(x), normalised(y)
    rotation, _ = orthogonal_procrustes(b, a)
    return float(np.linalg.norm(a - b @ rotation))


def rsa_reference(x: np.ndarray, y: np.ndarray, distance: str = "euclidean") -> float:
    return float(spearmanr(pdist(x, distance), pdist(y, distance)).statistic)


def mrr_reference(x: np.ndarray, y: np.ndarray, k: int) -> float:
    similarity = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (y / np.linalg.norm(y, axis=1, keepdims=True)).T
    ranks = np.argsort(-similarity, axis=1, kind="stable")
    scores = [1.0 / (np.flatnonzero(row == i)[0] + 1) if i in row[:k] else 0.0 for i, row in enumerate(ranks)]
    return float(np.mean(scores))


def reference(name: str, x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Give the independent computation of measure ``name`` at its default options (k as given)."""
    if name == "linear-cka":
        return cka_from_grams(x @ x.T, y @ y.T, hsic_biased)
    if name == "unbiased-cka":
        return cka_from_grams(x @ x.T, y @ y.T, hsic_unbiased)  # uncentred: the estimator ignores offsets
    if name == "rbf-cka":
        return cka_from_grams(rbf_gram(x), rbf_gram(y), hsic_biased)
    if name == "mutual-knn":
        return mutual_knn_reference(x, y, k)
    if name == "cknna":
        return cknna_reference(x, y, k)
    if name == "svcca":
        return svcca_reference(x, y, 10)
    if name == "procrustes":
        return procrustes_reference(x, y)
    if name == "rsa":
        return rsa_reference(x, y)
    if name == "jaccard":
        return jaccard_reference(x, y, k)
    if name == "mrr":
        return mrr_reference(x, y, k)
    if name == "cosine":
        return float(np.mean(np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))))
    raise AssertionError(f"no reference for {name}")


def related(n: int = 120, p: int = 24, q: int = 16, seed: int = 0, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Give two float64 spaces of the same samples: y a noisy nonlinear image of x (another width)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) + 2.0
    y = np.tanh(x @ rng.normal(size=(p, q)) / np.sqrt(p)) + noise * 0.3 * rng.normal(size=(n, q))
    return x, y


def rigid_copy(x: np.ndarray, seed: int = 1, translate: bool = True) -> np.ndarray:
    """Give x rotated by a random orthogonal map, scaled by 3.5 and (optionally) translated."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
    return 3.5 * x @ q + (rng.normal(size=x.shape[1]) if translate else 0.0)


# -------------------------------------------------------------------------------------------- registry


def test_the_registry_names_every_measure_of_the_issue_with_its_direction() -> None:
    assert list_measures()[:10] == [
        "linear-cka", "unbiased-cka", "rbf-cka", "mutual-knn", "cknna", "svcca", "procrustes", "rsa", "jaccard", "mrr",
    ]
    assert get_measure("procrustes").higher_is_more_alike is False and get_measure("procrustes").identical == 0.0
    assert all(get_measure(n).higher_is_more_alike for n in list_measures() if n != "procrustes")
    assert get_measure("cka") is get_measure("linear-cka")  # eval's name
    for name in list_measures():
        found = get_measure(name)
        assert found.invariant_to and found.cost and found.family


def test_an_unknown_measure_or_option_is_one_usage_error_with_a_suggestion() -> None:
    with pytest.raises(UsageError, match="did you mean 'cknna'"):
        get_measure("cknn")
    x, y = related()
    with pytest.raises(UsageError, match="takes no option 'k'"):
        measure(x, y, "linear-cka", k=5)
    with pytest.raises(UsageError, match="same samples"):
        measure(x, y[:-1], "mutual-knn")
    with pytest.raises(UsageError, match="k must be a whole number from 1 to 119"):
        measure(x, y, "mutual-knn", k=120)
    with pytest.raises(UsageError, match="unknown RSA distance 'cosin'"):
        measure(x, y, "rsa", distance="cosin")
    with pytest.raises(UsageError, match="max_rows"):
        measure(x, y, "rbf-cka", max_rows=2)
    with pytest.raises(UsageError, match="no variance"):
        measure(np.ones((10, 3)), y[:10], "procrustes")


# ------------------------------------------------------------------------------- agreement, symmetry


@pytest.mark.parametrize("name", list_measures())
def test_each_measure_matches_its_independent_computation(name: str) -> None:
    x, y = related()
    if get_measure(name).shared_space:
        y = x + 1.5 * np.random.default_rng(3).normal(size=x.shape)
    options = {"k": 7} if "k" in get_measure(name).options else {}
    assert measure(x, y, name, **options) == pytest.approx(reference(name, x, y, k=7), abs=TOLERANCE)


@pytest.mark.parametrize("name", NOT_SHARED)
def test_symmetric_measures_give_the_same_value_both_ways(name: str) -> None:
    x, y = related(seed=4)
    forward, backward = measure(x, y, name), measure(y, x, name)
    if get_measure(name).symmetric:
        assert forward == pytest.approx(backward, abs=1e-12)
    else:  # CKNNA: platonic-rep's estimator is not symmetric in a non-symmetric mask, but nearly
        assert forward == pytest.approx(backward, abs=0.02)
        assert reference(name, y, x) == pytest.approx(backward, abs=TOLERANCE)


@pytest.mark.parametrize("name", ["linear-cka", "jaccard"])
def test_the_prepared_form_equals_eval_s_function_from_metrics(name: str) -> None:
    x, y = related(n=300)
    plain = linear_cka(x, y) if name == "linear-cka" else jaccard_at_k(x, y, 10)
    assert measure(Representation(x), Representation(y), name) == pytest.approx(plain, abs=1e-12)
    assert measure(x, y, name) == plain  # eval's function itself: eval's numbers do not change


def test_float32_inputs_agree_with_float64_to_float32_precision() -> None:
    x, y = related(n=200)
    for name in ("linear-cka", "unbiased-cka", "procrustes", "svcca", "rsa"):
        assert measure(x.astype(np.float32), y.astype(np.float32), name) == pytest.approx(measure(x, y, name), abs=1e-4)


def test_float32_inputs_spread_beyond_float32_s_range_are_centred_in_float64() -> None:
    # every value is finite, but centring puts some beyond ±3.4e38: the float32 copy would hold infinities
    x = np.array([[3e38, 1], [-3e38, 2], [-3e38, 3], [-3e38, 5], [-3e38, 1]], dtype=np.float32)
    y = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    expected = measure(x.astype(np.float64), y.astype(np.float64), "procrustes")
    assert measure(x, y, "procrustes") == pytest.approx(expected, abs=1e-6)  # it gave 0.0 ("identical")
    assert measure(Representation(x), Representation(y), "linear-cka") == pytest.approx(linear_cka(x, y), abs=1e-6)


# ------------------------------------------------------------------------------------ sanity checks


@pytest.mark.parametrize("name", RIGID)
def test_rigid_invariant_measures_score_identical_against_a_rotated_scaled_shifted_copy(name: str) -> None:
    x, _ = related()
    assert measure(x, rigid_copy(x), name) == pytest.approx(get_measure(name).identical, abs=1e-6)


@pytest.mark.parametrize("name", COSINE_BASED)
def test_cosine_neighbour_measures_score_one_against_a_rotated_scaled_copy_but_not_a_shifted_one(name: str) -> None:
    x, _ = related()
    x = x - x.mean(axis=0)
    assert measure(x, rigid_copy(x, translate=False), name) == pytest.approx(1.0, abs=1e-9)
    assert measure(x, x + 5.0 * np.random.default_rng(0).normal(size=x.shape[1]), name) < 0.9


@pytest.mark.parametrize("name", NOT_SHARED)
def test_a_row_permuted_copy_calibrates_to_about_zero_and_an_aligned_one_to_one(name: str) -> None:
    x, _ = related(n=150)
    shuffled = x[np.random.default_rng(7).permutation(len(x))]
    noise = permutation_null(x, shuffled, name, permutations_count=20, seed=1)
    assert abs(noise.calibrated) < 0.1, noise
    aligned = permutation_null(x, rigid_copy(x, translate=False), name, permutations_count=5)
    assert aligned.calibrated == pytest.approx(1.0, abs=1e-6)
    assert aligned.p_value == pytest.approx(1 / 6) and aligned.z_score > 3


@pytest.mark.parametrize("name", NOT_SHARED)
def test_a_permuted_representation_gives_what_the_permuted_matrix_gives(name: str) -> None:
    """The null's shortcuts (re-indexed neighbour lists and RDMs) equal a fresh computation."""
    x, y = related(n=90)
    perm = torch.from_numpy(np.random.default_rng(2).permutation(90))
    rx, ry = Representation(x), Representation(y)
    measure(rx, ry, name)  # prepares both, so the permuted copy derives from what was prepared
    twice = ry.permuted(torch.arange(89, -1, -1)).permuted(perm)  # a permutation of a permutation
    expected = measure(x, y[np.arange(89, -1, -1)][perm.numpy()], name)
    assert measure(rx, twice, name) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("p", "q"), [(50, 16), (16, 50), (50, 70)], ids=["wide-narrow", "narrow-wide", "both-wide"])
@pytest.mark.parametrize("name", ["linear-cka", "unbiased-cka", "procrustes", "svcca"])
def test_fewer_rows_than_columns_give_the_reference_values_aligned_and_permuted(name: str, p: int, q: int) -> None:
    # 30 rows of 50 or 70 columns: the wide side enters through N×N matrices (a QR factor, the row Gram matrix)
    x, y = related(n=30, p=p, q=q)
    assert measure(x, y, name) == pytest.approx(reference(name, x, y), abs=TOLERANCE)
    perm = torch.from_numpy(np.random.default_rng(5).permutation(30))
    rx, ry = Representation(x), Representation(y)
    measure(rx, ry, name)
    assert measure(rx, ry.permuted(perm), name) == pytest.approx(reference(name, x, y[perm.numpy()]), abs=TOLERANCE)
    assert measure(rx, rigid_copy(x), name) == pytest.approx(get_measure(name).identical, abs=1e-6)


@pytest.mark.parametrize("order", [["linear-cka", "unbiased-cka", "procrustes"], ["procrustes", "unbiased-cka", "linear-cka"]])
def test_wide_measures_sharing_a_pair_give_the_reference_values_in_either_order(order: list[str]) -> None:
    # CKA first reads the row Gram matrices; Procrustes first makes the cross-covariance the CKAs then reuse
    x, y = related(n=30, p=50, q=70)
    report = compare_models({"x": x, "y": y}, order, null=2)
    for record in report.records:
        assert record.value == pytest.approx(reference(record.measure, x, y), abs=TOLERANCE), record.measure


def test_subsampled_measures_use_the_same_seeded_rows_for_both_models() -> None:
    x, y = related(n=300)
    rows = subsample_rows(300, 120, seed=5).numpy()
    assert len(rows) == 120 and len(set(rows.tolist())) == 120
    assert measure(x, y, "rsa", max_rows=120, seed=5) == pytest.approx(rsa_reference(x[rows], y[rows]), abs=TOLERANCE)
    assert measure(x, y, "rbf-cka", max_rows=120, seed=5) == pytest.approx(reference("rbf-cka", x[rows], y[rows]), abs=TOLERANCE)
    assert measure(x, y, "rsa", max_rows=300) == pytest.approx(rsa_reference(x, y), abs=TOLERANCE)


def test_rsa_takes_the_cosine_and_correlation_distances() -> None:
    x, y = related()
    for distance in ("cosine", "correlation"):
        assert measure(x, y, "rsa", distance=distance) == pytest.approx(rsa_reference(x, y, distance), abs=TOLERANCE)


def test_rsa_gives_tied_distances_their_average_rank_as_spearman_does() -> None:
    # points on a small integer grid: many pairs are exactly equally far apart, in both models
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(60, 4)).astype(np.float64)
    y = x[:, :3] + rng.integers(0, 2, size=(60, 3))
    assert len(np.unique(pdist(x))) < 20  # the case is the one meant: ties everywhere
    # Euclidean only: integer squared distances are exact on both sides, so the ties are the same ties (equal
    # cosines can differ in their last bit between two ways of computing them)
    assert measure(x, y, "rsa") == pytest.approx(rsa_reference(x, y), abs=TOLERANCE)


# ------------------------------------------------------------------------------------------ calibration


def test_calibration_is_chance_corrected_and_distance_aware() -> None:
    similar = calibrate(0.6, [0.2, 0.2, 0.3, 0.3], "linear-cka")
    assert similar.null_mean == pytest.approx(0.25) and similar.null_std == pytest.approx(0.05)
    assert similar.calibrated == pytest.approx((0.6 - 0.25) / (1 - 0.25))
    assert similar.z_score == pytest.approx(7.0) and similar.p_value == pytest.approx(1 / 5)
    distance = calibrate(0.4, [1.0, 1.2], "procrustes")  # closer than chance: positive
    assert distance.calibrated == pytest.approx((1.1 - 0.4) / 1.1)
    assert distance.z_score == pytest.approx(7.0) and distance.p_value == pytest.approx(1 / 3)
    assert calibrate(0.1, [0.3, 0.3], "mutual-knn").z_score != calibrate(0.1, [0.3, 0.3], "mutual-knn").z_score  # NaN


# ---------------------------------------------------------------------------------- layers, all pairs


def layered(seed: int, n: int = 100, layers: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(0).normal(size=(n, 12))
    out, h = {}, base
    for i in range(layers):
        h = np.tanh(h @ rng.normal(size=(h.shape[1], 10 + 4 * i)) / 2) + 0.2 * rng.normal(size=(n, 10 + 4 * i))
        out[f"block{i}"] = h
    return out


def test_layer_matrix_holds_every_pair_and_the_best_pair_s_null_is_the_null_of_the_best() -> None:
    a, b = layered(1), layered(2)
    result = layer_matrix(a, b, "mutual-knn", null=6, seed=3, k=5, model_a="A", model_b="B")
    direct = np.array([[measure(a[la], b[lb], "mutual-knn", k=5) for lb in b] for la in a])
    np.testing.assert_allclose(result.values, direct, atol=1e-12)
    i, j = np.unravel_index(direct.argmax(), direct.shape)
    assert (result.best.layer_a, result.best.layer_b) == (list(a)[i], list(b)[j])
    perms = [torch.randperm(100, generator=g) for g in [torch.Generator().manual_seed(3)] for _ in range(6)]
    best_null = [max(measure(a[la], b[lb][p.numpy()], "mutual-knn", k=5) for la in a for lb in b) for p in perms]
    assert result.best.null.null_mean == pytest.approx(np.mean(best_null), abs=1e-12)
    assert result.best.null.null_mean >= result.null_mean.max() - 1e-12  # selection inflates the null
    assert result.to_dict()["best"]["layer_a"] == result.best.layer_a


@pytest.mark.slow
def test_compare_models_gives_every_row_of_the_issue_and_an_n_by_n_table() -> None:
    models = {"a": layered(1), "b": layered(2), "c": layered(3)}
    report = compare_models(models, ["linear-cka", "cknna", "procrustes"], null=3, k=5)
    rows = [r.to_dict() for r in report.records]
    assert set(rows[0]) == {"model_a", "model_b", "layer_a", "layer_b", "projection", "measure", "value",
                            "null_mean", "null_std", "calibrated"}
    per_measure = {name: [r for r in rows if r["measure"] == name] for name in ("linear-cka", "cknna", "procrustes")}
    assert len(per_measure["linear-cka"]) == 3 * 9  # 3 unordered pairs x 3 x 3 layers
    assert len(per_measure["cknna"]) == 6 * 9  # not symmetric: both orders
    row = next(r for r in per_measure["cknna"] if (r["model_a"], r["model_b"], r["layer_a"], r["layer_b"]) == ("c", "a", "block2", "block0"))
    assert row["value"] == pytest.approx(measure(models["c"]["block2"], models["a"]["block0"], "cknna", k=5), abs=1e-12)
    names, table = report.table("procrustes")
    assert names == ["a", "b", "c"] and table[0, 0] == 0.0 and table[0, 2] == table[2, 0]
    best = min(r["value"] for r in per_measure["procrustes"] if (r["model_a"], r["model_b"]) == ("a", "c"))
    assert table[0, 2] == best  # the best layer pair of a distance is its smallest


def test_final_representations_give_null_layers_and_projections_compare_relative_spaces() -> None:
    x, y = related(n=80)
    anchors = {"x": x[:20] + 0.1, "y": y[:20] - 0.1}
    report = compare_models({"x": x, "y": y}, ["linear-cka", "mrr"], projections=(None, "cosine"), anchors=anchors)
    absolute = [r for r in report.records if r.projection is None]
    assert [(r.measure, r.layer_a, r.layer_b) for r in absolute] == [("linear-cka", None, None)]  # mrr: relative only
    from stitchcli.relative import relative_projection

    rx, ry = relative_projection(x, anchors["x"], "cosine"), relative_projection(y, anchors["y"], "cosine")
    relative = {r.measure: r.value for r in report.records if r.projection == "cosine" and r.model_a == "x"}
    assert relative["mrr"] == pytest.approx(measure(rx, ry, "mrr"), abs=1e-12)
    assert relative["linear-cka"] == pytest.approx(measure(rx, ry, "linear-cka"), abs=1e-9)


def test_the_progress_bar_counts_every_cell_aligned_and_permuted_and_says_what_runs() -> None:
    from stitchcli.progress import Reporter

    events: list[tuple] = []
    reporter = Reporter(start=lambda label, total, done, unit="rows": events.append(("start", total, done, unit)),
                        advance=lambda n: events.append(("advance", n)), status=lambda line: events.append(("status", line)),
                        stop=lambda: events.append(("stop",)))
    x, y = related(n=60)
    models = {"a": {"early": x, "late": y}, "b": y, "c": x + 1.0}
    compare_models(models, ["linear-cka", "cknna"], null=3, k=5, reporter=reporter)
    # linear-cka: 3 unordered pairs; cknna (not symmetric) 6 ordered; a has 2 layers: (2 + 2 + 1) and (2·2 + 2·1 + 1·1)
    cells = (2 + 2 + 1) + (2 + 2 + 2 + 2 + 1 + 1)
    assert events[0] == ("start", cells * (1 + 3), 0, "cells")
    assert sum(e[1] for e in events if e[0] == "advance") == cells * 4
    assert events[-1] == ("stop",) and [e for e in events if e[0] == "stop"] == [("stop",)]
    statuses = [e[1] for e in events if e[0] == "status"]
    assert any(line.startswith("absolute: cross: linear-cka") for line in statuses)
    assert any("cknna" in line for line in statuses)


def test_the_report_is_strict_json_and_relative_spaces_need_every_model_s_anchors() -> None:
    import json

    x, y = related(n=60)
    report = compare_models({"x": {"early": x, "late": y}, "y": y}, ["svcca", "jaccard"], null=2, k=5)
    document = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert {r["layer_b"] for r in document["rows"]} == {None} and {r["layer_a"] for r in document["rows"]} == {"early", "late"}
    assert document["layer_matrices"][0]["best"]["layer_a"] in ("early", "late")
    with pytest.raises(UsageError, match="no anchors for model 'y'"):
        compare_models({"x": x, "y": y}, ["mrr"], projections=("cosine",), anchors={"x": x[:10]})
    with pytest.raises(UsageError, match="no similarity measure takes option"):
        compare_models({"x": x, "y": y}, ["svcca"], neighbours=3)


# ------------------------------------------------------------------------------------ real embeddings


@pytest.fixture(scope="module")
def minilm_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    """Give MiniLM's embeddings of 200 real BBC articles at 128 and at 16 tokens (float64): two real
    representations of the same samples, built from the demo extra's packages in a fresh cache."""
    from stitchcli.assets import packaged_minilm_path, prepare_packaged
    from stitchcli.embedding import EmbedOptions, embed, load_embeddings
    from stitchcli.models import ModelRef
    from stitchcli.store import EmbeddingStore

    store = EmbeddingStore(tmp_path_factory.mktemp("cache"))
    bbc = prepare_packaged(store, "packaged:bbc-news", [])
    model = str(packaged_minilm_path())
    spaces = []
    for length in (128, 16):
        ref = ModelRef(model, {"max_length": length})
        embed([ref], bbc, ["test"], store=store, options=EmbedOptions(limit=200, num_workers=0))
        spaces.append(load_embeddings(store, ref, bbc, "test", limit=200).embeddings.astype(np.float64))
    return spaces[0], spaces[1]


@pytest.mark.slow
@pytest.mark.real
def test_every_measure_agrees_with_its_reference_on_real_minilm_embeddings(minilm_pair) -> None:
    long, short = minilm_pair
    assert long.shape == short.shape == (200, 384)
    for name in list_measures():
        value = measure(long, short, name)
        assert value == pytest.approx(reference(name, long, short), abs=TOLERANCE), name
        if get_measure(name).symmetric:
            assert measure(short, long, name) == pytest.approx(value, abs=1e-12), name


@pytest.mark.slow
@pytest.mark.real
def test_real_embeddings_against_a_rotated_copy_score_identical_and_a_shuffled_one_calibrates_to_zero(minilm_pair) -> None:
    long, short = minilm_pair
    rotated = rigid_copy(long, translate=False)
    shuffled = short[np.random.default_rng(0).permutation(len(short))]
    for name in RIGID + COSINE_BASED:
        assert measure(long, rotated, name) == pytest.approx(get_measure(name).identical, abs=1e-6), name
        assert abs(permutation_null(long, shuffled, name, permutations_count=10).calibrated) < 0.1, name
        # The truncated articles stay far more alike than chance.
        assert permutation_null(long, short, name, permutations_count=10).calibrated > 0.1, name


def test_svcca_leaves_out_directions_without_variance() -> None:
    """A rank-3 representation in 16 columns (a relative space on few anchors is one): SVCCA keeps its 3 directions
    instead of refusing for want of 10 (the command line has no way to lower the components)."""
    rng = np.random.default_rng(3)
    low = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 16))  # rank 3 once centred
    other = rng.normal(size=(200, 12)) + low[:, :12]
    kept = np.linalg.svd(centred(low), full_matrices=False)[0][:, :3]  # the 3 directions with variance
    top = np.linalg.svd(centred(other), full_matrices=False)[0][:, :10]
    assert measure(low, other, "svcca") == pytest.approx(float(np.cos(subspace_angles(kept, top)).mean()), abs=1e-6)
    assert measure(low, low @ np.linalg.qr(rng.normal(size=(16, 16)))[0], "svcca") == pytest.approx(1.0, abs=1e-6)
