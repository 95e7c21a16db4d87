"""`stitchcli similarity`: every measure between every pair of models (and layers), calibrated on request."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, List, Optional, Sequence

import typer

from stitchcli.cli import options as opt
from stitchcli.cli.settings_options import REPEATABLE, given_dataset_options, names_a_path, split_list
from stitchcli.errors import UsageError

if TYPE_CHECKING:
    from stitchcli.similarity import LayerMatrix, SimilarityReport
    from stitchcli.similarity.cached import CachedModels

DEFAULT_MEASURES = ("linear-cka", "unbiased-cka", "mutual-knn", "cknna", "svcca")
"""Computed when --measures is not given: CKA and its unbiased form, the two k-NN measures of the Platonic
Representation Hypothesis, SVCCA; with --projection also eval's shared-space measures (SHARED_DEFAULTS)."""
SHARED_DEFAULTS = ("mrr", "cosine")



def similarity_command(
    dataset: opt.Dataset,
    models: Annotated[Optional[List[str]], typer.Option("--models", "-m", help="Comma-separated models (at least two): embed --model names or saved --name names. "
                                                         f"{REPEATABLE}", show_default=False)] = None,
    models_file: Annotated[Optional[Path], typer.Option("--models-file", help="A file of model names, one per line (# starts a comment).", show_default=False)] = None,
    measures: Annotated[
        Optional[List[str]],
        typer.Option("--measures", help="Comma-separated measures (linear-cka, unbiased-cka, rbf-cka, mutual-knn, cknna, svcca, procrustes, "
                     f"rsa, jaccard; mrr and cosine need --projection), or all. {REPEATABLE} (default: linear-cka, unbiased-cka, mutual-knn, cknna, svcca; "
                     "with --projection also mrr, cosine)", show_default=False),
    ] = None,
    projection: Annotated[
        Optional[List[str]],
        typer.Option("--projection", "-p", help="Also compare relative spaces: comma-separated projections (cosine, euclidean, l1, linf) or all, "
                     f"each model against its own embeddings of the same anchors. {REPEATABLE}", show_default=False),
    ] = None,
    null: Annotated[int, typer.Option("--null", help="Permutations of the rows for each score's null mean, std and calibrated value (0: none).")] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the permutations and of the row draw of rbf-cka and rsa.")] = 0,
    k: Annotated[int, typer.Option("--k", help="Neighbours of the k-NN measures (mutual-knn, cknna, jaccard, mrr).")] = 10,
    layers: Annotated[
        Optional[List[str]],
        typer.Option("--layers", help="Compare every layer pair: 'all' or comma-separated layer names (embedded with `embed --layers` when missing); "
                     "prints the layer × layer matrix and the best pair of each model pair. The final representation ('final') "
                     f"is always compared. {REPEATABLE}", show_default=False),
    ] = None,
    split: opt.Split = "test",
    limit: opt.Limit = None,
    embed_seed: opt.EmbedSeed = 0,
    weights: opt.Weights = None,
    pooling: opt.Pooling = None,
    max_length: opt.MaxLength = None,
    precision: opt.Precision = None,
    revision: opt.Revision = None,
    input_column: opt.InputColumn = None,
    label_column: opt.LabelColumn = None,
    dataset_revision: opt.DatasetRevision = None,
    anchors: opt.Anchors = None,
    num_anchors: opt.NumAnchors = None,
    anchor_strategy: opt.AnchorStrategy = "uniform",
    anchor_seed: opt.AnchorSeed = 0,
    anchor_model: opt.AnchorModel = None,
    train_split: opt.TrainSplit = "train",
    transform: opt.Transform = "center",
    device: opt.Device = "auto",
    embed_batch_size: opt.EmbedBatchSize = None,
    trust_remote_code: opt.TrustRemoteCode = False,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Also write the rows as CSV to FILE.", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write heatmap PNGs into this folder: the N×N table of each measure, "
                                                  "and with --layers the layer × layer matrix of each model pair.", show_default=False)] = None,
    cache_dir: opt.CacheDir = None,
    json_output: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Compare every pair of models' representations of the same rows: an N×N table per measure.

    No heads: only embeddings (built when missing) and measures, on the absolute latents and, with
    --projection, on relative spaces. --null N calibrates each score against N row permutations
    (calibrated 1 = as alike as identical, 0 = as alike as misaligned rows). The measures, their
    invariances and costs: docs/SIMILARITY.md.
    """
    import time

    from stitchcli.cli.output import check_output_path, make_output_folder, progress_and_store
    from stitchcli.models import ModelRef
    from stitchcli.settings import build_settings
    from stitchcli.similarity import takes_neighbours
    from stitchcli.similarity.cached import compare_cached

    names = model_names(models, models_file)
    projections = projection_names(projection)
    chosen = measure_names(measures, projections)
    if null < 0:
        raise UsageError(f"--null must be 0 or more permutations, not {null}")
    if k < 1:
        raise UsageError(f"--k must be at least 1 neighbour, not {k}")
    if limit is not None and 1 <= limit <= k and takes_neighbours(chosen):  # known now, before any model is embedded
        raise UsageError(f"--k {k} neighbours need more than the {limit} rows of --limit {limit}: pass a smaller --k or a larger --limit")
    selection = layer_choice(layers)
    check_output_path(csv_file, "--csv")
    check_output_path(plot, "--plot", folder=True)
    if plot is not None:
        from stitchcli.plots import require_matplotlib

        require_matplotlib()  # before any work, not after it
    given = {"weights": weights, "pooling": pooling, "max_length": max_length, "precision": precision, "revision": revision}
    refs = [ModelRef(name, given) for name in names]
    settings = build_settings(dataset, {
        "split": split, "train_split": train_split, "limit": limit, "embed_seed": embed_seed, "anchors": anchors,
        "num_anchors": num_anchors, "anchor_strategy": anchor_strategy, "anchor_seed": anchor_seed, "anchor_model": anchor_model,
        "transform": transform, "device": device, "embed_batch_size": embed_batch_size, "trust_remote_code": trust_remote_code,
        **dataclasses.asdict(given_dataset_options(input_column, label_column, dataset_revision)),
    })
    settings.check_values()  # a bad value is named as such (--transform whiten), with or without --projection
    if not projections:
        from stitchcli.settings import by_name

        relative_only = {"anchors": anchors, "num_anchors": num_anchors, "anchor_model": anchor_model,
                         "anchor_strategy": anchor_strategy, "anchor_seed": anchor_seed, "transform": transform}
        if given_here := [f"--{name.replace('_', '-')}" for name, value in relative_only.items() if value != by_name(name).default]:
            hint = " (-k is --num-anchors; the neighbours of the k-NN measures are --k)" if num_anchors is not None else ""
            raise UsageError(f"{', '.join(given_here)} shape(s) the relative spaces, and there are none without --projection: "
                             f"add --projection (for example --projection cosine) or drop them{hint}")
    make_output_folder(plot, "--plot")
    progress, store, reporter = progress_and_store(cache_dir, quiet)
    started = time.perf_counter()
    loaded, report = compare_cached(store, refs, settings, chosen, layers=selection, projections=projections, null=null, seed=seed,
                                    reporter=reporter, k=k)
    seconds = time.perf_counter() - started
    document = similarity_document(loaded, report, chosen, projections=projections, null=null, seed=seed, k=k,
                                   layers=selection is not None, transform=settings.transform, seconds=seconds)
    if csv_file is not None:
        from stitchcli.store import write_text_atomically

        write_text_atomically(Path(csv_file).expanduser(), csv_text(document["rows"]))
        progress.info(f"wrote {csv_file}")
    if plot is not None:
        from stitchcli.plots import write_similarity_plots

        written = write_similarity_plots(plot, report, title=f"{loaded.label}/{loaded.split}, {loaded.samples} rows")
        progress.info(f"wrote {len(written)} heatmap(s) to {plot}")
    for line in value_warnings(report, k=k, rows=loaded.samples):
        progress.warn(line)
    if json_output:
        from stitchcli.cli.output import print_json

        print_json(document)
        return
    render_similarity(loaded, report, chosen, projections=projections, null=null, layers=selection is not None)


# ----------------------------------------------------------------------------------------------- inputs


def model_names(models: str | Sequence[str] | None, models_file: Path | None) -> list[str]:
    """Give the model names of --models (comma-separated, repeatable) or --models-file (one name per line, # comments);
    UsageError when fewer than two."""
    if models is not None and models_file is not None:
        raise UsageError("give the models with --models A,B or with --models-file FILE, not both")
    if models is None and models_file is None:
        raise UsageError("give the models to compare: --models A,B[,C...] (at least two) or --models-file FILE")
    if models_file is not None:
        path = Path(models_file).expanduser()
        if not path.is_file():
            raise UsageError(f"--models-file {models_file} does not exist (or is not a file): give a file with one model name per line")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UsageError(f"--models-file {models_file} is not a UTF-8 text file: give one model name per line") from None
        names = [line.split("#", 1)[0].strip() for line in lines]
        names = [name for name in names if name]
        where = f"--models-file {models_file}"
    else:
        names = list(split_list(models, "--models", whole=names_a_path) or ())
        where = "--models"
    if len(names) < 2:
        raise UsageError(f"similarity compares models: give at least two ({where} names {len(names)})")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"model {', '.join(repeated)} is listed twice in {where}: name each model once")
    return names


def layer_choice(value: str | Sequence[str] | None) -> "tuple[str, ...] | str | None":
    """Give the --layers choice for :func:`compare_cached`: None (the final representations only), ``"all"``
    or layer names. ``final``, as the tables call the final representation, may be listed: it is always
    compared, so it is dropped from the names (and ``--layers final`` alone compares the final ones only)."""
    from stitchcli.embedding.layers import parse_layer_selection
    from stitchcli.similarity.layers import FINAL_LAYER

    if value is None:
        return None
    names = parse_layer_selection(split_list(value, "--layers"))
    if names is None:
        return "all"
    names = tuple(name for name in names if name != FINAL_LAYER)
    return names or None


def projection_names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Give the relative projections of --projection (none when not given)."""
    from stitchcli.relative import list_projections, unknown_name
    from stitchcli.settings import by_name

    # `all` as stitch and eval read it (the declared projections setting's), alone or among others
    names = by_name("projection").expand(split_list(value, "--projection") or ())
    for name in names:
        if name not in list_projections():
            raise UsageError(f"--projection: {unknown_name('projection', name, list_projections())}")
    if len(set(names)) != len(names):
        raise UsageError(f"--projection lists a projection twice: {','.join(names)}")
    return tuple(names)


def measure_names(value: str | Sequence[str] | None, projections: Sequence[str]) -> list[str]:
    """Give the registered names of --measures (``all``: every measure; default: :data:`DEFAULT_MEASURES`)."""
    from stitchcli.similarity import get_measure, list_measures

    if value is None:
        return [*DEFAULT_MEASURES, *(SHARED_DEFAULTS if projections else ())]
    given = split_list(value, "--measures") or ()
    if list(given) == ["all"]:
        return [name for name in list_measures() if projections or not get_measure(name).shared_space]
    found: list[str] = []
    given_as: dict[str, str] = {}
    for name in given:
        try:
            measure = get_measure(name)
        except UsageError as exc:
            raise UsageError(f"--measures: {exc}") from None
        if measure.shared_space and not projections:
            raise UsageError(f"--measures {name} compares vectors across spaces, so it needs relative spaces: add --projection cosine")
        if measure.name in found:
            first = given_as[measure.name]
            raise UsageError(f"--measures lists {measure.name} twice{f' (as {first} and {name})' if first != name else ''}: name each measure once")
        found.append(measure.name)
        given_as[measure.name] = name
    return found


def value_warnings(report: "SimilarityReport", *, k: int, rows: int) -> list[str]:
    """Give a warning for values that do not measure what a measure's docs promise, with what to change (one per
    measure): a CKNNA above 1, an SVCCA whose kept directions fill the whole space of ``rows`` centred rows."""
    from stitchcli.similarity import get_measure

    warnings = []
    above = [record.value for record in report.records if record.measure == "cknna" and record.value is not None and record.value > 1.0 + 1e-9]
    if above:
        warnings.append(f"cknna is above 1 ({max(above):.3f}): its unbiased estimator leaves [0, 1] when --k {k} neighbours are not few "
                        "against the rows compared: use a k much smaller than the number of rows")
    components = int(get_measure("svcca").options["components"])
    if rows - 1 <= components and any(record.measure == "svcca" for record in report.records):
        warnings.append(f"svcca keeps the top {components} directions of each model, and {rows} rows span only {rows - 1} once centred: "
                        f"wherever both models keep them all, the two subspaces are the same and svcca is 1 whatever the models: "
                        f"compare more than {components + 1} rows")
    return warnings


# ---------------------------------------------------------------------------------------------- outputs

CSV_FIELDS = ("model_a", "model_b", "layer_a", "layer_b", "projection", "measure", "value", "null_mean", "null_std", "calibrated")


def similarity_document(
    loaded: "CachedModels",
    report: "SimilarityReport",
    measures: Sequence[str],
    *,
    projections: Sequence[str],
    null: int,
    seed: int,
    k: int,
    layers: bool,
    transform: str,
    seconds: float,
) -> dict[str, Any]:
    """Give the one JSON document of `similarity --json` (``rows``: one per model pair, layer pair, projection, measure)."""
    document = report.to_dict()
    return {
        "dataset": loaded.label,
        "dataset_id": loaded.dataset.dataset_id,
        "split": loaded.split,
        "samples": loaded.samples,
        "models": loaded.summary(),
        "measures": list(measures),
        "projections": [None, *projections],
        "anchors": loaded.anchors_name,
        "transform": transform if projections else None,
        "null": null,
        "seed": seed,
        "k": k,
        "seconds": round(seconds, 3),
        "rows": document["rows"],
        **({"layer_matrices": document["layer_matrices"]} if layers else {}),
    }


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """Give the rows as CSV text with a header (empty cells for None)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(CSV_FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _number(value: float | None) -> str:
    from stitchcli.plots import number_text

    return number_text(value)


def _cell(value: float | None, calibrated: float | None, null: int) -> str:
    """Give a table cell as the heatmaps annotate it, on one line: "value (calibrated)" with a null."""
    from stitchcli.plots import cell_text

    return cell_text(value, calibrated, null=bool(null), sep=" ") or "–"


def render_similarity(
    loaded: "CachedModels", report: "SimilarityReport", measures: Sequence[str], *, projections: Sequence[str], null: int, layers: bool
) -> None:
    """Print one N×N table per measure and space; with layers, the best pairs and every layer × layer matrix."""
    from stitchcli.cli.output import print_table
    from stitchcli.similarity import get_measure

    names = list(report.models)
    where = f"{loaded.label}/{loaded.split}, {loaded.samples} rows"
    shown = "value (calibrated)" if null else "value"
    for projection in (None, *projections):
        space = "absolute latents" if projection is None else f"{projection} relative space"
        for name in measures:
            measure = get_measure(name)
            if measure.shared_space and projection is None:
                continue
            _, values = report.table(name, projection)
            calibrated = report.table(name, projection, value="calibrated")[1] if null else values
            direction = "a distance: lower = more alike" if not measure.higher_is_more_alike else "higher = more alike"
            pick = "; best layer pair per cell" if layers else ""
            rows = [[a, *(("—" if i == j else _cell(values[i, j], calibrated[i, j], null)) for j in range(len(names)))]
                    for i, a in enumerate(names)]
            print_table(f"{measure.title} ({name}), {space}: {shown}, row model a, column model b ({direction}{pick}); {where}",
                        ["model", *names], rows, justify={n: "right" for n in names})
            if layers:
                _render_layers(report, name, projection, space, null)


def _render_layers(report: "SimilarityReport", measure: str, projection: str | None, space: str, null: int) -> None:
    from stitchcli.cli.output import print_table
    from stitchcli.similarity import layer_label

    matrices = [m for m in report.matrices if m.measure == measure and m.projection == projection]
    best_rows = []
    for matrix in matrices:
        best = matrix.best
        final = _final_cell(matrix)
        spread = "–" if best.null is None else f"{_number(best.null.null_mean)} ± {_number(best.null.null_std)}"
        best_rows.append([matrix.model_a, matrix.model_b, layer_label(best.layer_a), layer_label(best.layer_b), _number(best.value),
                          spread, _number(None if best.null is None else best.null.calibrated), _number(final)])
    print_table(f"{measure}, {space}: the best layer pair of each model pair (calibrated against the null of the best cell)",
                ["model a", "model b", "layer a", "layer b", "value", "null of the best", "calibrated", "final ↔ final"], best_rows,
                justify={c: "right" for c in ("value", "null of the best", "calibrated", "final ↔ final")})
    for matrix in matrices:
        _render_matrix(matrix, space, null)


def _final_cell(matrix: "LayerMatrix") -> float | None:
    if None in matrix.layers_a and None in matrix.layers_b:
        return float(matrix.values[matrix.layers_a.index(None), matrix.layers_b.index(None)])
    return None


def _render_matrix(matrix: "LayerMatrix", space: str, null: int) -> None:
    from stitchcli.cli.output import print_table
    from stitchcli.similarity import layer_label

    columns = [layer_label(layer) for layer in matrix.layers_b]
    rows = []
    for i, layer in enumerate(matrix.layers_a):
        cells = [_cell(float(matrix.values[i, j]), None if matrix.calibrated is None else float(matrix.calibrated[i, j]), null)
                 for j in range(len(columns))]
        rows.append([layer_label(layer), *cells])
    shown = "value (calibrated)" if null else "value"
    print_table(f"{matrix.measure}, {space}: {matrix.model_a} layers (rows) × {matrix.model_b} layers (columns), {shown}",
                [f"{matrix.model_a} \\ {matrix.model_b}", *columns], rows, justify={c: "right" for c in columns})
