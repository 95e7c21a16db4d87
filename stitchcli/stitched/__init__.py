"""Stitched models you can use: the row of a stitch saved as a checked directory, loaded, and run on new inputs.

    from stitchcli.stitched import load_stitched

    model = load_stitched("stitched/lite2-lite0")          # every file checked against manifest.json first
    model.card["accuracy"]                                # measured stitched and non-stitched accuracy
    model.predict(["digits/"])                            # class names; predict_proba: (N, C) probabilities

    maps.py      latent maps a saved model may hold (absolute, translation, affine; more by register_map)
    files.py     the directory: which files it holds, the manifest of their SHA-256, written whole
    model.py     StitchedParts, save_stitched, load_stitched, StitchedModel
    build.py     from a stitch sweep: the row and seed chosen on validation data, and the card
    inputs.py    image files and folders, text files, tables, dataset splits, Python values -> rows
    encoding.py  the encoder on this machine, and latents of new rows through embed's loop (no cache writes)

The names below load their module on first use, so importing this package stays cheap for the command line.
"""

from __future__ import annotations

from stitchcli.lazy import lazy_exports

_EXPORTS = {  # module: the names it gives this package
    "model": "StitchedModel StitchedParts load_stitched save_stitched",
    "build": "StitchedBuild stitched_from_sweep",
    "maps": "MapKind register_map list_maps",
    "files": "verify_directory",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, globals())
