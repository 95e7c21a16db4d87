"""`stitchcli embed`: encode dataset splits with one or more models into the cache."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, List, Optional, Sequence

import typer

from stitchcli.cli import options as opt
from stitchcli.cli.settings_options import REPEATABLE, given_dataset_options, names_a_path, split_list
from stitchcli.errors import UsageError

if TYPE_CHECKING:
    from stitchcli.embedding import EmbedResult
    from stitchcli.store import EmbeddingStore


def embed_command(
    model: Annotated[
        List[str],
        typer.Option(
            "--model",
            "-m",
            help="Model(s), comma-separated: timm name (vit_base_patch16_224, timm:ARCH.TAG), openclip:ARCH/TAG, "
            "a Hugging Face id (bert-base-cased, hf:org/name), a local folder with config.json, or a --name saved earlier. "
            f"{REPEATABLE} A path that exists is one model even with a comma in its name.",
            show_default=False,
        ),
    ],
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            "-d",
            help="Dataset: an alias (cifar10, cifar100, cifar100-coarse, mnist, fashion_mnist, ag_news, trec, dbpedia_14, imdb), "
            "packaged:bbc-news or packaged:mnist5k (offline), a hub id, a save_to_disk folder, an image folder (split/class/file), "
            "or a folder of CSV/TSV/JSON/JSONL/Parquet files.",
            show_default=False,
        ),
    ],
    split: Annotated[
        Optional[List[str]],
        typer.Option("--split", "-s", help=f"Split(s) to encode, comma-separated, or NAME=PATH for a table file. {REPEATABLE} (default: train, test)",
                     show_default=False),
    ] = None,
    input_column: opt.InputColumn = None,
    label_column: opt.LabelColumn = None,
    limit: Annotated[
        Optional[int], typer.Option(help="Encode a seeded, class-stratified subset of N rows per split (uniform without labels; same rows for every model).", show_default=False)
    ] = None,
    weights: opt.Weights = None,
    pooling: opt.Pooling = None,
    max_length: opt.MaxLength = None,
    revision: opt.Revision = None,
    dataset_revision: opt.DatasetRevision = None,
    from_array: Annotated[
        Optional[List[str]],
        typer.Option("--from-array", help="Import embeddings computed elsewhere: FILE (.npy/.safetensors, one row per split row) or SPLIT=FILE, "
                     f"comma-separated. {REPEATABLE}", show_default=False),
    ] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Save the full model spec under this short name for later commands.", show_default=False)] = None,
    num_workers: Annotated[Optional[int], typer.Option(help="Loader processes beside the model; 0: load in the main process between batches, images with as many threads as the model (default: 0 on the CPU, CPU count - 1 beside a GPU, at most 8).", show_default=False)] = None,
    shard_rows: Annotated[int, typer.Option(help="Rows per resumable shard (rounded up to whole batches).")] = 1024,
    force: Annotated[bool, typer.Option("--force", help="Recompute even when the cache has the entry; with --name, replace a saved name.")] = False,
    batch_size: opt.BatchSize = None,
    device: opt.Device = "auto",
    precision: opt.Precision = None,
    compile_model: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Compile the model with torch.compile first: tens of seconds once (cached by torch), then faster "
            "batches (on a 2-core CPU, vit_small_patch16_224 in bf16 ran 1.2x faster; see docs/PERFORMANCE.md). "
            "Worth it for long runs.",
        ),
    ] = False,
    num_shards: Annotated[
        int,
        typer.Option(
            "--num-shards",
            help="Split the rows among K array jobs (with --shard-index): each writes its shards into the same cache "
            "entry and the last to finish joins them. Under torchrun the ranks split the rows on their own.",
        ),
    ] = 1,
    shard_index: Annotated[
        Optional[int], typer.Option("--shard-index", help="Which of the --num-shards jobs this is: 0 to K-1.", show_default=False)
    ] = None,
    merge: Annotated[
        bool,
        typer.Option("--merge", help="Only join the shards array jobs finished into the entry (no model work); say which are missing."),
    ] = False,
    layers: Annotated[
        Optional[List[str]],
        typer.Option(
            "--layers",
            help="Also cache the pooled representation of every layer ('all') or of the named ones (blocks.3,blocks.6), "
            f"one entry per layer, for `stitchcli similarity --layers` (timm and transformers models; see docs/SIMILARITY.md). {REPEATABLE}",
            show_default=False,
        ),
    ] = None,
    seed: opt.Seed = 0,
    trust_remote_code: opt.TrustRemoteCode = False,
    cache_dir: opt.CacheDir = None,
    json_output: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Encode dataset splits with each model and cache the embeddings (a cache hit does no model work).

    Scale out with `torchrun --nproc-per-node N -m stitchcli embed ...` (rank 0 prints the summary) or with
    array jobs: `--num-shards K --shard-index I`.
    """
    from stitchcli.cli.output import progress_and_store
    from stitchcli.distributed import torchrun_rank
    from stitchcli.embedding import EmbedOptions, embed
    from stitchcli.models import ModelRef

    # comma lists, repeatable: -s a -s b,c is -s a,b,c (a path that exists stays whole)
    splits = split_list(split, "--split", whole=names_a_path)
    arrays = split_list(from_array, "--from-array", whole=names_a_path)
    launched = torchrun_rank()
    follower = launched is not None and launched[1] != 0  # ranks other than 0 report nothing but warnings and errors
    progress, store, reporter = progress_and_store(cache_dir, quiet or follower)
    given = {"weights": weights, "pooling": pooling, "max_length": max_length, "precision": precision, "revision": revision}
    options = {key: value for key, value in given.items() if value is not None}
    refs = [ModelRef(name_, options) for name_ in split_list(model, "--model", whole=names_a_path) or ()]
    dataset_options = given_dataset_options(input_column, label_column, dataset_revision)
    if layers is not None:
        from stitchcli.embedding.layers import embed_layers

        if arrays or name:
            raise UsageError("--layers runs the models: --from-array and --name do not apply")
        results = embed_layers(
            refs, dataset, splits, store=store, layers=split_list(layers, "--layers"),
            options=EmbedOptions(batch_size=batch_size, device=device, num_workers=num_workers, shard_rows=shard_rows, force=force,
                                 limit=limit, seed=seed, compile=compile_model, num_shards=num_shards, merge=merge,
                                 trust_remote_code=trust_remote_code),
            dataset_options=dataset_options, reporter=reporter,
        )
        render_results(results, store, json_output=json_output)
        return
    results = embed(
        refs,
        dataset,
        splits,
        store=store,
        options=EmbedOptions(
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            shard_rows=shard_rows,
            force=force,
            limit=limit,
            seed=seed,
            compile=compile_model,
            num_shards=num_shards,
            shard_index=shard_index,
            merge=merge,
            trust_remote_code=trust_remote_code,
        ),
        dataset_options=dataset_options,
        from_array=arrays,
        register_as=name,
        reporter=reporter,
    )
    if not follower:
        render_results(results, store, json_output=json_output)


def render_results(results: Sequence["EmbedResult"], store: "EmbeddingStore", *, json_output: bool) -> None:
    """Print the embed summary: a table, or one JSON document with --json."""
    from stitchcli.cli.output import print_json, print_table

    if json_output:
        print_json({"cache_dir": str(store.root), "entries": [r.to_dict() for r in results]})
        return
    print_table(
        f"Embeddings (cache: {store.root})",
        ["model", "dataset", "split", "rows", "dim", "seconds", "rows/s", "cache", "path"],
        [
            [
                r.model if r.layer is None else f"{r.model} · {r.layer}",
                r.dataset,
                r.split,
                r.rows,
                r.dim,
                f"{r.seconds:.2f}",
                "" if r.rows_per_s is None else f"{r.rows_per_s:.1f}",
                _cache_state(r),
                _relative(r.path, store.root),
            ]
            for r in results
        ],
        justify={"rows": "right", "dim": "right", "seconds": "right", "rows/s": "right"},
        trailing="path",
    )


def _cache_state(r: "EmbedResult") -> str:
    """Say how an entry came about: hit, new, resumed, or an array job's shard waiting for the others."""
    state = "hit" if r.cache_hit else ("resumed" if r.resumed_rows else "new")
    if r.shard_index is not None:
        state = f"{state}, shard {r.shard_index}/{r.num_shards}"
    if not r.complete:
        state += f"; waiting for shard{'s' if len(r.waiting_for_shards) > 1 else ''} {', '.join(map(str, r.waiting_for_shards))}"
    return state


def _relative(path: str, root: Path) -> str:
    """Give a path relative to the cache root when it lies inside it (the title names the root)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path
