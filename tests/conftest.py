"""Shared fixtures. Everything runs offline on CPU; the embedded model loads from the local cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
# The suite checks the packed CPU path everywhere it can apply, instead of where this machine's kernel
# timings would put it (opsd.packed_linear.kernel_plan; tests/test_packed_linear.py tests the measured plan).
os.environ.setdefault("OPSD_KERNEL_PLAN", "packed")
# `make test` runs the suite in one pytest-xdist worker per core: one thread each, for torch here and for
# what a test starts (notebook kernels, training subprocesses), so that workers do not oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """Longest first: notebook executions, then the other `slow` tests, then the rest (collection order
    within each), so that xdist's workers start on the long tests together instead of ending on one."""
    def rank(item):
        return 0 if item.get_closest_marker("notebook") else 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)


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


@pytest.fixture()
def full_runs(tmp_path) -> Path:
    """Every run of the campaign (the 11 runs) written by hand, evaluated at steps 0, 2, 4 (``fake_runs``)."""
    from fake_runs import make_full_runs

    return make_full_runs(tmp_path)


@pytest.fixture(autouse=True)
def _close_figures():
    """Close the figures a test drew (when it used pyplot at all)."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
