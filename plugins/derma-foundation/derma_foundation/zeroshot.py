"""The ``clip_zeroshot`` backend: CLIP-family zero-shot classification with prompt ensembles.

Each class gets one prompt per (template, class name) pair: ``prompts.templates`` x the class's
names (``prompts.names``: its clinical name, its code, or both). Every prompt's text embedding
is L2-normalised, a class's embeddings are averaged and normalised again (CLIP's prompt
ensembling), and the probabilities are ``softmax(logit_scale * cos(image, class))`` with the
model's own learned logit scale. The prompt list is logged as ``tables/prompts.csv``.

The core's prompt-builder hook builds VQA *questions* for chat VLMs (one text naming all seven
options); a CLIP model needs one caption per class instead, so the captions come from the
templates here.
"""

from __future__ import annotations

import numpy as np
import torch

from derma_core.config import get_dotted
from derma_core.interfaces import Predictions, RunContext, Split
from derma_core.labels import CLINICAL_NAMES, LABELS

from .encoders import ImageEncoder, build_encoder, resolved_values
from .features import split_features

DEFAULT_TEMPLATES = ("a dermatoscopic image of {}.", "a dermoscopy image of {}, a type of skin lesion.",
                     "a close-up photo of {} on the skin.")
NAME_MODES = ("both", "clinical", "code")


def class_names(label: str, mode: str) -> list[str]:
    """The names a class is called in prompts: its clinical name (lower case), its code, or both."""
    clinical = CLINICAL_NAMES[label][0].lower() + CLINICAL_NAMES[label][1:]
    if mode == "clinical":
        return [clinical]
    if mode == "code":
        return [label]
    if mode == "both":
        return [clinical, label]
    raise ValueError(f"prompts.names must be one of {', '.join(NAME_MODES)}, got {mode!r}")


def build_prompts(templates, mode: str) -> list[dict[str, str]]:
    """One row per prompt: label, name, template, prompt (LABELS order)."""
    templates = list(templates or [])
    if not templates:
        raise ValueError("prompts.templates is empty: give at least one template with a {} for the class name")
    rows = []
    for t in templates:
        if "{}" not in str(t):
            raise ValueError(f"prompts.templates: {t!r} has no {{}} where the class name goes")
    for label in LABELS:
        for name in class_names(label, mode):
            for t in templates:
                rows.append({"label": label, "name": name, "template": str(t), "prompt": str(t).format(name)})
    return rows


@torch.inference_mode()
def class_text_embeddings(encoder: ImageEncoder, prompts: list[dict[str, str]], device: torch.device) -> torch.Tensor:
    """``(7, D)`` unit vectors: each class's normalised prompt embeddings, averaged, normalised."""
    out = []
    for label in LABELS:
        texts = [p["prompt"] for p in prompts if p["label"] == label]
        tokens = encoder.tokenizer(texts).to(device)
        emb = encoder.clip.encode_text(tokens).float()
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(dim=0)
        out.append(mean / mean.norm())
    return torch.stack(out)


def logit_scale(clip) -> float:
    scale = getattr(clip, "logit_scale", None)
    if scale is None:
        return 100.0  # CLIP's trained value (exp of the 4.6052 clamp); open_clip models all carry one
    return float(scale.detach().float().exp().item())


class CLIPZeroShotClassifier:
    """Zero-shot open_clip classification (see the module docstring); ``fit`` trains nothing."""

    name = "clip_zeroshot"

    def __init__(self, config: dict) -> None:
        self.config = config
        self.mode = str(get_dotted(config, "prompts.names", "both"))
        self.prompts = build_prompts(get_dotted(config, "prompts.templates", DEFAULT_TEMPLATES), self.mode)
        self.encoder: ImageEncoder | None = None
        self.text: torch.Tensor | None = None
        self.scale: float | None = None
        self._logged = False

    def _setup(self, ctx: RunContext, log: bool = True) -> None:
        if self.encoder is None:
            device = torch.device(ctx.device)
            self.encoder = build_encoder(self.config, need_text=True).to(device)
            self.text = class_text_embeddings(self.encoder, self.prompts, device).cpu()
            self.scale = logit_scale(self.encoder.clip)
        if log and not self._logged and ctx.is_main_process:
            self._logged = True
            import pandas as pd

            ctx.tracker.log_params({"resolved_model": self.encoder.identity["name"],
                                    "pretrained": self.encoder.identity.get("pretrained") or "hub",
                                    "random_weights": self.encoder.random_weights,
                                    "prompt_names": self.mode, "n_templates": len({p["template"] for p in self.prompts}),
                                    "n_prompts": len(self.prompts), "logit_scale": round(self.scale, 4),
                                    "input_size": self.encoder.preprocess.size})
            ctx.tracker.log_table(pd.DataFrame(self.prompts), "tables/prompts.csv")

    def resolve(self, config: dict, dataset, ctx: RunContext) -> dict:
        """The model ``auto`` names, its input size and the precision (the runner logs them)."""
        self._setup(ctx, log=False)
        return resolved_values(self.encoder, self.config, ctx.device)

    def fit(self, train: Split, val: Split, ctx: RunContext) -> None:
        """Zero-shot: loads the model and embeds the class prompts; no training."""
        self._setup(ctx)

    def predict(self, split: Split, ctx: RunContext) -> Predictions:
        self._setup(ctx)
        feats, cached = split_features(self.encoder, split, self.config, torch.device(ctx.device),
                                       progress=ctx.progress, quiet=ctx.quiet)
        image = torch.from_numpy(np.asarray(feats, dtype=np.float32)).double()
        image = image / image.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        logits = self.scale * image @ self.text.double().T
        probs = torch.softmax(logits, dim=1).numpy()
        labels = [LABELS[i] for i in probs.argmax(axis=1)]
        return Predictions(ids=split.ids, labels=labels, probabilities=probs,
                           info={"model": self.encoder.identity["name"], "features_cached": cached,
                                 "n_prompts": len(self.prompts)})
