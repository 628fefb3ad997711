"""One dtype policy for a loaded vision-language model.

A model is loaded in its *compute dtype* (``precision``: bf16, fp16 or fp32): vision tower,
projector and language model alike. Weights that train (LoRA matrices, a fully trained
projector copy in peft's ``modules_to_save``) are kept in fp32 as master weights; QLoRA's
k-bit preparation also upcasts the small unquantised modules to fp32. So a model being trained
holds mixed dtypes, and every forward -- a training step, the per-epoch label scoring of
validation, test prediction -- runs under :meth:`DtypePolicy.autocast` with its inputs cast by
:meth:`DtypePolicy.cast_inputs`. With fp32 the policy is the identity (autocast off), so fp32
results are bit-for-bit those of plain eager code.

transformers' Trainer applies the same autocast during training (``bf16=True`` / ``fp16=True``
from :meth:`DtypePolicy.trainer_flags`); the scorer and the generator apply it themselves.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
QUANTIZATIONS = (None, "4bit", "8bit")


def resolve_dtype(precision: str, device: str):
    """torch dtype for ``precision``; ``auto`` is bf16 on CUDA (fp16 where bf16 is unsupported), fp32 elsewhere."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def dtype_name(dtype) -> str:
    """``bf16`` / ``fp16`` / ``fp32`` for a torch dtype (what runs record)."""
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def quantization_config(quantization: str | None, compute_dtype, skip_modules: list[str] | None = None):
    """A BitsAndBytesConfig for ``4bit`` (nf4, double quantisation) or ``8bit``; None for none.

    ``skip_modules`` stay unquantised (full module names or suffixes, as transformers matches
    them): a family passes its vision tower, projector and ``lm_head``."""
    if quantization in (None, "", "none"):
        return None
    from transformers import BitsAndBytesConfig

    skip = list(skip_modules or [])
    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=skip)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    raise ValueError(f"quantization must be null, 4bit or 8bit, got {quantization!r}")


@dataclass(frozen=True)
class DtypePolicy:
    """The compute dtype of a loaded model and how every forward honours it."""

    compute: Any  # torch.dtype

    @property
    def mixed(self) -> bool:
        """Whether forwards run under autocast (bf16/fp16); fp32 runs plain."""
        import torch

        return self.compute in (torch.bfloat16, torch.float16)

    def autocast(self, device) -> contextlib.AbstractContextManager:
        """Autocast to the compute dtype on ``device``'s type (a no-op context for fp32)."""
        import torch

        if not self.mixed:
            return contextlib.nullcontext()
        device_type = torch.device(device).type
        return torch.autocast(device_type=device_type, dtype=self.compute)

    def cast_inputs(self, inputs: dict, device) -> dict:
        """Tensors moved to ``device``; floating ones (pixel values and the like) in the compute dtype."""
        import torch

        out = {}
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor):
                value = value.to(device, dtype=self.compute) if value.is_floating_point() else value.to(device)
            out[key] = value
        return out

    def prepare_trainable(self, model) -> None:
        """Trainable weights in fp32 (master weights); frozen ones stay as loaded."""
        import torch

        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()

    def trainer_flags(self) -> dict[str, bool]:
        """``bf16`` / ``fp16`` for transformers' TrainingArguments: the same autocast in training."""
        import torch

        return {"bf16": self.compute == torch.bfloat16, "fp16": self.compute == torch.float16}
