"""OPSDTrainer end to end on the embedded model: a real step, run files, resume, errors, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from opsd.config import OPSDConfig, load_config, parse_overrides
from opsd.contexts import PromptTooLongError
from opsd.data import synthetic_math
from opsd.divergence import distillation_loss
from opsd.models import load_model_and_tokenizer
from opsd.runs.atomic_io import read_jsonl
from opsd.runs.layout import read_metrics
from opsd.trainer import NonFiniteLossError, OPSDTrainer

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TINY = {
    "max_steps": 2, "per_device_train_batch_size": 2, "max_completion_length": 6, "save_steps": 1, "logging_steps": 1,
    "log_rollouts_every": 1, "lora_r": 4, "lora_alpha": 8, "learning_rate": 1e-3, "max_length": 256, "dataset_size": 16,
}


def make_trainer(tmp_path, callbacks=None, data=None, model=None, **overrides):
    config = load_config(OPSDConfig, "cpu-tiny", {**TINY, "output_dir": str(tmp_path), **overrides})
    if model is None:
        torch.manual_seed(0)
        model, tok = load_model_and_tokenizer(lora=config.lora_settings())
    else:
        model, tok = model
    data = data if data is not None else synthetic_math(16)
    return OPSDTrainer(model, config, data, tok, callbacks=callbacks)


def test_two_steps_write_a_complete_run_directory(tmp_path):
    trainer = make_trainer(tmp_path)
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert trainer.state.global_step == 2
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, lora_before[n])]
    assert changed, "the optimizer step must change the LoRA weights"
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ["loss", "divergence_mean", "clipped_fraction", "negative_token_fraction", "rollout_length_mean",
                    "tokens_generated", "time_rollout_s", "time_teacher_s", "time_student_s", "grad_norm",
                    "learning_rate", "zero_grad_fraction", "boxed_rate", "student_entropy", "repetition"]:
            assert key in m, key
        assert m["loss"] > 0 and abs(m["loss"] - m["divergence_mean"]) < 1e-4  # clip off: loss = mean D_n
        assert m["count_style"] + m["count_math"] + m["count_other"] == m["num_tokens"] > 0  # every position, once
    assert metrics[1]["tokens_generated"] > metrics[0]["tokens_generated"] > 0
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "checkpoint-2" / "adapter_config.json").exists()
    rollouts = read_jsonl(tmp_path / "rollouts.jsonl")
    assert rollouts and len(rollouts[0]["tokens"]) == len(rollouts[0]["divergence"]) > 0
    assert "token" not in (tmp_path / "config.yaml").read_text().replace("tokens", "").replace("_token", "")


def test_report_to_tensorboard_receives_the_opsd_diagnostics(tmp_path, monkeypatch):
    """report_to goes through transformers' integrations: the diagnostics logged per step (not only the
    loss) land in the TensorBoard event file, with the same values as metrics.jsonl."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator",
        reason="tensorboard is not installed (it is in the dev extra: pip install -e '.[dev]')",
    )
    logs = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logs))  # transformers 5: the writer's directory
    trainer = make_trainer(tmp_path / "run", max_steps=1, report_to=["tensorboard"])
    trainer.train()
    events = [p for p in logs.rglob("events.out.tfevents.*")]
    assert events, "no TensorBoard event file written"
    acc = event_accumulator.EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    metrics = read_metrics(tmp_path / "run")[0]
    for key in ("loss", "divergence_mean", "negative_token_fraction", "rollout_length_mean", "time_rollout_s"):
        assert f"train/{key}" in tags, (key, sorted(tags))
        assert acc.Scalars(f"train/{key}")[0].value == pytest.approx(metrics[key], rel=1e-5)


def test_loss_is_the_objective_on_the_rollout(tmp_path):
    """The trainer's loss equals distillation_loss computed by hand from the same rollout."""
    trainer = make_trainer(tmp_path, clip=0.05, clip_mode="pointwise")
    captured = {}
    original = trainer.rollout_backend.generate

    def spy(*args, **kwargs):
        captured["rollout"] = original(*args, **kwargs)
        return captured["rollout"]

    trainer.rollout_backend.generate = spy
    batch = trainer.data_collator([synthetic_math(16)[i] | {"row_id": i} for i in range(2)])
    model = trainer.model
    loss = trainer.compute_loss(model, batch)
    from opsd.contexts import build_dual_contexts, join_rollout
    from opsd.teacher import teacher_context

    ctx = build_dual_contexts(trainer.tokenizer, batch["problem"], batch["solution"], max_prompt_length=250,
                              profile=trainer.args.prompt_profile)
    r = captured["rollout"]
    joined = join_rollout(ctx, r.completion_ids, r.completion_mask)
    with torch.no_grad():
        s = joined.rollout_slice(model(**joined.student_inputs()).logits, "student")
        with teacher_context(model, "fixed"):
            t = joined.rollout_slice(model(**joined.teacher_inputs()).logits, "teacher")
    # the loss temperature defaults to the sampling temperature (cpu-tiny: 0.7)
    assert trainer.args.effective_loss_temperature == trainer.args.temperature == 0.7
    expected = distillation_loss(s, t, joined.loss_mask, beta=0.0, temperature=0.7, clip=0.05, clip_mode="pointwise")
    assert torch.allclose(loss.detach(), expected, atol=1e-5)


def test_efficient_paths_and_loss_types_on_one_rollout(tmp_path):
    """Chunked and fused-from-hidden objectives equal the plain one inside the trainer; the sampled-token
    and EMA/dynamic variants run on the same rollout."""
    batch = None
    losses = {}
    fixed_rollout = None
    for name, extra in [("plain", {}), ("chunked", {"divergence_chunk_size": 3}),
                        ("fused", {"fused_hidden_loss": True, "divergence_chunk_size": 4}),
                        ("sampled", {"loss_type": "sampled_token"}),
                        ("ema", {"teacher_mode": "ema"}), ("dynamic", {"teacher_mode": "dynamic"})]:
        trainer = make_trainer(tmp_path / name, **extra)
        if fixed_rollout is None:
            batch = trainer.data_collator([synthetic_math(16)[i] | {"row_id": i} for i in range(2)])
            from opsd.contexts import build_dual_contexts
            ctx = build_dual_contexts(trainer.tokenizer, batch["problem"], batch["solution"])
            fixed_rollout = trainer.rollout_backend.generate(ctx.student.input_ids, ctx.student.attention_mask,
                                                             trainer.sampling)
        trainer.rollout_backend.generate = lambda *a, _rollout=fixed_rollout, **k: _rollout
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = [p.grad.norm() for p in trainer.model.parameters() if p.requires_grad and p.grad is not None]
        assert grads and all(torch.isfinite(g) for g in grads)
        losses[name] = loss.item()
    assert losses["chunked"] == pytest.approx(losses["plain"], rel=1e-4)
    assert losses["fused"] == pytest.approx(losses["plain"], rel=1e-4)
    # LoRA B starts at zero, so before any step EMA and dynamic teachers equal the fixed (base) teacher
    assert losses["ema"] == pytest.approx(losses["plain"], rel=1e-5)
    assert losses["dynamic"] == pytest.approx(losses["plain"], rel=1e-5)


class StopAfter(TrainerCallback):
    """Simulates an interrupted run: raise after the checkpoint of step `step` was written."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_resume_continues_steps_data_order_ema_and_metrics(tmp_path):
    settings = {"max_steps": 4, "save_steps": 2, "teacher_mode": "ema", "ema_decay": 0.5, "seed": 3}
    full = make_trainer(tmp_path / "full", **settings)
    full.train()
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path / "cut", callbacks=[StopAfter(2)], **settings).train()
    assert (tmp_path / "cut" / "checkpoint-2").exists()
    resumed = make_trainer(tmp_path / "cut", **settings)
    resumed.train(resume_from_checkpoint="auto")
    assert resumed.state.global_step == 4
    assert resumed.seen_row_ids == full.seen_row_ids[2:]  # the data order continues
    steps = [m["step"] for m in read_metrics(tmp_path / "cut")]
    assert steps == [1, 2, 3, 4]
    assert read_metrics(tmp_path / "cut")[-1]["tokens_generated"] > read_metrics(tmp_path / "cut")[1]["tokens_generated"]
    for name, value in full.ema.shadow.items():  # EMA state restored then updated identically
        assert torch.allclose(value, resumed.ema.shadow[name], atol=1e-6), name
    again = make_trainer(tmp_path / "cut", **settings)  # a finished run is not trained past max_steps
    again.train(resume_from_checkpoint="auto")
    assert again.state.global_step == 4 and [m["step"] for m in read_metrics(tmp_path / "cut")] == [1, 2, 3, 4]
    trained = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    for n, p in again.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, trained[n]), n


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="needs use_lora=True"):
        load_config(OPSDConfig, "cpu-tiny", {"use_lora": False, "output_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="unknown override key.*'learning_rat'.*did you mean 'learning_rate'"):
        load_config(OPSDConfig, "cpu-tiny", parse_overrides(["learning_rat=1"]))
    base = load_model_and_tokenizer()
    with pytest.raises(ValueError, match="LoRA adapters"):
        config = load_config(OPSDConfig, "cpu-tiny", {**TINY, "output_dir": str(tmp_path)})
        OPSDTrainer(base[0], config, synthetic_math(4), base[1])
    bad = synthetic_math(4).remove_columns(["solution"])
    with pytest.raises(ValueError, match="solution"):
        make_trainer(tmp_path, data=bad)


def test_overlong_prompt_is_an_error_naming_the_row(tmp_path):
    data = synthetic_math(4)
    data = data.map(lambda row, i: {"problem": row["problem"] + " pad" * (400 if i == 1 else 0)}, with_indices=True)
    trainer = make_trainer(tmp_path, data=data, per_device_train_batch_size=4, max_steps=1)
    with pytest.raises(PromptTooLongError, match="row 1"):
        trainer.train()


def test_nan_logits_stop_with_step_and_rows_and_keep_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=3)
    head = trainer.model.get_output_embeddings()

    def poison(module, args, output):
        if trainer.state.global_step >= 1 and module.training is True and torch.is_grad_enabled():
            return output * float("nan")
        return output

    head.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match=r"step 2: .*student logits.*dataset rows .*checkpoint-1"):
        trainer.train()
    assert (tmp_path / "checkpoint-1").exists() and not (tmp_path / "checkpoint-2").exists()


def test_two_process_run(tmp_path):
    """2 CPU ranks (gloo) on a tiny random Qwen3: both train, gradients are synchronised, one checkpoint."""
    # `accelerate launch --cpu --num_processes 2` was seen to start one process; torchrun with
    # ACCELERATE_USE_CPU starts two real gloo ranks (the same launcher train.ipynb uses for CPU configs).
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           str(REPO / "tests" / "dist_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert all(r["num_processes"] == 2 and r["distributed_type"].endswith("MULTI_CPU") for r in reports)
    assert [r["rank"] for r in reports] == [0, 1]
    assert reports[0]["seen_rows"] != reports[1]["seen_rows"]  # different data per rank ...
    assert reports[0]["weights_changed"] and reports[1]["weights_changed"]
    assert reports[0]["checksum"] == pytest.approx(reports[1]["checksum"], abs=0, rel=1e-7)  # ... same weights
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]


def test_train_command_for_cpu_and_gpu_configs():
    from opsd.runs.launch import train_command

    cmd, env = train_command("cpu-tiny", {"max_steps": 2, "clip": None}, 2, "cpu-ddp")
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node"] and env["ACCELERATE_USE_CPU"] == "true"
    assert cmd[-2:] == ["max_steps=2", "clip=null"]
    cmd, env = train_command("qwen3-1.7b-4xh100", {}, 4)
    assert "accelerate.commands.launch" in cmd and cmd[cmd.index("--config_file") + 1].endswith("zero2-offload.yaml")
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    with pytest.raises(ValueError, match="unknown accelerate config"):
        train_command("cpu-tiny", {}, 2, "nope")


def test_config_builds_the_objective_once_from_its_fields(tmp_path):
    """OPSDConfig.objective: one DivergenceSpec of the config's objective fields, checked when the config is
    made; not a field, so not in config.yaml; bad values name the key before anything loads."""
    from opsd.config import OPSDConfig, load_config
    from opsd.divergence import DivergenceSpec
    from opsd.validation import InputError

    config = load_config(OPSDConfig, "cpu-tiny", {"output_dir": str(tmp_path), "beta": 0.5, "clip": 0.05,
                                                  "clip_mode": "token", "teacher_top_k": 7, "objective_dtype": "bfloat16"})
    assert config.objective == DivergenceSpec(beta=0.5, temperature=config.temperature, teacher_top_k=7, clip=0.05,
                                              clip_mode="token", loss_type="full", dtype="bfloat16")
    assert OPSDConfig(output_dir=str(tmp_path), loss_temperature=0.9).objective.temperature == 0.9
    assert "objective" not in config.to_dict() and "objective=" not in repr(config)
    assert config.to_dict()["objective_dtype"] == "bfloat16"
    for bad, match in (({"beta": 1.5}, r"beta=1.5 is out of range"), ({"clip_mode": "none"}, r"clip_mode='none'"),
                       ({"objective_dtype": "float16"}, r"dtype='float16'.*objective_dtype"),
                       ({"loss_temperature": -1.0}, r"temperature=-1.0 is out of range.*loss_temperature")):
        with pytest.raises(InputError, match=match):
            OPSDConfig(output_dir=str(tmp_path), **bad)


def test_teacher_context_reaches_the_teacher_prompt_and_the_watch_stops_the_run(tmp_path):
    """`teacher_context: none` trains with a teacher prompt without reference block (logged rollouts);
    a watch with bounds nothing meets (boxed rate must not drop at all) stops at baseline + patience."""
    data = synthetic_math(16)
    trainer = make_trainer(tmp_path, data=data, teacher_context="none", max_steps=4, collapse_watch="stop",
                           collapse_bounds={"student_entropy": ["factor", 1.0000001]}, collapse_baseline_steps=1,
                           collapse_patience=1)
    trainer.train()
    rollouts = read_jsonl(tmp_path / "rollouts.jsonl")
    assert rollouts and all("Reference Solution" not in r["teacher_prompt"] for r in rollouts)
    assert all(r["teacher_prompt"] != r["prompt"] for r in rollouts)   # the reworded teacher prompt remains
    watch = read_jsonl(tmp_path / "collapse_watch.jsonl")
    assert watch and watch[0]["step"] == 2 and watch[0]["action"] == "stop" and trainer.state.global_step == 2
