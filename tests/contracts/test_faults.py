"""Crash safety: what a kill leaves behind is read, resumed and evaluated correctly.

Leftovers built by hand (a checkpoint folder a kill cut, a JSON line cut in half) are tested with their
readers in tests/runs/test_checkpoints.py, tests/runs/test_eval_results.py, tests/runs/test_atomic_io.py and
tests/runs/test_file_integrity.py; the fast test here has a resume (`RunDirectoryCallback`) cut the logs back to
its checkpoint.

`test_sigkill_during_training_and_saves_resumes_to_the_same_run` starts a real CPU training run in a
subprocess (a tiny random Qwen3: ~1.5 minutes on 2 cores in all), SIGKILLs it at several seeded
points (between steps, while a log line or a checkpoint is being written), restarts the same command each
time, and requires the finished run to equal an uninterrupted one: step count, each step logged once,
per-step losses and the final LoRA weights.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from opsd.runs.atomic_io import append_jsonl, read_jsonl
from opsd.runs.checkpoints import checkpoint_problem, checkpoint_steps
from opsd.runs.layout import read_metrics, read_rollouts
from opsd.runs.runlog import RunDirectoryCallback

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fault_worker import PHASES, SAVE_PHASES

# ------------------------------------------------------------------------------------------ by hand


def test_resume_cuts_metrics_and_rollouts_back_to_the_checkpoint(tmp_path):
    from types import SimpleNamespace

    from opsd.config import OPSDConfig

    for name in ("metrics.jsonl", "rollouts.jsonl"):
        for step in (1, 2, 3):
            append_jsonl(tmp_path / name, {"step": step})
        with open(tmp_path / name, "a") as f:
            f.write('{"step": 4')
    args = OPSDConfig(output_dir=str(tmp_path), use_lora=True, report_to="none")
    callback = RunDirectoryCallback(extra={"run_kind": "opsd"})
    callback.on_train_begin(args, SimpleNamespace(is_world_process_zero=True, global_step=2), None)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert [r["step"] for r in read_rollouts(tmp_path)] == [1, 2]
    assert "kind: train" in (tmp_path / "config.yaml").read_text()
    callback.on_train_begin(args, SimpleNamespace(is_world_process_zero=True, global_step=0), None)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "rollouts.jsonl").exists()


# ------------------------------------------------------------------------------------------ process level

FAULT_SEED = int(os.environ.get("OPSD_FAULT_SEED", "0"))
MAX_STEPS, SAVE_STEPS = 6, 2
RUN_ARGS = [
    f"max_steps={MAX_STEPS}", f"save_steps={SAVE_STEPS}", "save_total_limit=null", "logging_steps=1",
    "per_device_train_batch_size=2", "max_completion_length=8", "max_length=256", "dataset_size=16",
    "lora_r=4", "lora_alpha=8", "learning_rate=1e-2", "log_rollouts_every=1", "num_logged_rollouts=1",
    "temperature=1.0", "seed=11", "report_to=none",
]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Qwen3 (1 layer, width 32) with the embedded model's tokenizer, saved to a folder."""
    from transformers import AutoTokenizer

    from opsd.models import embedded_model_dir, tiny_qwen3

    folder = tmp_path_factory.mktemp("tiny-qwen3")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    model = tiny_qwen3(vocab_size=len(tokenizer), hidden_size=32, num_layers=1, intermediate_size=64,
                       max_position_embeddings=512, seed=0,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                       pad_token_id=tokenizer.eos_token_id)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def kill_plan(seed: int, n: int = 4) -> list[tuple[str, int]]:
    """`n` distinct kill points, in the order the run meets them: between steps, during log writes and
    during checkpoint saves (at least one of each kind), chosen by `seed`."""
    rng = random.Random(seed)
    between = [(p, s) for s in range(2, MAX_STEPS + 1) for p in ("rollout-cut", "step", "metrics-cut", "logged")]
    saves = [(p, s) for s in range(SAVE_STEPS, MAX_STEPS + 1, SAVE_STEPS) for p in SAVE_PHASES]
    chosen = {rng.choice(between), rng.choice(saves)}
    while len(chosen) < n:
        chosen.add(rng.choice(between + saves))
    return sorted(chosen, key=lambda ps: (ps[1], PHASES.index(ps[0])))


def run_cli(model_dir: Path, out: Path, kill: tuple[str, int] | None = None, timeout: int = 300):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")
    env.pop("OPSD_FAULT_KILL", None)
    if kill:
        env["OPSD_FAULT_KILL"] = f"{kill[0]}:{kill[1]}"
    cmd = [sys.executable, str(REPO / "tests" / "fault_worker.py"), "train", "--config", "cpu-tiny",
           f"model_name={model_dir}", f"output_dir={out}", *RUN_ARGS]
    return subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def lora_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter_model.safetensors"))


def test_kill_plan_covers_steps_and_saves():
    for seed in range(20):
        plan = kill_plan(seed)
        assert len(plan) == 4 and any(p in SAVE_PHASES for p, _ in plan) and any(p not in SAVE_PHASES for p, _ in plan)
        assert plan == sorted(plan, key=lambda ps: (ps[1], PHASES.index(ps[0])))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model_dir):
    """The uninterrupted run every killed run must equal."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = run_cli(tiny_model_dir, out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("seed", [FAULT_SEED, FAULT_SEED + 1])
def test_sigkill_during_training_and_saves_resumes_to_the_same_run(tmp_path, tiny_model_dir, reference_run, seed):
    reference = reference_run
    run = tmp_path / "killed"
    plan = kill_plan(seed)
    logs = []
    for phase, step in plan:
        proc = run_cli(tiny_model_dir, run, kill=(phase, step))
        logs.append(proc.stderr)
        assert proc.returncode == -signal.SIGKILL, (phase, step, proc.returncode, proc.stderr[-4000:])
        if phase in SAVE_PHASES:  # the kill left a half-written checkpoint behind
            assert checkpoint_problem(run / f"checkpoint-{step}", ("opsd_state.pt",)) is not None, (phase, step)
    proc = run_cli(tiny_model_dir, run)
    logs.append(proc.stderr)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    context = f"kill plan {plan} (seed {seed})"

    # every incomplete checkpoint was moved aside, with a warning; the ones left are complete
    saves_killed = sorted({s for p, s in plan if p in SAVE_PHASES})
    moved = sorted({int(p.name.split("-")[1]) for p in (run / "incomplete").glob("checkpoint-*")})
    assert moved == saves_killed, context
    for step in saves_killed:  # ... each with a warning from the restart that found it
        assert any(f"checkpoint-{step} is incomplete" in log and "Moved aside" in log for log in logs), (context, step)
    assert checkpoint_steps(run, complete=True) == checkpoint_steps(run) == list(range(SAVE_STEPS, MAX_STEPS + 1, SAVE_STEPS))

    # the same run: step count, each step logged once, the same losses, the same final LoRA weights
    ref_info, info = (json.loads((d / "run_info.json").read_text()) for d in (reference, run))
    assert info == ref_info, context
    ref_metrics, metrics = read_metrics(reference), read_metrics(run)
    assert [m["step"] for m in metrics] == list(range(1, MAX_STEPS + 1)), context
    for ref, got in zip(ref_metrics, metrics):
        for key in ("loss", "divergence_mean", "rollout_length_mean", "tokens_generated", "grad_norm"):
            assert got[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), (context, got["step"], key)
    rollouts = read_jsonl(run / "rollouts.jsonl")
    assert [r["step"] for r in rollouts] == list(range(1, MAX_STEPS + 1)), context
    assert [r["completion"] for r in rollouts] == [r["completion"] for r in read_jsonl(reference / "rollouts.jsonl")]
    ref_weights, weights = lora_weights(reference), lora_weights(run)
    assert set(weights) == set(ref_weights)
    worst = max((weights[k] - ref_weights[k]).abs().max().item() for k in weights)
    print(f"{context}: final LoRA weights differ by at most {worst:.3g}")
    assert worst <= 1e-6, f"{context}: final LoRA weights differ by up to {worst:.3g}"
    assert any(ref_weights[k].abs().max() > 0 for k in ref_weights if "lora_B" in k)  # the adapters did train
