"""The converter against a reference forward written from the original LLaVA-Med architecture.

A tiny checkpoint is built in the original layout (llava_mistral config fields, original key
names, SentencePiece tokenizer), converted, loaded natively, and its logits compared with:
CLIP layer -2 patch features without CLS -> Linear-GELU-Linear -> spliced into the Mistral
input embeddings at the image position of the chunk-tokenised prompt (sentinel -200).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from derma_llava_med import tiny as tiny_mod
from derma_llava_med.convert import ConversionError, convert_checkpoint
from derma_llava_med.loading import load_llava

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=28,
              patch_size=7, projection_dim=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
TEXT = dict(vocab_size=32000, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=1_000_000.0,
            sliding_window=None, hidden_act="silu", tie_word_embeddings=False)
QUESTION = "Classify this skin lesion. Answer with only one label: akiec, bcc, bkl, df, mel, nv, or vasc."


def _randomise(module, seed, std=0.2):
    """Weights far from the default init, so a wrong mapping or activation shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(noise * std)
            elif "norm" in name:
                p.copy_(1.0 + 0.05 * noise)
            else:
                p.copy_(0.05 * noise)


def _clip(seed):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    m = CLIPVisionModel(CLIPVisionConfig(**VISION))
    _randomise(m, seed)
    return m.eval()


def _mistral():
    from transformers import MistralConfig, MistralForCausalLM

    kw = dict(TEXT)
    theta = kw.pop("rope_theta")
    torch.manual_seed(1)
    m = MistralForCausalLM(MistralConfig(rope_parameters={"rope_type": "default", "rope_theta": theta}, **kw))
    _randomise(m, 1)
    return m.eval()


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A tiny original-layout checkpoint: named CLIP tower folder + llava_mistral folder whose
    embedded vision copy deliberately differs from the named tower."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    root = tmp_path_factory.mktemp("orig")
    clip_dir = root / "clip-tower"
    clip = _clip(seed=3)
    clip.save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(clip_dir)
    mistral = _mistral()
    g = torch.Generator().manual_seed(5)
    proj = {"model.mm_projector.0.weight": torch.randn(64, 32, generator=g) * 0.2,
            "model.mm_projector.0.bias": torch.randn(64, generator=g) * 0.05,
            "model.mm_projector.2.weight": torch.randn(64, 64, generator=g) * 0.2,
            "model.mm_projector.2.bias": torch.randn(64, generator=g) * 0.05}
    copy = {"model.vision_tower.vision_tower.vision_model." + k: v.clone() for k, v in _clip(seed=4).state_dict().items()}
    state = {**{k: v.clone() for k, v in mistral.state_dict().items()}, **proj}
    ckpt = root / "llava-med-tiny"
    ckpt.mkdir()
    keys = sorted(state)
    save_file({k: state[k].contiguous() for k in keys[: len(keys) // 2]}, str(ckpt / "model-00001-of-00002.safetensors"))
    save_file({**{k: state[k].contiguous() for k in keys[len(keys) // 2:]}, **copy},
              str(ckpt / "model-00002-of-00002.safetensors"))
    cfg = {"model_type": "llava_mistral", "architectures": ["LlavaMistralForCausalLM"], **TEXT,
           "num_key_value_heads": 2, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
           "mm_vision_tower": str(clip_dir), "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
           "mm_vision_select_feature": "patch", "mm_hidden_size": 32, "image_aspect_ratio": "pad",
           "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "tokenizer_padding_side": "right"}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    shutil.copy(tiny_mod.mistral_tokenizer_file(), ckpt / "tokenizer.model")
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "add_eos_token": False,
                                                            "legacy": True, "tokenizer_class": "LlamaTokenizer"}))
    return {"root": root, "ckpt": ckpt, "clip": clip, "clip_dir": clip_dir, "mistral": mistral, "proj": proj,
            "copy": copy}


def _expand2square_reference(image, mean):
    """LLaVA's expand2square with SEED_FACTS' deterministic floor offset, then CLIP preprocessing."""
    from PIL import Image

    w, h = image.size
    side = max(w, h)
    bg = tuple(int(x * 255) for x in mean)
    canvas = Image.new(image.mode, (side, side), bg)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def _reference_logits(original, image, tokenizer):
    """The original architecture's forward, written out."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    pixels = proc(images=_expand2square_reference(image, proc.image_mean), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        feats = original["clip"](pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        p = original["proj"]
        x = F.linear(feats, p["model.mm_projector.0.weight"], p["model.mm_projector.0.bias"])
        x = F.gelu(x)  # exact erf GELU
        x = F.linear(x, p["model.mm_projector.2.weight"], p["model.mm_projector.2.bias"])
        # tokenizer_image_token: chunks tokenised separately, sentinel -200 at the image
        prompt = f"[INST] <image>\n{QUESTION} [/INST]"
        chunks = [tokenizer(c).input_ids for c in prompt.split("<image>")]
        ids = chunks[0] + [-200] + chunks[1][1:]
        pos = ids.index(-200)
        emb = original["mistral"].get_input_embeddings()
        before = emb(torch.tensor([ids[:pos]]))
        after = emb(torch.tensor([ids[pos + 1:]]))
        embeds = torch.cat([before, x, after], dim=1)
        logits = original["mistral"](inputs_embeds=embeds).logits
    return ids, pixels, logits


@pytest.fixture(scope="module")
def converted(original, model_cache):
    dst = original["root"] / "converted"
    convert_checkpoint(original["ckpt"], dst)
    return dst


def test_converted_logits_match_reference_forward(original, converted, images):
    loaded = load_llava({"model": {"name": str(converted)}, "precision": "fp32"}, "cpu")
    from derma_llava_med.prompting import encode_prompt

    for image in images[:3]:
        ref_ids, ref_pixels, ref_logits = _reference_logits(original, image, loaded.tokenizer)
        ids = encode_prompt(loaded.tokenizer, QUESTION, loaded.image_token_id, loaded.n_image_tokens)
        assert loaded.n_image_tokens == 16
        # same text tokens around the image, the ▁ (28705) on both sides included
        pos = ref_ids.index(-200)
        assert ids[:pos] == ref_ids[:pos] and ids[pos + 16:] == ref_ids[pos + 1:]
        assert ref_ids[pos - 1] == 28705 and ref_ids[pos + 1] == 28705
        pixels = loaded.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        assert torch.equal(pixels, ref_pixels), "reloaded processor must pad to square exactly like LLaVA"
        with torch.no_grad():
            logits = loaded.model(input_ids=torch.tensor([ids]), pixel_values=pixels).logits
        assert logits.shape[1] == ref_logits.shape[1]
        torch.testing.assert_close(logits[..., :32000], ref_logits, atol=2e-5, rtol=1e-4)


def test_converted_config_processor_and_template(converted):
    loaded = load_llava({"model": {"name": str(converted)}, "precision": "fp32"}, "cpu")
    cfg = loaded.model.config
    assert cfg.text_config.rope_parameters["rope_theta"] == 1_000_000.0
    assert cfg.text_config.rms_norm_eps == 1e-5 and cfg.text_config.sliding_window is None
    assert cfg.text_config.num_key_value_heads == 2
    assert cfg.vision_feature_layer == -2 and cfg.vision_feature_select_strategy == "default"
    assert cfg.projector_hidden_act == "gelu"
    assert loaded.image_token_id == 32000 and cfg.text_config.vocab_size == 32001
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    assert isinstance(loaded.processor.image_processor, LlavaImageProcessorPil)
    assert loaded.processor.image_processor.do_pad
    text = loaded.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}], tokenize=False)
    assert text == f"[INST] <image> \n{QUESTION} [/INST]"  # a space after <image>: whole = chunked ids


def test_vision_weights_come_from_named_tower_like_the_original(original, converted):
    """The original loader ignores the checkpoint's vision copy; the last CLIP layer does not
    affect outputs, so its mapping is checked on the weights."""
    from safetensors.torch import load_file

    sd = {}
    for f in converted.glob("*.safetensors"):
        sd.update(load_file(str(f)))
    named = original["clip"].state_dict()
    last = VISION["num_hidden_layers"] - 1
    for key in (f"encoder.layers.{last}.mlp.fc2.weight", f"encoder.layers.{last}.self_attn.q_proj.weight",
                "post_layernorm.weight", "embeddings.patch_embedding.weight"):
        stored = [v for k, v in sd.items() if k.endswith("vision_tower." + key) or k.endswith("vision_model." + key)]
        assert len(stored) == 1, key
        assert torch.equal(stored[0], named[key])
    assert "named:" in json.loads((converted / "derma_convert.json").read_text())["vision_weights"]


def test_checkpoint_copy_and_bin_shards(original, tmp_path):
    """The checkpoint's own vision copy (vision_source checkpoint) from .bin shards."""
    from safetensors.torch import load_file

    src = tmp_path / "bin-ckpt"
    src.mkdir()
    state = {}
    for f in original["ckpt"].glob("*.safetensors"):
        state.update(load_file(str(f)))
    torch.save(state, src / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(original["ckpt"] / name, src / name)
    dst = convert_checkpoint(src, tmp_path / "out", vision_source="checkpoint")
    sd = {}
    for f in dst.glob("*.safetensors"):
        sd.update(load_file(str(f)))
    key = "encoder.layers.2.mlp.fc2.weight"
    stored = [v for k, v in sd.items() if k.endswith(key)]
    assert torch.equal(stored[0], original["copy"]["model.vision_tower.vision_tower.vision_model." + key])
    with pytest.raises(ConversionError, match="not empty"):
        convert_checkpoint(src, dst)


def test_bad_sources_give_one_line_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    with pytest.raises(ConversionError, match="not an original LLaVA checkpoint"):
        convert_checkpoint(tmp_path, tmp_path / "x")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_mistral", "mm_projector_type": "linear"}))
    with pytest.raises(ConversionError, match="mlp2x_gelu"):
        convert_checkpoint(tmp_path, tmp_path / "x")
