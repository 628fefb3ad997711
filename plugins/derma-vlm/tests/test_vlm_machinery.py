"""derma_vlm's model-free pieces: collation of any processor's inputs, answer-only labels,
continuation branches, partial results, sharding, the dtype policy. (Scoring, generation and
the LoRA loop run on real tiny models in the backends' tests: derma-llava-med, and the generic
VLM backends.)"""

from __future__ import annotations

import json

import pytest
import torch

from derma_vlm.codec import IGNORE_INDEX, append_tokens, image_keys, left_pad, per_token_keys
from derma_vlm.distributed import gather_dicts, shard
from derma_vlm.partial import PartialResults
from derma_vlm.precision import DtypePolicy, dtype_name, resolve_dtype
from derma_vlm.scoring import continuation_branches
from derma_vlm.training import AnswerOnlyCollator, answer_only_example


def _prompt(n_tokens: int, n_patches: int) -> dict:
    """A one-row prompt in the shape of a Qwen-VL-like processor: flat patches + grid + token types."""
    return {"input_ids": torch.arange(1, n_tokens + 1)[None], "attention_mask": torch.ones(1, n_tokens, dtype=torch.long),
            "token_type_ids": torch.ones(1, n_tokens, dtype=torch.long),
            "pixel_values": torch.randn(n_patches, 6), "image_grid_thw": torch.tensor([[1, n_patches, 1]])}


def test_keys_split_into_per_token_and_per_image():
    p = _prompt(5, 5)  # as many patches as tokens: still told apart by the (batch, length) shape
    assert per_token_keys(p) == ["token_type_ids"]
    assert sorted(image_keys(p)) == ["image_grid_thw", "pixel_values"]


def test_answer_only_example_and_collator_for_any_processor_layout():
    a = answer_only_example(_prompt(4, 3), [50, 51], end_of_turn_id=9)
    b = answer_only_example(_prompt(6, 5), [52], end_of_turn_id=9)
    assert a["input_ids"].tolist() == [1, 2, 3, 4, 50, 51, 9]
    assert a["labels"].tolist() == [IGNORE_INDEX] * 4 + [50, 51, 9]  # loss on answer + end of turn only
    assert a["token_type_ids"].tolist() == [1, 1, 1, 1, 0, 0, 0]
    a["class_index"], b["class_index"] = 0, 3
    batch = AnswerOnlyCollator(pad_token_id=0)([a, b])
    assert batch["input_ids"].shape == (2, 8) and batch["attention_mask"].tolist() == [[1] * 7 + [0], [1] * 8]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX] * 6 + [52, 9]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX] * 4 + [50, 51, 9, IGNORE_INDEX]
    c = answer_only_example(_prompt(2, 2), [53], end_of_turn_id=9)
    c["class_index"] = 1
    batch = AnswerOnlyCollator(pad_token_id=0)([a, c])
    assert batch["input_ids"][1].tolist() == [1, 2, 53, 9, 0, 0, 0]  # right-padded
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 53, 9] + [IGNORE_INDEX] * 3
    assert batch["token_type_ids"][1].tolist() == [1, 1, 0, 0, 0, 0, 0]
    assert batch["pixel_values"].shape == (5, 6)  # 3 + 2 flat patches, concatenated
    assert batch["image_grid_thw"].tolist() == [[1, 3, 1], [1, 2, 1]]
    assert batch["class_index"].tolist() == [0, 1]


def test_append_tokens_and_left_pad():
    p = _prompt(3, 2)
    out = append_tokens(p, [7, 8])
    assert out["input_ids"].tolist() == [[1, 2, 3, 7, 8]] and out["attention_mask"].tolist() == [[1] * 5]
    assert out["pixel_values"] is p["pixel_values"]
    ids, mask = left_pad([[5, 6, 7], [8]], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_continuation_branches_share_prefixes():
    labels = [[10, 11, 12], [20, 21], [20, 22], [30]]  # 20 shared; 30 is one piece
    branches, branch_of = continuation_branches(labels)
    assert branches == [[10, 11], [20]]
    assert branch_of == [0, 1, 1, None]
    with_eos = [ids + [2] for ids in labels]
    branches, branch_of = continuation_branches(with_eos)
    assert len(branches) == 4 and None not in branch_of  # every label then needs a continuation


def test_partial_results_keep_rows_of_the_same_settings_only(tmp_path):
    path = tmp_path / "p.jsonl"
    partial = PartialResults(path, {"model": "a"})
    partial.load()
    partial.start()
    partial.append([{"id": "x", "text": "nv"}, {"id": "y", "text": "mel"}])
    with open(path, "a") as fh:
        fh.write('{"id": "z", "te')  # torn by a kill
    again = PartialResults(path, {"model": "a"})
    assert sorted(again.load()) == ["x", "y"]
    assert PartialResults(path, {"model": "b"}).load() == {}
    again.start()
    assert [json.loads(line).get("id") for line in path.read_text().splitlines()] == [None, "x", "y"]


def test_shards_cover_every_row_once_and_gather_without_a_group_is_local():
    rows = list(range(11))
    parts = [shard(rows, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == rows and max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard(rows, 0, 1) == rows
    assert gather_dicts({"a": 1}, world_size=1) == {"a": 1}


def test_dtype_policy():
    assert resolve_dtype("auto", "cpu") == torch.float32 and dtype_name(resolve_dtype("bf16", "cpu")) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_dtype("half", "cpu")
    bf16 = DtypePolicy(torch.bfloat16)
    inputs = bf16.cast_inputs({"input_ids": torch.ones(1, 2, dtype=torch.long), "pixel_values": torch.zeros(1, 3)},
                              "cpu")
    assert inputs["input_ids"].dtype == torch.long and inputs["pixel_values"].dtype == torch.bfloat16
    assert bf16.trainer_flags() == {"bf16": True, "fp16": False}
    lin = torch.nn.Linear(3, 2)  # an fp32 trainable copy fed bf16 activations: fine under the policy
    with bf16.autocast("cpu"):
        assert lin(torch.zeros(1, 3, dtype=torch.bfloat16)).dtype == torch.bfloat16
    fp32 = DtypePolicy(torch.float32)
    assert not fp32.mixed and fp32.trainer_flags() == {"bf16": False, "fp16": False}
    model = torch.nn.Linear(2, 2).to(torch.bfloat16)
    model.weight.requires_grad_(False)
    bf16.prepare_trainable(model)
    assert model.weight.dtype == torch.bfloat16 and model.bias.dtype == torch.float32
