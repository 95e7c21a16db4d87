"""Reconstruction: decoders from a model's relative (or absolute) representation back to the input image.

The paper's second task (Cannistraci et al., ICLR 2024; Moschella et al., ICLR 2023): a decoder trained on
one model's product space rebuilds the image from another model's product space, with no training on the
other model. The pieces, each in its own module:

    targets    the images of a split's rows at one size, (N, C, H, W) floats in [0, 1] (grey detected)
    decoder    the decoder head (aggregation + MLP + transposed convolutions), its training and reading
    scores     MSE, PSNR and SSIM per image, and their means
    semantic   a digit classifier trained on pixels that reads reconstructions (does the digit survive?)
    figures    the grid PNG: originals, the decoder's own reconstruction, one row per stitched method
    outputs    the reconstructions as safetensors files named ENCODER--DECODER--METHOD.safetensors

Import the module you need (``from stitchcli.reconstruction.decoder import train_decoder``); importing this
package imports nothing heavy.
"""

from __future__ import annotations
