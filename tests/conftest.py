"""Shared fixtures. Everything runs offline on CPU; the embedded model loads from the local cache."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def embedded_tokenizer():
    from opsd.models import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer()
    return tokenizer


@pytest.fixture()
def embedded_model():
    """A fresh copy of the embedded SmolLM2-135M-Instruct (no LoRA) and its tokenizer."""
    from opsd.models import load_model_and_tokenizer

    torch.manual_seed(0)
    return load_model_and_tokenizer()
