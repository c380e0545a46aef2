"""opsd.exercises: every checker accepts a right answer, explains a wrong one and survives a raising one."""

import math

import pytest
import torch
import torch.nn.functional as F

from opsd import exercises as ex
from opsd.contexts import JoinedBatch
from opsd.divergence import distillation_loss, token_divergence, token_logprobs
from opsd.eval.stats import wilson_interval
from opsd.rollout import completion_mask_from_eos

# The worked case of notebook 04.
P_TEACHER = (0.70, 0.10, 0.10, 0.10)
P_STUDENT = (0.30, 0.50, 0.10, 0.10)
# Forward-KL summands l_v = p_T(v)(log p_T(v) - log p_S(v)): l_0 = 0.7 ln(7/3) = +0.5931, l_1 = 0.1 ln(1/5)
# = -0.1609, l_2 = l_3 = 0. For 0 < c < l_0 only l_0 is above c, so D(c) = c + l_1 + 0 + 0 = c - 0.1 ln 5,
# zero at c* = 0.1 ln 5.
C_STAR = 0.1 * math.log(5)  # 0.16094379...


def _boom(*args):
    raise RuntimeError("boom")


def verdict(capsys, ok: bool, result: bool, *parts: str) -> str:
    """The one verdict line; asserts the result, the prefix and that every part is in it."""
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    assert result is ok, out
    assert out.startswith("✓ right:" if ok else "✗ not yet:"), out
    for part in parts:
        assert part in out, out
    return out


def test_teachable_count(capsys):
    student, teacher = [True, False, False, True, False], [True, True, False, False, True]
    verdict(capsys, True, ex.check_teachable_count(2, student, teacher), "2 of 5")
    verdict(capsys, False, ex.check_teachable_count(3, student, teacher), "all the teacher solves")
    verdict(capsys, False, ex.check_teachable_count(1, student, teacher), "reversed")
    verdict(capsys, False, ex.check_teachable_count("two", student, teacher), "integer")


def test_wilson_interval(capsys):
    for k, n in [(0, 64), (30, 64), (60, 64), (89, 200), (200, 200), (1, 1), (7, 13)]:
        assert ex._wilson(k, n) == pytest.approx(wilson_interval(k, n), abs=1e-12)  # closed form == the kit
    verdict(capsys, True, ex.check_wilson_interval(wilson_interval), "6 cases")

    def wald(k, n):
        p = k / n
        half = 1.959963984540054 * math.sqrt(p * (1 - p) / n)
        return p - half, p + half

    verdict(capsys, False, ex.check_wilson_interval(wald), "Wald", "k=0, n=64")
    verdict(capsys, False, ex.check_wilson_interval(lambda k, n: wilson_interval(k, n, z=1.96)), "z = 1.95996")
    verdict(capsys, False, ex.check_wilson_interval(lambda k, n: k / n), "pair (lo, hi)")
    verdict(capsys, False, ex.check_wilson_interval(lambda k, n: (math.nan, math.nan)), "got (nan, nan)")
    verdict(capsys, False, ex.check_wilson_interval(_boom), "your function raised RuntimeError: boom")


def _batch(student_width=3, teacher_width=5, n=4) -> JoinedBatch:
    def role(width):
        ids = torch.arange(2 * (width + n)).view(2, width + n)
        return ids, torch.ones_like(ids), ids.clone()

    completion = torch.arange(2 * n).view(2, n)
    return JoinedBatch(*role(student_width), *role(teacher_width), completion, torch.ones(2, n, dtype=torch.bool),
                       student_width, teacher_width)


def test_teacher_column(capsys):
    batch = _batch()
    logits = torch.randn(2, batch.teacher_input_ids.shape[1], 3)
    sliced = batch.rollout_slice(logits, "teacher")
    for n in range(batch.completion_length):  # the expected column is the kit's
        assert torch.equal(logits[:, batch.teacher_prompt_width - 1 + n], sliced[:, n])
    verdict(capsys, True, ex.check_teacher_column(lambda b, n: b.teacher_prompt_width - 1 + n, batch))
    verdict(capsys, False, ex.check_teacher_column(lambda b, n: b.teacher_prompt_width + n, batch),
            "off by one", "column j predict token j+1", "n=0", "expected 4, got 5")
    verdict(capsys, False, ex.check_teacher_column(lambda b, n: b.student_prompt_width - 1 + n, batch),
            "student column")
    verdict(capsys, False, ex.check_teacher_column(_boom, batch), "your function raised RuntimeError")


def test_loss_mask(capsys):
    verdict(capsys, True, ex.check_loss_mask(completion_mask_from_eos), "first eos")

    def own(ids, eos):
        is_eos = torch.isin(ids, torch.tensor(eos))
        return (is_eos.long().cumsum(-1) - is_eos.long()) == 0

    verdict(capsys, True, ex.check_loss_mask(own))

    def without_eos(ids, eos):
        return torch.isin(ids, torch.tensor(eos)).long().cumsum(-1) == 0

    verdict(capsys, False, ex.check_loss_mask(without_eos), "keep the first eos", "(eos first)")
    verdict(capsys, False, ex.check_loss_mask(lambda ids, eos: ~torch.isin(ids, torch.tensor(eos))),
            "do not drop every eos")
    verdict(capsys, False, ex.check_loss_mask(lambda ids, eos: own(ids, eos[:1])), "two different eos ids")
    verdict(capsys, False, ex.check_loss_mask(lambda ids, eos: own(ids, eos).long()), "bool tensor")
    verdict(capsys, False, ex.check_loss_mask(_boom), "your function raised RuntimeError: boom")


def test_token_logprobs(capsys):
    verdict(capsys, True, ex.check_token_logprobs(token_logprobs), "0.7")
    verdict(capsys, False, ex.check_token_logprobs(lambda z, ids, t: token_logprobs(z, ids)),
            "divide the logits by the temperature", "temperature 0.7")
    verdict(capsys, False, ex.check_token_logprobs(lambda z, ids, t: token_logprobs(z, ids, t).exp()),
            "probabilities")
    verdict(capsys, False, ex.check_token_logprobs(lambda z, ids, t: token_logprobs(z, ids, t)[..., None]),
            "shape (2, 3, 1)")
    verdict(capsys, False, ex.check_token_logprobs(_boom), "your function raised RuntimeError")


def test_which_changes(capsys):
    right = {"student": True, "fixed teacher": False, "dynamic teacher": True}
    verdict(capsys, True, ex.check_which_changes(right), "fixed teacher does")
    verdict(capsys, False, ex.check_which_changes({**right, "fixed teacher": True}),
            "'fixed teacher' is False", "adapters disabled")
    verdict(capsys, False, ex.check_which_changes({**right, "dynamic teacher": False}), "adapters on")
    verdict(capsys, False, ex.check_which_changes({"student": True, "teacher": False}),
            "exactly the keys ['dynamic teacher', 'fixed teacher', 'student']")
    verdict(capsys, False, ex.check_which_changes([True, False, True]), "dict")


def test_reverse_kl_summands(capsys):
    def reverse(s, t):
        return F.softmax(s, -1) * (F.log_softmax(s, -1) - F.log_softmax(t, -1))

    verdict(capsys, True, ex.check_reverse_kl_summands(reverse), "KL(p_S || p_T)")
    verdict(capsys, False, ex.check_reverse_kl_summands(lambda s, t: reverse(t, s)), "forward-KL")
    verdict(capsys, False, ex.check_reverse_kl_summands(lambda s, t: reverse(s, t).sum(-1)), "not their sum")
    verdict(capsys, False, ex.check_reverse_kl_summands(lambda s, t: "no"), "must be a torch.Tensor")
    verdict(capsys, False, ex.check_reverse_kl_summands(_boom), "your function raised RuntimeError")


def test_jsd_bound(capsys):
    # Disjoint support (almost all mass on different tokens): JSD(0.5) -> ln 2.
    s, t = torch.tensor([[30.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), torch.tensor([[0.0, 30.0, 0.0], [0.0, 1.0, 0.0]])
    verdict(capsys, True, ex.check_jsd_bound(s, t, token_divergence(s, t, beta=0.5)), "100.0% of ln 2")
    near = torch.randn(4, 6)
    out = verdict(capsys, False, ex.check_jsd_bound(near, near + 0.1, token_divergence(near, near + 0.1, beta=0.5)),
                  "disjoint support")
    assert "not JSD" not in out  # the kit's beta = 0.5 is the checker's JSD
    verdict(capsys, False, ex.check_jsd_bound(s, t, token_divergence(s, t, beta=0.0)), "not JSD(0.5)")
    verdict(capsys, False, ex.check_jsd_bound(s, t, [0.1]), "values")


def test_negative_clip(capsys):
    ps, pt = torch.tensor(P_STUDENT, dtype=torch.float64), torch.tensor(P_TEACHER, dtype=torch.float64)
    below, above = (token_divergence(ps.log(), pt.log(), clip=c) for c in (C_STAR - 1e-6, C_STAR + 1e-6))
    assert below < 0 < above  # the kit's point-wise clip turns negative at c*
    verdict(capsys, True, ex.check_negative_clip(C_STAR, P_TEACHER, P_STUDENT), "c* = 0.1609")
    verdict(capsys, True, ex.check_negative_clip(0.161, P_TEACHER, P_STUDENT))
    verdict(capsys, False, ex.check_negative_clip(0.5, P_TEACHER, P_STUDENT), "still positive: c* is lower")
    verdict(capsys, False, ex.check_negative_clip(0.05, P_TEACHER, P_STUDENT), "already negative: c* is higher")
    verdict(capsys, False, ex.check_negative_clip("big", P_TEACHER, P_STUDENT), "could not read your answer")


def test_clipped_gradient_sign(capsys):
    # l_0 = 0.593 > 0.05 is clipped (no gradient); l_1..l_3 are not: dD/dz_0 = p_S(0) * (0.1 + 0.1 + 0.1) = 0.09.
    verdict(capsys, True, ex.check_clipped_gradient_sign("positive", P_TEACHER, P_STUDENT, 0.05),
            "+0.0900", "LOWERS", "teacher's favourite token")
    verdict(capsys, True, ex.check_clipped_gradient_sign(" Positive ", P_TEACHER, P_STUDENT, 0.05, index=0))
    verdict(capsys, False, ex.check_clipped_gradient_sign("negative", P_TEACHER, P_STUDENT, 0.05),
            "not negative", "above the clip")
    verdict(capsys, False, ex.check_clipped_gradient_sign("up", P_TEACHER, P_STUDENT, 0.05), "'positive'")
    # Without an active clip on token 0 the gradient is the usual p_S(0) - p_T(0) = -0.4: descent raises it.
    verdict(capsys, True, ex.check_clipped_gradient_sign("negative", P_TEACHER, P_STUDENT, 10.0), "-0.4000",
            "raises")


def test_loss_from_divergence(capsys):
    def right(d, m):
        return (d * m).sum() / m.sum().clamp(min=1)

    student, teacher = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    per_token = token_divergence(student, teacher)
    assert float(right(per_token, mask)) == pytest.approx(float(distillation_loss(student, teacher, mask)))
    verdict(capsys, True, ex.check_loss_from_divergence(right), "whole batch")

    def per_row(d, m):
        return ((d * m).sum(-1) / m.sum(-1).clamp(min=1))[m.any(-1)].mean()

    verdict(capsys, False, ex.check_loss_from_divergence(per_row), "per-row means", "ragged rows")
    verdict(capsys, False, ex.check_loss_from_divergence(lambda d, m: d[m].mean()), "the loss is 0")
    verdict(capsys, False, ex.check_loss_from_divergence(lambda d, m: d.mean()), "masked-out positions")
    verdict(capsys, False, ex.check_loss_from_divergence(lambda d, m: d * m), "scalar")
    verdict(capsys, False, ex.check_loss_from_divergence(_boom), "your function raised RuntimeError")


def test_trainable_count(capsys):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))  # 15 + 8 parameters
    model[0].requires_grad_(False)
    verdict(capsys, True, ex.check_trainable_count(8, model), "8 of 23", "34.78%")
    verdict(capsys, False, ex.check_trainable_count(23, model), "every parameter")
    verdict(capsys, False, ex.check_trainable_count(2, model), "tensors")
    verdict(capsys, False, ex.check_trainable_count(9, model), "requires_grad")


def test_the_notebooks_placeholder_none_is_not_yet_an_answer(capsys):
    assert not ex.check_negative_clip(None, (0.7, 0.1, 0.1, 0.1), (0.3, 0.5, 0.1, 0.1))
    assert "no answer yet" in capsys.readouterr().out
