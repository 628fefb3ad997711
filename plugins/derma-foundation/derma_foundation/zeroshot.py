"""The ``clip_zeroshot`` backend: CLIP-family zero-shot classification with prompt ensembles.

Each class of the dataset's label set gets one prompt per (template, class name) pair:
``prompts.templates`` x the class's names (``prompts.names``: its display name, its code, both,
or its display name and synonyms). ``prompts.templates: auto`` takes the templates of the
dataset's modality (:data:`TEMPLATES`: dermoscopy captions for dermoscopic datasets, clinical
photograph captions for clinical ones); a list is used as given. Every prompt's text embedding
is L2-normalised, a class's embeddings are averaged and normalised again (CLIP's prompt
ensembling), and the probabilities are ``softmax(logit_scale * cos(image, class))`` with the
model's own learned logit scale. The prompt list is logged as ``tables/prompts.csv``.

The core's prompt-builder hook builds VQA *questions* for chat VLMs (one text naming every
option); a CLIP model needs one caption per class instead, so the captions come from the
templates here.
"""

from __future__ import annotations

import numpy as np
import torch

from derma_core.config import get_dotted
from derma_core.interfaces import Predictions, RunContext, Split
from derma_core.labels import LabelSet

from .encoders import ImageEncoder, build_encoder, resolved_values
from .features import split_features

#: Prompt templates per dataset modality (``ctx.dataset.modality``); ``{}`` is the class name.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "dermoscopic": ("a dermatoscopic image of {}.", "a dermoscopy image of {}, a type of skin lesion.",
                    "a close-up photo of {} on the skin."),
    "clinical": ("a clinical photograph of {}.", "a photo of {}, a skin condition.",
                 "a close-up photo of {} on the skin."),
}
NAME_MODES = ("both", "clinical", "code", "synonyms")


def modality_templates(modality: str) -> tuple[str, ...]:
    """The templates ``prompts.templates: auto`` takes for a dataset of ``modality``."""
    try:
        return TEMPLATES[modality]
    except KeyError:
        raise ValueError(f"clip_zeroshot: no prompt templates for modality {modality!r} (have "
                         f"{', '.join(TEMPLATES)}); give prompts.templates as a list") from None


def resolve_templates(templates, modality: str) -> list[str]:
    """``prompts.templates``: ``auto`` (or null) -> the modality's templates; a list as given."""
    if templates is None or templates == "auto":
        return list(modality_templates(modality))
    if isinstance(templates, str):
        return [templates]
    return [str(t) for t in templates]


def _prompt_name(name: str) -> str:
    """A display name as it reads mid-sentence: first letter lower-cased, unless the first word
    is an acronym (``BCC``, ``SCC in situ``)."""
    first = name.split(" ", 1)[0]
    if len(first) > 1 and first.isupper():
        return name
    return name[:1].lower() + name[1:]


def class_names(code: str, label_set: LabelSet, mode: str) -> list[str]:
    """The names class ``code`` is called in prompts: its display name (first letter lower
    case), its code, both, or its display name and synonyms; without case-insensitive repeats."""
    display = _prompt_name(label_set.name(code))
    if mode == "clinical":
        names = [display]
    elif mode == "code":
        names = [code]
    elif mode == "both":
        names = [display, code]
    elif mode == "synonyms":
        names = [display, *label_set.synonyms.get(code, ())]
    else:
        raise ValueError(f"prompts.names must be one of {', '.join(NAME_MODES)}, got {mode!r}")
    out: list[str] = []
    for name in names:
        if name.strip() and name.strip().lower() not in {n.lower() for n in out}:
            out.append(name.strip())
    return out


def check_templates(templates) -> list[str]:
    """The templates as a list; one line for an empty list or a template without ``{}``."""
    templates = list(templates or [])
    if not templates:
        raise ValueError("prompts.templates is empty: give at least one template with a {} for the class name")
    for t in templates:
        if "{}" not in str(t):
            raise ValueError(f"prompts.templates: {t!r} has no {{}} where the class name goes")
    return [str(t) for t in templates]


def build_prompts(templates, mode: str, label_set: LabelSet) -> list[dict[str, str]]:
    """One row per prompt: label, name, template, prompt (in ``label_set`` order)."""
    templates = check_templates(templates)
    rows = []
    for label in label_set.codes:
        for name in class_names(label, label_set, mode):
            for t in templates:
                rows.append({"label": label, "name": name, "template": str(t), "prompt": str(t).format(name)})
    return rows


@torch.inference_mode()
def class_text_embeddings(encoder: ImageEncoder, prompts: list[dict[str, str]], label_set: LabelSet,
                          device: torch.device) -> torch.Tensor:
    """``(K, D)`` unit vectors in ``label_set`` order: each class's normalised prompt embeddings,
    averaged, normalised."""
    out = []
    for label in label_set.codes:
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
    #: zero-shot: nothing is selected on val, so calibration may use all of it
    selects_on_val = False

    def __init__(self, config: dict) -> None:
        self.config = config
        self.mode = str(get_dotted(config, "prompts.names", "both"))
        if self.mode not in NAME_MODES:
            raise ValueError(f"prompts.names must be one of {', '.join(NAME_MODES)}, got {self.mode!r}")
        self.templates_option = get_dotted(config, "prompts.templates", "auto")
        if self.templates_option not in (None, "auto"):
            check_templates(resolve_templates(self.templates_option, "dermoscopic"))  # refuse bad lists early
        self.templates: list[str] | None = None
        self.label_set: LabelSet | None = None
        self.modality: str | None = None
        self.prompts: list[dict[str, str]] = []
        self.encoder: ImageEncoder | None = None
        self.text: torch.Tensor | None = None
        self.scale: float | None = None
        self._logged = False

    def _prompts_for(self, ctx: RunContext) -> None:
        """The run's prompts: its dataset's classes and modality (templates ``auto``)."""
        label_set, modality = ctx.label_set, ctx.dataset.modality
        if self.label_set is not None and self.label_set == label_set and self.modality == modality:
            return
        self.templates = resolve_templates(self.templates_option, modality)
        self.prompts = build_prompts(self.templates, self.mode, label_set)
        self.label_set, self.modality, self.text = label_set, modality, None

    def _setup(self, ctx: RunContext, log: bool = True) -> None:
        self._prompts_for(ctx)
        device = torch.device(ctx.device)
        if self.encoder is None:
            self.encoder = build_encoder(self.config, need_text=True).to(device)
            self.scale = logit_scale(self.encoder.clip)
        if self.text is None:
            self.text = class_text_embeddings(self.encoder, self.prompts, self.label_set, device).cpu()
        if log and not self._logged and ctx.is_main_process:
            self._logged = True
            import pandas as pd

            ctx.tracker.log_params({"resolved_model": self.encoder.identity["name"],
                                    "pretrained": self.encoder.identity.get("pretrained") or "hub",
                                    "random_weights": self.encoder.random_weights,
                                    "prompt_names": self.mode, "n_templates": len(set(self.templates)),
                                    "prompt_modality": self.modality,
                                    "n_prompts": len(self.prompts), "logit_scale": round(self.scale, 4),
                                    "input_size": self.encoder.preprocess.size})
            ctx.tracker.log_table(pd.DataFrame(self.prompts), "tables/prompts.csv")

    def resolve(self, config: dict, dataset, ctx: RunContext) -> dict:
        """The model ``auto`` names, its input size, the precision and the prompt templates
        (``auto``: the dataset's modality's); the runner logs them."""
        self._setup(ctx, log=False)
        return {**resolved_values(self.encoder, self.config, ctx.device), "prompts.templates": list(self.templates)}

    def fit(self, train: Split, val: Split, ctx: RunContext) -> None:
        """Zero-shot: loads the model and embeds the class prompts; no training."""
        self._setup(ctx)

    def predict(self, split: Split, ctx: RunContext) -> Predictions:
        self._setup(ctx)
        split.label_set.require_same(self.label_set, "clip_zeroshot's class prompts",
                                     f"split {split.name!r} must have the run's classes")
        feats, cached = split_features(self.encoder, split, self.config, torch.device(ctx.device),
                                       progress=ctx.progress, quiet=ctx.quiet)
        image = torch.from_numpy(np.asarray(feats, dtype=np.float32)).double()
        image = image / image.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        logits = self.scale * image @ self.text.double().T
        probs = torch.softmax(logits, dim=1).numpy()
        labels = split.label_set.decode(probs.argmax(axis=1))
        return Predictions(ids=split.ids, labels=labels, probabilities=probs, label_set=split.label_set,
                           info={"model": self.encoder.identity["name"], "features_cached": cached,
                                 "n_prompts": len(self.prompts)})
