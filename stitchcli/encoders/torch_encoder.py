"""What the torch backends share: :class:`TorchEncoder` (batches to the device, precision, compilation) and
:class:`ImageCollator` (PIL images to one batch, in loader workers)."""

from __future__ import annotations

import contextlib
import functools
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Sequence

from stitchcli.device import is_out_of_memory
from stitchcli.encoders.base import Encoder, ModelSpec, short_reason

if TYPE_CHECKING:
    import torch


class TorchEncoder(Encoder):
    """An encoder around a torch model: the backends give the forward pass, this gives the rest.

    Pickling drops the model, so DataLoader workers that receive ``encoder.collate`` get only the
    collator (a transform or tokenizer), never a copy of the weights.
    """

    def __init__(
        self,
        spec: ModelSpec,
        modality: str,
        model: Any,
        collator: Callable[[Sequence[Any]], Any],
        device: "torch.device",
        preprocessing: dict[str, Any],
    ) -> None:
        self.spec = spec
        self.modality = modality
        self._model = model
        self._collator = collator
        self._device = device
        self._preprocessing = preprocessing
        # bf16 on the CPU, for models without batch norm (transformers): the weights themselves are cast once;
        # CPU autocast would cast every weight again on every batch. Attention: on a CPU with AMX the fused
        # (flash) kernel is the fastest in bf16; without AMX it was no faster in bf16 than in fp32, while plain
        # matmul attention was, so there timm models use matmul attention. Batch-norm models keep autocast: cast
        # whole, EfficientNet-Lite0's embeddings drifted too far from fp32's. The measurements: see
        # docs/PERFORMANCE.md. Inputs are cast in ``encode``; GPUs keep autocast.
        self._weights_dtype: Any = None
        if device.type == "cpu" and spec.precision == "bf16" and model is not None and not _has_batch_norm(model):
            import torch

            self._weights_dtype = torch.bfloat16
            self._model = cast_to_bf16_for_cpu(model)

    def collate(self, inputs: Sequence[Any]) -> Any:
        """Give the CPU batch the collator makes of raw inputs."""
        return self._collator(inputs)

    @property
    def collates_each_input_alone(self) -> bool:
        """Whether a batch's collation is its inputs' collations joined (a per-image transform), so that parts
        of a batch may be collated apart; an image processor that pads to the batch's largest image is not."""
        return isinstance(self._collator, ImageCollator)

    def encode(self, batch: Any) -> "torch.Tensor":
        """Give float32 CPU embeddings of one collated batch, shape (batch, dim)."""
        import torch

        from stitchcli.device import autocast

        if self._model is None:
            raise RuntimeError("this encoder was unpickled without its model: encode in the main process")
        batch = self.model_input(batch)
        if self._weights_dtype is not None:
            context: Any = contextlib.nullcontext()
            batch = _cast_floats(batch, self._weights_dtype)
        else:
            context = autocast(self._device, self.spec.precision)
        with torch.inference_mode(), context:
            out = self._forward_compiled(batch) if self.compiled else self.forward(batch)
        return out.float().cpu()

    def compile(self) -> None:
        """Compile the model with torch.compile (inductor), from its first batch on.

        On the CPU the weights are frozen into the graph (inductor's ``freezing``), which lets it pre-pack
        them for the CPU's matmul kernels. Image batches shorter than the first (the last of a split) are
        padded to its size, so one graph serves them all instead of a second compilation. If compiling
        fails (no C compiler, an unsupported model), the model runs uncompiled and ``compile_error`` says why.
        """
        import logging

        import torch

        # torch logs a CUDA_HOME warning from its C++ build helper on machines without CUDA: not ours to show.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        options = {"freezing": True} if self._device.type == "cpu" else None
        self._eager_model = self._model
        self._model = torch.compile(self._model, options=options)
        self._compiled_rows = 0
        self.compile_error: str | None = None

    @property
    def compiled(self) -> bool:
        """Whether the model runs compiled (``compile`` was called and compiling did not fail)."""
        return getattr(self, "_eager_model", None) is not None and self._model is not self._eager_model

    def _forward_compiled(self, batch: Any) -> "torch.Tensor":
        import torch

        rows = int(batch.shape[0]) if isinstance(batch, torch.Tensor) else 0
        if rows and self._compiled_rows and rows < self._compiled_rows:
            pad = batch.new_zeros((self._compiled_rows - rows, *batch.shape[1:]))
            return self._forward_compiled(torch.cat([batch, pad]))[:rows]
        try:
            out = self.forward(batch)
        except Exception as exc:  # compilation failed: run the same batch uncompiled from now on
            if is_out_of_memory(exc):
                self._compiled_rows = 0  # the caller retries smaller slices: do not pad them back up
                raise
            if self._compiled_rows:
                raise
            self.compile_error = short_reason(exc)
            self._model = self._eager_model
            return self.forward(batch)
        self._compiled_rows = self._compiled_rows or rows
        return out

    def model_input(self, batch: Any) -> Any:
        """Give a collated batch as the model takes it: on the device, images as normalised floats."""
        batch = _to_device(batch, self._device)
        finish = getattr(self._collator, "finish", None)
        return finish(batch) if finish is not None else batch

    @abstractmethod
    def forward(self, batch: Any) -> "torch.Tensor":
        """Give the (batch, dim) embeddings of a batch already on the device."""

    def preprocessing(self) -> dict[str, Any]:
        """Give a JSON-ready description of the preprocessing."""
        return dict(self._preprocessing)

    @property
    def device(self) -> "torch.device":
        """The device the model runs on."""
        return self._device

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_model"] = None
        state.pop("_eager_model", None)
        return state


def _has_batch_norm(model: Any) -> bool:
    import torch

    return any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules())


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bf16 tiles (Intel Sapphire Rapids and later), as Linux reports its flags
    (not Linux: no way to tell here, so no)."""
    from stitchcli.device import cpu_flags_line

    return "amx_bf16" in cpu_flags_line().split()


def cast_to_bf16_for_cpu(model: Any) -> Any:
    """Give ``model`` as stitchcli runs it in bf16 on the CPU: its weights cast to bf16, and timm attention
    layers on matmul attention unless this CPU has AMX (see ``TorchEncoder``)."""
    import torch

    model = model.to(torch.bfloat16)
    if not cpu_has_amx():
        prefer_matmul_attention(model)
    return model


def prefer_matmul_attention(model: Any) -> None:
    """Make timm attention layers use plain matmul attention instead of the fused kernel (see ``TorchEncoder``)."""
    for module in model.modules():
        if isinstance(getattr(module, "fused_attn", None), bool):
            module.fused_attn = False


def _cast_floats(batch: Any, dtype: "torch.dtype") -> Any:
    """Give the batch with its floating-point tensors cast to ``dtype`` (token ids and masks stay as they are)."""
    if isinstance(batch, dict):
        return {k: _cast_floats(v, dtype) for k, v in batch.items()}
    if hasattr(batch, "is_floating_point") and batch.is_floating_point():
        return batch.to(dtype)
    return batch


def _to_device(batch: Any, device: "torch.device") -> Any:
    """Give the batch (a tensor or a dict of tensors) moved to the device."""
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if hasattr(batch, "to"):
        return batch.to(device, non_blocking=True)
    return batch


class ImageCollator:
    """Turns PIL images into one batch with an eval transform; picklable, model-free.

    When the transform is a torchvision ``Compose`` that ends in ``ToTensor`` (or timm's ``MaybeToTensor``)
    and at most one ``Normalize``, the collator runs only the steps before them (decode, resize, crop) and
    gives a uint8 (batch, height, width, channels) tensor: a quarter of float32's bytes to pass from a
    loader worker, and less work in the worker, which shares the CPU with the model. ``finish`` then does
    ``ToTensor`` and ``Normalize`` on the whole batch, with the same arithmetic, so the values are the same
    as the transform's, bit for bit. Any other transform is applied whole, per image, and ``finish`` gives
    its batch back unchanged.
    """

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        self.transform = transform
        self._image_steps, self._mean, self._std = _split_to_tensor(transform)

    def __call__(self, images: Sequence[Any]) -> "torch.Tensor":
        import numpy as np
        import torch
        from PIL import Image

        rgb = [(image if isinstance(image, Image.Image) else Image.fromarray(image)).convert("RGB") for image in images]
        if self._image_steps is not None:
            arrays = [np.asarray(_apply(self._image_steps, image)) for image in rgb]
            if all(a.shape == arrays[0].shape and a.ndim == 3 for a in arrays):
                return torch.from_numpy(np.stack(arrays))
        return torch.stack([self.transform(image) for image in rgb])

    def finish(self, batch: "torch.Tensor") -> "torch.Tensor":
        """Give the float (batch, channels, height, width) model input of a collated batch (on its device)."""
        import torch

        if batch.dtype != torch.uint8:
            return batch  # the transform was applied whole
        # As torchvision's to_tensor: channels first, contiguous, float, / 255; then normalize: - mean, / std.
        x = batch.permute(0, 3, 1, 2).contiguous().to(torch.get_default_dtype()).div(255)
        if self._mean is not None:
            mean = torch.as_tensor(self._mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.as_tensor(self._std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = x.sub_(mean).div_(std)
        return x


def _apply(steps: Sequence[Callable[[Any], Any]], image: Any) -> Any:
    for step in steps:
        image = step(image)
    return image


def _split_to_tensor(transform: Any) -> tuple[list[Any] | None, Any, Any]:
    """Give (steps before ToTensor, Normalize mean, std) of a Compose that ends in ToTensor [+ Normalize], else Nones."""
    steps = list(getattr(transform, "transforms", None) or ())
    names = [type(step).__name__ for step in steps]
    at = next((i for i, name in enumerate(names) if name in ("ToTensor", "MaybeToTensor")), None)
    if at is None:
        return None, None, None
    rest = steps[at + 1 :]
    if not rest:
        return steps[:at], None, None
    if len(rest) == 1 and type(rest[0]).__name__ == "Normalize" and not getattr(rest[0], "inplace", False):
        return steps[:at], [float(v) for v in rest[0].mean], [float(v) for v in rest[0].std]
    return None, None, None
