"""Zero-shot stitching (docs/METHOD.md §4–6): encoders' relative representations through decoders' heads.

    from stitchcli.models import ModelRef
    from stitchcli.stitching import StitchSettings, stitch, evaluate

    report = stitch(store, ModelRef("lite0"), ModelRef("lite2"), StitchSettings(dataset="packaged:mnist5k"))
    for row in report.rows: ...

Everything a sweep needs and is missing (the embeddings of the training and evaluation splits, the anchors,
the heads) is built with the defaults and cached, so a second call only reads the cache.

    data.py         the dataset resolved once, every model's embeddings and anchor embeddings
    features.py     the product spaces heads read
    heads_cache.py  heads identified by what they read, cached, trained once
    sweep.py        stitch and eval: the rows of every encoder x decoder pair and the baselines
    head_file.py    fit-head: one model's head, written to a file
    report.py       rows, the report and its JSON document
    similarity.py   eval's similarity table
"""

from __future__ import annotations

from stitchcli.lazy import lazy_exports

_EXPORTS = {  # module: the names it gives this package (imported on first use: the command line's reports need no torch)
    "data": "ModelView SweepData prepare",
    "head_file": "fit_head",
    "report": "SimilarityRow StitchReport StitchRow stitching_matrix",
    "sweep": "evaluate run_sweep stitch",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, globals())

from stitchcli.settings import HeadSettings, StitchSettings  # noqa: E402  (cheap: no torch)

__all__ += ["HeadSettings", "StitchSettings"]
