"""Rendering of stitching reports: tables for people, one JSON document with --json, CSV files and heatmaps."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from stitchcli.cli.output import print_json, print_table
from stitchcli.stitching.report import setting_label
from stitchcli.store import write_text_atomically

if TYPE_CHECKING:
    from stitchcli.stitching import StitchReport, StitchRow

ROW_FIELDS = ("dataset", "encoder", "decoder", "method", "projections", "aggregation", "stitched",
              "accuracy", "accuracy_std", "macro_f1", "macro_f1_std", "seeds", "note", "chosen")
"""The CSV columns of a row; ``chosen`` is the bridge an ``auto`` row chose (empty on the other rows)."""
RECONSTRUCTION_ROW_FIELDS = ("task", "mse", "mse_std", "psnr", "psnr_std", "ssim", "ssim_std", "pixel_accuracy", "pixel_accuracy_std")
"""The CSV columns added when a report is of ``--task reconstruction`` (after ROW_FIELDS)."""
SIMILARITY_FIELDS = ("dataset", "model_a", "model_b", "projection", "cka", "jaccard", "mrr", "cosine", "rows", "note")


def percent(mean: float | None, std: float | None = None) -> str:
    """Give a fraction as a percentage with one decimal, ``± std`` when there is a spread; ``-`` for None."""
    if mean is None:
        return "-"
    text = f"{100 * mean:.1f}"
    return f"{text} ± {100 * std:.1f}" if std is not None else text


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def spread(row: StitchRow, metric: str = "accuracy") -> str:
    """Give a row's metric as ``mean ± std`` over its seeds (the mean alone for one seed).

    Fractions (accuracy, macro-F1, pixel accuracy) as percentages; MSE with 4 decimals, PSNR (dB) with 1, SSIM with 3.
    """
    std = getattr(row, f"{metric}_std") if len(row.seeds) > 1 else None
    return scaled(metric, getattr(row, metric), std)


_DECIMALS = {"mse": 4, "psnr": 1, "ssim": 3}


def scaled(metric: str, mean: float | None, std: float | None = None) -> str:
    """Give a metric's ``mean ± std`` as tables show it (see :func:`spread`); ``-`` for None."""
    if metric not in _DECIMALS:
        return percent(mean, std)
    if mean is None:
        return "-"
    digits = _DECIMALS[metric]
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


_RECONSTRUCTION_COLUMNS = (("mse", "MSE"), ("psnr", "PSNR dB"), ("ssim", "SSIM"), ("pixel_accuracy", "pixel acc %"))


def _anchor_text(report: StitchReport) -> str:
    anchors = report.anchors
    return f"{anchors['num']} anchors {anchors['name']!r}"


def work_line(reports: Sequence[StitchReport]) -> str:
    """Give the line that ends a sweep's progress: its time (the whole sweep, not the heads alone) and what it trained."""
    trained, cached = sum(r.heads_trained for r in reports), sum(r.heads_cached for r in reports)
    return f"done in {sum(r.seconds for r in reports):.1f} s: {trained} head(s) trained, {cached} read from the cache"


def render_stitch(report: StitchReport, *, json_output: bool) -> None:
    """Print ``stitch``'s result: one JSON document, or a table with one line per projection set and baseline."""
    if json_output:
        print_json(report.to_dict())
        return
    reference = {row.setting: row for row in report.rows if not row.stitched}
    stitched = [row for row in report.rows if row.stitched]
    if not stitched:
        return
    encoder, decoder = stitched[0].encoder, stitched[0].decoder
    if report.task == "reconstruction":
        _render_stitch_reconstruction(report, reference, stitched, encoder, decoder)
        return
    table_rows = []
    for row in stitched:
        ref = reference.get(row.setting)
        table_rows.append([
            setting_label(row.projections, row.aggregation, row.method),
            spread(ref) if ref else "-",
            spread(row),
            spread(ref, "macro_f1") if ref else "-",
            spread(row, "macro_f1"),
            _note(row),
        ])
    seeds = ",".join(str(s) for s in stitched[0].seeds)
    print_table(
        f"{encoder} → {decoder} on {report.dataset} ({report.split}; {_anchor_text(report)}; seeds {seeds}; accuracy and macro-F1 %)",
        ["setting", f"{decoder}→{decoder} acc", f"{encoder}→{decoder} acc",
         f"{decoder}→{decoder} F1", f"{encoder}→{decoder} F1", "note"],
        table_rows,
        justify={name: "right" for name in (f"{decoder}→{decoder} acc", f"{encoder}→{decoder} acc", f"{decoder}→{decoder} F1", f"{encoder}→{decoder} F1")},
        trailing="note",
    )


def _note(row: StitchRow) -> str:
    """Give a row's note column: its note, or the bridge an ``auto`` row chose."""
    return row.note or (f"auto chose {row.chosen}" if row.chosen else "")


def _render_stitch_reconstruction(report: StitchReport, reference: dict, stitched: list[StitchRow], encoder: str, decoder: str) -> None:
    """Print ``stitch --task reconstruction``: per setting, each metric of DECODER→DECODER and ENCODER→DECODER."""
    headers = ["setting"]
    for _, title in _RECONSTRUCTION_COLUMNS:
        headers += [f"{decoder}→{decoder} {title}", f"{encoder}→{decoder} {title}"]
    table_rows = []
    for row in stitched:
        ref = reference.get(row.setting)
        line = [setting_label(row.projections, row.aggregation, row.method)]
        for metric, _ in _RECONSTRUCTION_COLUMNS:
            line += [spread(ref, metric) if ref else "-", spread(row, metric)]
        table_rows.append(line + [_note(row)])
    seeds = ",".join(str(s) for s in stitched[0].seeds)
    print_table(
        f"{encoder} → {decoder} on {report.dataset} ({report.split}; {_anchor_text(report)}; seeds {seeds}; reconstruction: "
        f"MSE, PSNR, SSIM, and a pixel classifier's accuracy on the reconstructions{_classifier_text(report)})",
        headers + ["note"],
        table_rows,
        justify={name: "right" for name in headers[1:]},
        trailing="note",
    )


def _classifier_text(report: StitchReport) -> str:
    facts = report.pixel_classifier
    if not facts:
        return ""
    return f", {percent(facts['accuracy_on_originals'])}% on the original images"


def eval_document(reports: Sequence[StitchReport], recipe: str | None) -> dict[str, Any]:
    """Give ``eval --json``'s document: every dataset's rows, summary and similarity, and how they were made."""
    runs = []
    for report in reports:
        document = report.to_dict()
        for key in ("rows", "summary", "similarity"):
            document.pop(key, None)
        runs.append(document)
    return {
        "recipe": recipe,
        "datasets": [report.dataset for report in reports],
        "rows": [dict(row.to_dict(), dataset=report.dataset) for report in reports for row in report.rows],
        "summary": [dict(entry, dataset=report.dataset) for report in reports for entry in report.summary()],
        "similarity": [dict(row.to_dict(), dataset=report.dataset) for report in reports for row in report.similarity or []],
        "runs": runs,
    }


def render_eval(reports: Sequence[StitchReport], *, json_output: bool, recipe: str | None = None) -> None:
    """Print ``eval``'s result: one JSON document, or per dataset the summary, the matrices and the similarity table."""
    if json_output:
        print_json(eval_document(reports, recipe))
        return
    from stitchcli.stitching import stitching_matrix

    for report in reports:
        names = [model["name"] for model in report.models]
        if len(names) == 2:
            _render_pair(report, names)
            _render_similarity(report)
            continue
        if report.task == "reconstruction":
            _render_eval_reconstruction(report, names)
            _render_similarity(report)
            continue
        summary_rows = [
            [
                setting_label(entry["projections"], entry["aggregation"], entry["method"]),
                percent(entry["reference_accuracy"], entry["reference_accuracy_std"]),
                percent(entry["stitched_accuracy"], entry["stitched_accuracy_std"]),
                percent(entry["reference_macro_f1"], entry["reference_macro_f1_std"]),
                percent(entry["stitched_macro_f1"], entry["stitched_macro_f1_std"]),
                entry["stitched_pairs"],
            ]
            for entry in report.summary()
        ]
        print_table(
            f"{report.dataset} ({report.split}, {_anchor_text(report)}): mean ± std over model pairs, %",
            ["setting", "non-stitched acc", "stitched acc", "non-stitched F1", "stitched F1", "stitched pairs"],
            summary_rows,
            justify={"non-stitched acc": "right", "stitched acc": "right", "non-stitched F1": "right", "stitched F1": "right", "stitched pairs": "right"},
        )
        settings = list(dict.fromkeys(row.setting for row in report.rows))
        for setting in settings:
            matrix = stitching_matrix(report, setting, names)
            print_table(
                f"{setting_label(setting[1], setting[2], setting[0])}: accuracy %, encoder rows, decoder columns",
                ["encoder \\ decoder", *names],
                [[encoder, *(percent(value) for value in values)] for encoder, values in zip(names, matrix)],
                justify={name: "right" for name in names},
            )
            _render_choices(report, setting, names)
        _render_similarity(report)


def _render_choices(report: StitchReport, setting: tuple, names: Sequence[str]) -> None:
    """Print which bridge ``auto`` chose for each model pair (nothing for the other settings)."""
    chosen = {(row.encoder, row.decoder): row.chosen for row in report.rows if row.setting == setting and row.chosen}
    if not chosen:
        return
    print_table(
        f"{setting_label(setting[1], setting[2], setting[0])}: the bridge chosen, encoder rows, decoder columns",
        ["encoder \\ decoder", *names],
        [[encoder, *(chosen.get((encoder, decoder), "-") for decoder in names)] for encoder in names],
    )


def _render_eval_reconstruction(report: StitchReport, names: Sequence[str]) -> None:
    """Print a reconstruction sweep of N models: the summary over model pairs and one MSE matrix per setting."""
    from stitchcli.stitching import stitching_matrix

    headers = ["setting"]
    for _, title in _RECONSTRUCTION_COLUMNS:
        headers += [f"non-stitched {title}", f"stitched {title}"]
    summary_rows = []
    for entry in report.summary():
        line = [setting_label(entry["projections"], entry["aggregation"], entry["method"])]
        for metric, _ in _RECONSTRUCTION_COLUMNS:
            line += [scaled(metric, entry[f"reference_{metric}"], entry[f"reference_{metric}_std"]),
                     scaled(metric, entry[f"stitched_{metric}"], entry[f"stitched_{metric}_std"])]
        summary_rows.append(line + [entry["stitched_pairs"]])
    print_table(
        f"{report.dataset} ({report.split}, {_anchor_text(report)}): reconstruction, mean ± std over model pairs{_classifier_text(report)}",
        headers + ["stitched pairs"], summary_rows, justify={name: "right" for name in headers[1:] + ["stitched pairs"]},
    )
    for setting in dict.fromkeys(row.setting for row in report.rows):
        matrix = stitching_matrix(report, setting, names, "mse")
        print_table(
            f"{setting_label(setting[1], setting[2], setting[0])}: MSE, encoder rows, decoder columns",
            ["encoder \\ decoder", *names],
            [[encoder, *(scaled("mse", value) for value in values)] for encoder, values in zip(names, matrix)],
            justify={name: "right" for name in names},
        )


def _render_pair(report: StitchReport, names: Sequence[str]) -> None:
    """Print both directions of a two-model sweep in one table: one line per setting."""
    a, b = names
    cells = {(row.setting, row.encoder, row.decoder): row for row in report.rows}
    directions = [(a, a), (b, a), (b, b), (a, b)]
    table_rows = []
    for setting in dict.fromkeys(row.setting for row in report.rows):
        line = [setting_label(setting[1], setting[2], setting[0])]
        for encoder, decoder in directions:
            row = cells.get((setting, encoder, decoder))
            if row is None:
                line.append("-")
            elif report.task == "reconstruction":  # MSE / SSIM / pixel accuracy %
                line.append(" / ".join(scaled(metric, getattr(row, metric)) for metric in ("mse", "ssim", "pixel_accuracy")))
            else:
                line.append(spread(row))
        table_rows.append(line)
    headers = [f"{encoder}→{decoder}" for encoder, decoder in directions]
    seeds = ",".join(str(s) for s in report.settings.get("seeds", []))
    print_table(
        f"{report.dataset} ({report.split}, {_anchor_text(report)}, seeds {seeds}): "
        + ("MSE / SSIM / pixel classifier accuracy %" + _classifier_text(report) if report.task == "reconstruction" else "accuracy %")
        + ", encoder→decoder",
        ["setting", *headers],
        table_rows,
        justify={header: "right" for header in headers},
    )


def _render_similarity(report: StitchReport) -> None:
    if not report.similarity:
        return
    from stitchcli.stitching.similarity import ACROSS_SPACES_NOTE

    k = report.settings.get("k")
    # the absolute rows' standing note is said once in the docs; any other (a measure not defined) gets a column
    notes = ["; ".join(part for part in (r.note or "").split("; ") if part and part != ACROSS_SPACES_NOTE) for r in report.similarity]
    print_table(
        f"{report.dataset}: similarity of the {report.split} representations",
        ["model a", "model b", "space", "CKA", f"Jaccard@{k}", f"MRR@{k}", "cosine"] + (["note"] if any(notes) else []),
        [[r.model_a, r.model_b, r.projection, _number(r.cka), _number(r.jaccard), _number(r.mrr), _number(r.cosine)] + ([note] if any(notes) else [])
         for r, note in zip(report.similarity, notes)],
        justify={name: "right" for name in ("CKA", f"Jaccard@{k}", f"MRR@{k}", "cosine")},
    )


def _csv_text(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({key: "+".join(map(str, value)) if isinstance(value, list) else value for key, value in record.items()})
    return out.getvalue()


def write_csv(path: Path, reports: Sequence[StitchReport]) -> list[Path]:
    """Give the files written: the rows to ``path``, the similarity rows to ``<stem>.similarity.csv`` beside it."""
    document = eval_document(reports, None)
    path = Path(path).expanduser()
    reconstruction = any(report.task == "reconstruction" for report in reports)
    write_text_atomically(path, _csv_text(document["rows"], ROW_FIELDS + (RECONSTRUCTION_ROW_FIELDS if reconstruction else ())))
    written = [path]
    if document["similarity"]:
        similarity = path.with_name(f"{path.stem}.similarity.csv")
        write_text_atomically(similarity, _csv_text(document["similarity"], SIMILARITY_FIELDS))
        written.append(similarity)
    return written



def check_reconstruction_outputs(task: str, plot: Path | None, save_outputs: Path | None, *, plot_is_heatmaps: bool = False) -> str | None:
    """Refuse, before any work, ``--plot``/``--save-outputs`` that cannot be written or have nothing to show.

    Give what the sweep must keep of its reconstructions (``run_sweep``'s ``keep``): ``"all"`` for
    ``--save-outputs``, ``"grid"`` for ``--plot`` alone, None otherwise. ``plot_is_heatmaps``: the command's
    ``--plot`` also draws heatmaps (eval), so a classification sweep may take it.
    """
    from stitchcli.cli.output import check_output_path, make_output_folder
    from stitchcli.errors import UsageError

    check_output_path(plot, "--plot", folder=True)
    check_output_path(save_outputs, "--save-outputs", folder=True)
    if task != "reconstruction":
        wrong = [flag for flag, value in (("--plot", None if plot_is_heatmaps else plot), ("--save-outputs", save_outputs)) if value is not None]
        if wrong:
            verb = "writes" if len(wrong) == 1 else "write"
            raise UsageError(f"{' and '.join(wrong)} {verb} reconstructions: add --task reconstruction (on an image dataset), or drop {' and '.join(wrong)}")
        keep = None  # a --plot left here is eval's heatmaps
    else:
        if plot is not None:
            from stitchcli.plots import require_matplotlib

            require_matplotlib()  # before any work, not after it
        make_output_folder(save_outputs, "--save-outputs")
        keep = "all" if save_outputs is not None else "grid" if plot is not None else None
    make_output_folder(plot, "--plot")
    return keep


def write_reconstruction_outputs(reports: Sequence[StitchReport], plot: Path | None, save_outputs: Path | None, progress: Any) -> None:
    """Write the grids (``--plot``) and reconstruction files (``--save-outputs``) of reconstruction reports."""
    from stitchcli.stitching.reconstruction import write_grids, write_outputs

    for report in reports:
        if report.task != "reconstruction":
            continue
        if plot is not None:
            grids = write_grids(plot, report)
            progress.info(f"wrote {len(grids)} reconstruction grid(s) to {plot}")
        if save_outputs is not None:
            files = write_outputs(save_outputs, report)
            progress.info(f"wrote {len(files)} reconstruction file(s) to {save_outputs}")
