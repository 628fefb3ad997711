"""Loading a vision-language model: the :class:`Loaded` bundle, model folders, precision and
quantisation.

A model family's loader resolves ``model.name`` to a folder (:func:`resolve_model_folder`),
loads the weights with :func:`load_pretrained` (its model class, e.g.
``AutoModelForImageTextToText`` or ``LlavaForConditionalGeneration``) and returns a
:class:`Loaded` holding its :class:`~derma_vlm.codec.PromptCodec`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .precision import DtypePolicy, quantization_config

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A ready model: eval mode, on its device, with the codec that builds its inputs."""

    model: Any
    processor: Any
    tokenizer: Any
    codec: Any  # a derma_vlm.codec.PromptCodec
    model_id: str
    device: str = "cpu"
    dtype: Any = None
    folder: Path | None = None
    info: dict = field(default_factory=dict)

    @property
    def input_device(self):
        """Where input tensors go (the embedding's device under a ``device_map``)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def policy(self) -> DtypePolicy:
        """The model's dtype policy (:mod:`derma_vlm.precision`)."""
        import torch

        return DtypePolicy(self.dtype if self.dtype is not None else torch.float32)


def resolve_model_folder(name: str, revision: str | None = None, cache_dir: str | None = None,
                         allow_patterns: list[str] | None = None) -> Path:
    """A local folder for ``name``: the folder itself, or the hub snapshot (downloaded when the
    network allows, else taken from the local HF cache)."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model.name {name!r} is a folder without config.json: not a model folder")
        return path
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise FileNotFoundError(f"model.name {name!r} is neither an existing folder nor a hub id (owner/name)")
    from huggingface_hub import snapshot_download

    patterns = allow_patterns or ["*.json", "*.safetensors", "*.bin", "tokenizer.model", "*.jinja", "*.txt"]
    try:
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as online_error:  # offline or hub unreachable: fall back to the local cache
        try:
            return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, allow_patterns=patterns,
                                          local_files_only=True))
        except Exception:
            raise FileNotFoundError(
                f"model {name!r} is not in the local Hugging Face cache and could not be downloaded "
                f"({type(online_error).__name__}); download it on a machine with internet "
                f"(`huggingface-cli download {name}`) or set model.name to a local folder") from None


def load_pretrained(model_cls, folder: Path, *, dtype, device: str, quantization: str | None = None,
                    skip_quantization: list[str] | None = None, device_map: Any = None,
                    attn_implementation: str = "sdpa", trust_remote_code: bool = False):
    """``model_cls.from_pretrained(folder)`` in the compute ``dtype`` (every module: vision tower,
    projector, language model), optionally quantised, on ``device`` (or spread by ``device_map``),
    in eval mode."""
    qconfig = quantization_config(quantization, dtype, skip_quantization)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn_implementation,
                              "trust_remote_code": bool(trust_remote_code)}
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = device_map or {"": device}
    elif device_map:
        kwargs["device_map"] = device_map
    model = model_cls.from_pretrained(folder, **kwargs)
    if qconfig is None and not device_map:
        model.to(device)
    model.eval()
    return model
