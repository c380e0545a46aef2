"""opsd.step on a tiny random Qwen3 with LoRA: each function against values computed independently here
(full forwards sliced by hand, the base model built separately, the objectives written out in torch)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from opsd.contexts import build_dual_contexts, join_rollout
from opsd.data import synthetic_math
from opsd.divergence import DivergenceSpec
from opsd.models import LoRASettings, apply_lora, tiny_qwen3
from opsd.packed_linear import packed_forwards
from opsd.step import LossPath, NonFiniteScoresError, opsd_loss, score_rollout, teacher_scores
from opsd.teacher import EMATeacher

N = 5  # rollout tokens


def base_model(tokenizer):
    return tiny_qwen3(vocab_size=len(tokenizer), hidden_size=32, num_layers=1, seed=0)


def lora_model(tokenizer):
    """The tiny model with LoRA adapters whose B factors are non-zero, so student and fixed teacher differ."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # LoRA's A factors are drawn from the global generator
        model = apply_lora(base_model(tokenizer), LoRASettings(r=4, alpha=8))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape) * 0.05)
    return model.train()


@pytest.fixture()
def setup(embedded_tokenizer):
    tok = embedded_tokenizer
    data = synthetic_math(2)
    contexts = build_dual_contexts(tok, data["problem"], data["solution"], profile="simple")
    ids = torch.randint(0, len(tok), (2, N), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[True, True, True, False, False], [True] * N])  # ragged: row 0 ended after 3 tokens
    return lora_model(tok), tok, contexts, join_rollout(contexts, ids, mask)


def by_hand(model, batch, role):
    """Logits [B, N, V] from a full forward over every column, picked at P_role - 1 + n."""
    inputs = batch.student_inputs() if role == "student" else batch.teacher_inputs()
    width = batch.student_prompt_width if role == "student" else batch.teacher_prompt_width
    logits = model(**inputs).logits
    return torch.stack([logits[:, width - 1 + n] for n in range(batch.completion_length)], dim=1)


def forward_kl(student, teacher, mask, tau=1.0, clip=None):
    """mean over masked-in positions of sum_v min(p_T (log p_T - log p_S), c), written out."""
    logp_s = torch.log_softmax(student.double() / tau, -1)
    logp_t = torch.log_softmax(teacher.double() / tau, -1)
    summands = logp_t.exp() * (logp_t - logp_s)
    if clip is not None:
        summands = summands.clamp(max=clip)
    return summands.sum(-1)[mask].mean()


def lora_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_score_rollout_reads_the_columns_that_predict_the_rollout(setup):
    model, tok, contexts, batch = setup
    model.eval()
    with torch.no_grad():
        for role in ("student", "teacher"):
            scores = score_rollout(model, batch, role)
            assert scores.shape == (2, N, len(tok))
            assert torch.allclose(scores, by_hand(model, batch, role), atol=1e-5)
        # Row 1 alone, no padding at all: [its prompt][its rollout] -> the same next-token logits.
        prompt = contexts.student.input_ids[1][contexts.student.attention_mask[1].bool()]
        alone = model(torch.cat([prompt, batch.completion_ids[1]])[None]).logits[0]
        expected = alone[len(prompt) - 1 : len(prompt) - 1 + N]
        assert torch.allclose(score_rollout(model, batch, "student")[1], expected, atol=1e-4)
        # hidden=True: the last hidden states, whose projection is the logits
        hidden = score_rollout(model, batch, "student", hidden=True)
        weight = model.get_output_embeddings().weight
        assert hidden.shape == (2, N, 32)
        assert torch.allclose(hidden @ weight.T, score_rollout(model, batch, "student"), atol=1e-5)
    with pytest.raises(ValueError, match="role"):
        score_rollout(model, batch, "reference")


def test_teacher_scores_use_the_teachers_weights_and_restore_the_model(setup, embedded_tokenizer):
    model, tok, _, batch = setup
    with torch.no_grad():
        base = by_hand(base_model(tok).eval(), batch, "teacher")  # the base model, built separately
        model.eval()
        current = by_hand(model, batch, "teacher")
    model.train()
    fixed = teacher_scores(model, batch, "fixed")
    assert not fixed.requires_grad and model.training  # no graph; train mode restored
    assert torch.allclose(fixed, base, atol=1e-5)
    assert (fixed - current).abs().max() > 1e-3  # the adapters matter ...
    assert torch.allclose(teacher_scores(model, batch, "dynamic"), current, atol=1e-5)  # ... and are back on
    model.eval()
    teacher_scores(model, batch, "fixed")
    assert not model.training  # eval mode stays eval
    # ema: the EMA weights are scored, the model keeps its own
    ema = EMATeacher(model, decay=0.5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(3.0)
    assert torch.allclose(teacher_scores(model, batch, ema), current, atol=1e-5)
    assert (teacher_scores(model, batch, "dynamic") - current).abs().max() > 1e-3


def check_against(model, batch, result, formula):
    """The step's scores equal forward passes by hand (student: adapters on; teacher: adapters off), and
    its loss and LoRA gradients equal `formula` written out on those scores."""
    with torch.no_grad():
        model.eval()
        assert torch.allclose(result.student, by_hand(model, batch, "student"), atol=1e-5)
        with model.disable_adapter():
            assert torch.allclose(result.teacher, by_hand(model, batch, "teacher"), atol=1e-5)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    expected = formula(result.student, result.teacher)
    want = torch.autograd.grad(expected, params, retain_graph=True)
    got = torch.autograd.grad(result.loss, params)
    assert result.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert max((g - w).abs().max().item() for g, w in zip(got, want)) < 1e-6
    assert max(g.abs().max().item() for g in got) > 1e-5  # gradients reach the adapters


@pytest.mark.parametrize("clip", [None, 0.05])
def test_full_loss_and_gradients_equal_forward_kl_written_out(setup, clip):
    model, _, _, batch = setup
    result = opsd_loss(model, batch, DivergenceSpec(temperature=0.7, clip=clip))
    assert result.student.shape == result.teacher.shape == (2, N, model.get_output_embeddings().weight.shape[0])
    assert result.student.requires_grad and not result.teacher.requires_grad and not result.fused
    assert result.batch is batch and result.teacher_seconds > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.loss = None
    check_against(model, batch, result, lambda s, t: forward_kl(s, t, batch.loss_mask, tau=0.7, clip=clip))


def test_sampled_token_loss_written_out(setup):
    model, _, _, batch = setup
    result = opsd_loss(model, batch, DivergenceSpec(loss_type="sampled_token", temperature=0.7, clip=0.05))  # clip: not used

    def sampled_token(student, teacher):
        def pick(logits):
            return torch.log_softmax(logits.double() / 0.7, -1).gather(-1, batch.completion_ids[..., None])[..., 0]

        logp_s, logp_t = pick(student), pick(teacher)
        return -((logp_t - logp_s).detach() * logp_s)[batch.loss_mask].mean()

    check_against(model, batch, result, sampled_token)


def test_fused_hidden_path_equals_the_full_logits_path(setup):
    model, _, _, batch = setup
    jsd = DivergenceSpec(temperature=0.7, beta=0.5)
    plain = opsd_loss(model, batch, jsd)
    plain.loss.backward()
    plain_grads = lora_grads(model)
    model.zero_grad()
    fused = opsd_loss(model, batch, jsd, path=LossPath(chunk_size=3, fused_hidden=True))
    fused.loss.backward()
    assert fused.fused and fused.student.shape == (2, N, 32)
    assert fused.loss.item() == pytest.approx(plain.loss.item(), abs=1e-6)
    assert max_diff(plain_grads, lora_grads(model)) < 1e-6
    # sampled_token never takes the fused path (it needs the sampled tokens' log-probabilities)
    sampled = DivergenceSpec(loss_type="sampled_token")
    assert not opsd_loss(model, batch, sampled, path=LossPath(fused_hidden=True)).fused


def test_non_finite_scores_raise_naming_the_role(setup):
    model, _, _, batch = setup
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, a, out: out * float("nan") if torch.is_grad_enabled() else out)
    with pytest.raises(NonFiniteScoresError, match="the student logits contain NaN/inf"):
        opsd_loss(model, batch)
    hook.remove()
    hook = head.register_forward_hook(lambda m, a, out: out * float("nan") if not torch.is_grad_enabled() else out)
    with pytest.raises(NonFiniteScoresError, match="the teacher logits contain NaN/inf"):
        opsd_loss(model, batch)
    hook.remove()
    with pytest.raises(ValueError, match="loss_type"):
        DivergenceSpec(loss_type="kl")


def test_chunked_path_and_ema_teacher_through_opsd_loss(setup):
    model, _, _, batch = setup
    spec = DivergenceSpec(temperature=0.7, clip=0.05, teacher_top_k=5)
    plain = opsd_loss(model, batch, spec)
    plain.loss.backward()
    plain_grads = lora_grads(model)
    model.zero_grad()
    chunked = opsd_loss(model, batch, spec, path=LossPath(chunk_size=2))
    chunked.loss.backward()
    assert not chunked.fused and chunked.loss.item() == pytest.approx(plain.loss.item(), abs=1e-7)
    assert max_diff(plain_grads, lora_grads(model)) < 1e-7
    model.zero_grad()
    # an EMATeacher as the teacher: its weights score the teacher pass, the student keeps its own
    ema = EMATeacher(model, decay=0.5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(2.0)
    result = opsd_loss(model, batch, spec, ema)
    assert torch.allclose(result.teacher, teacher_scores(model, batch, ema))
    assert (result.teacher - teacher_scores(model, batch, "dynamic")).abs().max() > 1e-3
    with pytest.raises(ValueError, match="needs an EMATeacher"):
        opsd_loss(model, batch, spec, "ema")


@pytest.mark.parametrize("teacher", ["fixed", "ema"])
def test_packed_forwards_around_the_step_gives_the_reference_values(setup, teacher):
    """The CPU fast path is switched around opsd_loss: each forward (teacher, student) packs the weights it
    runs with, so the loss and LoRA gradients are the reference path's up to float32 rounding, also under
    no_grad with an EMA teacher (whose weights must not leak into the student pass)."""
    model, _, _, batch = setup
    ema = EMATeacher(model, decay=0.5) if teacher == "ema" else "fixed"
    if teacher == "ema":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(2.0)
    spec = DivergenceSpec(temperature=0.7, clip=0.05)
    runs = {}
    for fast in (False, True):
        model.zero_grad()
        with packed_forwards(model, enabled=fast):
            result = opsd_loss(model, batch, spec, ema)
        result.loss.backward()  # after the block, as the Trainer's backward
        with packed_forwards(model, enabled=fast), torch.no_grad():  # (the EMA swap would bump the versions)
            no_grad_loss = opsd_loss(model, batch, spec, ema).loss.item()
        runs[fast] = (result.loss.item(), no_grad_loss, lora_grads(model))
    assert "forward" not in model.__dict__  # the model's own forward is back
    assert runs[True][0] == pytest.approx(runs[False][0], abs=1e-6)
    assert runs[True][1] == pytest.approx(runs[False][1], abs=1e-6)
    assert runs[True][1] == pytest.approx(runs[True][0], abs=1e-6)
    assert max_diff(runs[True][2], runs[False][2]) < 1e-5
