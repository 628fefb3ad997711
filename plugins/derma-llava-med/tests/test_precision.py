"""The precision matrix: every LLaVA path in bf16 AND fp32 on tiny-random, on the CPU.

bf16 is what ``precision: auto`` gives on every CUDA machine; these tests exist for the dtype
paths (one dtype policy for weights, trainable copies, inputs and autocast: derma_vlm.precision),
not for speed. The CPU has no native bf16 (emulated), so everything here is tiny: a handful of
32 px images, one epoch, a few steps.

Tolerances where bf16 and fp32 are comparable (the same fixed weights): score-mode label
probabilities agree within 0.05 (absolute) with the same top label; greedy answers agree on
their first two tokens (later tokens of a random model sit on near-ties that bf16 rounding
may flip).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from derma_core.config import resolve_config
from derma_core.data.datasets.ham10000 import LABEL_SET as HAM
from derma_core.prompts import SEED_PROMPTS
from derma_core.testing import make_context, make_tiny_dataset
from derma_llava_med.loading import load_llava
from derma_llava_med.lora import ADAPTER_DIR, LoraClassifier
from derma_vlm.generation import generate_answers
from derma_core.evaluation.probabilities import softmax
from derma_vlm.scoring import brute_force_scores, score_labels

P1 = SEED_PROMPTS["p1"]
CODES = list(HAM.codes)
PRECISIONS = ["fp32", "bf16"]
PROB_ATOL = 0.05

FAST = ["train.num_workers=0", "train.batch_size=4", "train.grad_accum=1", "train.lr=3e-3",
        "train.projector_lr=3e-3", "lora.r=4", "lora.alpha=8", "lora.dropout=0", "train.warmup_ratio=0.0",
        "train.scheduler=linear", "train.patience=0", "quiet=true", "inference.batch_size=8",
        "inference.max_new_tokens=3", "train.epochs=1", "train.eval_at_start=false",
        "model.name=tiny-random", "model.allow_random=true", "tracking.log_model=false"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config(precision: str, *overrides: str) -> dict:
    return resolve_config("llava_lora", overrides=[*FAST, f"precision={precision}", *overrides])


def _data():
    return make_tiny_dataset(n_train=8, n_val=5, n_test=5, size=32, learnable=True)


@pytest.fixture(scope="module")
def models(model_cache):
    return {p: load_llava({"model": {"name": "tiny-random", "allow_random": True}, "precision": p}, "cpu")
            for p in PRECISIONS}


# -- zero-shot: score and generate, bf16 vs fp32 -----------------------------------------------------
def test_zero_shot_score_and_generate_agree_across_precisions(models, images):
    assert next(models["bf16"].model.parameters()).dtype == torch.bfloat16
    assert models["bf16"].model.model.vision_tower.dtype == torch.bfloat16
    probs = {p: softmax(score_labels(models[p], images, P1, CODES, batch_size=5)) for p in PRECISIONS}
    assert np.abs(probs["bf16"] - probs["fp32"]).max() < PROB_ATOL
    assert (probs["bf16"].argmax(1) == probs["fp32"].argmax(1)).all()
    # the fast scorer equals brute force in bf16 too (the same autocast on both paths)
    np.testing.assert_allclose(score_labels(models["bf16"], images[:1], P1, CODES),
                               brute_force_scores(models["bf16"], images[:1], P1, CODES), atol=0.05)
    answers = {p: generate_answers(models[p], images, P1, max_new_tokens=2) for p in PRECISIONS}
    assert answers["bf16"] == answers["fp32"]
    assert all(a for a in answers["bf16"])


# -- LoRA: train + per-epoch validation + test in both answer modes, merge ---------------------------
@pytest.fixture(scope="module", params=PRECISIONS)
def lora_run(request, tmp_path_factory, model_cache):
    precision = request.param
    torch.set_num_threads(1)
    ds = _data()
    config = _config(precision, "answer_mode=score", "merge=true")
    ctx = make_context(config, tmp_path_factory.mktemp(f"lora-{precision}"))
    clf = LoraClassifier(config)
    clf.fit(ds["train"], ds["val"], ctx)  # bf16: this is where the per-epoch label scoring crashed
    scores = clf.predict(ds["test"], ctx)
    return {"precision": precision, "ds": ds, "config": config, "ctx": ctx, "clf": clf, "scores": scores}


def test_lora_trains_validates_and_predicts_in_both_answer_modes(lora_run, tmp_path):
    clf, ds, ctx, precision = lora_run["clf"], lora_run["ds"], lora_run["ctx"], lora_run["precision"]
    history = clf.train_info["eval_history"]
    assert [h["epoch"] for h in history] == [1]
    assert np.isfinite(history[0]["val_loss"]) and 0 <= history[0]["val_macro_f1"] <= 1
    assert clf.loaded.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    scores = lora_run["scores"]
    assert scores.probabilities.shape == (5, 7) and np.isfinite(scores.probabilities).all()
    # generate mode through the same saved adapter
    folder = Path(ctx.work_dir) / ADAPTER_DIR
    gen = LoraClassifier({**lora_run["config"], "answer_mode": "generate", "merge": False,
                          "lora": {**lora_run["config"]["lora"], "adapter": str(folder)}})
    gctx = make_context(gen.config, tmp_path)
    gen.fit(ds["train"], ds["val"], gctx)
    answers = gen.predict(ds["test"], gctx)
    assert len(answers.raw_text) == 5 and answers.info["answer_mode"] == "generate"


def test_merged_model_scores_like_base_plus_adapter(lora_run):
    clf, ds, precision = lora_run["clf"], lora_run["ds"], lora_run["precision"]
    merged_dir = Path(lora_run["ctx"].work_dir) / "merged"
    assert (merged_dir / "config.json").exists()
    merged = load_llava({"model": {"name": str(merged_dir), "allow_random": True}, "precision": precision}, "cpu")
    images = [ds["test"].load_image(i) for i in range(len(ds["test"]))]
    probs = softmax(score_labels(merged, images, P1, CODES))
    atol = 1e-4 if precision == "fp32" else PROB_ATOL  # merging rounds W + BA once more in bf16
    np.testing.assert_allclose(probs, lora_run["scores"].probabilities, atol=atol)


def test_qlora_4bit_trains_and_predicts(tmp_path, model_cache):
    import bitsandbytes as bnb

    for precision in PRECISIONS:
        ds = _data()
        config = _config(precision, "quantization=4bit", "answer_mode=score")
        ctx = make_context(config, tmp_path / precision)
        clf = LoraClassifier(config)
        clf.fit(ds["train"], ds["val"], ctx)
        model, _ = clf.trained
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
        assert np.isfinite(clf.train_info["eval_history"][0]["val_loss"])
        preds = clf.predict(ds["test"], ctx)
        assert np.isfinite(preds.probabilities).all()


# Resume after a SIGKILL, in both precisions: test_lora.py::test_resume_after_kill_continues_from_the_checkpoint.
