"""Heatmap PNGs of stitching matrices and similarity tables (matplotlib, imported only here)."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from stitchcli.errors import UsageError

if TYPE_CHECKING:
    from stitchcli.similarity import SimilarityReport
    from stitchcli.similarity.layers import LayerMatrix
    from stitchcli.stitching import StitchReport


def require_matplotlib():
    """Give matplotlib's pyplot (drawing to files only); UsageError naming the install command when missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed, none opened
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install matplotlib (or the demo extra)") from None
    return plt


def _file_name(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", "-".join(part for part in parts if part)).strip("_") + ".png"


BLANK = "—"
"""The text of a cell that holds no measurement (a pair not run, a model against itself): like the tables."""

BLANK_COLOUR = "#d9d9d9"
"""The light grey of such a cell, outside the colormap."""

UNDEFINED = "n/a"
"""The text of a measurement whose value is undefined (NaN: unbiased CKA of a constant representation), as the
tables print it: grey like a blank cell, but not mistaken for a pair that was not compared."""


def heatmap_figure(
    values: Sequence[Sequence[float | None]],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    value_format: str = "{:.2f}",
    vmin: float = 0.0,
    vmax: float = 1.0,
    annotations: Sequence[Sequence[str | None]] | None = None,
    colormap: str = "viridis",
):
    """Give the matplotlib Figure (the caller closes it) of a heatmap of ``values``, each cell annotated with
    ``value_format`` (or with its text in ``annotations``, same shape; lines split by newlines). A None or NaN
    cell is drawn light grey, outside the colormap, with its annotation if it has one (:data:`UNDEFINED` for a
    measurement without a value) and "—" (no measurement) if not. The colour scale runs
    from ``vmin`` to ``vmax`` in ``colormap`` (``viridis_r`` for a distance, so that yellow always means alike).
    The figure grows with the longest labels, so long model names do not squeeze the matrix."""
    plt = require_matplotlib()
    grid = np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=float).reshape(len(row_labels), len(column_labels))
    texts = [[None if np.isnan(grid[i, j]) else value_format.format(grid[i, j]) for j in range(grid.shape[1])] for i in range(grid.shape[0])]
    if annotations is not None:
        texts = [[text for text in row] for row in annotations]
    two_lines = any(text is not None and "\n" in text for row in texts for text in row)
    scale = 1.25 if two_lines else 1.0  # taller, wider cells for "value\n(calibrated)"
    # about 0.08 inch a character at the tick labels' size; the column labels are turned 30 degrees
    row_room = 0.08 * max((len(label) for label in row_labels), default=0)
    column_room = 0.04 * max((len(label) for label in column_labels), default=0)
    width = max(4.0, scale * 1.1 * len(column_labels) + 2.0 + row_room)
    height = max(3.0, scale * 0.6 * len(row_labels) + 1.8 + column_room)
    figure, axes = plt.subplots(figsize=(width, height))
    colours = plt.get_cmap(colormap).with_extremes(bad=BLANK_COLOUR)  # NaN cells: grey, outside the scale (vmin/vmax are fixed)
    image = axes.imshow(np.ma.masked_invalid(grid), vmin=vmin, vmax=vmax, cmap=colours)
    axes.set_xticks(range(len(column_labels)), labels=list(column_labels), rotation=30, ha="right")
    axes.set_yticks(range(len(row_labels)), labels=list(row_labels))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(textwrap.fill(title, width=max(30, int(9 * width)), break_on_hyphens=False), fontsize=10)  # long titles wrap, never cut
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isnan(grid[i, j]):
                axes.text(j, i, texts[i][j] or BLANK, ha="center", va="center", fontsize=8, color="black")
            elif texts[i][j] is not None:
                red, green, blue, _ = colours(image.norm(grid[i, j]))
                bright = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5  # dark text on a light cell
                axes.text(j, i, texts[i][j], ha="center", va="center", fontsize=7 if two_lines else 8,
                          linespacing=1.1, color="black" if bright else "white")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)  # as tall as the matrix, close beside it
    figure.tight_layout()
    return figure


def heatmap(path: Path, values: Sequence[Sequence[float | None]], row_labels: Sequence[str], column_labels: Sequence[str], **style: Any) -> Path:
    """Give the path of a PNG heatmap of ``values`` drawn by :func:`heatmap_figure` (``style``: its title,
    labels, ``value_format``, ``vmin``/``vmax`` and ``annotations``)."""
    plt = require_matplotlib()
    figure = heatmap_figure(values, row_labels, column_labels, **style)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path


def write_plots(folder: str | Path, reports: Sequence[StitchReport]) -> list[Path]:
    """Give the PNGs written to ``folder``: one stitching matrix per dataset and setting, one similarity map per measure."""
    from stitchcli.stitching.report import setting_label
    from stitchcli.stitching import stitching_matrix

    require_matplotlib()
    folder = Path(folder).expanduser()
    written: list[Path] = []
    for report in reports:
        names = [model["name"] for model in report.models]
        dataset = Path(report.dataset).name or report.dataset
        for setting in dict.fromkeys(row.setting for row in report.rows):
            method, projections, aggregation = setting
            label = setting_label(projections, aggregation, method)
            name = _file_name("stitching", dataset, method, "+".join(projections), aggregation or "")
            # a reconstruction sweep's matrix: the pixel classifier's accuracy on the reconstructions
            metric = "accuracy" if report.task == "classification" else "pixel_accuracy"
            percent = [[None if v is None else 100 * v for v in row] for row in stitching_matrix(report, setting, names, metric)]
            written.append(heatmap(
                folder / name, percent, names, names, title=f"{dataset}: {label}, {metric.replace('_', ' ')} %",
                xlabel="decoder", ylabel="encoder", value_format="{:.1f}", vmax=100.0,
            ))
        if not report.similarity:
            continue
        pairs = list(dict.fromkeys(f"{r.model_a} / {r.model_b}" for r in report.similarity or []))
        spaces = list(dict.fromkeys(r.projection for r in report.similarity or []))
        for measure in ("cka", "jaccard", "mrr", "cosine"):
            lookup = {(f"{r.model_a} / {r.model_b}", r.projection): getattr(r, measure) for r in report.similarity or []}
            if all(value is None for value in lookup.values()):
                continue
            grid = [[lookup.get((pair, space)) for space in spaces] for pair in pairs]
            written.append(heatmap(
                folder / _file_name("similarity", dataset, measure), grid, pairs, spaces,
                title=f"{dataset}: {measure} of the {report.split} representations", xlabel="space", ylabel="model pair",
                vmin=-1.0 if measure == "cosine" else 0.0,
            ))
    return written


def number_text(value: float | None, value_format: str = "{:.3f}") -> str:
    """Give a measured value as tables and heatmaps print it: "–" when there is none, :data:`UNDEFINED` when it
    is undefined (NaN)."""
    return "–" if value is None else UNDEFINED if math.isnan(value) else value_format.format(value)


def cell_text(value: float | None, calibrated: float | None, *, null: bool, value_format: str = "{:.3f}", sep: str = "\n") -> str | None:
    """Give the text of one similarity cell: the value, and with a null the calibrated value in brackets after
    ``sep`` (a second line in heatmaps, "0.712\\n(0.951)"; the tables' "value (calibrated)" with ``sep=" "``);
    None for a cell without a measurement, :data:`UNDEFINED` for a measurement whose value is undefined (NaN)."""
    if value is None:
        return None
    if math.isnan(value):
        return UNDEFINED
    number = number_text(value, value_format)
    return number if not null else f"{number}{sep}({number_text(calibrated, value_format)})"


def permutations_of(matrices: Sequence[LayerMatrix]) -> int:
    """Give how many permutations the null of these matrices holds (0 without a null)."""
    return max((m.best.null.permutations for m in matrices if m.best.null is not None), default=0)


def similarity_cells(report: SimilarityReport, measure: str, projection: str | None = None) -> tuple[list[str], np.ndarray, list[list[str | None]]]:
    """Give (model names, N×N values, N×N annotations) of the heatmap of ``measure`` in ``projection``.

    Values are :meth:`SimilarityReport.table`'s, except that a pair the report did not compare (the
    diagonal, unless a model was compared with itself) is NaN with no annotation (drawn grey, "—", as the
    tables print it); a measured NaN keeps the annotation "n/a". With a null, each
    annotation holds the value and, on a second line, the calibrated value in brackets."""
    from stitchcli.similarity import get_measure

    name = get_measure(measure).name
    matrices = [m for m in report.matrices if m.measure == name and m.projection == projection]
    models, values = report.table(name, projection)
    compared = {(m.model_a, m.model_b) for m in matrices} | {(m.model_b, m.model_a) for m in matrices}
    null = permutations_of(matrices) > 0
    calibrated = report.table(name, projection, value="calibrated")[1] if null else values
    texts = [[cell_text(float(values[i, j]), float(calibrated[i, j]), null=null) if (a, b) in compared else None
              for j, b in enumerate(models)] for i, a in enumerate(models)]
    values = np.where([[text is None for text in row] for row in texts], np.nan, values)
    return models, values, texts


def layer_cells(matrix: LayerMatrix, value_format: str = "{:.2f}") -> tuple[np.ndarray, list[list[str | None]]]:
    """Give (L_a × L_b values, annotations) of a layer matrix's heatmap: each cell's value, and with a null
    its calibrated value (against that cell's own null) in brackets on a second line."""
    null = matrix.calibrated is not None
    calibrated = matrix.calibrated if matrix.calibrated is not None else matrix.values
    rows, columns = matrix.values.shape
    texts = [[cell_text(float(matrix.values[i, j]), float(calibrated[i, j]), null=null, value_format=value_format) for j in range(columns)]
             for i in range(rows)]
    return matrix.values, texts


def write_similarity_plots(folder: str | Path, report: SimilarityReport, *, title: str) -> list[Path]:
    """Give the PNGs of ``stitchcli similarity --plot``: the N×N table of each measure in each space, and
    (with layers) the layer × layer matrix of each model pair. Each cell is coloured by the measure's value
    and annotated with it; with a null, also with the calibrated value in brackets, as the tables print
    it. A diagonal cell that is not a measurement (no model compared with itself) is grey, "—"."""
    from stitchcli.similarity import get_measure, layer_label

    require_matplotlib()
    folder = Path(folder).expanduser()
    written: list[Path] = []
    spaces = list(dict.fromkeys(matrix.projection for matrix in report.matrices))
    for measure in dict.fromkeys(matrix.measure for matrix in report.matrices):
        found = get_measure(measure)
        low, high = (0.0, math.sqrt(2.0)) if not found.higher_is_more_alike else (-1.0 if measure in ("rsa", "cosine") else 0.0, 1.0)
        direction = "" if found.higher_is_more_alike else " (a distance: lower = more alike)"
        colormap = "viridis" if found.higher_is_more_alike else "viridis_r"  # yellow = alike, whatever the direction
        for space in spaces:
            name = space or "absolute"
            matrices = [m for m in report.matrices if m.measure == measure and m.projection == space]
            if not matrices:
                continue
            layered = any(m.values.size > 1 for m in matrices)
            permutations = permutations_of(matrices)
            if not permutations:
                shown = ""
            elif layered:
                shown = f"; cell: best pair's value (calibrated against the null of the best cell, {permutations} permutations)"
            else:
                shown = f"; cell: value (calibrated against {permutations} permutations)"
            models, table, texts = similarity_cells(report, measure, space)
            written.append(heatmap(
                folder / _file_name("similarity", measure, name), table.tolist(), models, models,
                title=f"{found.title}{direction}, {name}{', best layer pair' if layered else ''}: {title}{shown}",
                xlabel="model b", ylabel="model a", value_format="{:.3f}", vmin=low, vmax=high, annotations=texts, colormap=colormap,
            ))
            for matrix in matrices if layered else ():
                best = matrix.best
                calibrated = f", calibrated {best.null.calibrated:.3f} against the null of the best cell" if best.null is not None and not math.isnan(best.null.calibrated) else ""
                cell = f"; cell: value (calibrated against {permutations} permutations)" if matrix.calibrated is not None else ""
                label = [layer_label(layer) for layer in (*matrix.layers_a, *matrix.layers_b)]
                rows, columns = label[: len(matrix.layers_a)], label[len(matrix.layers_a) :]
                values, cells = layer_cells(matrix)
                written.append(heatmap(
                    folder / _file_name("layers", measure, name, matrix.model_a, matrix.model_b), values.tolist(), rows, columns,
                    title=f"{found.title}{direction}, {name}: {matrix.model_a} × {matrix.model_b} layers; best "
                          f"{rows[matrix.layers_a.index(best.layer_a)]} × {columns[matrix.layers_b.index(best.layer_b)]} = {best.value:.3f}{calibrated}; {title}{cell}",
                    xlabel=f"{matrix.model_b} layer", ylabel=f"{matrix.model_a} layer", value_format="{:.2f}", vmin=low, vmax=high,
                    annotations=cells, colormap=colormap,
                ))
    return written
