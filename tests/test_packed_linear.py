"""The fast CPU path computes what the reference path computes (opsd.packed_linear, opsd.rollout).

Packed oneDNN kernels sum in another order than MKL, so values agree to float32 rounding, not bitwise;
the sampled and the greedy tokens are checked equal, the model's own weights bitwise unchanged.
"""

from __future__ import annotations

import json

import pytest
import torch

from opsd import packed_linear
from opsd.contexts import build_dual_contexts
from opsd.data import synthetic_math
from opsd.models import LoRASettings, apply_lora, tiny_qwen3
from opsd.packed_linear import (
    KINDS,
    PLAN_MARGIN,
    KernelPlan,
    available,
    clear_packed,
    kernel_plan,
    measure_plan,
    packed_linears,
)
from opsd.rollout import HFRollout, SamplingParams, SamplingWarper

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (torch CPU build)")


def lora_model(vocab: int = 97):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = apply_lora(tiny_qwen3(vocab_size=vocab, hidden_size=64, num_layers=2, seed=0), LoRASettings(r=4, alpha=8))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape) * 0.05)
    return model


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def inputs(vocab: int = 97, rows: int = 3, cols: int = 7):
    ids = torch.randint(0, vocab, (rows, cols), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding in one row
    return {"input_ids": ids, "attention_mask": mask}


def test_available_only_for_float32_cpu_models():
    model = lora_model()
    assert available(model)
    assert not available(model.to(torch.bfloat16))


def test_no_grad_logits_match_with_adapters_on_and_off_and_weights_stay_bitwise():
    model, x = lora_model().eval(), inputs()
    before = snapshot(model)
    with torch.no_grad():
        ref_on = model(**x).logits
        with model.disable_adapter():
            ref_off = model(**x).logits
        with packed_linears(model):
            fast_on = model(**x).logits
            with model.disable_adapter():
                fast_off = model(**x).logits
    assert (ref_on - ref_off).abs().max() > 1e-3  # the adapters matter, so the merge is exercised
    torch.testing.assert_close(fast_on, ref_on, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast_off, ref_off, rtol=0, atol=1e-5)
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # no merge/unmerge round trip on the model
    assert not any("forward" in m.__dict__ for m in model.modules())  # nothing left patched


def test_measured_plan_times_every_kind_and_shape_and_picks_the_faster_kernel():
    plan = measure_plan([(32, 16), (8, 16), (32, 16)], reps=3, budget_s=0.001)
    assert set(plan.packed) == {(kind, o, i) for kind in KINDS for o, i in ((32, 16), (8, 16))}
    for key, (standard, packed) in plan.seconds.items():
        assert standard > 0 and packed > 0
        assert plan.packed[key] == (standard >= packed * (1 - PLAN_MARGIN))
        assert plan.use(key[0], key[1:]) == plan.packed[key]
    assert plan.use("decode", (5, 5)) is True  # untimed shapes: the plan's default
    assert len(plan.table()) == len(plan.seconds)


def test_kernel_plan_env_forces_one_side_and_rejects_other_values(monkeypatch, tmp_path):
    monkeypatch.setenv("OPSD_CACHE", str(tmp_path))
    model = lora_model()
    monkeypatch.setenv("OPSD_KERNEL_PLAN", "standard")
    assert kernel_plan(model) == KernelPlan(default=False)
    monkeypatch.setenv("OPSD_KERNEL_PLAN", "fast")
    with pytest.raises(ValueError, match="OPSD_KERNEL_PLAN='fast': expected measured, packed or standard"):
        kernel_plan(model)
    monkeypatch.setenv("OPSD_KERNEL_PLAN", "measured")
    plan = kernel_plan(model)
    shapes = {tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert {key[1:] for key in plan.packed} == shapes and {key[0] for key in plan.packed} == set(KINDS)
    assert kernel_plan(model) is plan  # measured once per process and set of shapes
    saved = list(tmp_path.glob("kernel-plan-*.json"))
    assert len(saved) == 1
    packed_linear._PLANS.clear()  # a new process on the same machine reads the same plan from disk
    assert kernel_plan(model) == plan
    saved[0].write_text("{broken")
    packed_linear._PLANS.clear()
    assert set(kernel_plan(model).packed) == set(plan.packed)  # unreadable: measured again
    assert json.loads(saved[0].read_text())["plan"]


def test_a_plan_that_keeps_the_standard_kernel_computes_bitwise_the_standard_path(monkeypatch):
    model, x = lora_model().eval(), inputs()
    with torch.no_grad():
        ref = model(**x).logits
        monkeypatch.setenv("OPSD_KERNEL_PLAN", "standard")
        with packed_linears(model):
            kept = model(**x).logits
        monkeypatch.setenv("OPSD_KERNEL_PLAN", "packed")
        with packed_linears(model):
            fast = model(**x).logits
    assert torch.equal(kept, ref)
    assert not torch.equal(fast, ref) and torch.allclose(fast, ref, atol=1e-5)


def test_packed_copy_follows_an_in_place_weight_update():
    model, x = lora_model().eval(), inputs()
    with torch.no_grad(), packed_linears(model):
        model(**x)  # packs
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)  # what an optimizer step does: in place, the version counter moves
        ref = model(**x).logits
        with packed_linears(model):
            fast = model(**x).logits
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    clear_packed(model)
    assert not any("_opsd_packed" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("fused", [True, False])
def test_packed_copy_follows_optimizer_steps_even_fused_ones(fused):
    """The fused AdamW kernel (transformers' default) writes the weights without moving their version
    counters: the merged copy must still follow it (regression: rollouts sampled from stale weights)."""
    model, x = lora_model().eval(), inputs()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05, fused=fused)
    for _ in range(2):
        with torch.no_grad(), packed_linears(model):
            fast = model(**x).logits
        with torch.no_grad():
            ref = model(**x).logits
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
        model(**x).logits.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def test_gradient_pass_matches_and_reaches_only_the_adapters():
    x = inputs()
    grads = {}
    for fast in (False, True):
        model = lora_model().train()
        with packed_linears(model, enabled=fast):
            loss = model(**x).logits.log_softmax(-1)[..., 5].mean()
        loss.backward()  # after the block, as the Trainer's backward
        grads[fast] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        assert all("lora_" in n for n in grads[fast][1])
    torch.testing.assert_close(grads[True][0], grads[False][0], rtol=0, atol=1e-6)
    for name, g in grads[False][1].items():
        torch.testing.assert_close(grads[True][1][name], g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 0.95), (1.1, 20, 0.95), (1.0, 0, 0.5), (0.7, 5, 1.0)])
def test_sampling_warper_keeps_the_set_transformers_keeps(temperature, top_k, top_p):
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = torch.randn(64, 3000, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.5, 6, 64)[:, None]
    chain = [TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else []) + (
        [TopPLogitsWarper(top_p)] if top_p < 1 else [])
    ids = torch.zeros(64, 1, dtype=torch.long)
    reference = LogitsProcessorList(chain)(ids, scores.clone())
    for candidates in (1024, 4):  # 4: most rows fall back to the full sort
        ours = SamplingWarper(temperature, top_k, top_p, candidates=candidates)(ids, scores.clone())
        assert torch.equal(torch.isinf(ours), torch.isinf(reference))
        kept = ~torch.isinf(reference)
        torch.testing.assert_close(ours[kept], reference[kept], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def start_model():
    """The CPU starting model with LoRA (B drawn so the adapters matter) and a batch of student prompts."""
    from opsd.models import load_model_and_tokenizer

    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer("smollm2-135m-opsd-start", lora=LoRASettings(r=16, alpha=32))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    data = synthetic_math(6, split="train")
    contexts = build_dual_contexts(tok, data["problem"], data["solution"], profile="simple")
    return model, tok, contexts


def test_fast_rollout_samples_the_reference_tokens_with_the_same_log_probabilities(start_model):
    model, tok, contexts = start_model
    before = snapshot(model)
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=24, seed=5)
    ids, mask = contexts.student.input_ids, contexts.student.attention_mask
    reference = HFRollout(model, tok, fast=False).generate(ids, mask, params)
    fast = HFRollout(model, tok, fast=True).generate(ids, mask, params)
    assert torch.equal(fast.completion_ids, reference.completion_ids)
    assert torch.equal(fast.completion_mask, reference.completion_mask)
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # LoRA and base weights bitwise unchanged

    full = torch.cat([ids, reference.completion_ids], 1)
    attention = torch.cat([mask, torch.ones_like(reference.completion_ids)], 1)
    width = ids.shape[1]
    model.eval()
    with torch.no_grad():
        logp = {}
        for on in (False, True):
            with packed_linears(model, enabled=on):
                logits = model(input_ids=full, attention_mask=attention).logits[:, width - 1 : -1] / 0.7
            logp[on] = logits.log_softmax(-1).gather(-1, reference.completion_ids[..., None])[..., 0]
    gap = (logp[True] - logp[False]).abs()[reference.completion_mask]
    assert gap.max() < 1e-4


def test_greedy_evaluation_answers_are_identical_across_paths_and_batch_sizes(start_model):
    from opsd.data import load_benchmark
    from opsd.eval.evaluate import evaluate

    model, tok, _ = start_model
    data = load_benchmark("synthetic", n=8)
    runs = [evaluate(model, tok, data, k=1, temperature=0.0, max_new_tokens=40, batch_size=batch, progress=False,
                     fast=fast)[0] for fast, batch in ((False, 4), (True, 8))]
    assert [r["completion"] for r in runs[0]] == [r["completion"] for r in runs[1]]


def test_sibling_layers_multiplied_together_give_bitwise_the_separate_outputs(monkeypatch):
    """q, k, v and gate, up as one packed multiply per group (SIBLINGS): the same logits, bit for bit, as
    one call per layer, with the adapters on and off, at decoding and at scoring sizes."""
    model = lora_model().eval()
    calls = []
    original = torch.ops.mkldnn._linear_pointwise

    def counting(*args):
        calls.append(args[1].shape)
        return original(*args)

    def logits(x):
        with torch.no_grad(), packed_linears(model):
            on = model(**x).logits
            with model.disable_adapter():
                off = model(**x).logits
        return on, off

    for x in (inputs(), inputs(rows=8, cols=1), inputs(rows=4, cols=40)):
        monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", counting)
        together = logits(x)
        n_together = len(calls)
        calls.clear()
        monkeypatch.setattr(packed_linear, "SIBLINGS", ())
        separate = logits(x)
        monkeypatch.undo()
        n_separate = len(calls)
        calls.clear()
        assert all(torch.equal(a, b) for a, b in zip(together, separate))
        # 2 layers x (7 -> 4 multiplies) + the output projection, per forward pass, two passes
        assert (n_separate, n_together) == (2 * (2 * 7 + 1), 2 * (2 * 4 + 1))


def test_a_sibling_called_with_another_tensor_computes_its_own_output():
    """The group keeps the others' outputs only for the very tensor it multiplied."""
    model = lora_model().eval()
    attn = model.base_model.model.model.layers[0].self_attn
    x, y = torch.randn(2, 3, 64), torch.randn(2, 3, 64)
    with torch.no_grad():
        want = attn.k_proj(y)
        with packed_linears(model):
            attn.q_proj(x)          # keeps k(x), v(x)
            got = attn.k_proj(y)    # another tensor: not the kept k(x)
            kx = attn.k_proj(x)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        torch.testing.assert_close(kx, attn.k_proj(x), rtol=0, atol=1e-5)
