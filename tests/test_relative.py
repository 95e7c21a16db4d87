"""Relative projections, transforms and the product space (docs/METHOD.md §2–3; the checks of §7).

Property tests draw small random shapes (D = 1, k = 1 and D ≠ k included), duplicate anchors, a sample equal
to an anchor and zero vectors, and check every invariance and non-invariance of docs/METHOD.md §7 in float64.
Accuracy is checked against a naive float64 broadcasting reference in float32.

Errors are compared norm-wise, ‖actual − expected‖_F / ‖expected‖_F: element-wise relative error is not
defined where the exact value is 0 (a sample equal to an anchor, orthogonal vectors, zero vectors), and a
norm-wise bound is what matters for what follows (a LayerNorm, a linear head).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stitchcli.errors import StitchError, UsageError
from stitchcli.relative import (
    ProductSpace,
    build_aggregation,
    fit_transform,
    list_aggregations,
    list_projections,
    list_transforms,
    pairwise_lp,
    relative_projection,
    relative_projection_to_file,
    relative_space,
)
from stitchcli.relative import compiled_lp as compiled_lp_module
from stitchcli.relative import euclidean as euclidean_module
from stitchcli.relative import projections as projections_module
from stitchcli.store import read_header

PROJECTIONS = ("cosine", "euclidean", "l1", "linf")
DISTANCES = ("euclidean", "l1", "linf")
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------ references


def naive(projection: str, x: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Give the projection by plain float64 broadcasting over (N, k, D): the reference."""
    x, anchors = x.double(), anchors.double()
    diff = x[:, None, :] - anchors[None, :, :]
    if projection == "cosine":
        norms = x.norm(dim=1)[:, None] * anchors.norm(dim=1)[None, :]
        dots = (x[:, None, :] * anchors[None, :, :]).sum(-1)
        return torch.where(norms > 0, dots / torch.where(norms > 0, norms, 1.0), 0.0)
    if projection == "euclidean":
        return diff.square().sum(-1).sqrt()
    if projection == "l1":
        return diff.abs().sum(-1)
    return diff.abs().amax(-1)


def normwise_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Give ‖actual − expected‖ / ‖expected‖ in float64 (0 when both vanish)."""
    actual, expected = actual.double(), expected.double()
    size = expected.norm().item()
    gap = (actual - expected).norm().item()
    return gap / size if size > 0 else gap


def assert_same(actual: torch.Tensor, expected: torch.Tensor, scale: float, tol: float = 1e-9) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


# -------------------------------------------------------------------------------------- random latents


@dataclass
class Latents:
    z: torch.Tensor  # samples (N, D), float64
    e: torch.Tensor  # anchors (k, D), float64
    scale: float  # typical magnitude of the entries
    rng: np.random.Generator

    @property
    def dim(self) -> int:
        return self.z.shape[1]

    def orthogonal(self) -> torch.Tensor:
        """A random orthogonal D×D matrix (QR of a Gaussian, signs fixed so it is Haar-distributed)."""
        q, r = np.linalg.qr(self.rng.normal(size=(self.dim, self.dim)))
        return torch.from_numpy(q * np.sign(np.diag(r)))

    def signed_permutation(self) -> torch.Tensor:
        perm = self.rng.permutation(self.dim)
        signs = self.rng.choice([-1.0, 1.0], size=self.dim)
        return torch.from_numpy(np.eye(self.dim)[perm] * signs[None, :])

    def translation(self) -> torch.Tensor:
        return torch.from_numpy(self.rng.normal(size=self.dim) * 3 * self.scale)

    def positive_scale(self) -> float:
        return float(10 ** self.rng.uniform(-1, 1))


@st.composite
def latents(draw: st.DrawFn, min_dim: int = 1) -> Latents:
    n = draw(st.integers(1, 8))
    d = draw(st.integers(min_dim, 6))
    k = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = 10 ** draw(st.floats(-2, 2))
    offset = draw(st.sampled_from([0.0, 1.0, 30.0])) * scale * rng.normal(size=d)
    z = rng.normal(size=(n, d)) * scale + offset
    e = rng.normal(size=(k, d)) * scale + offset
    if k >= 2 and draw(st.booleans()):
        e[-1] = e[0]  # duplicate anchors
    if draw(st.booleans()):
        z[0] = e[rng.integers(k)]  # a sample equal to an anchor
    if n >= 2 and draw(st.booleans()):
        z[-1] = 0.0  # a zero sample
    if draw(st.booleans()):
        e[0] = 0.0  # a zero anchor
    return Latents(torch.from_numpy(z), torch.from_numpy(e), scale + float(np.abs(offset).max(initial=0.0)), rng)


# -------------------------------------------------------------------------- §7 invariances, in float64


@PROPERTY
@given(latents())
def test_cosine_is_invariant_to_orthogonal_maps_and_rescaling(lat: Latents) -> None:
    q, s = lat.orthogonal(), lat.positive_scale()
    before = relative_projection(lat.z, lat.e, "cosine")
    after = relative_projection(lat.z @ q * s, lat.e @ q * s, "cosine")
    assert not before.isnan().any()
    assert_same(after, before, 1.0)


@PROPERTY
@given(latents())
def test_euclidean_is_invariant_to_isometries(lat: Latents) -> None:
    q, t = lat.orthogonal(), lat.translation()
    before = relative_projection(lat.z, lat.e, "euclidean")
    after = relative_projection(lat.z @ q + t, lat.e @ q + t, "euclidean")
    assert_same(after, before, lat.scale + t.abs().max().item())


@PROPERTY
@given(latents(), st.sampled_from(["l1", "linf"]))
def test_l1_and_linf_are_invariant_to_signed_permutations_and_translations(lat: Latents, projection: str) -> None:
    p, t = lat.signed_permutation(), lat.translation()
    before = relative_projection(lat.z, lat.e, projection)
    after = relative_projection(lat.z @ p + t, lat.e @ p + t, projection)
    assert_same(after, before, lat.scale + t.abs().max().item())


@PROPERTY
@given(latents(), st.sampled_from(DISTANCES))
def test_distances_scale_with_an_isotropic_rescaling(lat: Latents, projection: str) -> None:
    # The non-invariance of the docs/METHOD.md §3 table, pinned exactly: the vector scales by s.
    s = lat.positive_scale()
    before = relative_projection(lat.z, lat.e, projection)
    after = relative_projection(lat.z * s, lat.e * s, projection)
    assert_same(after, before * s, lat.scale * s)


@PROPERTY
@given(latents(), st.sampled_from(list_aggregations()))
def test_after_the_layer_norm_every_projection_is_invariant_to_rescaling(lat: Latents, aggregation: str) -> None:
    # LayerNorm(s·v) = LayerNorm(v) exactly only with eps = 0, which turns a constant subspace (k = 1) into
    # 0/0; eps = 1e-30 keeps that case at 0 and changes nothing measurable elsewhere in float64.
    k = lat.e.shape[0]
    distinct = k == 1 or bool((lat.e != lat.e[0]).any())
    assume(distinct)  # all anchors equal: every subspace is constant up to rounding, which LayerNorm blows up
    s = lat.positive_scale()
    torch.manual_seed(0)
    phi = build_aggregation(aggregation, len(PROJECTIONS), k, layer_norm_eps=1e-30).double()
    with torch.no_grad():
        before = phi(relative_space(lat.z, lat.e, PROJECTIONS).values)
        after = phi(relative_space(lat.z * s, lat.e * s, PROJECTIONS).values)
    assert before.shape == (lat.z.shape[0], phi.output_size)
    torch.testing.assert_close(after, before, rtol=1e-7, atol=1e-7)


@PROPERTY
@given(latents(min_dim=2))
def test_l1_changes_under_a_general_rotation(lat: Latents) -> None:
    diffs = lat.z[:, None, :] - lat.e[None, :, :]
    assume(diffs.abs().amax().item() > 1e-3 * lat.scale)  # some sample differs from some anchor
    q = lat.orthogonal()
    assume((q.abs().amax(dim=1) < 0.999).all())  # not (nearly) a signed permutation, which L1 would keep
    before = relative_projection(lat.z, lat.e, "l1")
    after = relative_projection(lat.z @ q, lat.e @ q, "l1")
    assert (after - before).abs().amax().item() > 1e-6 * lat.scale


@PROPERTY
@given(latents(min_dim=2))
def test_cosine_changes_under_a_translation(lat: Latents) -> None:
    diffs = lat.z[:, None, :] - lat.e[None, :, :]
    assume(diffs.abs().amax().item() > 1e-3 * lat.scale)  # a sample equal to every anchor keeps cos = 1
    t = lat.translation()
    before = relative_projection(lat.z, lat.e, "cosine")
    after = relative_projection(lat.z + t, lat.e + t, "cosine")
    assert (after - before).abs().amax().item() > 1e-6


@PROPERTY
@given(latents())
def test_centring_makes_cosine_translation_invariant(lat: Latents) -> None:
    t = lat.translation()
    before = relative_projection(lat.z, lat.e, "cosine", transform="center")
    after = relative_projection(lat.z + t, lat.e + t, "cosine", transform="center")
    # Centring subtracts a mean of size |t|: its rounding, relative to the centred spread, bounds the error.
    assert_same(after, before, 1.0, tol=1e-6)


@PROPERTY
@given(latents(), st.sampled_from(PROJECTIONS))
def test_standardizing_removes_per_dimension_affine_maps(lat: Latents, projection: str) -> None:
    assume(lat.e.shape[0] >= 2 and bool((lat.e.std(dim=0) > 1e-3 * lat.scale).all()))
    c = torch.from_numpy(10 ** lat.rng.uniform(-1, 1, size=lat.dim))
    t = lat.translation()
    before = relative_projection(lat.z, lat.e, projection, transform="standardize")
    after = relative_projection(lat.z * c + t, lat.e * c + t, projection, transform="standardize")
    assert_same(after, before, 1.0 + before.abs().max().item(), tol=1e-6)


# -------------------------------------------------------------------------------- accuracy (acceptance 2)


@PROPERTY
@given(latents(), st.sampled_from(PROJECTIONS))
def test_float64_matches_the_naive_reference(lat: Latents, projection: str) -> None:
    actual = relative_projection(lat.z, lat.e, projection)
    assert actual.dtype == torch.float64 and actual.shape == (lat.z.shape[0], lat.e.shape[0])
    assert normwise_error(actual, naive(projection, lat.z, lat.e)) <= 1e-12


@PROPERTY
@given(latents(), st.sampled_from(PROJECTIONS))
def test_float32_matches_the_float64_reference_on_small_shapes(lat: Latents, projection: str) -> None:
    z, e = lat.z.float(), lat.e.float()
    actual = relative_projection(z, e, projection)
    assert actual.dtype == torch.float32
    assert normwise_error(actual, naive(projection, z, e)) <= 1e-5


@pytest.mark.parametrize("projection", PROJECTIONS)
@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_float32_matches_the_float64_reference_at_realistic_sizes(projection: str, offset: float) -> None:
    # An offset of 50 standard deviations is where the matmul expansion of ‖z − e‖² loses its digits.
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(300, 384, generator=gen) + offset
    e = torch.randn(64, 384, generator=gen) + offset
    z[0] = e[5]
    z[1] = 0.0
    actual = relative_projection(z, e, projection)
    assert normwise_error(actual, naive(projection, z, e)) <= 1e-5


def test_euclidean_is_exact_for_near_duplicates_far_from_the_origin() -> None:
    gen = torch.Generator().manual_seed(2)
    e = torch.randn(16, 64, generator=gen) * 0.1 + 1000.0
    z = e[:4].clone()
    z[1:] += torch.randn(3, 64, generator=gen) * 1e-3  # 1e-3 away from an anchor 8000 from the origin
    actual = relative_projection(z, e, "euclidean")
    expected = naive("euclidean", z, e)
    assert actual[0, 0].item() == 0.0
    for i in range(1, 4):
        assert abs(actual[i, i].item() - expected[i, i].item()) <= 1e-6 * expected[i, i].item()
    # The plain float32 expansion cannot even get the order of magnitude right here.
    assert normwise_error(torch.cdist(z, e, compute_mode="use_mm_for_euclid_dist")[1:4, 1:4].diagonal(), expected[1:4, 1:4].diagonal()) > 1e-2


def test_euclidean_keeps_every_entry_accurate_not_only_the_norm() -> None:
    # Pairs at a few per cent of the data's spread: the float32 matmul expansion gets their distance wrong
    # by ~1e-5 relative; computed in float64 (inputs exact) they are right to ~1e-12.
    gen = torch.Generator().manual_seed(10)
    e = torch.randn(32, 64, generator=gen)
    z = e[:8] + 0.05 * torch.randn(8, 64, generator=gen)
    actual = relative_projection(z, e, "euclidean").diagonal().double()
    expected = naive("euclidean", z, e).diagonal()
    assert ((actual - expected).abs() / expected).max().item() <= 1e-6


def test_euclidean_in_float64_survives_a_large_offset_and_near_duplicates() -> None:
    # Offset 1e5 × the spread: without centring on the anchor mean, the expansion's rounding (eps·‖z‖²)
    # would swamp the distances; a sample 1e-6 from an anchor 100 wide needs the direct recomputation.
    gen = torch.Generator().manual_seed(11)
    e = torch.randn(20, 64, generator=gen, dtype=torch.float64) * 100 + 1e7
    z = torch.cat([torch.randn(10, 64, generator=gen, dtype=torch.float64) * 100 + 1e7, e[:3] + 1e-6])
    actual = relative_projection(z, e, "euclidean")
    expected = naive("euclidean", z, e)
    assert ((actual - expected).abs() / expected).max().item() <= 1e-9


def _entrywise_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Give max |actual − expected| / expected over the entries, the absolute gap where expected is 0."""
    gap = (actual.double() - expected).abs()
    return torch.where(expected > 0, gap / expected.clamp(min=1e-300), gap).max().item()


def test_float32_euclidean_holds_every_entry_to_1e_6_at_every_distance(monkeypatch: pytest.MonkeyPatch) -> None:
    # float32 inputs take a float32 matmul, whose expansion is off by ~7 units of rounding × (‖z‖² + ‖e‖²):
    # ~1e-6 relative at r = d² / (‖z‖² + ‖e‖²) = 0.3 and worse below. Each sample has one anchor close by (r
    # from 1e-8 to 0.5, most of them between 0.005 and 0.5; one exact duplicate) and the other 63 far away,
    # so the close pairs are recomputed one by one (no row has enough of them to go to float64). Recomputing
    # only below r = 0.1 leaves entries 1.5e-6 off here; below 0.3 (the threshold) they are within 3.4e-7.
    gen = torch.Generator().manual_seed(1)
    e = torch.randn(64, 256, generator=gen) + 5.0
    own = torch.randint(0, 64, (1000,), generator=gen)
    scale = torch.cat([torch.logspace(-4, -1, 200), torch.logspace(-1, 0, 800)])
    z = e[own] + torch.randn(1000, 256, generator=gen) * scale[:, None]
    z[0] = e[own[0]]
    monkeypatch.setattr(euclidean_module, "_euclidean_float64", lambda *args: pytest.fail("no row needs float64"))
    actual = relative_projection(z, e, "euclidean")
    assert actual.dtype == torch.float32 and actual[0, own[0]].item() == 0.0
    expected = torch.cdist(z.double(), e.double(), compute_mode="donot_use_mm_for_euclid_dist")
    assert _entrywise_error(actual, expected) <= 1e-6


@pytest.mark.parametrize("memory_budget", [projections_module.DEFAULT_MEMORY_BUDGET, 64 * 64 * 5])
def test_float32_euclidean_sends_rows_with_many_close_anchors_to_float64(
    memory_budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tight clusters: every sample is close (r ≈ 0.02) to the 16 anchors of its cluster, more than 1/32 of
    # the 64 anchors, so its row is redone through the float64 matmul; after a first block where most rows
    # needed that, the rest of the chunk goes there directly. A small budget cuts the rows into blocks of 5.
    gen = torch.Generator().manual_seed(13)
    centres = torch.randn(4, 64, generator=gen) * 2
    e = centres.repeat_interleave(16, dim=0) + 0.3 * torch.randn(64, 64, generator=gen)
    z = centres[torch.randint(0, 4, (1100,), generator=gen)] + 0.3 * torch.randn(1100, 64, generator=gen)
    widened: list[int] = []
    real = euclidean_module._euclidean_float64

    def spy(x: torch.Tensor, anchors: torch.Tensor, budget: int) -> torch.Tensor:
        widened.append(x.shape[0])
        return real(x, anchors, budget)

    monkeypatch.setattr(euclidean_module, "_euclidean_float64", spy)
    actual = relative_projection(z, e, "euclidean", memory_budget=memory_budget)
    assert sum(widened) == 1100
    assert _entrywise_error(actual, naive("euclidean", z, e)) <= 1e-6


def test_float32_euclidean_runs_in_float64_when_matmuls_may_use_tf32_or_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    # set_float32_matmul_precision("high") or lower lets float32 matmuls round like TF32 or bfloat16, far
    # beyond what the float32 path's threshold allows for.
    gen = torch.Generator().manual_seed(14)
    z, e = torch.randn(20, 64, generator=gen), torch.randn(8, 64, generator=gen)
    widened: list[int] = []
    real = euclidean_module._euclidean_float64
    monkeypatch.setattr(euclidean_module, "_euclidean_float64", lambda *args: widened.append(1) or real(*args))
    relative_projection(z, e, "euclidean")
    assert not widened  # full float32 precision (the default): no pair is close, nothing goes to float64
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        actual = relative_projection(z, e, "euclidean")
    finally:
        torch.set_float32_matmul_precision(before)
    assert widened and actual.dtype == torch.float32
    assert _entrywise_error(actual, naive("euclidean", z, e)) <= 1e-6


@pytest.mark.parametrize("kernel", ["cdist", "blocked"])
@pytest.mark.parametrize("p", [1, float("inf")])
def test_distance_kernels_match_the_reference(kernel: str, p: float) -> None:
    gen = torch.Generator().manual_seed(3)
    z, e = torch.randn(40, 33, generator=gen), torch.randn(7, 33, generator=gen)
    actual = pairwise_lp(z, e, p, kernel=kernel)
    assert normwise_error(actual, naive("l1" if p == 1 else "linf", z, e)) <= 1e-6


@pytest.fixture(scope="module")
def compiled_kernel(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Build the compiled L1/L∞ kernel into a temporary cache folder; skip where no C compiler can."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STITCHCLI_CACHE", str(tmp_path_factory.mktemp("cache")))
        try:
            compiled_lp_module.lp_library()
        except RuntimeError as error:
            pytest.skip(f"compiled kernel unavailable: {error}")


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 13), st.integers(1, 40), st.integers(1, 13), st.sampled_from([1, float("inf")]),
    st.sampled_from([torch.float32, torch.float64]), st.integers(0, 2**32 - 1), st.sampled_from([None, (2, 4), (4, 8)]),
    st.sampled_from([1, 2]),
)
def test_the_compiled_kernel_matches_the_reference(
    compiled_kernel, n: int, d: int, k: int, p: float, dtype, seed: int, tile: tuple[int, int] | None, threads: int
) -> None:
    # n and k on both sides of the kernel's 2-sample × 4-anchor steps and of its tiles (the default tile, or
    # tiles of `tile` samples × anchors, so that small inputs cross several), D of the vector widths. The rows
    # are split across torch's threads, so they are pinned to 1 or 2: with as many threads as rows, every
    # call would get one row and only the kernel's leftover-row loop would run.
    gen = torch.Generator().manual_seed(seed)
    z, e = torch.randn(n, d, generator=gen, dtype=dtype), torch.randn(k, d, generator=gen, dtype=dtype)
    z[0] = e[-1]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with pytest.MonkeyPatch.context() as patch:
            if tile is not None:
                row = d * z.element_size()
                patch.setattr(compiled_lp_module, "_LP_TILE_BYTES", (tile[0] * row, tile[1] * row))
                assert compiled_lp_module._lp_blocks(d, z.element_size()) == tile
            actual = pairwise_lp(z, e, p, kernel="compiled")
    finally:
        torch.set_num_threads(before)
    assert actual.dtype == dtype and actual.shape == (n, k) and actual[0, -1].item() == 0.0
    assert normwise_error(actual, naive("l1" if p == 1 else "linf", z, e)) <= (1e-6 if dtype == torch.float32 else 1e-13)


@pytest.mark.parametrize("kernel", ["cdist", "blocked", "compiled"])
@pytest.mark.parametrize("p", [1, float("inf")])
def test_l1_and_linf_write_into_out(kernel: str, p: float, request: pytest.FixtureRequest) -> None:
    if kernel == "compiled":
        request.getfixturevalue("compiled_kernel")
    gen = torch.Generator().manual_seed(5)
    z, e = torch.randn(9, 17, generator=gen), torch.randn(6, 17, generator=gen)
    expected = pairwise_lp(z, e, p, kernel=kernel)
    out = torch.full((9, 6), -1.0)
    assert pairwise_lp(z, e, p, kernel=kernel, out=out) is out and torch.equal(out, expected)
    # an out the compiled loop cannot write straight into (not contiguous) is filled all the same
    strided = torch.full((6, 9), -1.0).T
    assert pairwise_lp(z, e, p, kernel=kernel, out=strided) is strided and torch.equal(strided, expected)
    # through relative_projection: blocks written into the result, chunk by chunk
    name = "l1" if p == 1 else "linf"
    assert torch.equal(relative_projection(z, e, name, kernel=kernel, chunk_size=4), expected)


@pytest.mark.parametrize("kernel", ["cdist", "blocked", "compiled"])
def test_nan_propagates_through_l1_and_linf(kernel: str, request: pytest.FixtureRequest) -> None:
    if kernel == "compiled":
        request.getfixturevalue("compiled_kernel")
    z, e = torch.randn(4, 9), torch.randn(6, 9)
    z[1, 3] = float("nan")
    e[2, 0] = float("nan")
    expected_nan = torch.zeros(4, 6, dtype=torch.bool)
    expected_nan[1] = True
    expected_nan[:, 2] = True
    for p in (1, float("inf")):
        if kernel == "cdist" and p != 1:
            continue  # torch.cdist's L∞ skips NaN; nothing of ours to pin there
        assert torch.equal(pairwise_lp(z, e, p, kernel=kernel).isnan(), expected_nan)


# -------------------------------------------------------------------------------- kernel choice and fallback


def test_auto_kernel_compiles_only_large_cpu_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(projections_module.KERNEL_ENVIRONMENT_VARIABLE, raising=False)
    monkeypatch.setattr(compiled_lp_module, "_LP_FAILURE", [])
    resolve = projections_module._resolve_kernel
    l1 = projections_module.get_projection("l1")
    cpu = torch.device("cpu")
    big, small = 200_000 * 1280 * 768, 100 * 1280 * 768  # terms N·k·D
    assert resolve("auto", l1, big, cpu, False) == "compiled"
    assert resolve("auto", l1, small, cpu, False) == "cdist"
    assert resolve("auto", l1, big, cpu, True) == "cdist"  # gradients: eager kernels only
    assert resolve("auto", l1, big, torch.device("cuda"), False) == "cdist"
    assert resolve("auto", projections_module.get_projection("cosine"), big, cpu, False) == "cdist"
    assert resolve("blocked", l1, big, cpu, False) == "blocked"
    monkeypatch.setenv(projections_module.KERNEL_ENVIRONMENT_VARIABLE, "cdist")
    assert resolve("auto", l1, big, cpu, False) == "cdist"
    monkeypatch.setenv(projections_module.KERNEL_ENVIRONMENT_VARIABLE, "fast")
    with pytest.raises(UsageError, match="cdist"):
        resolve("auto", l1, big, cpu, False)


def test_without_a_c_compiler_the_compiled_kernel_falls_back_to_cdist(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("STITCHCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(compiled_lp_module, "_LP_LIBRARY", [])
    monkeypatch.setattr(compiled_lp_module, "_LP_FAILURE", [])
    z, e = torch.randn(30, 5), torch.randn(4, 5)
    with pytest.warns(RuntimeWarning, match="torch.cdist"):
        actual = relative_projection(z, e, "l1", kernel="compiled", chunk_size=7)
    assert normwise_error(actual, naive("l1", z, e)) <= 1e-6
    assert "no-such-compiler" in compiled_lp_module._LP_FAILURE[0]  # remembered: auto stops trying
    l1 = projections_module.get_projection("l1")
    assert projections_module._resolve_kernel("auto", l1, 10**12, torch.device("cpu"), False) == "cdist"


def test_the_compiled_kernel_is_refused_for_inputs_that_need_gradients() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(UsageError, match="not differentiable"):
        relative_projection(x, torch.randn(2, 4), "l1", kernel="compiled")


# ---------------------------------------------------------------------------- chunking and streaming


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_chunk_sizes_do_not_change_the_result(projection: str) -> None:
    gen = torch.Generator().manual_seed(5)
    z, e = torch.randn(23, 17, generator=gen), torch.randn(6, 17, generator=gen)
    whole = relative_projection(z, e, projection)
    for chunk in (1, 3, 7, 22, 23, 40):  # 3 and 7 do not divide 23
        torch.testing.assert_close(relative_projection(z, e, projection, chunk_size=chunk), whole, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("p", [1, float("inf")])
def test_latent_dimension_blocks_do_not_change_l1_and_linf(p: float) -> None:
    gen = torch.Generator().manual_seed(6)
    z, e = torch.randn(11, 29, generator=gen), torch.randn(5, 29, generator=gen)
    whole = pairwise_lp(z, e, p, kernel="cdist")
    row_bytes = 2 * 11 * 5 * 4  # one latent dimension of the (b, k, d) temporary
    for dims_per_block in (1, 4, 7, 29):  # 4 and 7 do not divide 29
        blocked = pairwise_lp(z, e, p, kernel="blocked", memory_budget=dims_per_block * row_bytes)
        torch.testing.assert_close(blocked, whole, rtol=1e-6, atol=1e-6)
    name = "l1" if p == 1 else "linf"
    through_api = relative_projection(z, e, name, kernel="blocked", chunk_size=4, memory_budget=3 * row_bytes)
    torch.testing.assert_close(through_api, whole, rtol=1e-6, atol=1e-6)


def test_the_default_chunk_fits_the_memory_budget() -> None:
    rows = projections_module.chunk_rows(1280, 768)
    assert 1 <= rows < 200_000
    assert rows * 8 * 2 * (1280 + 768) <= projections_module.DEFAULT_MEMORY_BUDGET
    assert projections_module.chunk_rows(10**7, 10**6, memory_budget=1) == 1


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_streaming_to_a_file_gives_the_same_values(tmp_path, suffix: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(7)
    z, e = torch.randn(25, 6, generator=gen, dtype=dtype), torch.randn(4, 6, generator=gen, dtype=dtype)
    expected = relative_projection(z, e, "euclidean")
    path = relative_projection_to_file(z, e, "euclidean", tmp_path / f"rel{suffix}", chunk_size=4, metadata={"model": "m"})
    if suffix == ".npy":
        written = torch.from_numpy(np.load(path))
    else:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            written = handle.get_tensor("euclidean")
            meta = handle.metadata()
        assert meta["projection"] == "euclidean" and meta["model"] == "m" and meta["num_anchors"] == "4"
        assert torch.equal(torch.from_numpy(read_header(path).read_tensors()["euclidean"]), written)  # checksums hold
    assert written.dtype == dtype
    # to a few units in the last place: a chunk of one row may go through the CPU's matrix-vector kernel,
    # which sums in another order than the matrix product (seen in float64 on some CPUs)
    torch.testing.assert_close(written, expected, rtol=4 * torch.finfo(dtype).eps, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"rel{suffix}"]  # no partial file left


def test_streaming_an_empty_input_and_rejecting_other_suffixes(tmp_path) -> None:
    path = relative_projection_to_file(torch.empty(0, 3), torch.randn(2, 3), "l1", tmp_path / "empty.npy")
    assert np.load(path).shape == (0, 2)
    with pytest.raises(UsageError, match=r"\.npy or \.safetensors"):
        relative_projection_to_file(torch.randn(2, 3), torch.randn(2, 3), "l1", tmp_path / "rel.pt")


def test_a_failure_while_streaming_leaves_no_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(x, anchors):
        raise RuntimeError("boom")

    monkeypatch.setitem(
        projections_module._PROJECTIONS, "broken",
        projections_module.Projection("broken", broken, "distance", "broken", frozenset()),
    )
    with pytest.raises(RuntimeError, match="boom"):
        relative_projection_to_file(torch.randn(4, 3), torch.randn(2, 3), "broken", tmp_path / "rel.npy")
    assert list(tmp_path.iterdir()) == []


def test_out_accepts_a_tensor_a_memmap_and_a_callable(tmp_path) -> None:
    z, e = torch.randn(10, 3), torch.randn(4, 3)
    expected = relative_projection(z, e, "linf")
    buffer = torch.full((10, 4), float("nan"), dtype=torch.float64)
    assert relative_projection(z, e, "linf", out=buffer, chunk_size=3) is buffer
    torch.testing.assert_close(buffer, expected.double())
    mapped = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.float32, shape=(10, 4))
    relative_projection(z, e, "linf", out=mapped, chunk_size=4)
    np.testing.assert_array_equal(np.asarray(mapped), expected.numpy())
    starts: list[int] = []
    blocks: list[torch.Tensor] = []
    assert relative_projection(z, e, "linf", out=lambda start, block: (starts.append(start), blocks.append(block)), chunk_size=4) is None
    assert starts == [0, 4, 8]
    torch.testing.assert_close(torch.cat(blocks), expected)
    with pytest.raises(UsageError, match="shape"):
        relative_projection(z, e, "linf", out=torch.empty(4, 10))


# ----------------------------------------------------------------------------------- API (acceptance 3)


@pytest.mark.parametrize("projection", PROJECTIONS)
def test_the_public_call_gives_n_by_k(projection: str) -> None:
    x, a = torch.randn(9, 5), torch.randn(3, 5)
    assert relative_projection(x, a, projection).shape == (9, 3)
    from_numpy = relative_projection(x.numpy(), a.numpy(), projection)
    assert isinstance(from_numpy, torch.Tensor) and from_numpy.dtype == torch.float32
    torch.testing.assert_close(from_numpy, relative_projection(x, a, projection))
    integers = relative_projection(np.arange(10).reshape(5, 2), np.ones((2, 2), dtype=np.int64), projection)
    assert integers.dtype == torch.float32 and integers.shape == (5, 2)
    assert list_projections()[:4] == list(PROJECTIONS)


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UsageError) as caught:
        relative_projection(torch.randn(2, 3), torch.randn(2, 3), "nope")
    message = str(caught.value)
    assert isinstance(caught.value, StitchError) and caught.value.exit_code == 2
    assert "\n" not in message and all(name in message for name in PROJECTIONS)
    with pytest.raises(UsageError, match="did you mean 'cosine'"):
        relative_projection(torch.randn(2, 3), torch.randn(2, 3), "cosin")
    with pytest.raises(UsageError, match="center"):
        fit_transform("centre-ish", torch.randn(2, 3))
    with pytest.raises(UsageError, match="mlp-sum"):
        build_aggregation("mlp", 2, 3)


def test_bad_shapes_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="latent dimension 3 but anchors have 4"):
        relative_projection(torch.randn(2, 3), torch.randn(2, 4), "l1")
    with pytest.raises(UsageError, match="2-D"):
        relative_projection(torch.randn(3), torch.randn(2, 3), "l1")
    with pytest.raises(UsageError, match="at least one anchor"):
        relative_projection(torch.randn(2, 3), torch.empty(0, 3), "l1")
    assert relative_projection(torch.empty(0, 3), torch.randn(2, 3), "cosine").shape == (0, 2)


@pytest.mark.slow
def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, stitchcli, stitchcli.relative; assert 'torch' not in sys.modules; stitchcli.relative.list_projections; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gradients_flow_through_a_projection_without_nan() -> None:
    x = torch.randn(5, 4, dtype=torch.float64)
    x[2] = 0.0
    x.requires_grad_(True)
    a = torch.randn(3, 4, dtype=torch.float64)
    (relative_projection(x, a, "cosine", chunk_size=2).sum() + relative_projection(x, a, "l1").sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(UsageError, match="differentiable"):
        relative_projection(x, a, "cosine", out=torch.empty(5, 3, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("projection", PROJECTIONS)
def test_cuda_follows_the_samples_and_matches_the_reference(projection: str) -> None:
    z, e = torch.randn(200, 64, device="cuda") + 3, torch.randn(30, 64)
    actual = relative_projection(z, e, projection)
    assert actual.device.type == "cuda"
    assert normwise_error(actual.cpu(), naive(projection, z.cpu(), e)) <= 1e-5


# ------------------------------------------------------------------------------- transforms, product space


def test_transforms_are_fitted_on_the_anchors_only() -> None:
    gen = torch.Generator().manual_seed(8)
    anchors = torch.randn(50, 4, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0, 0.0], dtype=torch.float64) + 5
    samples = torch.randn(7, 4, generator=gen, dtype=torch.float64) + 100  # far from the anchors on purpose
    assert list_transforms() == ["none", "center", "standardize", "l2"]
    centred = fit_transform("center", anchors)
    torch.testing.assert_close(centred.apply(anchors).mean(0), torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(centred.apply(samples), samples - anchors.mean(0))
    standard = fit_transform("standardize", anchors).apply(anchors)
    torch.testing.assert_close(standard.std(0, correction=0)[:3], torch.ones(3, dtype=torch.float64))
    assert torch.isfinite(standard).all() and (standard[:, 3] == 0).all()  # constant dimension: centred only
    rows = fit_transform("l2", anchors).apply(torch.cat([samples, torch.zeros(1, 4, dtype=torch.float64)]))
    torch.testing.assert_close(rows.norm(dim=1), torch.tensor([1.0] * 7 + [0.0], dtype=torch.float64))
    assert fit_transform("none", anchors).apply(samples) is samples


def test_relative_space_stacks_one_subspace_per_projection() -> None:
    gen = torch.Generator().manual_seed(9)
    z, e = torch.randn(12, 5, generator=gen), torch.randn(4, 5, generator=gen)
    space = relative_space(z, e, ["l1", "cosine"], transform="center", chunk_size=5)
    assert isinstance(space, ProductSpace)
    assert space.values.shape == (12, 2, 4) and space.projections == ("l1", "cosine") and space.transform == "center"
    mean = e.mean(0)
    torch.testing.assert_close(space["cosine"], relative_projection(z - mean, e - mean, "cosine"))
    torch.testing.assert_close(space.as_dict()["l1"], relative_projection(z, e, "l1"))  # l1 ignores centring
    assert relative_space(z, e).projections == PROJECTIONS
    for bad in ([], ["l1", "l1"], ["l1", "nope"]):
        with pytest.raises(UsageError):
            relative_space(z, e, bad)


# --------------------------------------------------------------------------------------------- aggregations


@pytest.mark.parametrize("name,size", [("concat", lambda n, k: n * k), ("sum", lambda n, k: k), ("mlp-sum", lambda n, k: k), ("self-attention", lambda n, k: k)])
@pytest.mark.parametrize("n,k", [(1, 1), (4, 7), (2, 3)])
def test_aggregation_output_shapes(name: str, size, n: int, k: int) -> None:
    phi = build_aggregation(name, n, k)
    assert phi.output_size == size(n, k)
    assert phi(torch.randn(6, n, k)).shape == (6, size(n, k))
    assert len(phi.subspace_norms) == n and all(norm.normalized_shape == (k,) for norm in phi.subspace_norms)
    with pytest.raises(ValueError, match="expected subspaces"):
        phi(torch.randn(6, n + 1, k))


@pytest.mark.parametrize("name", ["concat", "sum", "mlp-sum", "self-attention"])
def test_gradients_reach_every_parameter(name: str) -> None:
    phi = build_aggregation(name, 3, 5)
    phi(torch.randn(8, 3, 5)).square().sum().backward()
    for param_name, param in phi.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


def test_mlp_sum_and_self_attention_compute_what_method_md_says() -> None:
    torch.manual_seed(0)
    s = torch.randn(4, 3, 5)
    mlp = build_aggregation("mlp-sum", 3, 5)
    normed = [mlp.subspace_norms[i](s[:, i]) for i in range(3)]
    expected = sum(torch.tanh(normed[i] @ mlp.subspace_maps[i].weight.T + mlp.subspace_maps[i].bias) for i in range(3))
    torch.testing.assert_close(mlp(s), expected)

    att = build_aggregation("self-attention", 3, 5)
    tokens = att.normalize(s)
    w_q, w_k, w_v = att.attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = att.attention.in_proj_bias.chunk(3)
    q, k_, v = tokens @ w_q.T + b_q, tokens @ w_k.T + b_k, tokens @ w_v.T + b_v
    weights = torch.softmax(q @ k_.transpose(1, 2) / 5**0.5, dim=-1)
    attended = (weights @ v) @ att.attention.out_proj.weight.T + att.attention.out_proj.bias
    torch.testing.assert_close(att(s), attended.sum(dim=1))

    concat = build_aggregation("concat", 3, 5)
    torch.testing.assert_close(concat(s)[:, 5:10], concat.subspace_norms[1](s[:, 1]))
    total = build_aggregation("sum", 3, 5)
    torch.testing.assert_close(total(s), total.normalize(s).sum(dim=1))


def test_cosine_writes_chunks_straight_into_the_result_and_matches_the_plain_function():
    from stitchcli.relative.projections import cosine, register_projection

    g = torch.Generator().manual_seed(0)
    x, anchors = torch.randn(50, 8, generator=g), torch.randn(7, 8, generator=g)
    x[3] = 0  # a zero row stays 0, never NaN
    out = torch.full((50, 7), float("nan"))
    got = relative_projection(x, anchors, "cosine", chunk_size=16, out=out)
    assert got is out and not torch.isnan(out).any()
    torch.testing.assert_close(out, cosine(x, anchors), rtol=0, atol=1e-6)
    torch.testing.assert_close(out, torch.nn.functional.cosine_similarity(x[:, None], anchors[None], dim=-1), rtol=0, atol=1e-6)
    # a result of another dtype goes through the copy path and agrees
    wide = relative_projection(x, anchors, "cosine", chunk_size=16, out=torch.empty((50, 7), dtype=torch.float64))
    torch.testing.assert_close(wide, out.double(), rtol=0, atol=1e-6)
    # gradients still flow through the prepared anchors
    a = anchors.clone().requires_grad_(True)
    relative_projection(x, a, "cosine").sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    with pytest.raises(ValueError, match="together"):
        register_projection("half-prepared", prepare=lambda a: a)


def test_euclidean_writes_into_the_result_and_keeps_near_duplicates_exact():
    g = torch.Generator().manual_seed(1)
    anchors = torch.randn(9, 16, generator=g) * 100
    x = torch.cat([anchors[:3] + 1e-3 * torch.randn(3, 16, generator=g), torch.randn(30, 16, generator=g)])
    out = torch.full((33, 9), float("nan"))
    got = relative_projection(x, anchors, "euclidean", chunk_size=8, out=out)
    assert got is out and not torch.isnan(out).any()
    # the reference from the differences: cdist's matmul expansion (its default above 25 rows) is itself off
    # by about 1e-6 relative on these near-duplicates, by how the CPU's float64 matmul sums
    want = torch.cdist(x.double(), anchors.double(), compute_mode="donot_use_mm_for_euclid_dist")
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-9)
