"""vlm_zeroshot / vlm_lora on tiny random models of four architectures (CPU, offline).

Each architecture is built from its config at test time (derma_vlm.tiny) with a tokenizer trained
at test time and a chat template of its family's shape: Gemma 3 (MedGemma), Qwen2.5-VL,
LLaVA-OneVision and Idefics3 (SmolVLM).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from derma_core.config import resolve_config
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.labels import LabelSet
from derma_core.prompts import SEED_PROMPTS
from derma_core.testing import make_context, make_tiny_dataset

ARCHS = ["tiny-gemma3", "tiny-qwen2_5_vl", "tiny-llava_onevision", "tiny-idefics3"]
QUESTION = SEED_PROMPTS["p1"]
#: A label set that is not HAM10000's (its names are not in the tiny tokenizers' corpus).
THREE = LabelSet(codes=("scc", "sk", "nev"), names=("Squamous cell carcinoma", "Seborrheic keratosis", "Mole"),
                 synonyms={"nev": ("naevus",)})
FAST_LORA = ["precision=fp32", "train.num_workers=0", "train.batch_size=4", "train.grad_accum=1", "train.lr=3e-3",
             "train.projector_lr=3e-3", "lora.r=4", "lora.alpha=8", "lora.dropout=0", "train.warmup_ratio=0.0",
             "train.scheduler=linear", "train.patience=0", "quiet=true", "inference.batch_size=8",
             "train.eval_at_start=false", "train.gradient_checkpointing=false", "tracking.log_model=false"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_LOADED: dict[str, object] = {}


def load(arch: str, **model_keys):
    from derma_vlm.generic import load_generic

    key = json.dumps([arch, model_keys], sort_keys=True)
    if key not in _LOADED:
        _LOADED[key] = load_generic({"model": {"name": arch, **model_keys}, "precision": "fp32",
                                     "data": {"source": "synthetic"}}, "cpu")
    return _LOADED[key]


@pytest.fixture(scope="module")
def images():
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(45, 60), (64, 64)]]


# -- the tiny models and their chat templates ---------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_loads_offline_with_plain_transformers(arch, model_cache):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from derma_vlm.tiny import SPECS, build_tiny

    folder = build_tiny(arch)
    assert build_tiny(arch) == folder  # cached by content
    model = AutoModelForImageTextToText.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert model.config.model_type == SPECS[arch].model_type
    assert model.config.get_text_config().hidden_size <= 64
    assert processor.chat_template
    tok = processor.tokenizer
    for token in (*SPECS[arch].special_tokens.values(), *SPECS[arch].extra_tokens):
        assert len(tok(token, add_special_tokens=False)["input_ids"]) == 1, token


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_is_the_models_chat_template_with_generation_prompt(arch, model_cache):
    loaded = load(arch)
    codec = loaded.codec
    text = codec.render_prompt(QUESTION)
    generation_prompt = {"tiny-gemma3": "<start_of_turn>model\n", "tiny-qwen2_5_vl": "<|im_start|>assistant\n",
                         "tiny-llava_onevision": "<|im_start|>assistant\n", "tiny-idefics3": "Assistant:"}[arch]
    assert text.endswith(QUESTION + {"tiny-idefics3": "<end_of_utterance>\n"}.get(arch, codec.end_of_turn_text + "\n")
                         + generation_prompt)
    assert text == loaded.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        tokenize=False, add_generation_prompt=True)
    with_system = load(arch, system_prompt="You are a dermatologist.").codec.render_prompt(QUESTION)
    assert "You are a dermatologist." in with_system and with_system != text
    assert codec.end_of_turn_id == loaded.tokenizer.convert_tokens_to_ids(codec.end_of_turn_text)
    assert codec.end_of_turn_id not in codec.suppress_token_ids


def test_processor_without_chat_template_is_refused_with_what_to_pass(model_cache, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from derma_vlm.families import ChatTemplateMissing
    from derma_vlm.generic import load_generic
    from derma_vlm.tiny import GEMMA3_TEMPLATE, build_tiny

    src = build_tiny("tiny-gemma3")
    dst = tmp_path / "no-template"
    AutoModelForImageTextToText.from_pretrained(src).save_pretrained(dst)
    processor = AutoProcessor.from_pretrained(src)
    processor.chat_template = None
    processor.tokenizer.chat_template = None
    processor.save_pretrained(dst)
    for f in dst.glob("*.jinja"):
        f.unlink()
    config = {"model": {"name": str(dst)}, "precision": "fp32", "data": {"source": "synthetic"}}
    with pytest.raises(ChatTemplateMissing) as err:
        load_generic(config, "cpu")
    message = str(err.value)
    assert "\n" not in message and "model.chat_template" in message and str(dst) in message
    template = tmp_path / "gemma.jinja"
    template.write_text(GEMMA3_TEMPLATE)
    config["model"]["chat_template"] = str(template)
    assert load_generic(config, "cpu").codec.render_prompt("q").endswith("<start_of_turn>model\n")


def test_auto_is_tiny_on_synthetic_and_medgemma_on_real_data_and_tiny_on_real_data_is_refused():
    from derma_vlm.generic import REAL_DEFAULT, resolve_model_name
    from derma_vlm.tiny import DEFAULT_TINY

    assert resolve_model_name({"model": {"name": "auto"}, "data": {"source": "synthetic"}}) == DEFAULT_TINY
    assert resolve_model_name({"model": {"name": "auto"}, "data": {"source": "ham10000"}}) == REAL_DEFAULT
    with pytest.raises(ValueError, match="allow_random"):
        resolve_model_name({"model": {"name": "tiny-qwen2_5_vl"}, "data": {"source": "ham10000"}})
    assert resolve_model_name({"model": {"name": "tiny-qwen2_5_vl", "allow_random": True},
                               "data": {"source": "ham10000"}}) == "tiny-qwen2_5_vl"


# -- label scoring --------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_label_scores_equal_brute_force_with_end_of_turn(arch, model_cache, images):
    from derma_vlm.scoring import brute_force_scores, label_token_ids, score_labels

    loaded = load(arch)
    answers = list(HAM.codes) + list(HAM.names)
    ids = label_token_ids(loaded.codec, answers)
    assert all(seq[-1] == loaded.codec.end_of_turn_id for seq in ids)  # end of turn scored by default
    fast = score_labels(loaded, images, QUESTION, answers, batch_size=2)
    slow = brute_force_scores(loaded, images, QUESTION, answers)
    np.testing.assert_allclose(fast, slow, atol=2e-4, rtol=1e-5)
    assert np.ptp(fast, axis=1).min() > 1e-3  # the random model's scores differ between answers
    # without the end-of-turn token a label is a prefix event: its likelihood can only be higher
    open_ended = score_labels(loaded, images, QUESTION, answers, include_eos=False)
    assert (open_ended >= fast - 1e-5).all()


def test_verbalizer_sets_combine_by_log_sum_exp(model_cache, images):
    from derma_vlm.generic import score_classes
    from derma_vlm.scoring import brute_force_scores

    loaded = load("tiny-gemma3")
    codes = brute_force_scores(loaded, images, QUESTION, list(HAM.codes))
    names = brute_force_scores(loaded, images, QUESTION, list(HAM.names))
    np.testing.assert_allclose(score_classes(loaded, images, QUESTION, HAM, "code"), codes, atol=2e-4)
    np.testing.assert_allclose(score_classes(loaded, images, QUESTION, HAM, "name"), names, atol=2e-4)
    np.testing.assert_allclose(score_classes(loaded, images, QUESTION, HAM, "both"), np.logaddexp(codes, names),
                               atol=2e-4)
    with pytest.raises(ValueError, match="inference.verbalizer"):
        score_classes(loaded, images, QUESTION, HAM, "synonyms")
    # another label set: its own codes and display names are what is scored
    three = brute_force_scores(loaded, images, QUESTION, list(THREE.names))
    np.testing.assert_allclose(score_classes(loaded, images, QUESTION, THREE, "name"), three, atol=2e-4)


# -- answer-only training targets, token by token -------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_training_target_is_the_assistant_turn_and_end_of_turn_only(arch, model_cache, images):
    from derma_vlm.codec import IGNORE_INDEX
    from derma_vlm.training import answer_only_example

    loaded = load(arch)
    codec, tok = loaded.codec, loaded.tokenizer
    for label in ("mel", "akiec"):
        prompt = codec.prompt_inputs(images[:1], [QUESTION])
        example = answer_only_example(prompt, codec.answer_ids(label), codec.end_of_turn_id)
        ids, labels = example["input_ids"].tolist(), example["labels"].tolist()
        n = prompt["input_ids"].shape[1]
        assert ids[:n] == prompt["input_ids"][0].tolist()
        assert all(x == IGNORE_INDEX for x in labels[:n])
        assert labels[n:] == ids[n:] and labels[-1] == codec.end_of_turn_id
        assert tok.decode(labels[n:]) == codec.render_answer(QUESTION, label) + codec.end_of_turn_text
        # the whole sequence is what the processor makes of the template's rendering of the
        # conversation (up to the end of the assistant turn), tokenised in one piece
        full = loaded.processor.apply_chat_template(codec.messages(QUESTION, label), tokenize=False)
        prompt_text = codec.render_prompt(QUESTION)
        if full.startswith(prompt_text):
            text = full[:full.index(codec.end_of_turn_text, len(prompt_text)) + len(codec.end_of_turn_text)]
        else:  # LLaVA-OneVision: the answer as emitted after its generation prompt
            text = prompt_text + label + codec.end_of_turn_text
        whole = loaded.processor(text=[text], images=codec._images_arg(images[:1]), return_tensors="pt",
                                 add_special_tokens=False)["input_ids"][0].tolist()
        assert ids == whole


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_generation_is_greedy_from_the_same_prompt_as_scoring(arch, model_cache, images):
    """The first generated token is the argmax of the scorer's next-token distribution, and a
    batch of two gives each image's one-image answer (left padding changes nothing)."""
    from derma_vlm.generation import generate_answers
    from derma_vlm.scoring import _log_probs

    loaded = load(arch)
    codec = loaded.codec
    kwargs = dict(do_sample=False, max_new_tokens=1, suppress_tokens=list(codec.suppress_token_ids),
                  pad_token_id=codec.pad_token_id, eos_token_id=codec.end_of_turn_id)
    for image in images:
        inputs = codec.prompt_inputs([image], [QUESTION])
        with torch.no_grad():
            first = int(loaded.model.generate(**inputs, **kwargs)[0, -1])
            lp = _log_probs(loaded.model(**inputs).logits[0, -1], codec.suppress_token_ids)
        assert first == int(lp.argmax())
    single = [generate_answers(loaded, [im], QUESTION, max_new_tokens=4) for im in images]
    assert generate_answers(loaded, images, QUESTION, max_new_tokens=4) == [s[0] for s in single]


# -- zero-shot prediction through the backend ---------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_zero_shot_generate_and_score_predict(arch, model_cache, tmp_path):
    from derma_vlm.generic import GenericVlmClassifier

    ds = make_tiny_dataset(n_train=7, n_val=7, n_test=5, size=24)
    for mode in ("generate", "score"):
        config = resolve_config("vlm_zeroshot", overrides=[f"model.name={arch}", f"answer_mode={mode}",
                                                            "precision=fp32", "inference.max_new_tokens=4",
                                                            "inference.batch_size=3", "quiet=true"])
        clf = GenericVlmClassifier(config)
        clf.loaded = load(arch)
        ctx = make_context(config, tmp_path / mode)
        pred = clf.predict(ds["test"], ctx)
        assert pred.ids == ds["test"].ids
        assert pred.info["model_family"] == clf.loaded.codec.family.name
        if mode == "score":
            assert pred.probabilities.shape == (5, len(HAM))
            np.testing.assert_allclose(pred.probabilities.sum(axis=1), 1.0)
            assert pred.info["verbalizer"] == "code" and pred.info["include_eos"] is True
            assert pred.label_set == HAM and all(label in HAM for label in pred.labels)
        else:
            assert len(pred.raw_text) == 5 and all(isinstance(t, str) for t in pred.raw_text)
        assert (Path(ctx.work_dir) / "answers_test.jsonl").exists()
        assert (Path(ctx.work_dir) / "vlm_partial_test.jsonl").exists()


# -- LoRA --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_short_lora_wraps_language_model_only_and_resumes(arch, model_cache, tmp_path):
    from peft.tuners.lora import LoraLayer

    from derma_vlm.generic import GenericVlmLoraClassifier
    from derma_vlm.lora import ADAPTER_DIR, ADAPTER_INFO, CHECKPOINT_DIR

    ds = make_tiny_dataset(n_train=8, n_val=4, n_test=4, size=24, learnable=True)
    work = tmp_path / "work"
    config = resolve_config("vlm_lora", overrides=[*FAST_LORA, f"model.name={arch}", "train.epochs=1",
                                                    "train.keep_checkpoints=true", "answer_mode=score"])
    clf = GenericVlmLoraClassifier(config)
    clf.fit(ds["train"], ds["val"], make_context(config, work))
    model, _ = clf.trained
    wrapped = [name for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    lm = clf.lm_layers.replace("\\", "")
    assert wrapped and all(lm in name for name in wrapped)
    assert not any(v in name for name in wrapped for v in ("vision", "visual", "siglip"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    projector = clf.trainable_modules[0]
    assert any(projector in n and "modules_to_save" in n for n in trainable)
    assert all("lora_" in n or (projector in n and "modules_to_save" in n) for n in trainable)
    assert clf.train_info["best_val_macro_f1"] is not None  # val selection by label scoring ran
    adapter_cfg = json.loads((work / ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"].startswith(arch)
    info = json.loads((work / ADAPTER_DIR / ADAPTER_INFO).read_text())
    assert info["base_model"].startswith(arch) and "{answer}" in info["template"]
    pred = clf.predict(ds["test"], make_context(config, work))
    assert pred.probabilities.shape == (4, len(HAM))

    # resume: a second epoch continues from the first epoch's checkpoint
    (work / ADAPTER_DIR / ADAPTER_INFO).unlink()
    steps = 2  # 8 images, batch 4
    assert (work / CHECKPOINT_DIR / f"checkpoint-{steps}").exists()
    config2 = resolve_config("vlm_lora", overrides=[*FAST_LORA, f"model.name={arch}", "train.epochs=2",
                                                     "answer_mode=score"])
    again = GenericVlmLoraClassifier(config2)
    ctx = make_context(config2, work)
    ctx.resume = True
    again.fit(ds["train"], ds["val"], ctx)
    assert again.train_info["resumed_from"].endswith(f"checkpoint-{steps}")
    assert again.train_info["first_step"] == steps + 1 and again.train_info["global_step"] == 2 * steps


def test_projector_can_be_frozen(model_cache, tmp_path):
    from derma_vlm.generic import GenericVlmLoraClassifier

    ds = make_tiny_dataset(n_train=4, n_val=4, n_test=4, size=24, learnable=True)
    config = resolve_config("vlm_lora", overrides=[*FAST_LORA, "model.name=tiny-idefics3", "train.epochs=1",
                                                    "lora.train_projector=false"])
    clf = GenericVlmLoraClassifier(config)
    clf.fit(ds["train"], ds["val"], make_context(config, tmp_path))
    model, _ = clf.trained
    assert clf.trainable_modules == ()
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_configs_have_the_llava_keys(model_cache):
    from derma_core.config import get_dotted

    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            if k.startswith("_"):
                continue
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
        return out

    z, l = resolve_config("vlm_zeroshot"), resolve_config("vlm_lora")
    lz, ll = resolve_config("llava_zeroshot"), resolve_config("llava_lora")
    llava_only = {"model.vision_tower"}
    assert keys(lz) - llava_only <= keys(z)
    assert keys(ll) - llava_only <= keys(l)
    assert get_dotted(z, "model.name") == "auto" and get_dotted(z, "inference.include_eos") is True
    for key in ("answer_mode", "parser", "prompt", "inference.verbalizer", "model.system_prompt"):
        assert get_dotted(z, key) == get_dotted(l, key)


@pytest.mark.parametrize("arch", ["tiny-qwen2_5_vl", "tiny-idefics3"])
def test_qlora_quantises_only_the_language_model(arch, model_cache, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    from peft.tuners.lora import LoraLayer

    from derma_vlm.generic import GenericVlmLoraClassifier

    ds = make_tiny_dataset(n_train=4, n_val=4, n_test=4, size=24, learnable=True)
    config = resolve_config("vlm_lora", overrides=[*FAST_LORA, f"model.name={arch}", "train.epochs=1",
                                                    "quantization=4bit", "precision=bf16", "answer_mode=score"])
    clf = GenericVlmLoraClassifier(config)
    ctx = make_context(config, tmp_path)
    clf.fit(ds["train"], ds["val"], ctx)
    model, _ = clf.trained
    lm = clf.lm_layers.replace("\\", "")
    quantised = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantised and all(lm in n for n in quantised)  # vision encoder and projector stay unquantised
    wrapped = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert wrapped and all(isinstance(m.get_base_layer(), bnb.nn.Linear4bit) for m in wrapped)
    pred = clf.predict(ds["test"], ctx)
    assert np.isfinite(pred.probabilities).all()


# -- another label set: three classes, none of HAM10000's ------------------------------------------------
def test_zero_shot_score_mode_on_a_three_class_dataset(model_cache, tmp_path):
    from derma_core.prompts import generic
    from derma_vlm.generic import GenericVlmClassifier, score_classes
    from derma_core.evaluation.probabilities import softmax

    ds = make_tiny_dataset(n_train=6, n_val=6, n_test=6, size=24, label_set=THREE)
    config = resolve_config("vlm_zeroshot", overrides=["model.name=tiny-gemma3", "answer_mode=score", "prompt=classes",
                                                        "inference.verbalizer=both", "precision=fp32",
                                                        "inference.batch_size=4", "quiet=true"])
    clf = GenericVlmClassifier(config)
    clf.loaded = load("tiny-gemma3")
    ctx = make_context(config, tmp_path, dataset=ds)
    pred = clf.predict(ds["test"], ctx)
    question = generic(THREE)
    assert question == ("Classify this skin lesion. Answer with only one label: Squamous cell carcinoma (scc), "
                        "Seborrheic keratosis (sk), or Mole (nev).")
    assert pred.info["question"] == question and pred.label_set == THREE
    images = [ds["test"].load_image(i) for i in range(len(ds["test"]))]
    expected = softmax(score_classes(clf.loaded, images, question, THREE, "both"))
    np.testing.assert_allclose(pred.probabilities, expected, atol=1e-6)
    assert pred.probabilities.shape == (6, 3)
    assert pred.labels == [THREE.codes[k] for k in expected.argmax(axis=1)]
    questions = [json.loads(line) for line in (tmp_path / "questions_test.jsonl").read_text().splitlines()]
    assert [q["answer_id"] for q in questions] == list(ds["test"].y)
    assert {q["template_id"] for q in questions} == {"lesion_3way_v1"} and questions[0]["text"] == question


def test_zero_shot_generate_mode_with_the_strict_parser_on_a_three_class_dataset(model_cache, tmp_path):
    from derma_core.answers import evaluate_answer_files, strict_parse
    from derma_vlm.generic import GenericVlmClassifier

    ds = make_tiny_dataset(n_train=6, n_val=6, n_test=6, size=24, label_set=THREE)
    config = resolve_config("vlm_zeroshot", overrides=["model.name=tiny-qwen2_5_vl", "answer_mode=generate",
                                                        "parser=strict", "prompt=p1", "precision=fp32",
                                                        "inference.max_new_tokens=4", "quiet=true"])
    clf = GenericVlmClassifier(config)
    clf.loaded = load("tiny-qwen2_5_vl")
    pred = clf.predict(ds["test"], make_context(config, tmp_path / "real", dataset=ds))
    assert pred.info["question"] == "Classify this skin lesion. Answer with only one label: scc, sk, or nev."
    assert pred.label_set == THREE and pred.probabilities is None
    assert pred.labels == [strict_parse(t, THREE)[0] for t in pred.raw_text]  # the random model's free text
    assert pred.info["n_invalid"] == sum(label is None for label in pred.labels) == sum(pred.info["failures"].values())
    ev = evaluate_answer_files(tmp_path / "real" / "questions_test.jsonl", tmp_path / "real" / "answers_test.jsonl",
                               "strict", label_set=THREE)
    assert ev.predictions.labels == pred.labels and not ev.missing

    class Scripted(GenericVlmClassifier):  # answers a real model might give, through the same predict
        def _generate_batch(self, loaded, images, question, qids):
            texts = ["SCC", "It is a seborrheic keratosis.", "a mole or an scc", "naevus", "no idea", "moles"]
            return [{"id": q, "text": texts[int(q.split("_")[1])]} for q in qids]

    scripted = Scripted(config)
    scripted.loaded = clf.loaded
    pred = scripted.predict(ds["test"], make_context(config, tmp_path / "scripted", dataset=ds))
    assert pred.labels == ["scc", "sk", None, "nev", None, "nev"]
    assert pred.info["failures"] == {"empty": 0, "no_label": 1, "multiple_labels": 1}


def test_ham10000_only_settings_are_refused_before_any_model_loads(tmp_path):
    from derma_vlm.generic import GenericVlmClassifier

    ds = make_tiny_dataset(n_train=3, n_val=3, n_test=3, size=24, label_set=THREE)
    for overrides, expected in ((["answer_mode=generate", "parser=seed"], "parser seed"),
                                (["answer_mode=score", "prompt=p4"], "prompt p4"),
                                (["answer_mode=score", "prompt=p2"], "prompt p2")):
        config = resolve_config("vlm_zeroshot", overrides=["model.name=tiny-gemma3", *overrides])
        clf = GenericVlmClassifier(config)
        ctx = make_context(config, tmp_path, dataset=ds)
        for call in (lambda: clf.resolve(config, ds, ctx), lambda: clf.predict(ds["test"], ctx)):
            with pytest.raises(ValueError) as err:
                call()
            assert expected in str(err.value) and "scc, sk, nev" in str(err.value) and "\n" not in str(err.value)
        assert clf.loaded is None


def test_lora_adapter_records_its_classes_and_is_refused_on_other_classes(model_cache, tmp_path):
    from derma_vlm.generic import GenericVlmLoraClassifier
    from derma_vlm.lora import ADAPTER_DIR, ADAPTER_INFO

    three = make_tiny_dataset(n_train=6, n_val=3, n_test=3, size=24, learnable=True, label_set=THREE)
    config = resolve_config("vlm_lora", overrides=[*FAST_LORA, "model.name=tiny-idefics3", "train.epochs=1",
                                                    "answer_mode=score", "class_weighting.mode=balanced"])
    clf = GenericVlmLoraClassifier(config)
    ctx = make_context(config, tmp_path / "work", dataset=three)
    clf.fit(three["train"], three["val"], ctx)
    folder = tmp_path / "work" / ADAPTER_DIR
    info = json.loads((folder / ADAPTER_INFO).read_text())
    assert LabelSet.from_dict(info["label_set"]) == THREE
    pred = clf.predict(three["test"], ctx)
    assert pred.probabilities.shape == (3, 3) and pred.label_set == THREE
    ham = make_tiny_dataset(n_train=7, n_val=7, n_test=7, size=24)
    given = GenericVlmLoraClassifier({**config, "lora": {**config["lora"], "adapter": str(folder)}})
    with pytest.raises(ValueError) as err:
        given.fit(ham["train"], ham["val"], make_context(config, tmp_path / "other", dataset=ham))
    message = str(err.value)
    assert "\n" not in message and "scc, sk, nev" in message and "akiec" in message and str(folder) in message
    # an adapter derma wrote before label sets were recorded was trained on HAM10000's classes
    del info["label_set"]
    (folder / ADAPTER_INFO).write_text(json.dumps(info))
    legacy = GenericVlmLoraClassifier({**config, "lora": {**config["lora"], "adapter": str(folder)}})
    with pytest.raises(ValueError, match="akiec"):
        legacy.fit(three["train"], three["val"], make_context(config, tmp_path / "legacy", dataset=three))


def test_a_run_through_the_core_on_a_three_class_dataset(model_cache, tmp_path, monkeypatch):
    """vlm_zeroshot (score mode) end to end: the runner accepts its predictions over the dataset's
    classes and names the metrics by the dataset's codes."""
    import mlflow

    from derma_core import hookimpl, plugins
    from derma_core.runner import run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DERMA_MLRUNS", str(tmp_path / "mlruns"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    class Source:
        @hookimpl
        def register_datasets(self, register):
            register("three", lambda config: make_tiny_dataset(n_train=6, n_val=6, n_test=9, size=24, name="three",
                                                               label_set=THREE))

    source = Source()
    plugins.load_plugins()
    plugins.pm.register(source, name="test-vlm-three")
    try:
        config = resolve_config("vlm_zeroshot", overrides=[
            "data.source=three", "model.name=tiny-gemma3", "model.allow_random=true", "answer_mode=score",
            "prompt=classes", "precision=fp32", "quiet=true", "evaluation.bootstrap=0", "device=cpu",
            f"tracking.uri={uri}"])
        result = run(config)
    finally:
        plugins.pm.unregister(source)
    assert result.predictions.label_set == THREE and result.predictions.probabilities.shape == (9, 3)
    metrics = mlflow.MlflowClient(uri).get_run(result.run_id).data.metrics
    assert {"test_macro_f1", "test_f1_scc", "test_f1_sk", "test_f1_nev"} <= set(metrics)
    assert not any("akiec" in name or "_mel" in name for name in metrics)
