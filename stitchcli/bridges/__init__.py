"""Bridges: maps from an encoder's latent space into a decoder's, fitted without labels (docs/BRIDGES.md).

    from stitchcli.bridges import fit_bridge, list_bridges, load_bridge, select_bridge

    bridge = fit_bridge("refine", source_anchors, target_anchors, source_rows=src_train, target_rows=dst_train)
    logits = decoder_absolute_head(bridge(source_test))
    tensors, config = bridge.state()            # cache as safetensors + JSON; load_bridge(tensors, config)

    choice = select_bridge(list_bridges(), source_anchors, target_anchors, head=decoder_absolute_head,
                           source_rows=src_train, target_rows=dst_train)     # `auto`: no labels used
    choice.winner, choice.scores

The names below load their module (and torch) on first use, so importing this package stays cheap for the
command line.
"""

from __future__ import annotations

from stitchcli.lazy import lazy_exports

_EXPORTS = {  # module: the names it gives this package
    "registry": "BRIDGE_FORMAT TRANSFORMATION_CLASSES Bridge FitData FittedBridge fit_bridge get_bridge list_bridges load_bridge register_bridge register_form",
    "linear": "AffineMap",
    "selection": "BridgeCandidate Candidate CandidateScore Selection SCORES select_bridge",
    "shared_space": "SharedSpace fit_shared_space",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, globals())
