"""Rollout backends: HF generate on the embedded model; vLLM's pure parts; vLLM integration (skipped here)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from opsd.contexts import build_dual_contexts
from opsd.rollout import (
    HFRollout,
    SamplingParams,
    completion_mask_from_eos,
    pad_completions,
    rollout_from_vllm_outputs,
    vllm_sampling_kwargs,
    vllm_weight_name,
)

PROBLEMS = ["What is 2 + 3?", "What is 14 + 25?"]
SOLUTIONS = ["2 + 3 = 5. \\boxed{5}", "14 + 25 = 39. \\boxed{39}"]


def test_mask_keeps_first_eos_and_masks_after():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 2, 2, 2], [9, 9, 3, 2]])
    mask = completion_mask_from_eos(ids, [2, 3])
    assert mask.tolist() == [
        [True, True, False, False],
        [True, True, True, True],
        [True, False, False, False],
        [True, True, True, False],
    ]


def test_pad_completions_ragged():
    ids, mask = pad_completions([[4, 5, 2], [6]], pad_id=2, eos_ids=[2])
    assert ids.tolist() == [[4, 5, 2], [6, 2, 2]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]  # padding never counts as eos


def test_sampling_params_validation():
    with pytest.raises(ValueError):
        SamplingParams(temperature=0.0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    SamplingParams(temperature=0.0, greedy=True)


def test_hf_rollout_on_embedded_model(embedded_model):
    model, tok = embedded_model
    model.train()
    ctx = build_dual_contexts(tok, PROBLEMS, SOLUTIONS)
    backend = HFRollout(model, tok)
    greedy = SamplingParams(max_new_tokens=12, greedy=True)
    a = backend.generate(ctx.student.input_ids, ctx.student.attention_mask, greedy)
    b = backend.generate(ctx.student.input_ids, ctx.student.attention_mask, greedy)
    assert model.training  # restored after generation
    assert a.completion_ids.shape[0] == 2 and a.completion_ids.shape[1] <= 12
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, completion_mask_from_eos(a.completion_ids, backend.eos_ids))
    # greedy continuation of a left-padded batch equals the unpadded single-prompt continuation
    row = 0
    real = ctx.student.input_ids[row][ctx.student.attention_mask[row].bool()].unsqueeze(0)
    single = backend.generate(real, torch.ones_like(real), greedy)
    n = int(single.completion_mask[0].sum())
    assert a.completion_ids[row, :n].tolist() == single.completion_ids[0, :n].tolist()

    sampled = backend.generate(ctx.student.input_ids, ctx.student.attention_mask,
                               SamplingParams(temperature=1.0, top_p=0.95, top_k=20, max_new_tokens=8, n=3, seed=1))
    assert sampled.completion_ids.shape[0] == 6
    assert sampled.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]


def test_hf_rollout_rejects_right_padding(embedded_model):
    model, tok = embedded_model
    ids = torch.tensor([[1, 2, 3], [1, 2, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with pytest.raises(ValueError, match="left-padded"):
        HFRollout(model, tok).generate(ids, mask, SamplingParams(max_new_tokens=2))


def test_vllm_weight_name_mapping():
    assert vllm_weight_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight") == "model.layers.0.self_attn.q_proj.weight"
    assert vllm_weight_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight") is None
    assert vllm_weight_name("base_model.model.lm_head.weight") == "lm_head.weight"
    assert vllm_weight_name("model.embed_tokens.weight") == "model.embed_tokens.weight"


def test_vllm_sampling_mapping():
    kw = vllm_sampling_kwargs(SamplingParams(temperature=1.1, top_p=0.95, top_k=20, max_new_tokens=1024, n=2, seed=3))
    assert kw == {"n": 2, "temperature": 1.1, "top_p": 0.95, "top_k": 20, "max_tokens": 1024, "seed": 3}
    assert vllm_sampling_kwargs(SamplingParams(top_k=0))["top_k"] == -1
    assert vllm_sampling_kwargs(SamplingParams(greedy=True, temperature=0))["temperature"] == 0.0


def test_vllm_output_conversion():
    outputs = [
        SimpleNamespace(outputs=[SimpleNamespace(token_ids=[4, 5, 2]), SimpleNamespace(token_ids=[6])]),
        SimpleNamespace(outputs=[SimpleNamespace(token_ids=(7, 8, 9, 10)), SimpleNamespace(token_ids=[2])]),
    ]
    r = rollout_from_vllm_outputs(outputs, pad_id=0, eos_ids=[2])
    assert r.completion_ids.tolist() == [[4, 5, 2, 0], [6, 0, 0, 0], [7, 8, 9, 10], [2, 0, 0, 0]]
    assert r.completion_mask.sum(-1).tolist() == [3, 1, 4, 1]
    assert r.prompt_index.tolist() == [0, 0, 1, 1]


def test_vllm_integration(embedded_model):
    pytest.importorskip("vllm", reason="vLLM is not installed (CUDA-only; install the 'gpu' extra on a GPU machine)")
    if not torch.cuda.is_available():
        pytest.skip("vLLM colocate mode needs a CUDA GPU")
    from opsd.models import embedded_model_dir
    from opsd.rollout import VLLMRollout

    model, tok = embedded_model
    model = model.cuda()
    backend = VLLMRollout(model, tok, model_name=str(embedded_model_dir()), gpu_memory_utilization=0.3, dtype="float32")
    ctx = build_dual_contexts(tok, PROBLEMS, SOLUTIONS)
    r = backend.generate(ctx.student.input_ids, ctx.student.attention_mask, SamplingParams(greedy=True, max_new_tokens=8))
    hf = HFRollout(model, tok).generate(ctx.student.input_ids.cuda(), ctx.student.attention_mask.cuda(),
                                        SamplingParams(greedy=True, max_new_tokens=8))
    assert r.completion_ids.shape[0] == 2
    assert r.completion_ids[0, :4].tolist() == hf.completion_ids[0, :4].cpu().tolist()
