"""Classification scores and latent similarity measures (docs/METHOD.md §6).

Each measure is checked against a plain reference that holds everything in memory: scikit-learn for the
classification scores, the float64 Gram (HSIC) form for CKA, and a full N×N numpy cosine matrix ordered by a
stable argsort (ties to the lower index) for Jaccard@k and MRR@k. Chunk sizes smaller than N exercise the
streaming. Tie-breaking is tested on axis-aligned vectors, whose cosines (0 or ±1) are exact in any
summation order, so the reference and the implementation see the very same ties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score

from stitchcli.errors import UsageError
from stitchcli.metrics import accuracy, jaccard_at_k, linear_cka, macro_f1, mean_cosine, mrr_at_k

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------ references


def cka_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Give linear CKA in the Gram (HSIC) form: tr(KHLH) / sqrt(tr(KHKH)·tr(LHLH)), all in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.shape[0]
    centring = np.eye(n) - np.ones((n, n)) / n
    k = centring @ (x @ x.T) @ centring
    l = centring @ (y @ y.T) @ centring
    return float(np.trace(k @ l) / np.sqrt(np.trace(k @ k) * np.trace(l @ l)))


def cosine_matrix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Give the full (N, N) float64 cosine matrix, zero rows giving 0."""
    def unit(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, np.float64)
        norm = np.linalg.norm(m, axis=1, keepdims=True)
        return m / np.where(norm > 0, norm, 1.0)

    return unit(x) @ unit(y).T


def ranked(similarity: np.ndarray) -> np.ndarray:
    """Give each row's column indices from most to least similar, ties to the lower index."""
    return np.argsort(-similarity, axis=1, kind="stable")


def jaccard_reference(x: np.ndarray, y: np.ndarray, k: int) -> float:
    scores = []
    sx, sy = cosine_matrix(x, x), cosine_matrix(y, y)
    np.fill_diagonal(sx, -np.inf)
    np.fill_diagonal(sy, -np.inf)
    for near_x, near_y in zip(ranked(sx)[:, :k], ranked(sy)[:, :k]):
        a, b = set(near_x.tolist()), set(near_y.tolist())
        scores.append(len(a & b) / len(a | b))
    return float(np.mean(scores))


def mrr_reference(x: np.ndarray, y: np.ndarray, k: int) -> float:
    order = ranked(cosine_matrix(x, y))
    scores = []
    for i, row in enumerate(order):
        rank = int(np.flatnonzero(row == i)[0]) + 1
        scores.append(1.0 / rank if rank <= k else 0.0)
    return float(np.mean(scores))


def axis_aligned(draw: st.DrawFn, n: int, dim: int) -> np.ndarray:
    """Draw n rows that are each 0 or ±c·e_j (c in 1..3): many exact ties and a few zero rows."""
    rows = np.zeros((n, dim))
    for i in range(n):
        axis = draw(st.integers(-1, dim - 1))
        if axis >= 0:
            rows[i, axis] = draw(st.sampled_from([-3.0, -1.0, 1.0, 2.0, 3.0]))
    return rows


@st.composite
def tied_spaces(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int, int]:
    n = draw(st.integers(2, 24))
    x = axis_aligned(draw, n, draw(st.integers(1, 4)))
    y = axis_aligned(draw, n, draw(st.integers(1, 4)))
    k = draw(st.integers(1, n - 1))
    chunk = draw(st.integers(1, n))
    return x, y, k, chunk


# ------------------------------------------------------------------------------------------ classification


@pytest.mark.parametrize("seed", range(5))
def test_accuracy_and_macro_f1_match_sklearn_on_random_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 6, size=50)
    y_pred = np.where(rng.random(50) < 0.5, y_true, rng.integers(0, 6, size=50))
    assert accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert macro_f1(y_true, y_pred) == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12
    )
    assert macro_f1(torch.as_tensor(y_true), torch.as_tensor(y_pred), num_classes=9) == pytest.approx(
        f1_score(y_true, y_pred, average="macro", labels=list(range(9)), zero_division=0), abs=1e-12
    )


def test_macro_f1_counts_a_class_never_predicted_and_classes_never_seen() -> None:
    y_true = [0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 0, 0, 1, 1]  # class 2 is never predicted: its F1 is 0 and still counts
    expected = f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert macro_f1(y_true, y_pred) == pytest.approx(expected, abs=1e-12)
    assert expected < f1_score(y_true, y_pred, average="macro", labels=[0, 1], zero_division=0)
    # Classes 3 and 4 appear nowhere: with num_classes=5 they count as 0, lowering the mean by 3/5.
    with_absent = macro_f1(y_true, y_pred, num_classes=5)
    assert with_absent == pytest.approx(
        f1_score(y_true, y_pred, average="macro", labels=[0, 1, 2, 3, 4], zero_division=0), abs=1e-12
    )
    assert with_absent == pytest.approx(expected * 3 / 5, abs=1e-12)


@PROPERTY
@given(st.lists(st.tuples(st.integers(-2, 5), st.integers(-2, 5)), min_size=1, max_size=40))
def test_macro_f1_and_accuracy_match_sklearn_on_any_labels(pairs: list[tuple[int, int]]) -> None:
    y_true, y_pred = (list(column) for column in zip(*pairs))
    assert accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert macro_f1(y_true, y_pred) == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-12
    )


def test_labels_may_be_whole_floats_and_perfect_predictions_score_one() -> None:
    labels = np.array([2.0, 0.0, 1.0, 1.0])
    assert accuracy(labels, labels.astype(np.int64)) == 1.0
    assert macro_f1(labels, labels, num_classes=3) == 1.0
    assert accuracy([0, 1, 1, 0], [1, 1, 0, 0]) == 0.5


# -------------------------------------------------------------------------------------------- linear CKA


def test_cka_matches_the_gram_form_while_streaming_with_different_widths() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 12)) + 5.0
    y = np.tanh(x @ rng.normal(size=(12, 7))) + 0.3 * rng.normal(size=(70, 7))
    expected = cka_reference(x, y)
    assert 0.1 < expected < 0.99  # a value that could be wrong in either direction
    for chunk_size in (1, 9, 70, 8192):
        assert linear_cka(x, y, chunk_size=chunk_size) == pytest.approx(expected, abs=1e-6)
    assert linear_cka(torch.as_tensor(x, dtype=torch.float32), y, chunk_size=16) == pytest.approx(expected, abs=1e-6)


def test_cka_is_invariant_to_orthogonal_maps_scaling_and_offsets() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 8))
    y = x[:, :5] ** 2 + rng.normal(size=(60, 5))
    base = linear_cka(x, y, chunk_size=16)
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x @ rotation, y, chunk_size=16) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, 7.5 * y, chunk_size=16) == pytest.approx(base, abs=1e-10)
    assert linear_cka(0.01 * x + 1e6, y, chunk_size=16) == pytest.approx(base, abs=1e-8)
    assert linear_cka(x, x, chunk_size=16) == pytest.approx(1.0, abs=1e-12)


def test_cka_of_independent_data_is_clearly_below_one() -> None:
    rng = np.random.default_rng(2)
    assert linear_cka(rng.normal(size=(400, 10)), rng.normal(size=(400, 6)), chunk_size=64) < 0.2


def test_cka_refuses_a_constant_input() -> None:
    rng = np.random.default_rng(3)
    constant = np.full((20, 4), 0.1, dtype=np.float32)
    with pytest.raises(UsageError, match="no variance"):
        linear_cka(constant, rng.normal(size=(20, 3)))
    with pytest.raises(UsageError, match="y has no variance"):
        linear_cka(rng.normal(size=(20, 3)), constant, chunk_size=3)


# ----------------------------------------------------------------------------------- Jaccard@k and MRR@k


@pytest.mark.parametrize(("n", "k", "chunk_size"), [(40, 5, 7), (33, 32, 10), (25, 1, 4)])
def test_neighbour_measures_match_the_full_matrix_reference(n: int, k: int, chunk_size: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 6))
    y = x @ rng.normal(size=(6, 6)) + 0.8 * rng.normal(size=(n, 6))
    other = rng.normal(size=(n, 4))
    assert jaccard_at_k(x, y, k, chunk_size=chunk_size) == pytest.approx(jaccard_reference(x, y, k), abs=1e-12)
    assert jaccard_at_k(x, other, k, chunk_size=chunk_size) == pytest.approx(
        jaccard_reference(x, other, k), abs=1e-12
    )
    assert mrr_at_k(x, y, k, chunk_size=chunk_size) == pytest.approx(mrr_reference(x, y, k), abs=1e-12)
    # float32 inputs compute in float32; the random gaps between neighbours are far above its rounding.
    x32, y32 = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    assert jaccard_at_k(x32, y32, k, chunk_size=chunk_size) == pytest.approx(jaccard_reference(x, y, k), abs=1e-12)
    assert mrr_at_k(x32, y32, k, chunk_size=chunk_size) == pytest.approx(mrr_reference(x, y, k), abs=1e-12)


@PROPERTY
@given(tied_spaces())
def test_ties_go_to_the_lower_index_as_a_stable_sort_orders_them(case: tuple[np.ndarray, np.ndarray, int, int]) -> None:
    x, y, k, chunk_size = case
    assert jaccard_at_k(x, y, k, chunk_size=chunk_size) == pytest.approx(jaccard_reference(x, y, k), abs=1e-12)
    if x.shape[1] == y.shape[1]:
        assert mrr_at_k(x, y, k, chunk_size=chunk_size) == pytest.approx(mrr_reference(x, y, k), abs=1e-12)
    assert mrr_at_k(x, x, k, chunk_size=chunk_size) == pytest.approx(mrr_reference(x, x, k), abs=1e-12)


def test_a_space_against_itself_scores_one_and_a_shuffled_one_scores_low() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    assert jaccard_at_k(x, x, 10, chunk_size=64) == 1.0
    assert jaccard_at_k(x, 3 * x, 10, chunk_size=64) == 1.0  # cosine ignores scale
    assert mrr_at_k(x, x, 10, chunk_size=64) == 1.0
    shuffled = x[rng.permutation(200)]
    assert mrr_at_k(x, shuffled, 10, chunk_size=64) < 0.1
    assert jaccard_at_k(x, shuffled, 10, chunk_size=64) < 0.2


def test_mrr_scores_the_rank_of_the_counterpart() -> None:
    x = np.eye(3)
    # y_0 and y_1 are each closer to the other's x, so samples 0 and 1 find their counterparts second.
    y = np.array([[0.6, 0.8, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]])
    assert mrr_at_k(x, y, 3) == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    assert mrr_at_k(x, y, 1) == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------- cosine


def test_mean_cosine_of_scaled_and_negated_copies_and_of_zero_rows() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 5)).astype(np.float32)
    assert mean_cosine(x, 2 * x) == pytest.approx(1.0, abs=1e-6)
    assert mean_cosine(x, -x) == pytest.approx(-1.0, abs=1e-6)
    y = rng.normal(size=(30, 5))
    assert mean_cosine(x, y) == pytest.approx(float(np.mean(np.diag(cosine_matrix(x, y)))), abs=1e-6)
    x[:10] = 0.0
    assert mean_cosine(x, x) == pytest.approx(20 / 30, abs=1e-6)
    assert mean_cosine(np.zeros((4, 3)), np.zeros((4, 3))) == 0.0


# ---------------------------------------------------------------------------------------- inputs and errors


def test_numpy_and_torch_inputs_agree_and_are_left_unchanged() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(25, 4)).astype(np.float32)
    y = rng.normal(size=(25, 4)).astype(np.float32)
    x_before, y_before = x.copy(), y.copy()
    xt = torch.tensor(x, requires_grad=True)
    for measure in (linear_cka, jaccard_at_k, mrr_at_k, mean_cosine):
        from_numpy = measure(x, y)
        from_torch = measure(xt, torch.as_tensor(y))
        assert isinstance(from_numpy, float) and isinstance(from_torch, float)
        assert from_numpy == pytest.approx(from_torch, abs=1e-7)
    for score in (accuracy, macro_f1):
        assert isinstance(score(np.array([0, 1]), torch.tensor([0, 0])), float)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)
    np.testing.assert_array_equal(xt.detach().numpy(), x_before)


def test_read_only_and_big_endian_arrays_are_accepted() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(12, 3))
    frozen = x.copy()
    frozen.flags.writeable = False
    assert jaccard_at_k(frozen, x.astype(">f8"), 3) == 1.0


MATRIX = np.random.default_rng(8).normal(size=(10, 4))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: linear_cka(MATRIX, MATRIX[:9]), "10 rows but y has 9"),
        (lambda: jaccard_at_k(MATRIX, MATRIX[:9]), "10 rows but y has 9"),
        (lambda: mrr_at_k(MATRIX, MATRIX[:9]), "10 rows but y has 9"),
        (lambda: mean_cosine(MATRIX, MATRIX[:9]), "10 rows but y has 9"),
        (lambda: jaccard_at_k(MATRIX, MATRIX, 0), "k must be"),
        (lambda: jaccard_at_k(MATRIX, MATRIX, 10), "from 1 to 9"),
        (lambda: jaccard_at_k(MATRIX, MATRIX, 2.0), "k must be"),
        (lambda: mrr_at_k(MATRIX, MATRIX, 0), "k must be"),
        (lambda: mrr_at_k(MATRIX, MATRIX, 11), "from 1 to 10"),
        (lambda: mrr_at_k(MATRIX, MATRIX[:, :3]), "must share a dimension"),
        (lambda: mean_cosine(MATRIX, MATRIX[:, :3]), "must share a dimension"),
        (lambda: jaccard_at_k(MATRIX, MATRIX, 3, chunk_size=0), "chunk_size"),
        (lambda: linear_cka(MATRIX, MATRIX, chunk_size=0), "chunk_size"),
        (lambda: linear_cka(MATRIX[:1], MATRIX[:1]), "at least 2 samples"),
        (lambda: linear_cka(np.zeros((0, 4)), np.zeros((0, 4))), "empty"),
        (lambda: mean_cosine(np.zeros((3, 0)), np.zeros((3, 0))), "empty"),
        (lambda: mrr_at_k(np.zeros((0, 4)), np.zeros((0, 4)), 1), "empty"),
        (lambda: jaccard_at_k(MATRIX[0], MATRIX[0]), "2-D matrix"),
        (lambda: mean_cosine(np.where(MATRIX > 1, np.nan, MATRIX), MATRIX), "NaN or infinite"),
        (lambda: mean_cosine(np.array([["a"]]), np.array([["b"]])), "must hold numbers"),
        (lambda: accuracy([0, 1, 2], [0, 1]), "3 labels but y_pred has 2"),
        (lambda: macro_f1([0, 1], [0, 1, 1]), "2 labels but y_pred has 3"),
        (lambda: accuracy([], []), "empty"),
        (lambda: macro_f1(np.array([], dtype=int), np.array([], dtype=int)), "empty"),
        (lambda: macro_f1([0, 1, 5], [0, 1, 1], num_classes=3), "label 5 is outside 0..2"),
        (lambda: macro_f1([0, -1], [0, 0], num_classes=3), "label -1 is outside"),
        (lambda: macro_f1([0, 1], [0, 1], num_classes=0), "num_classes"),
        (lambda: accuracy([0.5, 1.0], [0, 1]), "whole class indices"),
        (lambda: accuracy([[0, 1]], [[0, 1]]), "1-D vector"),
    ],
)
def test_user_errors_raise_one_clear_usage_error(call, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        call()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_single_bad_value_is_found_wherever_it_is(bad: float) -> None:
    # the check sums each block first: one NaN or infinity anywhere must still be found, also past the first block
    for dtype in (np.float64, np.float32, np.float16):
        x = np.random.default_rng(0).normal(size=(9000, 3)).astype(dtype)
        x[8500, 2] = bad
        with pytest.raises(UsageError, match="NaN or infinite"):
            mean_cosine(x, x)


def test_float8_inputs_are_checked_value_by_value() -> None:
    import torch

    x = torch.from_numpy(np.random.default_rng(0).normal(size=(6, 4))).to(torch.float8_e5m2)
    assert np.isfinite(mean_cosine(x, x))  # float8 has no sum on the CPU: the check must not need one
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(UsageError, match="NaN or infinite"):
        mean_cosine(bad, x)


def test_finite_values_whose_sum_overflows_are_accepted() -> None:
    # the sum of these float32 values is infinite although each is finite: the value-by-value check decides
    x = np.full((6, 4), 3e38, dtype=np.float32)
    x[::2] *= -0.5
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow is the point here
        assert not np.isfinite(x.sum(dtype=np.float32))
    assert np.isfinite(mean_cosine(x, x))
