"""Heatmap PNGs of stitching matrices and similarity tables (matplotlib, imported only here)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from stitchcli.errors import UsageError

if TYPE_CHECKING:
    from stitchcli.similarity import SimilarityReport
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


def heatmap(
    path: Path,
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
) -> Path:
    """Give the path of a PNG heatmap of ``values`` (None cells left blank), each cell annotated with ``value_format``."""
    import numpy as np

    plt = require_matplotlib()
    grid = np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=float)
    width = max(4.0, 1.1 * len(column_labels) + 2.5)
    height = max(3.0, 0.6 * len(row_labels) + 2.0)
    figure, axes = plt.subplots(figsize=(width, height))
    image = axes.imshow(grid, vmin=vmin, vmax=vmax, cmap="viridis")
    axes.set_xticks(range(len(column_labels)), labels=list(column_labels), rotation=30, ha="right")
    axes.set_yticks(range(len(row_labels)), labels=list(row_labels))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(textwrap.fill(title, width=max(30, int(9 * width)), break_on_hyphens=False), fontsize=10)  # long titles wrap, never cut
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if not np.isnan(grid[i, j]):
                bright = (grid[i, j] - vmin) / max(vmax - vmin, 1e-12) > 0.6
                axes.text(j, i, value_format.format(grid[i, j]),
                          ha="center", va="center", fontsize=8, color="black" if bright else "white")
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
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


def write_similarity_plots(folder: str | Path, report: SimilarityReport, *, title: str) -> list[Path]:
    """Give the PNGs of ``stitchcli similarity --plot``: the N×N table of each measure in each space, and
    (with layers) the layer × layer matrix of each model pair; every cell the measure's value, with the
    calibrated value in the titles of best pairs when a null was drawn."""
    import math

    from stitchcli.similarity import get_measure

    require_matplotlib()
    folder = Path(folder).expanduser()
    written: list[Path] = []
    spaces = list(dict.fromkeys(matrix.projection for matrix in report.matrices))
    for measure in dict.fromkeys(matrix.measure for matrix in report.matrices):
        found = get_measure(measure)
        low, high = (0.0, math.sqrt(2.0)) if not found.higher_is_more_alike else (-1.0 if measure in ("rsa", "cosine") else 0.0, 1.0)
        direction = "" if found.higher_is_more_alike else " (a distance: lower = more alike)"
        for space in spaces:
            name = space or "absolute"
            models, table = report.table(measure, space)
            matrices = [m for m in report.matrices if m.measure == measure and m.projection == space]
            if not matrices:
                continue
            layered = any(m.values.size > 1 for m in matrices)
            written.append(heatmap(
                folder / _file_name("similarity", measure, name), table.tolist(), models, models,
                title=f"{found.title}{direction}, {name}{', best layer pair' if layered else ''}: {title}",
                xlabel="model b", ylabel="model a", value_format="{:.3f}", vmin=low, vmax=high,
            ))
            for matrix in matrices if layered else ():
                best = matrix.best
                calibrated = f", calibrated {best.null.calibrated:.3f}" if best.null is not None and not math.isnan(best.null.calibrated) else ""
                label = [("final" if layer is None else str(layer)) for layer in (*matrix.layers_a, *matrix.layers_b)]
                rows, columns = label[: len(matrix.layers_a)], label[len(matrix.layers_a) :]
                written.append(heatmap(
                    folder / _file_name("layers", measure, name, matrix.model_a, matrix.model_b), matrix.values.tolist(), rows, columns,
                    title=f"{found.title}{direction}, {name}: {matrix.model_a} × {matrix.model_b} layers; best "
                          f"{rows[matrix.layers_a.index(best.layer_a)]} × {columns[matrix.layers_b.index(best.layer_b)]} = {best.value:.3f}{calibrated}; {title}",
                    xlabel=f"{matrix.model_b} layer", ylabel=f"{matrix.model_a} layer", value_format="{:.2f}", vmin=low, vmax=high,
                ))
    return written
