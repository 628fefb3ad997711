"""llava_lora on the tiny-random model with the real Mistral tokenizer and synthetic data (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from derma_core.config import resolve_config
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.prior import PriorClassifier
from derma_core.prompts import SEED_PROMPTS
from derma_core.testing import make_context, make_tiny_dataset
from derma_llava_med.lora import ADAPTER_DIR, ADAPTER_INFO, CHECKPOINT_DIR, LoraClassifier
from derma_llava_med.prompting import encode_prompt, encode_training_example
from derma_core.weighting import class_weights
from derma_vlm.training import (LM_LINEAR_LAYERS, AnswerOnlyCollator, AnswerOnlyDataset, build_lora_model,
                                lora_target_regex, make_trainer_class, trainable_summary)

REPO = Path(__file__).resolve().parents[3]
CODES = list(HAM.codes)

# Fast settings: a tiny LoRA, a high learning rate, no accumulation, one thread.
FAST = ["precision=fp32", "train.num_workers=0", "train.batch_size=4", "train.grad_accum=1", "train.lr=3e-3",
        "train.projector_lr=3e-3", "lora.r=8", "lora.alpha=16", "lora.dropout=0", "train.warmup_ratio=0.0",
        "train.scheduler=linear", "train.patience=0", "quiet=true", "inference.batch_size=8",
        "model.name=tiny-random", "model.allow_random=true"]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matmuls on a shared 2-core machine are ~10x faster on one thread than on two.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def lora_config(*overrides: str) -> dict:
    return resolve_config("llava_lora", overrides=[*FAST, *overrides])


def easy_dataset(n_train: int = 70, seed: int = 0):
    """Each class has its own colour (derma_core.testing, learnable=True); nv dominates, as in HAM10000."""
    return make_tiny_dataset(n_train=n_train, n_val=21, n_test=28, size=32, learnable=True, seed=seed)


def _fresh_tiny_model(model_cache):
    from derma_llava_med.loading import load_llava

    return load_llava({"model": {"name": "tiny-random", "allow_random": True}, "precision": "fp32"}, "cpu")


# -- config -------------------------------------------------------------------------------------
def test_config_has_the_original_defaults_and_every_zero_shot_key():
    lora = yaml.safe_load((REPO / "configs" / "llava_lora.yaml").read_text())
    zs = yaml.safe_load((REPO / "configs" / "llava_zeroshot.yaml").read_text())

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and v and not k.startswith("_"):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    fl, fz = flat(lora), flat(zs)
    # predict is the zero-shot one: every key it reads must exist here, with the same default
    for key, value in fz.items():
        if key.startswith("_"):
            continue
        assert key in fl, f"configs/llava_lora.yaml lacks zero-shot key {key}"
        if key != "model.device_map":
            assert fl[key] == value, key
    for key, allowed in zs["_choices"].items():
        assert lora["_choices"][key] == allowed
    assert (fl["lora.r"], fl["lora.alpha"], fl["lora.dropout"]) == (128, 256, 0.05)
    assert (fl["train.lr"], fl["train.batch_size"], fl["train.grad_accum"]) == (2e-5, 2, 8)
    assert (fl["train.scheduler"], fl["train.warmup_ratio"], fl["train.weight_decay"], fl["train.epochs"]) == \
        ("cosine", 0.03, 0.01, 3)
    assert fl["train.gradient_checkpointing"] is True
    assert fl["lora.target_modules"] == list(LM_LINEAR_LAYERS)
    # the curated param names of the core
    from derma_core.runner import curated_params

    params = curated_params(resolve_config("llava_lora"))
    assert params["lora_r"] == 128 and params["lr"] == 2e-5 and params["epochs"] == 3


def test_bad_config_values_are_refused():
    with pytest.raises(ValueError, match="lora.target_modules"):
        lora_target_regex(["q_proj", "fc1"])
    with pytest.raises(ValueError, match="class_weighting.mode"):
        class_weights(np.array([0, 1]), "inverse", num_classes=2)
    with pytest.raises(Exception, match="train.sampler"):
        lora_config("train.sampler=oversample")
    with pytest.raises(Exception, match="warmup_ratio"):
        lora_config("train.warmup_ratio=1.5")  # the config's _ranges
    clf = LoraClassifier(lora_config("train.warmup_ratio=1.0"))  # in range, but no step would train at full LR
    with pytest.raises(ValueError, match="warmup_ratio"):
        clf._validate()


def test_class_weights_are_the_seed_formula():
    counts = [236, 373, 786, 80, 787, 4773, 95]  # the seed train split
    y = np.repeat(np.arange(len(HAM)), counts)
    k = len(HAM)
    np.testing.assert_allclose(class_weights(y, "balanced", num_classes=k), [4.32, 2.73, 1.30, 12.73, 1.29, 0.21, 10.72],
                               atol=0.01)
    np.testing.assert_allclose(class_weights(y, "capped", 3.0, num_classes=k), [3, 2.73, 1.30, 3, 1.29, 0.21, 3],
                               atol=0.01)
    assert class_weights(y, "none", num_classes=k) is None
    w = class_weights(np.array([0, 0, 1]), "balanced", num_classes=k)
    assert w[2:].sum() == 0 and w[0] < w[1]
    # the LoRA backend uses the core's weights: N / (K' * count) over the K' classes present, 0 for absent ones
    np.testing.assert_allclose(class_weights(np.array([0, 1, 1, 1]), "balanced", num_classes=2), [2.0, 2 / 3])
    many = class_weights(np.array([0, 0, 113]), "balanced", num_classes=114)
    assert many.shape == (114,) and many[113] == pytest.approx(1.5) and many[1:113].sum() == 0
    with pytest.raises(ValueError, match="0..1"):
        class_weights(np.array([0, 2]), "balanced", num_classes=2)


# -- the loss mask, token by token with the real tokenizer -----------------------------------------
@pytest.mark.parametrize("prompt", ["p0", "p1", "p2", "p4"])
def test_loss_mask_is_exactly_answer_and_eos(tiny, prompt):
    tok, question = tiny.tokenizer, SEED_PROMPTS[prompt]
    n = tiny.n_image_tokens
    before, after = f"[INST] <image>\n{question} [/INST]".split("<image>")
    for label in CODES:
        ids, labels = encode_training_example(tok, question, label, tiny.image_token_id, n)
        # an independent rendering: the whole training turn, chunked at <image> as LLaVA does
        turn_tail = tok(after + f" {label}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        reference = tok(before)["input_ids"] + [tiny.image_token_id] * n + turn_tail
        assert ids == reference, label
        prompt_ids = encode_prompt(tok, question, tiny.image_token_id, n)
        assert ids[:len(prompt_ids)] == prompt_ids  # the same prefix inference uses
        carrying = [(pos, t) for pos, (t, lab) in enumerate(zip(ids, labels)) if lab != -100]
        assert [pos for pos, _ in carrying] == list(range(len(prompt_ids), len(ids)))
        for pos, t in carrying:
            assert labels[pos] == ids[pos]
        assert tok.decode([t for _, t in carrying]) == f"{label}</s>"
        assert carrying[-1][1] == tok.eos_token_id
        assert all(lab == -100 for lab in labels[:len(prompt_ids)])


def test_dataset_collator_and_loss_match_the_models_own_loss(tiny, model_cache):
    ds = easy_dataset()
    loaded = _fresh_tiny_model(model_cache)
    train = AnswerOnlyDataset(ds["train"], loaded.codec, SEED_PROMPTS["p1"], max_length=2048)
    item = train[3]
    assert item["class_index"] == ds["train"].y[3]
    assert item["pixel_values"].shape == (1, 3, 32, 32)
    # the generic example is exactly LLaVA's chunked training turn
    ids, labels = encode_training_example(loaded.tokenizer, SEED_PROMPTS["p1"], CODES[item["class_index"]],
                                          loaded.image_token_id, loaded.n_image_tokens)
    assert item["input_ids"].tolist() == ids and item["labels"].tolist() == labels
    batch = AnswerOnlyCollator(pad_token_id=0)([train[i] for i in range(5)])  # labels of different lengths
    assert batch["pixel_values"].shape == (5, 3, 32, 32)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    Trainer = make_trainer_class()
    trainer = Trainer.__new__(Trainer)  # compute_loss needs only these attributes
    trainer.loss_class_weights = None
    from transformers import TrainingArguments

    trainer.args = TrainingArguments(str(model_cache / "unused"), use_cpu=True, report_to="none")
    model = loaded.model
    with torch.no_grad():
        ours = Trainer.compute_loss(trainer, model, batch)
        ref = model(**{k: v for k, v in batch.items() if k != "class_index"}).loss
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    # per-class weights scale each example's answer tokens
    trainer.loss_class_weights = torch.tensor([2.0] * len(HAM))
    model.train()
    with torch.no_grad():
        doubled = Trainer.compute_loss(trainer, model, batch)
    model.eval()
    assert doubled.item() == pytest.approx(2 * ref.item(), rel=1e-5)
    with pytest.raises(ValueError, match="train.max_length"):
        AnswerOnlyDataset(ds["train"], loaded.codec, SEED_PROMPTS["p1"], max_length=20)


# -- what LoRA wraps and trains -------------------------------------------------------------------
def test_lora_wraps_only_language_model_layers_and_the_projector_trains(model_cache):
    from peft.tuners.lora import LoraLayer

    loaded = _fresh_tiny_model(model_cache)
    model = build_lora_model(loaded.model, r=4, alpha=8, dropout=0.0, target_modules=LM_LINEAR_LAYERS,
                             quantized=False, gradient_checkpointing=True)
    wrapped = [name for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    n_layers = loaded.model.config.text_config.num_hidden_layers
    assert len(wrapped) == 7 * n_layers
    assert all(".language_model.layers." in name for name in wrapped)
    assert {name.rsplit(".", 1)[-1] for name in wrapped} == set(LM_LINEAR_LAYERS)
    assert not any("vision_tower" in name for name, m in model.named_modules() if isinstance(m, LoraLayer))
    counts = trainable_summary(model)
    assert counts["lora"] > 0 and counts["projector"] > 0 and counts["other"] == 0
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(("lora_" in n and "language_model" in n) or "multi_modal_projector.modules_to_save" in n
               for n in trainable)

    # one optimizer step: LoRA and the projector move, the vision tower and the base weights do not
    ds = easy_dataset()
    train = AnswerOnlyDataset(ds["train"], loaded.codec, SEED_PROMPTS["p1"])
    batch = AnswerOnlyCollator(0)([train[i] for i in range(4)])
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    Trainer = make_trainer_class()
    from transformers import TrainingArguments

    args = TrainingArguments(str(model_cache / "opt"), use_cpu=True, report_to="none", learning_rate=1e-3,
                             weight_decay=0.01, optim="adamw_torch")
    trainer = Trainer(model=model, args=args, projector_lr=5e-3)
    opt = trainer.create_optimizer()
    lrs = {round(g["lr"], 6) for g in opt.param_groups}
    assert lrs == {1e-3, 5e-3}
    projector_params = {id(p) for n, p in model.named_parameters() if "multi_modal_projector" in n and p.requires_grad}
    for g in opt.param_groups:
        is_proj = {id(p) in projector_params for p in g["params"]}
        assert is_proj == {g["lr"] == 5e-3}
    model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), snapshot[n])}
    assert any("multi_modal_projector.modules_to_save" in n for n in changed)
    assert any("lora_A" in n for n in changed) or any("lora_B" in n for n in changed)
    assert not any("vision_tower" in n for n in changed)
    assert all(("lora_" in n) or "modules_to_save" in n for n in changed)


# -- fine-tuning end to end ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_cache):
    """One short fine-tune on the easy task (4 epochs), shared by the tests below."""
    torch.set_num_threads(1)
    ds = easy_dataset()
    config = lora_config("train.epochs=4", "answer_mode=score")
    ctx = make_context(config, tmp_path_factory.mktemp("lora-run"))
    clf = LoraClassifier(config)
    clf.fit(ds["train"], ds["val"], ctx)
    model, loaded = clf.trained
    images = [ds["test"].load_image(i) for i in range(len(ds["test"]))]
    from derma_vlm.scoring import score_labels

    in_memory = score_labels(loaded, images, SEED_PROMPTS["p1"], CODES)
    predictions = clf.predict(ds["test"], ctx)
    return {"ds": ds, "clf": clf, "ctx": ctx, "config": config, "in_memory": in_memory, "predictions": predictions}


def test_short_fine_tune_lowers_val_loss_and_beats_the_prior(trained):
    ds, clf, ctx, config = trained["ds"], trained["clf"], trained["ctx"], trained["config"]
    history = clf.train_info["eval_history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4]  # epoch 0 = before training
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 1.0
    prior = PriorClassifier(config)
    prior.fit(ds["train"], ds["val"], ctx)
    prior_acc = float(np.mean(prior.predict(ds["test"], ctx).y_pred == ds["test"].y))
    acc = float(np.mean(trained["predictions"].y_pred == ds["test"].y))
    assert acc > prior_acc + 0.15, (acc, prior_acc)
    assert clf.train_info["best_val_macro_f1"] > history[0]["val_macro_f1"]
    assert clf.train_info["best_val_macro_f1"] == max(h["val_macro_f1"] for h in history[1:])
    # checkpoints are removed once the adapter is saved; the adapter is safetensors
    out = Path(ctx.work_dir) / ADAPTER_DIR
    assert (out / "adapter_model.safetensors").exists() and (out / ADAPTER_INFO).exists()
    assert not (Path(ctx.work_dir) / CHECKPOINT_DIR).exists()
    info = json.loads((out / ADAPTER_INFO).read_text())
    assert info["base_model"].startswith("tiny-random") and info["question"] == SEED_PROMPTS["p1"]
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == info["base_model"]


def test_best_epoch_is_the_saved_adapter(trained):
    """The adapter on disk is the best val macro-F1 epoch, and predict uses it."""
    clf, ds = trained["clf"], trained["ds"]
    from derma_vlm.scoring import score_labels
    from derma_core.evaluation.metrics import classification_metrics

    loaded = clf._load(trained["ctx"])
    val_images = [ds["val"].load_image(i) for i in range(len(ds["val"]))]
    f1 = classification_metrics(ds["val"].y, score_labels(loaded, val_images, SEED_PROMPTS["p1"], CODES).argmax(1),
                                len(HAM))["macro_f1"]
    assert f1 == pytest.approx(clf.train_info["best_val_macro_f1"], abs=1e-9)


def test_saved_adapter_gives_identical_predictions(trained, tmp_path):
    ds, config = trained["ds"], trained["config"]
    from derma_core.evaluation.probabilities import softmax

    preds = trained["predictions"]
    # predict (base loaded as zero-shot does + adapter from disk) == the model as trained, in memory
    np.testing.assert_allclose(preds.probabilities, softmax(trained["in_memory"]), rtol=0, atol=1e-6)
    # a new classifier pointed at the adapter folder (no training) predicts the same
    folder = Path(trained["ctx"].work_dir) / ADAPTER_DIR
    fresh = LoraClassifier({**config, "lora": {**config["lora"], "adapter": str(folder)}})
    ctx = make_context(fresh.config, tmp_path)
    fresh.fit(ds["train"], ds["val"], ctx)
    assert not (tmp_path / CHECKPOINT_DIR).exists()
    again = fresh.predict(ds["test"], ctx)
    assert again.labels == preds.labels
    np.testing.assert_allclose(again.probabilities, preds.probabilities, rtol=0, atol=1e-9)
    # generate mode works through the zero-shot predict too, with the fine-tuned answers parsed
    gen = LoraClassifier({**fresh.config, "answer_mode": "generate", "parser": "strict"})
    gen.fit(ds["train"], ds["val"], ctx)
    answers = gen.predict(ds["test"], make_context(gen.config, tmp_path / "gen"))
    agree = np.mean([a == b for a, b in zip(answers.labels, preds.labels)])
    assert agree > 0.7 and answers.info["n_invalid"] <= 3


def test_merge_exports_a_model_that_predicts_the_same(trained, tmp_path):
    from derma_llava_med.loading import load_llava
    from derma_vlm.scoring import score_labels

    clf, ds = trained["clf"], trained["ds"]
    ctx = make_context(clf.config, tmp_path)
    folder = clf.export_merged(ctx)
    merged = load_llava({"model": {"name": str(folder)}, "precision": "fp32"}, "cpu")
    images = [ds["test"].load_image(i) for i in range(8)]
    np.testing.assert_allclose(score_labels(merged, images, SEED_PROMPTS["p1"], CODES), trained["in_memory"][:8],
                               rtol=0, atol=1e-4)


# -- QLoRA on the CPU through bitsandbytes --------------------------------------------------------
def test_qlora_4bit_path_runs_on_cpu(tmp_path, model_cache):
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer

    ds = make_tiny_dataset(n_train=14, n_val=7, n_test=7, size=32, learnable=True)
    config = lora_config("quantization=4bit", "precision=bf16", "train.epochs=1", "answer_mode=score",
                         "train.eval_at_start=false")
    ctx = make_context(config, tmp_path)
    clf = LoraClassifier(config)
    clf.fit(ds["train"], ds["val"], ctx)
    model, _ = clf.trained
    lm_4bit = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert lm_4bit and all(".language_model.layers." in n for n in lm_4bit)
    wrapped = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert wrapped and all(isinstance(m.get_base_layer(), bnb.nn.Linear4bit) for m in wrapped)
    w = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)).weight
    assert w.quant_type == "nf4" and w.quant_state.nested  # nf4 with double quantisation
    history = clf.train_info["eval_history"]
    assert len(history) == 1 and np.isfinite(history[0]["val_loss"]) and history[0]["train_loss"] > 0
    # the projector and vision tower stay unquantised (the projector is trained in full)
    assert not any("multi_modal_projector" in n or "vision_tower" in n
                   for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit))
    preds = clf.predict(ds["test"], ctx)
    assert preds.probabilities.shape == (7, len(HAM)) and np.isfinite(preds.probabilities).all()
    assert isinstance(clf.loaded.model.model.language_model.layers[0].self_attn.q_proj.get_base_layer(),
                      bnb.nn.Linear4bit)


# -- resume after a kill ---------------------------------------------------------------------------
def _resume_child(work_dir: str, model_cache: str, precision: str) -> None:  # runs in the subprocess
    import os as _os
    import signal as _signal

    from transformers import TrainerCallback

    os.environ["DERMA_MODEL_CACHE"] = model_cache
    torch.set_num_threads(1)

    class KillAfterFirstCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            Path(work_dir, "killed_at_step").write_text(str(state.global_step))
            _os.kill(_os.getpid(), _signal.SIGKILL)

    ds = make_tiny_dataset(n_train=16, n_val=7, n_test=7, size=32, learnable=True)
    config = lora_config("train.epochs=3", "train.eval_at_start=false", f"precision={precision}")
    clf = LoraClassifier(config)
    clf.extra_callbacks.append(KillAfterFirstCheckpoint())
    clf.fit(ds["train"], ds["val"], make_context(config, work_dir))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # part of the precision matrix (test_precision.py)
def test_resume_after_kill_continues_from_the_checkpoint(tmp_path, model_cache, precision):
    work = tmp_path / "work"
    work.mkdir()
    script = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("lora_test_module", {str(Path(__file__))!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module._resume_child({str(work)!r}, {str(model_cache)!r}, {precision!r})
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DERMA_MODEL_CACHE": str(model_cache)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    killed_at = int((work / "killed_at_step").read_text())
    steps_per_epoch = 4  # 16 images, batch 4
    assert killed_at == steps_per_epoch
    assert (work / CHECKPOINT_DIR / f"checkpoint-{killed_at}").exists()
    assert not (work / ADAPTER_DIR).exists()

    ds = make_tiny_dataset(n_train=16, n_val=7, n_test=7, size=32, learnable=True)
    config = lora_config("train.epochs=3", "train.eval_at_start=false", "train.keep_checkpoints=true",
                         f"precision={precision}")
    ctx = make_context(config, work)
    ctx.resume = True
    clf = LoraClassifier(config)
    clf.fit(ds["train"], ds["val"], ctx)
    info = clf.train_info
    assert info["resumed_from"].endswith(f"checkpoint-{killed_at}")
    assert info["first_step"] == killed_at + 1  # continued, not restarted
    assert info["global_step"] == 3 * steps_per_epoch
    assert info["epochs_run"] == [2, 3]
    assert (work / ADAPTER_DIR / "adapter_model.safetensors").exists()
    assert json.loads((work / ADAPTER_DIR / ADAPTER_INFO).read_text())["precision"] == precision
    # resuming a finished run reuses the adapter instead of training again
    again = LoraClassifier(config)
    ctx2 = make_context(config, work)
    ctx2.resume = True
    again.fit(ds["train"], ds["val"], ctx2)
    assert again.trained is None and again.adapter_sha == clf.adapter_sha


# -- through the core: one MLflow run with per-epoch metrics and the adapter ---------------------------
def test_derma_run_logs_into_one_mlflow_run(mlflow_store, model_cache):
    import mlflow

    from derma_core import hookimpl, plugins
    from derma_core.runner import run

    class Source:
        @hookimpl
        def register_datasets(self, register):
            register("lora-easy", lambda config: make_tiny_dataset(n_train=16, n_val=7, n_test=7, size=32,
                                                                   learnable=True, name="lora-easy"))

    plugin = Source()
    plugins.load_plugins()
    plugins.pm.register(plugin, name="test-lora-source")
    try:
        config = lora_config("data.source=lora-easy", "train.epochs=2", "answer_mode=score",
                             "class_weighting.mode=balanced", "class_weighting.cap=3.0", "train.sampler=balanced",
                             "evaluation.bootstrap=0", "device=cpu")
        result = run(config)
    finally:
        plugins.pm.unregister(plugin)
    client = mlflow.MlflowClient(mlflow_store)
    runs = client.search_runs([client.get_experiment_by_name("lora-easy").experiment_id])
    assert len(runs) == 1  # no stray second run from the Trainer
    r = client.get_run(result.run_id)
    assert r.data.tags["derma.base_model"].startswith("tiny-random")
    assert r.data.params["model"] == "tiny-random" and r.data.params["precision"] == "fp32"  # what ran
    assert r.data.params["lora_r"] == "8" and r.data.params["class_weight_df"]
    assert "test_macro_f1" in r.data.metrics
    steps = [m.step for m in client.get_metric_history(result.run_id, "val_macro_f1")]
    assert steps == [0, 1, 2]
    assert len(client.get_metric_history(result.run_id, "val_loss")) == 3
    assert client.get_metric_history(result.run_id, "train_step_loss")
    files = {f.path for f in client.list_artifacts(result.run_id, ADAPTER_DIR)}
    assert f"{ADAPTER_DIR}/adapter_model.safetensors" in files and f"{ADAPTER_DIR}/adapter_config.json" in files


def test_gpu_check_script_runs_at_tiny_size_on_cpu():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_lora_check", REPO / "benchmarks" / "gpu_lora_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--tiny", "--steps", "2", "--r", "8"])
    assert report["steps"] == 2 and report["finite_loss"] and report["seconds_per_step"] > 0
    assert report["trainable_lora_params"] > 0 and report["tokens_per_example"] > report["image_tokens"]
    assert report["validation"]["ran"] and report["validation"]["finite_label_scores"]  # bf16 4-bit + validation
