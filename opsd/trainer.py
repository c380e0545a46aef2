"""`OPSDTrainer`: on-policy self-distillation on `transformers.Trainer` (its configuration: `opsd.config.OPSDConfig`).

One training step (per micro-batch of problems):

    1. contexts   student prompt = problem; teacher prompt = problem + reference solution
    2. rollout    the current student samples ŷ from its own prompt (no grad, KV cache on)
    3. teacher    one forward over [teacher prompt][ŷ] under no_grad, inside the teacher context
                  (fixed: LoRA adapters disabled; ema: EMA weights swapped in; dynamic: as is)
    4. student    one forward over [student prompt][ŷ] with grad
    5. objective  per-token divergence on the rollout positions (opsd.divergence), backward

Steps 3-5 are `opsd.step.opsd_loss`; `compute_loss` adds the bookkeeping (timers, finiteness errors that
name the step and rows, metrics, rollouts.jsonl). Gradient accumulation, checkpointing, mixed precision and
DDP / DeepSpeed come from `Trainer` and accelerate; `opsd.loop.train_plain` writes the same training out
in plain PyTorch. The files it writes (config.yaml, metrics.jsonl, rollouts.jsonl, ...): `opsd.runs.layout`.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.utils import logging

from opsd.collapse import CollapseWatchCallback, mean_entropy, rollout_signals
from opsd.config import DEFAULT_PROFILE, OPSDConfig, command_parser, load_config, parse_overrides
from opsd.contexts import build_dual_contexts, join_rollout
from opsd.data import load_problems, require_columns
from opsd.diagnostics import divergence_diagnostics
from opsd.divergence_chunked import suggest_chunk_size
from opsd.models import load_model_and_tokenizer
from opsd.packed_linear import packed_forwards
from opsd.privileged import with_teacher_context
from opsd.rollout import make_rollout_backend
from opsd.runs.atomic_io import append_jsonl
from opsd.runs.checkpoints import checkpoint_dir, finished_step, last_checkpoint, resume_point
from opsd.runs.layout import ROLLOUTS_FILE, check_run_kind, write_run_info
from opsd.runs.preflight import launched_processes, require_ready
from opsd.runs.runlog import RunDirectoryCallback
from opsd.step import LossPath, NonFiniteScoresError, opsd_loss
from opsd.teacher import EMATeacher, teacher_context

logger = logging.get_logger(__name__)

LARGE_VOCAB = 65_536
#: Rollout positions the per-step diagnostics take at a time (bounds their memory at [64, V] per tensor).
DIAGNOSTIC_CHUNK = 64
OPSD_STATE_FILE = "opsd_state.pt"


class NonFiniteLossError(FloatingPointError):
    """The objective produced NaN/inf; raised before the optimizer step so the last checkpoint is intact."""


def collate_rows(rows: list[dict]) -> dict[str, list]:
    """Keep problems as text: the trainer tokenizes them into both roles itself."""
    return {
        "problem": [r["problem"] for r in rows],
        "solution": [r["solution"] for r in rows],
        "row_id": [r.get("row_id", i) for i, r in enumerate(rows)],
    }


def resolve_chunk_size(config: OPSDConfig, vocab_size: int, device=None) -> int | None:
    """Positions per divergence chunk: the config's value, or (None) a size suggested for large vocabularies."""
    if config.divergence_chunk_size == 0:
        return None
    if config.divergence_chunk_size is not None:
        return config.divergence_chunk_size
    return suggest_chunk_size(vocab_size, device=device) if vocab_size > LARGE_VOCAB else None


class _EMAUpdateCallback(TrainerCallback):
    def __init__(self, trainer: OPSDTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer.ema is not None:
            self.trainer.ema.update(self.trainer.accelerator.unwrap_model(self.trainer.model))


class OPSDTrainer(Trainer):
    """On-policy self-distillation. `train_dataset` needs `problem` and `solution` columns."""

    def __init__(self, model, args: OPSDConfig, train_dataset, processing_class, callbacks=None, rollout_backend=None):
        require_columns(train_dataset, ["problem", "solution"], args.dataset)
        if "row_id" not in train_dataset.column_names:
            train_dataset = train_dataset.add_column("row_id", list(range(len(train_dataset))))
        train_dataset = with_teacher_context(train_dataset, args.teacher_context, args.seed)  # what the teacher reads
        # Fail before training, not at step 1, when the teacher mode does not fit the model.
        self.ema = EMATeacher(model, decay=args.ema_decay) if args.teacher_mode == "ema" else None
        with teacher_context(model, args.teacher_mode, self.ema):
            pass
        collapse_watch = [CollapseWatchCallback(args.collapse_watcher(), args.collapse_watch)] \
            if args.collapse_watch != "off" else []
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            data_collator=collate_rows,
            processing_class=processing_class,
            callbacks=[RunDirectoryCallback(extra={"run_kind": "opsd"}), *collapse_watch] + list(callbacks or []),
        )
        self.add_callback(_EMAUpdateCallback(self))
        self.model_accepts_loss_kwargs = False  # the loss is a per-batch mean: Trainer divides by grad-accum
        self.tokenizer = processing_class
        self.sampling = args.sampling_params()
        vocab = model.get_output_embeddings().weight.shape[0]
        self.loss_path = LossPath(resolve_chunk_size(args, vocab, device=args.device), args.fused_hidden_loss)
        if rollout_backend is None:
            backend_kwargs = {}
            if args.rollout_backend == "vllm":
                backend_kwargs = {
                    "model_name": args.model_name, "gpu_memory_utilization": args.vllm_gpu_memory_utilization,
                    "max_model_len": args.max_length, "sleep": args.vllm_sleep, "seed": args.seed,
                    "dtype": args.torch_dtype,
                }
            rollout_backend = make_rollout_backend(args.rollout_backend, model, processing_class,
                                                   fast=args.fast_inference, **backend_kwargs)
        self.rollout_backend = rollout_backend
        self._weights_synced_at = -1
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._step_times: dict[str, float] = {}
        self.tokens_generated = 0
        self.seen_row_ids: list[list] = []
        self._rollouts_logged: set[int] = set()  # steps whose rollouts are in rollouts.jsonl (one write per step)

    # ------------------------------------------------------------------------------------- one step

    def _sample(self, model, contexts) -> Any:
        """Rollouts from the current student (weights copied to vLLM once per optimizer step)."""
        from trl.models.utils import unwrap_model_for_generation

        with unwrap_model_for_generation(model, self.accelerator) as gen_model:
            if self._weights_synced_at != self.state.global_step:
                self.rollout_backend.sync_weights(gen_model)
                self._weights_synced_at = self.state.global_step
            return self.rollout_backend.generate(
                contexts.student.input_ids, contexts.student.attention_mask, self.sampling
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: OPSDConfig = self.args
        step = self.state.global_step + 1
        contexts = build_dual_contexts(self.tokenizer, inputs["problem"], inputs["solution"],
                                       row_ids=inputs["row_id"], **args.context_kwargs())
        row_ids = [inputs["row_id"][i] for i in contexts.kept_rows]
        self.seen_row_ids.append(list(inputs["row_id"]))
        if contexts.dropped_rows:
            self._metrics["dropped_rows"].append(float(len(contexts.dropped_rows)))

        t0 = time.perf_counter()
        rollout = self._sample(model, contexts)
        t1 = time.perf_counter()
        contexts = contexts.repeat_interleave(args.num_generations)
        batch = join_rollout(contexts, rollout.completion_ids, rollout.completion_mask).to(self.accelerator.device)
        unwrapped = self.accelerator.unwrap_model(model)
        teacher = self.ema if self.ema is not None else args.teacher_mode
        try:
            with packed_forwards(unwrapped, enabled=args.fast_inference):  # CPU: packed weights, both passes
                result = opsd_loss(model, batch, args.objective, teacher, path=self.loss_path, unwrapped=unwrapped)
        except NonFiniteScoresError as err:
            raise self._nonfinite(str(err), step, row_ids) from None
        loss = result.loss
        if not torch.isfinite(loss):
            raise self._nonfinite(f"the OPSD loss is {loss.item()}", step, row_ids)
        if result.student.requires_grad:
            result.student.register_hook(self._zero_grad_hook(batch.loss_mask))

        self._step_times["rollout"] = self._step_times.get("rollout", 0.0) + (t1 - t0)
        self._step_times["teacher"] = self._step_times.get("teacher", 0.0) + result.teacher_seconds
        self._record(batch, rollout, result.student.detach(), result.teacher, contexts, step, result.fused)
        return loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._step_times = {}
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        total = time.perf_counter() - start
        rollout, teacher = self._step_times.get("rollout", 0.0), self._step_times.get("teacher", 0.0)
        self._metrics["time_rollout_s"].append(rollout)
        self._metrics["time_teacher_s"].append(teacher)
        self._metrics["time_student_s"].append(max(0.0, total - rollout - teacher))
        return loss

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The Trainer's `lr_scheduler_type` schedule over `lr_schedule_horizon` optimizer steps when set
        (warm-up steps counted on that horizon), else over the run's steps; training stops at max_steps.
        Linear: lr(s) = lr_0 (H - s) / H after s steps, H the horizon (no warm-up)."""
        return super().create_scheduler(self.args.lr_schedule_horizon or num_training_steps, optimizer)

    # ----------------------------------------------------------------------------------- bookkeeping

    def _zero_grad_hook(self, mask: torch.Tensor):
        def hook(grad: torch.Tensor):
            m = mask.bool()
            if m.any():
                zero = grad.detach().abs().amax(-1) == 0
                self._metrics["zero_grad_fraction"].append((zero & m).sum().item() / m.sum().item())
            return grad

        return hook

    def _nonfinite(self, what: str, step: int, row_ids) -> NonFiniteLossError:
        ckpt = last_checkpoint(self.args.output_dir)
        return NonFiniteLossError(
            f"step {step}: {what} for the batch with dataset rows {row_ids}. Training stopped before the "
            f"optimizer step; the last good checkpoint is {ckpt if ckpt else '(none yet)'}. Lower the learning "
            "rate, check the dtype (bf16 overflow), or inspect these rows."
        )

    def _record(self, batch, rollout, student_logits, teacher_logits, contexts, step, fused) -> None:
        args: OPSDConfig = self.args
        mask = batch.loss_mask
        lengths = mask.sum(-1).float()
        generated = self.accelerator.reduce(lengths.sum().to(self.accelerator.device), reduction="sum")
        self.tokens_generated += int(generated.item())
        self._metrics["rollout_length_mean"].append(lengths.mean().item())
        self._metrics["rollout_length_max"].append(lengths.max().item())
        eos = torch.tensor(self.rollout_backend.eos_ids, device=mask.device)
        truncated = mask[:, -1] & ~torch.isin(batch.completion_ids[:, -1], eos)
        self._metrics["truncated_fraction"].append(truncated.float().mean().item())
        texts = self.tokenizer.batch_decode([ids[m].tolist() for ids, m in zip(batch.completion_ids, mask)],
                                            skip_special_tokens=True)
        for key, value in rollout_signals(batch.completion_ids, mask, texts).items():  # opsd.collapse
            self._metrics[key].append(value)
        # No copy of the loss here: the Trainer logs it as `loss` (see `log` for the one key per quantity).
        if fused:
            return  # full logits never exist on this path; diagnostics come from the divergence module alone
        self._metrics["student_entropy"].append(mean_entropy(student_logits, mask, args.objective.temperature))
        tokens = [self.tokenizer.batch_decode([[t] for t in row]) for row in batch.completion_ids.tolist()]
        diagnostics = divergence_diagnostics(student_logits, teacher_logits, mask, args.objective,
                                             token_strings=tokens, chunk_size=DIAGNOSTIC_CHUNK)
        for key, value in diagnostics.items():
            if not math.isnan(value):  # NaN: no such position in this micro-batch (e.g. no style token)
                self._metrics[key].append(float(value))
        if (args.log_rollouts_every and step % args.log_rollouts_every == 0 and self.accelerator.is_main_process
                and step not in self._rollouts_logged):
            self._rollouts_logged.add(step)
            self._write_rollouts(batch, student_logits, teacher_logits, contexts, step)

    def _write_rollouts(self, batch, student_logits, teacher_logits, contexts, step) -> None:
        path = Path(self.args.output_dir) / ROLLOUTS_FILE
        with torch.no_grad():
            for row in range(min(self.args.num_logged_rollouts, batch.loss_mask.shape[0])):
                m = batch.loss_mask[row]
                ids = batch.completion_ids[row][m].tolist()
                div = self.args.objective.token_divergence(student_logits[row][m].float(), teacher_logits[row][m].float())
                append_jsonl(path, {
                    "step": step,
                    "prompt": contexts.student.texts[row],
                    "teacher_prompt": contexts.teacher.texts[row],
                    "completion": self.tokenizer.decode(ids),
                    "tokens": self.tokenizer.batch_decode([[t] for t in ids]),
                    "divergence": [round(float(d), 6) for d in div.tolist()],
                })

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add this step's OPSD metrics to the Trainer's `logs` (loss, grad_norm, learning_rate).

        One key per quantity: `loss` is the optimized objective (the Trainer's mean over the step's
        micro-batches and processes), `divergence_mean` the diagnostics' mean clipped D[n] (main process;
        for loss_type full on one process the same number as `loss`; absent on the fused path).
        `opsd.runs.layout.read_metrics` reads older runs' `objective` and `divergence` as these two.
        """
        for key, values in self._metrics.items():
            if values:
                logs[key] = sum(values) / len(values)
        logs["tokens_generated"] = self.tokens_generated
        self._metrics.clear()
        super().log(logs, start_time)

    # --------------------------------------------------------------------------- checkpoint / resume

    def _save_checkpoint(self, model, trial):
        # The OPSD state goes in first (written to a temporary name, then renamed): the Trainer writes
        # trainer_state.json last, so a checkpoint that has one is complete (opsd.runs.checkpoints).
        if self.accelerator.is_main_process:
            folder = checkpoint_dir(self.args.output_dir, self.state.global_step)
            folder.mkdir(parents=True, exist_ok=True)
            state = {"tokens_generated": self.tokens_generated, "ema": self.ema.state_dict() if self.ema else None}
            tmp = folder / f".{OPSD_STATE_FILE}.tmp"
            torch.save(state, tmp)
            tmp.replace(folder / OPSD_STATE_FILE)
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint=None, **kwargs):
        """`resume_from_checkpoint` True / "auto": the last complete checkpoint of output_dir (incomplete ones,
        from a crash during a save, are moved aside with a warning); a path: that one; None: from scratch."""
        point = resume_point(self.args.output_dir, resume_from_checkpoint, required=(OPSD_STATE_FILE,))
        if point is None:
            return super().train(resume_from_checkpoint=None, **kwargs)
        self._load_opsd_state(point)
        done = finished_step(point, self.args.max_steps)
        if done is not None:  # a finished run: load its final weights instead of training past its end
            logger.warning("run already finished at step %d (%s); nothing to train", done, point)
            self._load_from_checkpoint(str(point))
            self.state.global_step = done
            return None
        return super().train(resume_from_checkpoint=str(point), **kwargs)

    def _load_opsd_state(self, checkpoint: Path) -> None:
        state_file = checkpoint / OPSD_STATE_FILE
        if state_file.exists():
            state = torch.load(state_file, map_location="cpu", weights_only=False)
            self.tokens_generated = int(state.get("tokens_generated", 0))
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])


# ---------------------------------------------------------------------------------------- entry point


def build_trainer(config: OPSDConfig, *, callbacks=None, model=None, tokenizer=None) -> OPSDTrainer:
    """Model (with LoRA), tokenizer and data from the config -> a ready `OPSDTrainer`."""

    # Every input is checked before the model loads: the run directory's kind, then every data row.
    check_run_kind(config.output_dir, "train")
    dataset = load_problems(config.dataset, config.dataset_split, n=config.dataset_size, seed=config.seed,
                            require=("problem", "solution"), on_invalid=config.on_invalid_row)
    if model is None:
        # LoRA's A matrices are drawn at load time: seed first, or two runs of one command differ (torch
        # seeds its generator from the OS at start-up) and a run cannot be reproduced.
        from transformers import set_seed

        set_seed(config.seed)
        dtype = getattr(torch, config.torch_dtype)
        model, tokenizer = load_model_and_tokenizer(
            config.model_name, dtype=dtype, lora=config.lora_settings(),
            attn_implementation=config.attn_implementation, trust_remote_code=config.trust_remote_code,
        )
    if config.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    return OPSDTrainer(model, config, dataset, tokenizer, callbacks=callbacks)


def train_and_save(trainer: OPSDTrainer, resume: bool | str = "auto") -> OPSDTrainer:
    """Train (resuming per `resume`, see `OPSDTrainer.train`), then save the final model and run_info.json
    into output_dir. Returns the trainer (its `.model` is the trained student)."""
    trainer.train(resume_from_checkpoint=resume or None)
    trainer.save_model(trainer.args.output_dir)
    if trainer.is_world_process_zero():
        write_run_info(trainer.args.output_dir, global_step=trainer.state.global_step,
                       tokens_generated=trainer.tokens_generated)
    return trainer


def run_training(config: OPSDConfig, *, resume: bool | str = "auto", callbacks=None) -> OPSDTrainer:
    """Build the trainer from the config, train with OPSD and save (`train_and_save`); resumes from the last
    checkpoint in output_dir by default."""
    return train_and_save(build_trainer(config, callbacks=callbacks), resume)


def main(argv: list[str]) -> int:
    """`python -m opsd train --config reproduce/configs/NAME.yaml [key=value ...]`."""

    ns = command_parser("python -m opsd train", OPSDConfig, DEFAULT_PROFILE, main.__doc__).parse_args(argv)
    overrides = parse_overrides(ns.overrides)
    require_ready(ns.config, overrides, num_processes=launched_processes(), kind="train")  # before any model loads
    config = load_config(OPSDConfig, ns.config, overrides)
    run_training(config, resume=not ns.no_resume and "auto")
    print(f"run directory: {config.output_dir}")
    return 0
