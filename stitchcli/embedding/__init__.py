"""Embedding: dataset rows -> encoder -> cache, resumable, with one summary record per entry.

    from stitchcli.embedding import EmbedOptions, embed, load_embeddings

    options.py    embed's options and result record; its --split and --from-array values
    specs.py      model names -> specs (saved names, backend registries) and cache keys
    batching.py   batch sizes, out-of-memory slicing, loading inputs, shard order
    encode.py     encoding a split shard by shard into the cache; joining array jobs' shards
    arrays.py     importing embeddings computed elsewhere
    pipeline.py   embed and load_embeddings
"""

from __future__ import annotations

from stitchcli.embedding.options import DEFAULT_SHARD_ROWS, DEFAULT_SPLITS, EmbedOptions, EmbedResult
from stitchcli.embedding.pipeline import embed, embed_command, load_embeddings
from stitchcli.embedding.specs import entry_key, resolve_model_spec
from stitchcli.models import ModelRef

__all__ = [
    "DEFAULT_SHARD_ROWS",
    "DEFAULT_SPLITS",
    "EmbedOptions",
    "EmbedResult",
    "ModelRef",
    "embed",
    "embed_command",
    "entry_key",
    "load_embeddings",
    "resolve_model_spec",
]
