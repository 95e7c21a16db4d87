"""The heatmaps of ``stitchcli similarity --plot`` (stitchcli.plots): they agree with the printed tables.

The diagonal of an N×N heatmap is not a measurement unless the report compared a model with itself, so it is
drawn grey with "—" as the tables print it; with a permutation null each cell shows the value and, in
brackets on a second line, the calibrated value, while the colour stays the raw value.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import matplotlib.colors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from stitchcli import plots  # noqa: E402
from stitchcli.similarity import SimilarityReport, compare_models  # noqa: E402

ROWS = 60
PNG = b"\x89PNG\r\n\x1a\n"


def _models(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(ROWS, 6))
    return {"a": base, "b": base @ rng.normal(size=(6, 6)) + 0.3 * rng.normal(size=(ROWS, 6)), "c": rng.normal(size=(ROWS, 5))}


def _layers(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(0).normal(size=(ROWS, 6))
    return {f"blocks.{i}": base @ rng.normal(size=(6, 6)) + 0.2 * rng.normal(size=(ROWS, 6)) for i in range(4)}


@pytest.fixture(scope="module")
def plain() -> SimilarityReport:
    return compare_models(_models(), ["linear-cka", "procrustes"])


@pytest.fixture(scope="module")
def with_null() -> SimilarityReport:
    return compare_models(_models(), ["linear-cka", "procrustes"], null=5)


@pytest.fixture(scope="module")
def layered() -> SimilarityReport:
    return compare_models({"lite0": _layers(1), "lite2": _layers(2)}, ["linear-cka"], null=5)


def _off_diagonal(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(n) if i != j]


# ------------------------------------------------------------------------------------------ cell grids


@pytest.mark.parametrize("measure", ["linear-cka", "procrustes"])
def test_diagonal_is_blank_when_no_model_was_compared_with_itself(plain, measure):
    models, values, texts = plots.similarity_cells(plain, measure)
    _, table = plain.table(measure)

    assert models == ["a", "b", "c"]
    assert np.isnan(np.diag(values)).all()  # the table's 1.0 (0.0 for Procrustes) is not drawn
    assert np.isfinite(np.diag(table)).all()  # and the report's table itself is left as it was
    assert all(texts[i][i] is None for i in range(3))
    for i, j in _off_diagonal(3):
        assert values[i, j] == table[i, j]
        assert texts[i][j] == f"{table[i, j]:.3f}"  # one line without a null


def test_diagonal_keeps_a_model_compared_with_itself():
    full = compare_models(_models(), ["linear-cka"], include_self=True)
    dropped = SimilarityReport(full.models, full.records, [m for m in full.matrices if not (m.model_a == m.model_b == "b")])

    _, values, texts = plots.similarity_cells(dropped, "linear-cka")

    assert values[0, 0] == pytest.approx(1.0) and values[2, 2] == pytest.approx(1.0)  # measured: a ↔ a, c ↔ c
    assert texts[0][0] == "1.000" and texts[2][2] == "1.000"
    assert math.isnan(values[1, 1]) and texts[1][1] is None  # b ↔ b was not compared


def test_with_null_each_cell_shows_value_and_calibrated_value(with_null):
    for measure in ("linear-cka", "procrustes"):
        _, values, texts = plots.similarity_cells(with_null, measure)
        _, raw = with_null.table(measure)
        _, calibrated = with_null.table(measure, value="calibrated")
        for i, j in _off_diagonal(3):
            assert values[i, j] == raw[i, j]  # the colour stays the raw value
            assert texts[i][j] == f"{raw[i, j]:.3f}\n({calibrated[i, j]:.3f})"
        assert all(texts[i][i] is None for i in range(3))


def test_cell_text_formats_like_the_tables():
    assert plots.cell_text(0.7123, 0.9511, null=True) == "0.712\n(0.951)"
    assert plots.cell_text(0.7123, None, null=False) == "0.712"
    assert plots.cell_text(0.7123, float("nan"), null=True) == "0.712\n(n/a)"  # a calibration that is undefined
    assert plots.cell_text(0.7123, None, null=True) == "0.712\n(–)"  # none
    assert plots.cell_text(float("nan"), float("nan"), null=True) == "n/a"  # measured, undefined: as the tables print it
    assert plots.cell_text(None, None, null=False) is None  # no measurement
    assert plots.cell_text(0.5, 0.25, null=True, value_format="{:.2f}") == "0.50\n(0.25)"


def test_a_measured_nan_reads_n_a_and_is_not_mistaken_for_a_pair_not_compared(plain):
    """A value that is undefined (NaN) was still measured: "n/a" in the heatmap, as in the table, while the
    diagonal (no model compared with itself) stays a blank "—"."""
    from dataclasses import replace

    from stitchcli.cli.similarity import _cell

    undefined = [replace(m, values=np.full_like(m.values, np.nan), best=replace(m.best, value=float("nan")))
                 if (m.measure, m.model_a, m.model_b) == ("linear-cka", "a", "c") else m for m in plain.matrices]
    report = replace(plain, matrices=undefined)
    models, values, texts = plots.similarity_cells(report, "linear-cka")
    assert models == ["a", "b", "c"] and math.isnan(values[0, 2]) and math.isnan(values[2, 0])
    assert texts[0][2] == texts[2][0] == "n/a" and texts[1][1] is None and texts[0][1] == f"{values[0, 1]:.3f}"
    assert _cell(float("nan"), None, 0) == "n/a" and _cell(0.5, float("nan"), 5) == "0.500 (n/a)"
    figure = plots.heatmap_figure(values.tolist(), models, models, title="t", xlabel="x", ylabel="y", annotations=texts)
    try:
        drawn = {(int(y), int(x)): text for x, y, text in _texts(figure)}
        assert drawn[(0, 2)] == "n/a" and drawn[(1, 1)] == "—"
    finally:
        plt.close(figure)


def test_layer_cells_with_and_without_null(layered):
    matrix = layered.matrices[0]
    values, texts = plots.layer_cells(matrix)

    assert values.shape == (4, 4) and matrix.calibrated is not None
    for i in range(4):
        for j in range(4):
            assert texts[i][j] == f"{matrix.values[i, j]:.2f}\n({matrix.calibrated[i, j]:.2f})"

    bare = compare_models({"lite0": _layers(1), "lite2": _layers(2)}, ["linear-cka"]).matrices[0]
    _, texts = plots.layer_cells(bare)
    assert texts[1][2] == f"{bare.values[1, 2]:.2f}"


# ------------------------------------------------------------------------------------------ the drawing


def _texts(figure) -> list[tuple[float, float, str]]:
    return [(*text.get_position(), text.get_text()) for text in figure.axes[0].texts]


def _capture(monkeypatch) -> list[dict]:
    """Record each figure's title and cell texts as it is closed after saving (pyplot.close, which every
    heatmap calls), so that the drawing is checked without reading pixels."""
    drawn: list[dict] = []
    original = plt.close

    def recording(figure=None):
        if figure is not None and figure.axes:
            axes = figure.axes[0]
            drawn.append({"title": " ".join(axes.get_title().split()),  # titles wrap: compare them unwrapped
                          "texts": {(int(y), int(x)): t for x, y, t in _texts(figure)},
                          "shape": axes.images[0].get_array().shape, "clim": axes.images[0].get_clim(),
                          "rgba": axes.images[0].to_rgba(axes.images[0].get_array())})
        return original(figure)

    monkeypatch.setattr(plt, "close", recording)
    return drawn


def test_heatmap_draws_missing_cells_grey_with_a_dash_outside_the_colour_scale(tmp_path, monkeypatch):
    drawn = _capture(monkeypatch)

    path = plots.heatmap(tmp_path / "h.png", [[None, 0.25], [0.75, float("nan")]], ["r0", "r1"], ["c0", "c1"],
                         title="t", xlabel="x", ylabel="y", vmin=0.0, vmax=1.0)

    assert path.read_bytes()[:8] == PNG
    (figure,) = drawn
    assert figure["texts"] == {(0, 0): "—", (0, 1): "0.25", (1, 0): "0.75", (1, 1): "—"}  # (row, column)
    grey = matplotlib.colors.to_rgba(plots.BLANK_COLOUR)
    assert tuple(figure["rgba"][0, 0]) == pytest.approx(grey) and tuple(figure["rgba"][1, 1]) == pytest.approx(grey)
    assert tuple(figure["rgba"][0, 1]) != pytest.approx(grey)
    assert figure["clim"] == (0.0, 1.0)  # the blank cells do not move the colour scale


def test_heatmap_annotations_replace_the_value_format():
    figure = plots.heatmap_figure([[0.5, None]], ["r"], ["c0", "c1"], title="t", xlabel="x", ylabel="y",
                                  annotations=[["0.500\n(0.480)", None]])
    try:
        assert sorted(_texts(figure)) == [(0, 0, "0.500\n(0.480)"), (1, 0, "—")]
    finally:
        plt.close(figure)


def test_write_similarity_plots_with_null_end_to_end(with_null, tmp_path, monkeypatch):
    drawn = _capture(monkeypatch)

    written = plots.write_similarity_plots(tmp_path / "plots", with_null, title="data/test, 60 rows")

    assert sorted(p.name for p in written) == ["similarity-linear-cka-absolute.png", "similarity-procrustes-absolute.png"]
    for path in written:
        assert path.read_bytes()[:8] == PNG
        height, width = plt.imread(path).shape[:2]
        assert height > 200 and width > 200
    _, raw = with_null.table("linear-cka")
    _, calibrated = with_null.table("linear-cka", value="calibrated")
    cka = drawn[0]
    assert "calibrated against 5 permutations" in cka["title"] and "data/test, 60 rows" in cka["title"]
    assert all(cka["texts"][(i, i)] == "—" for i in range(3))
    assert cka["texts"][(0, 1)] == f"{raw[0, 1]:.3f}\n({calibrated[0, 1]:.3f})"
    assert "calibrated against 5 permutations" in drawn[1]["title"]


def test_write_similarity_plots_layers_with_null(layered, tmp_path, monkeypatch):
    drawn = _capture(monkeypatch)

    written = plots.write_similarity_plots(tmp_path, layered, title="data/test")

    assert [p.name for p in written] == ["similarity-linear-cka-absolute.png", "layers-linear-cka-absolute-lite0-lite2.png"]
    assert all(p.read_bytes()[:8] == PNG for p in written)
    table, layers = drawn
    assert table["texts"][(0, 0)] == "—" and table["texts"][(1, 1)] == "—"
    assert "null of the best cell" in table["title"] and "5 permutations" in table["title"]
    matrix = layered.matrices[0]
    assert layers["shape"] == (4, 4) and "calibrated against 5 permutations" in layers["title"]
    assert layers["texts"][(3, 0)] == f"{matrix.values[3, 0]:.2f}\n({matrix.calibrated[3, 0]:.2f})"


def test_write_similarity_plots_without_null_only_blanks_the_diagonal(plain, tmp_path, monkeypatch):
    drawn = _capture(monkeypatch)

    plots.write_similarity_plots(tmp_path, plain, title="data/test")

    _, raw = plain.table("procrustes")
    procrustes = drawn[1]
    assert "calibrated" not in procrustes["title"] and "lower = more alike" in procrustes["title"]
    assert all(procrustes["texts"][(i, i)] == "—" for i in range(3))
    assert all("\n" not in text for text in procrustes["texts"].values())
    assert procrustes["texts"][(2, 0)] == f"{raw[2, 0]:.3f}"


def test_a_distance_is_drawn_with_the_colours_reversed_so_that_yellow_means_alike(plain, tmp_path, monkeypatch):
    drawn = _capture(monkeypatch)
    plots.write_similarity_plots(tmp_path, plain, title="data/test")
    cka, procrustes = drawn
    names, table = plain.table("procrustes")
    closest = min(((i, j) for i, j in _off_diagonal(len(names))), key=lambda cell: table[cell])
    farthest = max(((i, j) for i, j in _off_diagonal(len(names))), key=lambda cell: table[cell])
    viridis = plt.get_cmap("viridis")
    # the most alike pair of a distance gets viridis' bright end, as the most alike pair of CKA does
    assert tuple(procrustes["rgba"][closest]) == pytest.approx(viridis(1.0 - table[closest] / math.sqrt(2.0)), abs=0.02)
    assert sum(procrustes["rgba"][closest][:3]) > sum(procrustes["rgba"][farthest][:3])


def test_long_model_names_widen_the_figure_instead_of_squeezing_the_matrix():
    short = plots.heatmap_figure([[0.1, 0.2], [0.3, 0.4]], ["a", "b"], ["a", "b"], title="t", xlabel="x", ylabel="y")
    name = "sentence-transformers/all-MiniLM-L6-v2"
    long = plots.heatmap_figure([[0.1, 0.2], [0.3, 0.4]], ["a", name], ["a", name], title="t", xlabel="x", ylabel="y")
    try:
        (sw, sh), (lw, lh) = short.get_size_inches(), long.get_size_inches()
        assert lw >= sw + 0.08 * len(name) - 0.5 and lh > sh
        # the matrix itself keeps about the same size on the page
        assert long.axes[0].get_position().width * lw == pytest.approx(short.axes[0].get_position().width * sw, rel=0.35)
    finally:
        plt.close(short)
        plt.close(long)
