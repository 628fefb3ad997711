"""The ``vlm_zeroshot`` and ``vlm_lora`` backends: any Hugging Face image-text-to-text model.

``model.name`` is any hub id or folder that ``AutoModelForImageTextToText`` and ``AutoProcessor``
load (MedGemma, Qwen2.5-VL, LLaVA-OneVision, SmolVLM / Idefics3, ...). The prompt goes through the
model's own chat template (:class:`~derma_vlm.families.ChatTemplateCodec`); everything else --
the predict loop, label scoring, batched generation, partial-result resume, the LoRA training
loop -- is derma_vlm's, shared with the LLaVA-Med backends, so runs of different models line up
in MLflow and in ``derma compare`` (same config keys, answer modes, parsers, params, artifacts).

``model.name: auto`` is a tiny random model (:mod:`derma_vlm.tiny`) on the built-in synthetic
set and ``google/medgemma-4b-it`` on any other data; a tiny model on real data is refused unless
``model.allow_random: true``.

Label scoring can use verbalizer sets per class of the dataset's label set
(``inference.verbalizer``): ``code`` (``mel``), ``name`` (its display name, ``Melanoma``) or
``both``, a class's score being the log-sum-exp of its verbalizations' log-likelihoods (the
probability that the answer is any of them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from derma_core import hookimpl
from derma_core.config import get_dotted as _cfg
from derma_core.labels import LabelSet

from .classifier import VlmClassifier
from .lora import VlmLoraClassifier

log = logging.getLogger(__name__)

ZEROSHOT_NAME = "vlm_zeroshot"
LORA_NAME = "vlm_lora"
#: What ``model.name: auto`` resolves to on real data.
REAL_DEFAULT = "google/medgemma-4b-it"
VERBALIZERS = ("code", "name", "both")
#: Never quantised: vision encoders and projectors/connectors (small, precision-sensitive), lm_head.
#: transformers matches these against full module names from the start (or as a suffix).
SKIP_QUANTIZATION = ["model.vision_tower", "model.visual", "model.vision_model", "model.multi_modal_projector",
                     "model.connector", "lm_head"]
#: Where each model type keeps its language model's decoder layers and its projector/connector
#: (module-name regex / suffix); types not listed use derma_vlm.training's defaults.
LM_LAYERS = {"idefics3": r"text_model\.layers", "smolvlm": r"text_model\.layers"}
PROJECTORS = {"qwen2_vl": "visual.merger", "qwen2_5_vl": "visual.merger", "idefics3": "connector",
              "smolvlm": "connector"}


def resolve_model_name(config: dict) -> str:
    """The model ``model.name`` means for this run's data (``auto``: tiny on synthetic, MedGemma
    elsewhere); a tiny random model on real data is refused unless ``model.allow_random``."""
    from .tiny import DEFAULT_TINY, SPECS

    name = _cfg(config, "model.name")
    source = _cfg(config, "data.source")
    if name is None or str(name).strip() == "":
        raise ValueError(f"model.name is not set: set it to auto, a hub id (e.g. {REAL_DEFAULT}), a model folder "
                         f"or one of the tiny test models {', '.join(SPECS)}")
    name = str(name)
    if name == "auto":
        return DEFAULT_TINY if source == "synthetic" else REAL_DEFAULT
    if name in SPECS and source != "synthetic" and not _cfg(config, "model.allow_random", False):
        raise ValueError(f"model.name={name} has random weights and data.source={source!r} is not the synthetic "
                         f"set: its predictions would mean nothing; set model.name (e.g. {REAL_DEFAULT}) or "
                         "-o model.allow_random=true for a smoke test")
    return name


def _read_chat_template(path: str | None) -> str | None:
    if not path:
        return None
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise FileNotFoundError(f"model.chat_template: cannot read {p} ({exc.strerror}); give a Jinja file") from None
    if not text.strip():
        raise ValueError(f"model.chat_template: {p} is empty; give the model's Jinja chat template")
    return text


def load_generic(config: dict, device: str = "cpu"):
    """Load the model ``model.name`` names with ``AutoModelForImageTextToText`` + ``AutoProcessor``,
    ready for inference, with its :class:`~derma_vlm.families.ChatTemplateCodec`.

    Reads ``model.name`` (:func:`resolve_model_name`), ``model.allow_random``, ``model.revision``,
    ``model.cache_dir``, ``model.device_map``, ``model.attn_implementation``,
    ``model.trust_remote_code``, ``model.chat_template``, ``model.system_prompt``, ``precision``
    and ``quantization``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .families import ChatTemplateCodec, family_for
    from .loading import Loaded, load_pretrained, resolve_model_folder
    from .precision import resolve_dtype
    from .tiny import SPECS, build_tiny

    if _cfg(config, "quiet", False):  # --quiet silences transformers' own bars (weights, shards) too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    name = resolve_model_name(config)
    chat_template = _read_chat_template(_cfg(config, "model.chat_template"))  # before any weights load
    dtype = resolve_dtype(_cfg(config, "precision", "auto") or "auto", device)
    trust = bool(_cfg(config, "model.trust_remote_code", False))
    info: dict[str, Any] = {"requested": _cfg(config, "model.name"), "resolved_name": name}
    if name in SPECS:
        folder = build_tiny(name)
        model_id = f"{name} (random weights; smoke test only)"
    else:
        folder = resolve_model_folder(name, _cfg(config, "model.revision"), _cfg(config, "model.cache_dir"))
        model_id = name
    info["folder"] = str(folder)
    model = load_pretrained(AutoModelForImageTextToText, folder, dtype=dtype, device=device,
                            quantization=_cfg(config, "quantization"), skip_quantization=SKIP_QUANTIZATION,
                            device_map=_cfg(config, "model.device_map"),
                            attn_implementation=_cfg(config, "model.attn_implementation", "sdpa") or "sdpa",
                            trust_remote_code=trust)
    backend = family_for(model.config).processor_backend
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust, **({"backend": backend} if backend else {}))
    if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
        raise ValueError(f"{name}: AutoProcessor gave {type(processor).__name__}, not an image-text processor "
                         "with a tokenizer; is this an image-text-to-text model?")
    codec = ChatTemplateCodec(processor, model.config, system_prompt=_cfg(config, "model.system_prompt"),
                              chat_template=chat_template, where=name)
    info["family"] = codec.family.name
    info["model_type"] = getattr(model.config, "model_type", None)
    return Loaded(model=model, processor=processor, tokenizer=processor.tokenizer, codec=codec, model_id=model_id,
                  device=str(device), dtype=dtype, folder=Path(folder), info=info)


def check_verbalizer(verbalizer: str) -> str:
    if verbalizer not in VERBALIZERS:
        raise ValueError(f"inference.verbalizer must be one of {', '.join(VERBALIZERS)}, got {verbalizer!r}")
    return verbalizer


def verbalizations(verbalizer: str, label_set: LabelSet) -> list[list[str]]:
    """Per class (in ``label_set`` order) the answer strings scored for it: its code, its display
    name, or both (once where the name is the code)."""
    check_verbalizer(verbalizer)
    out = []
    for code, name in zip(label_set.codes, label_set.names):
        strings = ([code] if verbalizer in ("code", "both") else []) + \
            ([name] if verbalizer in ("name", "both") else [])
        out.append(list(dict.fromkeys(strings)))
    return out


def score_classes(loaded, images: list, question: str, label_set: LabelSet, verbalizer: str = "code",
                  **kwargs) -> np.ndarray:
    """Class log-likelihoods ``(N, K)`` of ``label_set``'s classes under ``verbalizer``
    (:func:`derma_vlm.scoring.score_classes`: one prefill per image, log-sum-exp per class)."""
    from .scoring import score_classes as score

    return score(loaded, images, question, verbalizations(verbalizer, label_set), **kwargs)


class GenericVlmClassifier(VlmClassifier):
    """Any image-text-to-text model as a K-way classifier through VQA (zero-shot)."""

    name = ZEROSHOT_NAME
    partial_prefix = "vlm"
    signature_keys = VlmClassifier.signature_keys + ("model.system_prompt", "model.chat_template",
                                                     "inference.verbalizer")

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        check_verbalizer(str(_cfg(config, "inference.verbalizer", "code") or "code"))  # refuse bad values early

    def load_base(self, config: dict, device: str):
        return load_generic(config, device)

    def resolved_values(self, config: dict, device: str) -> dict:
        """What ``auto`` means in this run: the model (tiny on synthetic data, MedGemma elsewhere)
        and the compute precision on this device (the curated MLflow params log these)."""
        return {**super().resolved_values(config, device), "model.name": resolve_model_name(config)}

    def answer_strings(self, label_set: LabelSet) -> list[list[str]]:
        """The ``inference.verbalizer`` strings of each class: code, display name or both."""
        return verbalizations(str(_cfg(self.config, "inference.verbalizer", "code") or "code"), label_set)

    def _to_predictions(self, ids, rows, mode, question, loaded, label_set):
        predictions = super()._to_predictions(ids, rows, mode, question, loaded, label_set)
        predictions.info.update({"model_family": loaded.codec.family.name,
                                 "end_of_turn": loaded.codec.end_of_turn_text,
                                 "system_prompt": loaded.codec.system_prompt})
        if mode == "score":
            predictions.info["verbalizer"] = str(_cfg(self.config, "inference.verbalizer", "code"))
        return predictions


class GenericVlmLoraClassifier(VlmLoraClassifier, GenericVlmClassifier):
    """Any image-text-to-text model + a LoRA adapter on its language model, trained with its chat template."""

    name = LORA_NAME
    template = "the model's chat template: user turn (image + question), assistant turn {answer}<end-of-turn>"

    def load_base(self, config: dict, device: str):
        loaded = load_generic(config, device)
        model_type = loaded.info.get("model_type")
        from .training import LM_LAYERS as DEFAULT_LM_LAYERS
        from .training import PROJECTOR

        # Instance attributes read by VlmLoraClassifier._train (after load_base).
        self.lm_layers = LM_LAYERS.get(model_type, DEFAULT_LM_LAYERS)
        projector = PROJECTORS.get(model_type, PROJECTOR)
        self.trainable_modules = (projector,) if _cfg(config, "lora.train_projector", True) else ()
        self.template = (f"{loaded.codec.family.name} chat template: "
                         f"{loaded.codec.render_prompt('{question}')}{{answer}}{loaded.codec.end_of_turn_text}")
        return loaded


def _config_path(name: str) -> str | None:
    config = Path(__file__).resolve().parents[3] / "configs" / f"{name}.yaml"
    return str(config) if config.exists() else None


def _zeroshot_factory(config: dict) -> GenericVlmClassifier:
    return GenericVlmClassifier(config)


def _lora_factory(config: dict) -> GenericVlmLoraClassifier:
    return GenericVlmLoraClassifier(config)


class BackendPlugin:
    """One backend as its own plugin object, so each has its own entry point (``derma plugins``
    lists them apart and ``DERMA_DISABLE_PLUGINS`` can turn off one)."""

    def __init__(self, name: str, factory) -> None:
        self.name = name
        self.factory = factory

    @hookimpl
    def register_classifiers(self, register):
        register(self.name, self.factory, config=_config_path(self.name))


#: Entry points ``vlm_zeroshot = derma_vlm.generic:zeroshot_plugin``, ``vlm_lora = derma_vlm.generic:lora_plugin``.
zeroshot_plugin = BackendPlugin(ZEROSHOT_NAME, _zeroshot_factory)
lora_plugin = BackendPlugin(LORA_NAME, _lora_factory)
