"""Logs a person can read: no dependency deprecation notices from derma's peft calls, and no
progress-bar redraws when the output is not a terminal (CPU, offline, tiny random model)."""

import dataclasses
import io
import sys
import warnings

import pytest
import torch

from derma_core.config import resolve_config
from derma_core.testing import make_context


def _tiny_model():
    from derma_vlm.generic import load_generic

    # fp32: the test is about warnings, not precision
    return load_generic({"model": {"name": "tiny-gemma3"}, "precision": "fp32", "data": {"source": "synthetic"}},
                        "cpu").model


def test_lora_wrapping_and_adapter_loading_print_no_checkpointing_deprecation(model_cache, tmp_path):
    """transformers 5 renamed gradient checkpointing to activation checkpointing (FutureWarnings on
    the old names); derma uses the new API and peft's reads of the old one are filtered there."""
    from peft import PeftModel

    from derma_vlm.training import build_lora_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_lora_model(_tiny_model(), r=2, alpha=4, dropout=0.0, target_modules=("q_proj", "v_proj"),
                                 quantized=False, gradient_checkpointing=True)
        model.save_pretrained(tmp_path / "adapter")
        from derma_vlm.training import peft_deprecations_filtered

        with peft_deprecations_filtered():
            PeftModel.from_pretrained(_tiny_model(), str(tmp_path / "adapter"), is_trainable=False)
        warnings.warn("another FutureWarning stays visible", FutureWarning)
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert not [m for m in messages if "checkpointing" in m], messages
    assert "another FutureWarning stays visible" in messages  # the filter is narrow
    assert model.base_model.model.is_activation_checkpointing


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_trainer_progress_bar_only_on_a_terminal(tty, monkeypatch, tmp_path):
    from derma_vlm.generic import GenericVlmLoraClassifier
    from derma_vlm.precision import DtypePolicy

    config = resolve_config("vlm_lora", overrides=["model.name=tiny-gemma3", "quiet=false", "precision=fp32"])
    clf = GenericVlmLoraClassifier(config)
    monkeypatch.setattr(sys, "stderr", _Stream(tty))
    ctx = dataclasses.replace(make_context(config, tmp_path), quiet=False)
    args = clf._training_arguments(ctx, tmp_path / "out", DtypePolicy(torch.float32), 16)
    assert args.disable_tqdm is (not tty)  # redirected: the Trainer prints a line per logging step instead
