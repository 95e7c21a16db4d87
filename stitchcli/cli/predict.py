"""`stitchcli predict DIR INPUTS...`: a stitched model saved by `stitch --save DIR` on new inputs or a dataset split;
and what `stitch` does with `--save DIR`, `--save-row` and `--min-accuracy`."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Collection, List, Optional

import typer

from stitchcli.cli import options as opt
from stitchcli.cli.settings_options import REPEATABLE, given_dataset_options

if TYPE_CHECKING:
    from stitchcli.cli.output import Progress
    from stitchcli.models import ModelRef
    from stitchcli.progress import Reporter
    from stitchcli.settings import StitchSettings
    from stitchcli.stitched.predicting import Predictions
    from stitchcli.stitching import StitchReport
    from stitchcli.store import EmbeddingStore

MinAccuracy = Annotated[
    Optional[str],
    typer.Option("--min-accuracy", help="Fail with exit code 3 (and one line naming the row) when the accuracy is below X: "
                 "a fraction (0.9) or a percentage (90 or 90%).", show_default=False, metavar="X"),
]


def predict_command(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="A stitched model folder written by `stitchcli stitch ... --save DIR`.", show_default=False)],
    inputs: Annotated[
        Optional[List[str]],
        typer.Argument(metavar="INPUTS...", help="Image files or folders (image models); text files, one input per line (text models); "
                       "or one table file (CSV/TSV/JSON/JSONL/Parquet), its input column inferred as embed does or named by --input-column. - is standard input: one text, "
                       "or one image path, per line.", show_default=False),
    ] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Predict on a dataset split instead (any dataset embed takes); "
                                                   "prints the accuracy.", show_default=False)] = None,
    split: Annotated[str, typer.Option("--split", "-s", help="The split of --dataset.")] = "test",
    limit: Annotated[Optional[int], typer.Option(help="With --dataset: the seeded class-stratified subset of N rows (as embed --limit).", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="With --limit: the seed of the subset (as embed --seed).")] = 0,
    input_column: Annotated[Optional[List[str]], typer.Option("--input-column", help="The column of a table file (or of --dataset) that holds "
                                                              f"the inputs; comma-separated text columns are joined. {REPEATABLE}",
                                                              show_default=False)] = None,
    label_column: opt.LabelColumn = None,
    dataset_revision: opt.DatasetRevision = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Also give the K most probable classes of every input.", min=1)] = 1,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Also write the predictions as CSV to FILE.", show_default=False)] = None,
    min_accuracy: MinAccuracy = None,
    recompute: Annotated[bool, typer.Option("--recompute", help="With --dataset: encode the split even when the cache holds its embeddings.")] = False,
    batch_size: opt.BatchSize = None,
    device: opt.Device = "auto",
    cache_dir: opt.CacheDir = None,
    json_output: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Run the stitched model in DIR on INPUTS (or on --dataset D --split S): input, predicted class, probability.

    DIR is checked first: a file damaged, edited, missing or not listed in its manifest stops everything (exit 2).
    The inputs go through the encoder as `embed` runs it; nothing is written to the embedding cache.
    """
    from stitchcli.cli.output import check_output_path, progress_and_store
    from stitchcli.errors import UsageError
    from stitchcli.stitched import load_stitched
    from stitchcli.stitched.predicting import (
        check_min_accuracy,
        parse_min_accuracy,
        predict_dataset,
        predict_paths,
    )

    bar = parse_min_accuracy(min_accuracy)
    options_of_data = given_dataset_options(input_column, label_column, dataset_revision)
    input_column = options_of_data.input_column  # --input-column a --input-column b is a,b
    check_output_path(csv_file, "--csv")
    if dataset is None and not inputs:
        raise UsageError("nothing to predict on: name INPUTS (files or folders) or pass --dataset D --split S")
    if dataset is not None and inputs:
        raise UsageError("give INPUTS or --dataset, not both")
    if dataset is None and (limit is not None or label_column is not None or recompute):
        raise UsageError("--limit, --label-column and --recompute apply to --dataset: drop them, or pass --dataset D --split S")
    if bar is not None and dataset is None:
        raise UsageError("--min-accuracy needs labelled rows: predict on a dataset split (--dataset D --split S)")
    model = load_stitched(directory)
    progress, store, reporter = progress_and_store(cache_dir, quiet)
    if dataset is not None:
        predictions = predict_dataset(model, dataset, split, store=store, limit=limit, seed=seed,
                                      dataset_options=options_of_data,
                                      batch_size=batch_size, device=device, recompute=recompute, reporter=reporter,
                                      need_accuracy=bar is not None)
    else:
        predictions = predict_paths(model, inputs or [], store=store, input_column=input_column, batch_size=batch_size, device=device, reporter=reporter)
    if csv_file is not None:
        from stitchcli.store import write_text_atomically

        write_text_atomically(Path(csv_file).expanduser(), predictions_csv(predictions, top_k))
    render_predictions(predictions, top_k=top_k, json_output=json_output, progress=progress)
    check_min_accuracy(f"{model.label} on {dataset}/{split}", predictions.accuracy, bar)


def predictions_csv(predictions: Predictions, top_k: int) -> str:
    """Give the CSV text: input, class, probability (and label; and class_2, probability_2... with --top-k, up to the
    number of classes: a row has no more to give, and a header wider than the rows would put the label under class_K)."""
    top_k = min(top_k, len(predictions.model.classes))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["input", "class", "probability"] + [f"{name}_{rank}" for rank in range(2, top_k + 1) for name in ("class", "probability")]
    writer.writerow(header + (["label"] if predictions.labels is not None else []))
    for position, (name, best) in enumerate(zip(predictions.names, predictions.top(top_k))):
        cells: list[Any] = [name]
        for cls, probability in best:
            cells += [cls, f"{probability:.6f}"]
        writer.writerow(cells + ([predictions.labels[position]] if predictions.labels is not None else []))
    return out.getvalue()


def render_predictions(predictions: Predictions, *, top_k: int, json_output: bool, progress: Progress) -> None:
    """Print the table (or the one JSON document), and the accuracy on stderr when the rows are labelled."""
    from stitchcli.cli.output import print_json, print_table

    if json_output:
        print_json(predictions.to_dict(top_k))
    else:
        columns = ["input", "predicted class", "probability"] + (["top k"] if top_k > 1 else []) + (["label"] if predictions.labels is not None else [])
        rows = []
        for position, (name, best) in enumerate(zip(predictions.names, predictions.top(top_k))):
            row: list[Any] = [name, best[0][0], f"{best[0][1]:.4f}"]
            if top_k > 1:
                row.append(", ".join(f"{c} {p:.3f}" for c, p in best))
            if predictions.labels is not None:
                row.append(predictions.labels[position])
            rows.append(row)
        print_table(f"{predictions.model.label}: {len(rows)} prediction(s)", columns, rows, justify={"probability": "right"})
    if predictions.accuracy is not None:
        same = {True: "; predictions equal the saved row's, row for row", False: "; predictions DIFFER from the saved row's", None: ""}[predictions.same_as_saved]
        card = predictions.model.card.get("accuracy", {}).get("stitched")
        measured = f" (the card: {100 * card:.2f}%)" if isinstance(card, (int, float)) else ""
        progress.info(f"accuracy {100 * predictions.accuracy:.2f}% on {len(predictions.names)} rows{measured}{same}")
        if not json_output:
            print(f"accuracy: {100 * predictions.accuracy:.2f}%")


# ----- stitch --save DIR, --save-row, --min-accuracy ---------------------------------------------------

SaveDir = Annotated[
    Optional[Path],
    typer.Option("--save", help="Save the stitched model (the chosen row's head, anchors or map, and a card) to this folder for "
                 "`stitchcli predict` and `stitchcli.load_stitched`.", show_default=False, metavar="DIR"),
]
SaveRow = Annotated[
    Optional[str],
    typer.Option("--save-row", help="The row to save (and to hold to --min-accuracy): relative, absolute, translation, affine, a "
                 "bridge's name, auto, or a relative row as the table names it ('cosine+euclidean \\[mlp-sum]'). Default: the best row "
                 "on validation data (the heads' held-out training rows), never the evaluation split.", show_default=False, metavar="ROW"),
]


def check_stitch_outputs(save: Path | None, save_row: str | None, min_accuracy: str | None, settings: StitchSettings,
                         head: Path | None) -> float | None:
    """Give the --min-accuracy bar after refusing, before any work, a --save folder that cannot be used or a --save-row
    that names none of the sweep's rows (with --head: once the head is read, as its settings decide the rows)."""
    from stitchcli.cli.output import check_output_path
    from stitchcli.errors import UsageError
    from stitchcli.stitched.build import check_row_name
    from stitchcli.stitched.files import check_target
    from stitchcli.stitched.predicting import parse_min_accuracy

    if save_row is not None and save is None and min_accuracy is None:
        raise UsageError("--save-row chooses the row --save writes (or --min-accuracy checks): add --save DIR")
    if save_row is not None and save_row.strip() == "shared":
        raise UsageError("--save-row shared: a shared space maps every model of a sweep, not one pair, so it is not saved as a "
                         "stitched model: choose another row (a bridge, affine, relative…)")
    if head is None:
        check_row_name(settings, save_row)
    if save is not None:
        check_output_path(save, "--save", folder=True)
        check_target(save)
    return parse_min_accuracy(min_accuracy)


def save_and_check(
    store: EmbeddingStore,
    encoder: ModelRef,
    decoder: ModelRef,
    settings: StitchSettings,
    report: StitchReport,
    *,
    save: Path | None,
    save_row: str | None,
    bar: float | None,
    head_file: Path | None,
    explicit: Collection[str],
    progress: Progress,
    reporter: Reporter,
) -> None:
    """Choose the row (validation data only), save it with --save, then hold its accuracy to --min-accuracy (exit 3)."""
    from stitchcli.stitched import stitched_from_sweep
    from stitchcli.stitched.predicting import check_min_accuracy

    if save is None and bar is None:
        return
    build = stitched_from_sweep(store, encoder, decoder, settings, report, row=save_row, head_file=head_file, explicit=explicit, reporter=reporter)
    accuracy = build.accuracy
    what = f"{build.label}: {100 * accuracy:.2f}% on {report.split} (validation {100 * build.chosen.validation_accuracy:.2f}%)"
    if save is not None:
        path = build.save(save)
        progress.info(f"saved {what} to {path}")
    else:
        progress.info(f"chosen row {what}")
    check_min_accuracy(f"{build.label} on {report.dataset}/{report.split}", accuracy, bar)
