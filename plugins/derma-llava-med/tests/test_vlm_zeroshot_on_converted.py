"""A folder written by `derma llava convert` is faithful with plain transformers (issue 13.5).

A tiny checkpoint in the original LLaVA-Med layout is converted; vlm_zeroshot (chat template +
AutoProcessor) must then give the same prompt ids, pixels and label scores as llava_zeroshot
(chunked mistral_instruct tokenisation + LLaVA-Med's PIL preprocessing).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("derma_vlm")  # the generic backend this LLaVA-Med test drives

QUESTION = "Classify this skin lesion. Answer with only one label: akiec, bcc, bkl, df, mel, nv, or vasc."
TEXT = dict(vocab_size=32000, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5, sliding_window=None,
            hidden_act="silu", tie_word_embeddings=False)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28,
              patch_size=7, projection_dim=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """An original-layout tiny LLaVA-Med checkpoint (llava_mistral), converted by derma."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, MistralConfig, MistralForCausalLM

    from derma_llava_med.convert import convert_checkpoint
    from derma_llava_med.tiny import mistral_tokenizer_file

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("llava-orig")
    clip = CLIPVisionModel(CLIPVisionConfig(**VISION))
    _randomise(clip, 3)
    clip.save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(root / "clip")
    torch.manual_seed(1)
    mistral = MistralForCausalLM(MistralConfig(rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **TEXT))
    _randomise(mistral, 1)
    g = torch.Generator().manual_seed(5)
    state = {**mistral.state_dict(),
             "model.mm_projector.0.weight": torch.randn(64, 32, generator=g) * 0.2,
             "model.mm_projector.0.bias": torch.randn(64, generator=g) * 0.05,
             "model.mm_projector.2.weight": torch.randn(64, 64, generator=g) * 0.2,
             "model.mm_projector.2.bias": torch.randn(64, generator=g) * 0.05}
    ckpt = root / "llava-med-tiny"
    ckpt.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt / "model.safetensors"))
    cfg = {"model_type": "llava_mistral", "architectures": ["LlavaMistralForCausalLM"], **TEXT, "rope_theta": 1e6,
           "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32", "mm_vision_tower": str(root / "clip"),
           "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
           "mm_hidden_size": 32, "image_aspect_ratio": "pad", "mm_use_im_start_end": False,
           "mm_use_im_patch_token": False}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    shutil.copy(mistral_tokenizer_file(), ckpt / "tokenizer.model")
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "add_eos_token": False,
                                                            "legacy": True, "tokenizer_class": "LlamaTokenizer"}))
    return convert_checkpoint(ckpt, root / "converted")


@pytest.fixture(scope="module")
def both(converted):
    from derma_llava_med.loading import load_llava
    from derma_vlm.generic import load_generic

    config = {"model": {"name": str(converted)}, "precision": "fp32", "data": {"source": "synthetic"}}
    return load_llava(config, "cpu"), load_generic(config, "cpu")


@pytest.fixture(scope="module")
def images():
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(30, 40), (50, 33)]]


def test_saved_template_tokenises_whole_to_the_chunked_ids(both, images):
    llava, generic = both
    text = generic.codec.render_prompt(QUESTION)
    assert text == f"[INST] <image> \n{QUESTION} [/INST]"
    chunked = llava.codec.prompt_inputs(images[:1], [QUESTION])["input_ids"][0].tolist()
    whole = generic.codec.prompt_inputs(images[:1], [QUESTION])["input_ids"][0].tolist()
    assert whole == chunked
    assert chunked[:8] == [1, 733, 16289, 28793, 28705, 32000, 32000, 32000]


def test_processor_gives_llava_meds_pil_pixels(both, images):
    llava, generic = both
    for image in images:
        ours = generic.codec.prompt_inputs([image], [QUESTION])["pixel_values"]
        theirs = llava.codec.prompt_inputs([image], [QUESTION])["pixel_values"]
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_vlm_zeroshot_scores_equal_llava_zeroshot_on_a_converted_checkpoint(both, images):
    from derma_vlm.generic import score_classes
    from derma_vlm.scoring import score_labels

    llava, generic = both
    assert generic.codec.end_of_turn_id == llava.codec.end_of_turn_id == 2
    from derma_core.data.datasets.ham10000 import LABEL_SET as HAM

    expected = score_labels(llava, images, QUESTION, list(HAM.codes))
    np.testing.assert_allclose(score_classes(generic, images, QUESTION, HAM, "code"), expected, atol=1e-4, rtol=1e-5)
