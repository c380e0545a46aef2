"""Tests for opsd.teacher: fixed (adapters off), EMA (swap + restore), dynamic teachers."""

import pytest
import torch

from opsd.models import LoRASettings, load_model_and_tokenizer, tiny_qwen3
from opsd.teacher import TEACHER_MODES, EMATeacher, adapters_disabled, has_lora_adapters, teacher_context

IDS = torch.tensor([[1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198, 34, 2]])


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def _train_steps(model, steps=3, lr=1e-2, ids=IDS):
    """A few AdamW steps of next-token loss on the trainable (LoRA) parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


@pytest.fixture(scope="module")
def trained_lora():
    """Embedded model with LoRA (r=8): base logits, then 3 optimizer steps on the adapters."""
    model, _ = load_model_and_tokenizer(lora=LoRASettings(r=8, alpha=16))
    model.eval()  # dropout is 0 anyway; eval for determinism
    base = _logits(model)  # LoRA B starts at zero, so these are the base model's logits
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    _train_steps(model)
    return model, base, lora_before


def _tiny(vocab=128):
    model = tiny_qwen3(vocab_size=vocab, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
                       intermediate_size=32)
    model.model.embed_tokens.weight.requires_grad_(False)  # a frozen parameter the EMA must ignore
    return model


# ------------------------------------------------------------------ fixed


def test_fixed_teacher_is_exactly_the_base_model(trained_lora):
    model, base, lora_before = trained_lora
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, lora_before[n])]
    assert changed, "the optimizer steps should have changed the LoRA weights"
    student = _logits(model)
    assert not torch.allclose(student, base, atol=1e-3), "training should have moved the student"
    with torch.no_grad(), teacher_context(model, "fixed") as teacher:
        assert teacher is model
        fixed = model(IDS).logits
    assert torch.equal(fixed, base)
    assert torch.equal(_logits(model), student)  # adapters back on afterwards


def test_fixed_teacher_restores_adapters_after_exception(trained_lora):
    model, base, _ = trained_lora
    student = _logits(model)
    with pytest.raises(RuntimeError, match="boom"), teacher_context(model, "fixed"):
        assert torch.equal(_logits(model), base)
        raise RuntimeError("boom")
    assert torch.equal(_logits(model), student)


def test_fixed_teacher_needs_lora():
    model = _tiny()
    assert not has_lora_adapters(model)
    with pytest.raises(ValueError, match="needs a model with LoRA adapters") as err, teacher_context(model, "fixed"):
        pass
    assert "teacher_mode='dynamic'" in str(err.value)


def test_fixed_teacher_with_injected_adapters_without_peft_wrapper():
    from peft import inject_adapter_in_model

    model = _tiny()
    ids = torch.tensor([[3, 5, 7, 11]])
    base = _logits(model, ids)
    model = inject_adapter_in_model(LoRASettings(r=2, alpha=4, target_modules=("q_proj", "down_proj")).to_peft(), model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)
    assert not torch.allclose(_logits(model, ids), base)
    with adapters_disabled(model):
        assert torch.equal(_logits(model, ids), base)
    assert not torch.allclose(_logits(model, ids), base)


# ------------------------------------------------------------------ EMA


def test_ema_update_matches_hand_computation():
    model = _tiny()
    decay = 0.9
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    p0 = {n: p.detach().clone() for n, p in trainable.items()}
    ema = EMATeacher(model, decay=decay)
    assert ema.shadow.keys() == trainable.keys() and "model.embed_tokens.weight" not in ema.shadow
    torch.manual_seed(1)
    p1 = {n: torch.randn_like(p) for n, p in p0.items()}
    p2 = {n: torch.randn_like(p) for n, p in p0.items()}
    for new in (p1, p2):
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(new[n])
        ema.update(model)
    for n in trainable:
        expected = decay**2 * p0[n] + decay * (1 - decay) * p1[n] + (1 - decay) * p2[n]
        torch.testing.assert_close(ema.shadow[n], expected, rtol=1e-6, atol=1e-6)
    assert ema.num_updates == 2


def test_ema_swap_in_and_restore_even_on_exception():
    model = _tiny()
    ids = torch.tensor([[3, 5, 7, 11]])
    ema = EMATeacher(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    own = {n: p.detach().clone() for n, p in params.items()}
    student = _logits(model, ids)
    ema.update(model)  # shadow = midpoint between the old and the new weights

    with teacher_context(model, "ema", ema=ema):  # outside no_grad on purpose: must not touch autograd
        for n, p in params.items():
            assert torch.equal(p, ema.shadow[n]) and p.is_leaf and p.requires_grad and p.grad is None
        ema_logits = _logits(model, ids)
    assert not torch.allclose(ema_logits, student)
    for n, p in params.items():
        assert torch.equal(p, own[n]) and p is dict(model.named_parameters())[n]

    with pytest.raises(RuntimeError, match="inside the teacher pass"), teacher_context(model, "ema", ema=ema):
        raise RuntimeError("inside the teacher pass")
    for n, p in params.items():
        assert torch.equal(p, own[n])
    assert torch.equal(_logits(model, ids), student)


def test_ema_on_embedded_lora_and_state_dict_roundtrip(trained_lora):
    model, base, lora_before = trained_lora
    student = _logits(model)
    ema = EMATeacher(model, decay=0.5)
    assert all("lora_" in n for n in ema.shadow)
    ema.shadow = {n: lora_before[n].clone() for n in ema.shadow}  # pretend the EMA never moved
    with torch.no_grad(), teacher_context(model, "ema", ema=ema):
        assert torch.equal(model(IDS).logits, base)  # the initial adapters (B = 0) give the base model
    assert torch.equal(_logits(model), student)

    state = ema.state_dict()
    other = EMATeacher(model, decay=0.9)
    other.load_state_dict(state)
    assert other.decay == 0.5 and other.num_updates == ema.num_updates
    assert all(torch.equal(other.shadow[n], ema.shadow[n]) for n in ema.shadow)


def test_ema_errors():
    with pytest.raises(ValueError, match="decay"):
        EMATeacher(_tiny(), decay=1.5)
    frozen = _tiny().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        EMATeacher(frozen)
    with pytest.raises(ValueError, match="needs an EMATeacher"), teacher_context(_tiny(), "ema"):
        pass


# ------------------------------------------------------------------ dynamic, unknown


def test_dynamic_teacher_changes_nothing():
    model = _tiny()
    ids = torch.tensor([[3, 5, 7, 11]])
    before = _logits(model, ids)
    with teacher_context(model, "dynamic") as teacher:
        assert teacher is model
        assert torch.equal(_logits(model, ids), before)
    assert torch.equal(_logits(model, ids), before)


def test_unknown_mode_names_valid_ones():
    with pytest.raises(ValueError) as err, teacher_context(_tiny(), "frozen"):
        pass
    for mode in TEACHER_MODES:
        assert mode in str(err.value)
