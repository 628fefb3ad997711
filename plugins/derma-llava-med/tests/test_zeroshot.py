"""llava_zeroshot on the tiny-random model with the real Mistral tokenizer."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from derma_core import plugins
from derma_core.answers import evaluate_answer_files
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.labels import LabelSet
from derma_core.prompts import SEED_PROMPTS
from derma_core.testing import make_context, make_tiny_dataset
from derma_llava_med.prompting import (
    encode_prompt, encode_training_example, render_prompt, render_training_turn)
from derma_llava_med.zeroshot import LlavaClassifier
from derma_vlm.generation import generate_answers

P1 = SEED_PROMPTS["p1"]
CODES = list(HAM.codes)


def _config(**kw):
    base = {"model": {"name": "tiny-random", "allow_random": True}, "precision": "fp32", "prompt": "p1", "answer_mode": "generate",
            "parser": "seed", "inference": {"batch_size": 4, "max_new_tokens": 8}}
    base.update(kw)
    return base


@pytest.mark.parametrize("name", ["p0", "p1", "p2", "p4"])
def test_prompts_render_exactly(tiny, name):
    question = plugins.get_prompt_builder(name)(HAM)
    assert question == SEED_PROMPTS[name]
    assert render_prompt(question) == f"[INST] <image>\n{question} [/INST]"
    text = tiny.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}], tokenize=False)
    assert text == f"[INST] <image> \n{question} [/INST]"  # the saved template: whole = chunked ids
    ids = encode_prompt(tiny.tokenizer, question, tiny.image_token_id, tiny.n_image_tokens)
    n = tiny.n_image_tokens
    # the original chunked tokenisation: a ▁ (28705) on both sides of the image
    assert ids[:5] == [1, 733, 16289, 28793, 28705]
    assert ids[5:5 + n] == [tiny.image_token_id] * n
    assert ids[5 + n:7 + n] == [28705, 13]
    assert ids[-4:] == [733, 28748, 16289, 28793]  # " [/INST]"
    assert tiny.tokenizer.decode(ids[7 + n:-4]).strip() == question


def test_p2_keeps_double_spaces_and_p4_its_typo():
    assert "(akiec),  Basal" in SEED_PROMPTS["p2"] and SEED_PROMPTS["p4"].endswith("nv or vsc?")
    perms = {plugins.get_prompt_builder(f"p1_perm{k}")(HAM) for k in range(6)}
    assert len(perms) == 6 and P1 not in perms


def test_training_example_masks_everything_but_answer_and_eos(tiny):
    ids, labels = encode_training_example(tiny.tokenizer, P1, "bkl", tiny.image_token_id, tiny.n_image_tokens)
    prompt = encode_prompt(tiny.tokenizer, P1, tiny.image_token_id, tiny.n_image_tokens)
    assert ids[:len(prompt)] == prompt and labels[:len(prompt)] == [-100] * len(prompt)
    assert ids[len(prompt):] == [287, 4784, 2] == labels[len(prompt):]  # ▁b kl </s>
    # the same tokens as the whole training turn tokenised at once (text after the image)
    whole = tiny.tokenizer(render_training_turn(P1, "bkl").split("<image>")[1]).input_ids
    assert whole[-3:] == [287, 4784, 2]


def test_score_mode_equals_brute_force(tiny, images):
    from derma_vlm.scoring import brute_force_scores, continuation_branches, label_token_ids, score_labels

    ids = label_token_ids(tiny.codec, CODES, include_eos=False)
    assert ids[1][0] == ids[2][0] and len(ids[0]) == 3  # bcc/bkl share ▁b; akiec is three pieces
    branches, _ = continuation_branches(ids)
    assert len(branches) == 3
    imgs = images[:2]
    fast = score_labels(tiny, imgs, P1, CODES, batch_size=2, include_eos=False)
    slow = brute_force_scores(tiny, imgs, P1, CODES, include_eos=False)
    np.testing.assert_allclose(fast, slow, atol=2e-4, rtol=1e-5)
    assert np.ptp(fast, axis=1).min() > 0.1  # non-trivial: labels score differently
    # the default scores the answer as the model emits it: label then </s>; every label needs a
    # continuation branch, and the one-piece-free rule holds (mel is ▁mel + </s>, not ▁mel alone)
    eos_ids = label_token_ids(tiny.codec, CODES)
    assert all(i[-1] == tiny.tokenizer.eos_token_id and i[:-1] == j for i, j in zip(eos_ids, ids))
    fast_eos = score_labels(tiny, imgs, P1, CODES, batch_size=2)
    np.testing.assert_allclose(fast_eos, brute_force_scores(tiny, imgs, P1, CODES), atol=2e-4, rtol=1e-5)
    assert (fast_eos < fast).all()  # the end of the answer costs probability: no prefix mass collected
    norm = score_labels(tiny, imgs[:2], P1, CODES, length_normalize=True, include_eos=False)
    np.testing.assert_allclose(norm, fast[:2] / np.array([len(i) for i in ids]), atol=1e-6)


def test_score_equals_model_loss_without_image_token_exclusion(tiny, images):
    """Against transformers' own loss on the full sequence (image token left in the softmax)."""
    from derma_vlm.scoring import label_token_ids, score_labels

    fast = score_labels(tiny, images[:1], P1, CODES, exclude_suppressed=False)
    prompt = encode_prompt(tiny.tokenizer, P1, tiny.image_token_id, tiny.n_image_tokens)
    pixels = tiny.codec.prompt_inputs(images[:1], [P1])["pixel_values"]
    for j, lab in enumerate(label_token_ids(tiny.codec, CODES)):
        seq = torch.tensor([prompt + lab])
        labels = torch.tensor([[-100] * len(prompt) + lab])
        with torch.no_grad():
            loss = tiny.model(input_ids=seq, pixel_values=pixels, labels=labels).loss
        assert fast[0, j] == pytest.approx(-float(loss) * len(lab), abs=2e-4)


def test_batched_equals_unbatched(tiny, images):
    from derma_vlm.scoring import score_labels

    batched = generate_answers(tiny, images[:4], P1, max_new_tokens=6)
    single = [generate_answers(tiny, [im], P1, max_new_tokens=6)[0] for im in images[:4]]
    assert batched == single
    assert len(set(batched)) > 1  # different images, different answers
    # different questions in one batch: left padding must not change the answers
    qs = [P1, SEED_PROMPTS["p4"], SEED_PROMPTS["p0"]]
    mixed = generate_answers(tiny, images[:3], qs, max_new_tokens=6)
    assert mixed == [generate_answers(tiny, [im], q, max_new_tokens=6)[0] for im, q in zip(images[:3], qs)]
    np.testing.assert_allclose(score_labels(tiny, images, P1, CODES, batch_size=5),
                               score_labels(tiny, images, P1, CODES, batch_size=1), atol=2e-4)


def test_generate_no_stop_gives_exact_length(tiny, images):
    out = generate_answers(tiny, images[:2], P1, max_new_tokens=5, stop_at_eos=False)
    assert all(len(tiny.tokenizer(t, add_special_tokens=False).input_ids) >= 1 for t in out)


@pytest.fixture(scope="module")
def dataset():
    return make_tiny_dataset(n_train=7, n_val=7, n_test=10, size=24)


def test_predict_score_mode_gives_probabilities(tiny, dataset, tmp_path):
    clf = LlavaClassifier(_config(answer_mode="score"))
    clf.loaded = tiny
    ctx = make_context(clf.config, tmp_path)
    clf.fit(dataset["train"], dataset["val"], ctx)
    preds = clf.predict(dataset["test"], ctx)
    assert preds.probabilities.shape == (10, len(HAM))
    np.testing.assert_allclose(preds.probabilities.sum(axis=1), 1.0)
    assert preds.labels == [HAM.codes[k] for k in preds.probabilities.argmax(axis=1)]
    # the study's strings are what is scored: p1 and the seven codes, as before label sets existed
    from derma_core.evaluation.probabilities import softmax
    from derma_vlm.scoring import score_labels

    images = [dataset["test"].load_image(i) for i in range(len(dataset["test"]))]
    np.testing.assert_allclose(preds.probabilities, softmax(score_labels(tiny, images, P1, CODES)), atol=1e-12)
    assert None not in preds.labels and preds.info["n_invalid"] == 0
    answers = [json.loads(l) for l in (tmp_path / "answers_test.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == dataset["test"].ids
    assert set(answers[0]) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}


def test_predict_generate_writes_model_vqa_files(tiny, dataset, tmp_path):
    clf = LlavaClassifier(_config(parser="strict"))
    clf.loaded = tiny
    ctx = make_context(clf.config, tmp_path)
    preds = clf.predict(dataset["test"], ctx)
    assert len(preds.raw_text) == 10 and preds.probabilities is None
    assert preds.info["parser"] == "strict"
    assert preds.info["n_invalid"] == sum(l is None for l in preds.labels)
    assert sum(preds.info["failures"].values()) == preds.info["n_invalid"]
    # the written files go through eval-answers to the same labels
    ev = evaluate_answer_files(tmp_path / "questions_test.jsonl", tmp_path / "answers_test.jsonl", "strict",
                               label_set=HAM)
    assert ev.predictions.labels == preds.labels and not ev.missing and not ev.extra


def test_interrupted_run_resumes_where_it_stopped(tiny, dataset, tmp_path):
    full = LlavaClassifier(_config())
    full.loaded = tiny
    reference = full.predict(dataset["test"], make_context(full.config, tmp_path / "ref"))

    class Killed(Exception):
        pass

    calls = []

    class Flaky(LlavaClassifier):
        def _generate_batch(self, loaded, images, question, qids):
            calls.append(list(qids))
            if len(calls) == 2:
                raise Killed
            return super()._generate_batch(loaded, images, question, qids)

    work = tmp_path / "run"
    flaky = Flaky(_config())
    flaky.loaded = tiny
    with pytest.raises(Killed):
        flaky.predict(dataset["test"], make_context(flaky.config, work))
    partial = (work / "llava_partial_test.jsonl").read_text().splitlines()
    assert len(partial) == 1 + 4  # header + first batch
    with open(work / "llava_partial_test.jsonl", "a") as fh:
        fh.write('{"id": "test_0009", "te')  # a torn write from the kill
    resumed = LlavaClassifier(_config())
    resumed.loaded = tiny
    preds = resumed.predict(dataset["test"], make_context(resumed.config, work))
    assert preds.info["images_resumed"] == 4 and preds.info["images_computed"] == 6
    assert preds.raw_text == reference.raw_text and preds.labels == reference.labels
    # other settings never reuse those rows
    other = LlavaClassifier(_config(prompt="p4"))
    other.loaded = tiny
    assert other.predict(dataset["test"], make_context(other.config, work)).info["images_resumed"] == 0


def test_sweep_prompts_parent_and_children(mlflow_store, tiny_source, model_cache):
    from derma_core.cli import cli

    result = CliRunner().invoke(cli, ["sweep-prompts", "--plugin", "llava_zeroshot", "--prompts", "p1,p4",
                                      "--tracking-uri", mlflow_store, "-o", "data.source=tiny", "-o", "model.name=tiny-random", "-o", "model.allow_random=true",
                                      "-o", "answer_mode=score", "-o", "evaluation.bootstrap=20", "-o", "quiet=true",
                                      "-o", "precision=fp32"])
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(mlflow_store)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("derma.kind") == "sweep-prompts"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.params["prompt"] for r in children) == ["p1", "p4"]
    assert all(r.info.status == "FINISHED" and "test_macro_auroc" in r.data.metrics for r in children)
    files = {f.path for f in client.list_artifacts(parents[0].info.run_id, "figures")}
    assert "figures/prompt_sensitivity.png" in files
    vqa = {f.path for f in client.list_artifacts(children[0].info.run_id, "vqa")}
    assert "vqa/answers_test.jsonl" in vqa


def test_llava_convert_command_reports_bad_source(tmp_path):
    from derma_core.cli import cli

    result = CliRunner().invoke(cli, ["llava", "convert", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code != 0 and "config.json" in result.output


def test_model_name_auto_resolves_by_data_and_refuses_random_weights_on_real_data():
    from derma_core.config import resolve_config
    from derma_llava_med.loading import LLAVA_MED, resolve_model_name

    for plugin in ("llava_zeroshot", "llava_lora"):
        default = resolve_config(plugin)
        assert default["model"]["name"] == "auto" and default["model"]["allow_random"] is False
        assert default["inference"]["include_eos"] is True
    assert resolve_model_name({"model": {"name": "auto"}, "data": {"source": "synthetic"}}) == "tiny-random"
    assert resolve_model_name({"model": {"name": "auto"}, "data": {"source": "ham10000"}}) == LLAVA_MED
    assert resolve_model_name({"model": {"name": "/some/folder"}, "data": {"source": "ham10000"}}) == "/some/folder"
    with pytest.raises(ValueError, match="model.allow_random=true") as err:
        resolve_model_name({"model": {"name": "tiny-random"}, "data": {"source": "ham10000"}})
    assert "\n" not in str(err.value)
    assert resolve_model_name({"model": {"name": "tiny-random", "allow_random": True},
                               "data": {"source": "ham10000"}}) == "tiny-random"
    with pytest.raises(ValueError, match="model.name is not set: set it to auto"):
        resolve_model_name(resolve_config("llava_zeroshot", overrides=["model.name=null"]))
    # what the runner logs as the curated params (model, precision, image_size): the resolved values
    config = resolve_config("llava_zeroshot")
    assert LlavaClassifier(config).resolved_values(config, "cpu") == {
        "precision": "fp32", "model.name": "tiny-random", "model.image_size": 32}
    real = resolve_config("llava_zeroshot", overrides=["data.source=ham10000", "precision=bf16"])
    assert LlavaClassifier(real).resolved_values(real, "cpu") == {
        "precision": "bf16", "model.name": LLAVA_MED, "model.image_size": 336}


def test_seed_preset_is_model_vqa_settings():
    from pathlib import Path

    from derma_core.config import resolve_config

    preset = Path(__file__).resolve().parents[3] / "configs" / "presets" / "llava_seed.yaml"
    for plugin in ("llava_zeroshot", "llava_lora"):
        config = resolve_config(plugin, config_file=preset)
        assert config["precision"] == "fp16" and config["answer_mode"] == "generate" and config["parser"] == "seed"
        assert config["inference"]["max_new_tokens"] == 1024 and config["inference"]["batch_size"] == 1
    # float16 runs on the CPU too: the preset's settings through the zero-shot predict, tiny-random
    config = resolve_config("llava_zeroshot", config_file=preset,
                            overrides=["model.name=tiny-random", "model.allow_random=true", "quiet=true",
                                       "inference.max_new_tokens=3"])
    clf = LlavaClassifier(config)
    ds = make_tiny_dataset(n_train=7, n_val=7, n_test=3, size=24)
    preds = clf.predict(ds["test"], make_context(config))
    assert clf.loaded.dtype == torch.float16 and len(preds.raw_text) == 3 and preds.info["parser"] == "seed"


def test_score_and_strict_generate_on_a_three_class_dataset(tiny, tmp_path):
    """Another label set: the question lists its codes, its codes are scored, strict parsing reads its names."""
    from derma_core.answers import strict_parse
    from derma_core.evaluation.probabilities import softmax
    from derma_vlm.scoring import score_labels

    three = LabelSet(codes=("scc", "sk", "nev"), names=("Squamous cell carcinoma", "Seborrheic keratosis", "Mole"))
    ds = make_tiny_dataset(n_train=3, n_val=3, n_test=5, size=24, label_set=three)
    clf = LlavaClassifier(_config(answer_mode="score"))
    clf.loaded = tiny
    preds = clf.predict(ds["test"], make_context(clf.config, tmp_path / "score", dataset=ds))
    question = "Classify this skin lesion. Answer with only one label: scc, sk, or nev."
    assert preds.info["question"] == question and preds.label_set == three
    images = [ds["test"].load_image(i) for i in range(len(ds["test"]))]
    np.testing.assert_allclose(preds.probabilities, softmax(score_labels(tiny, images, question, list(three.codes))),
                               atol=1e-12)
    gen = LlavaClassifier(_config(parser="strict"))
    gen.loaded = tiny
    answers = gen.predict(ds["test"], make_context(gen.config, tmp_path / "gen", dataset=ds))
    assert answers.label_set == three and answers.labels == [strict_parse(t, three)[0] for t in answers.raw_text]
    with pytest.raises(ValueError, match="parser seed"):  # the study's parser knows HAM10000's classes only
        LlavaClassifier(_config()).predict(ds["test"], make_context(gen.config, tmp_path / "seed", dataset=ds))
