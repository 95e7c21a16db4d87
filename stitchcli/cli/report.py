"""Rendering of stitching reports: tables for people, one JSON document with --json, CSV files and heatmaps."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from stitchcli.cli.output import print_json, print_table

if TYPE_CHECKING:
    from stitchcli.stitching import StitchReport

ROW_FIELDS = ("dataset", "encoder", "decoder", "method", "projections", "aggregation", "stitched",
              "accuracy", "accuracy_std", "macro_f1", "macro_f1_std", "seeds", "note")
SIMILARITY_FIELDS = ("dataset", "model_a", "model_b", "projection", "cka", "jaccard", "mrr", "cosine", "rows", "note")


def percent(mean: float | None, std: float | None = None) -> str:
    """Give a fraction as a percentage with one decimal, ``± std`` when there is a spread; ``-`` for None."""
    if mean is None:
        return "-"
    text = f"{100 * mean:.1f}"
    return f"{text} ± {100 * std:.1f}" if std is not None else text


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def setting_label(projections: Sequence[str], aggregation: str | None, method: str = "relative") -> str:
    """Give a short label of a row's setting: ``cosine+l1 (mlp-sum)``, or the baseline's name."""
    if method != "relative":
        return method
    joined = "+".join(projections) if len(projections) < 4 else f"product ({len(projections)})"
    return f"{joined} [{aggregation}]"


def _anchor_text(report: StitchReport) -> str:
    anchors = report.anchors
    return f"{anchors['num']} anchors {anchors['name']!r}"


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
    table_rows = []
    for row in stitched:
        ref = reference.get(row.setting)
        table_rows.append([
            row.method,
            "+".join(row.projections) or "-",
            row.aggregation or "-",
            percent(ref.accuracy, ref.accuracy_std) if ref else "-",
            percent(row.accuracy, row.accuracy_std),
            percent(ref.macro_f1, ref.macro_f1_std) if ref else "-",
            percent(row.macro_f1, row.macro_f1_std),
            row.note or "",
        ])
    seeds = ",".join(str(s) for s in stitched[0].seeds)
    print_table(
        f"{encoder} → {decoder} on {report.dataset} ({report.split}; {_anchor_text(report)}; seeds {seeds}; accuracy and macro-F1 %)",
        ["method", "projections", "aggregation", f"{decoder}→{decoder} acc", f"{encoder}→{decoder} acc",
         f"{decoder}→{decoder} F1", f"{encoder}→{decoder} F1", "note"],
        table_rows,
        justify={name: "right" for name in (f"{decoder}→{decoder} acc", f"{encoder}→{decoder} acc", f"{decoder}→{decoder} F1", f"{encoder}→{decoder} F1")},
        trailing="note",
    )


def eval_document(reports: Sequence[StitchReport], recipe: str | None) -> dict[str, Any]:
    """Give ``eval --json``'s document: every dataset's rows, summary and similarity, and how they were made."""
    runs = []
    for report in reports:
        document = report.to_dict()
        for key in ("rows", "summary", "similarity"):
            document.pop(key)
        runs.append(document)
    return {
        "recipe": recipe,
        "datasets": [report.dataset for report in reports],
        "rows": [dict(row.to_dict(), dataset=report.dataset) for report in reports for row in report.rows],
        "summary": [dict(entry, dataset=report.dataset) for report in reports for entry in report.summary()],
        "similarity": [dict(row.to_dict(), dataset=report.dataset) for report in reports for row in report.similarity],
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
        if report.similarity:
            k = report.settings.get("k")
            print_table(
                f"Similarity of the {report.split} representations",
                ["model a", "model b", "space", "CKA", f"Jaccard@{k}", f"MRR@{k}", "cosine"],
                [[r.model_a, r.model_b, r.projection, _number(r.cka), _number(r.jaccard), _number(r.mrr), _number(r.cosine)] for r in report.similarity],
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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_csv_text(document["rows"], ROW_FIELDS))
    written = [path]
    if document["similarity"]:
        similarity = path.with_name(f"{path.stem}.similarity.csv")
        similarity.write_text(_csv_text(document["similarity"], SIMILARITY_FIELDS))
        written.append(similarity)
    return written

