"""The CPU starting model: a deterministic, cached SFT warm-up of the embedded model."""

import json

import pytest
import torch
from safetensors.torch import load_file

from opsd.baselines import warmstart
from opsd.baselines.warmstart import WarmStartRecipe, build_start_model, sft_batch, start_model_dir
from opsd.data import synthetic_math

TINY = WarmStartRecipe(n_problems=4, steps=2, batch_size=2)


def test_sft_batch_masks_the_prompt_and_padding(embedded_tokenizer):
    data = synthetic_math(2, split="warmup")
    batch = sft_batch(embedded_tokenizer, data["problem"], data["solution"])
    for i, solution in enumerate(data["solution"]):
        labels = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert embedded_tokenizer.decode(labels) == solution + embedded_tokenizer.eos_token
        assert batch["attention_mask"][i].sum() > len(labels)  # the prompt is in the input, not the loss


def test_recipe_key_changes_with_every_field():
    assert TINY.key() == WarmStartRecipe(n_problems=4, steps=2, batch_size=2).key()
    assert TINY.key() != WarmStartRecipe(n_problems=4, steps=3, batch_size=2).key()
    assert TINY.key() != WarmStartRecipe(n_problems=4, steps=2, batch_size=2, seed=1).key()


@pytest.mark.slow
def test_build_is_deterministic_and_changes_the_model(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    losses_a = build_start_model(TINY, a)
    losses_b = build_start_model(TINY, b)
    assert losses_a == losses_b and len(losses_a) == 2
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and not any("lora" in k for k in wa)  # adapters merged away
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    from opsd.models import embedded_model_dir

    base = load_file(embedded_model_dir() / "model.safetensors")
    changed = [k for k in wa if "q_proj" in k and not torch.equal(wa[k], base[k])]
    assert changed  # the warm-up moved the projections
    assert json.loads((a / "opsd_warmstart.json").read_text())["recipe"]["steps"] == 2


@pytest.mark.slow
def test_start_model_dir_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSD_CACHE", str(tmp_path))
    monkeypatch.setattr("opsd.models.cache_root", lambda: tmp_path)
    calls = []
    real = warmstart.build_start_model
    monkeypatch.setattr(warmstart, "build_start_model", lambda r, out: calls.append(r) or real(r, out))
    first = start_model_dir(TINY)
    second = start_model_dir(TINY)
    assert first == second and len(calls) == 1
    assert first.name.endswith(TINY.key()) and (first / "opsd_warmstart.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
