"""One command for everything the CPU cannot check, on a CUDA machine without network (about 5 minutes):

    python -m benchmarks.gpu_check                  # one table; what is absent is skipped with the reason

Rows (each skipped with its reason where the machine lacks what it needs):
  cuda            the devices torch sees, bf16 support
  train_plain     two OPSD steps of `opsd.loop.train_plain` on CUDA (no TRL): tiny random Qwen3 (vocab 151,936) in
                  bf16, LoRA r8, fixed teacher, HF rollouts, SDPA
  trainer-sdpa    two OPSD steps of `OPSDTrainer` on CUDA, bf16 mixed precision, the same model and settings
  trainer-flash   the same with attn_implementation flash_attention_2 (needs flash-attn)
  divergence      `benchmarks.divergence` plain / chunked / fused, bf16, V 151,936, H 2,048, B 1, T 1,024 and 4,096
  ddp / zero2     `accelerate launch` of the trainer's two steps on 2 GPUs (ddp.yaml; zero2-offload.yaml needs
                  DeepSpeed): the ranks end with the same weights
  vllm            the trainer's two steps with rollout_backend vllm (needs vLLM; torchrun, one process)

The tokenizer is built in memory (bytes + ChatML markers, `offline_tokenizer`): no model files, no network.
Wheels needed beyond an image with CUDA torch, transformers, peft and accelerate: `datasets` (with pyarrow,
pandas, dill, xxhash, multiprocess, fsspec: `opsd.data` and `OPSDTrainer` take a `datasets.Dataset`) and
pyyaml (a transformers dependency); `trl==1.16.0` for the trainer rows (OPSDTrainer's rollout step imports
`trl.models.utils.unwrap_model_for_generation`; no kit module on this path imports TRL at module top, only
`opsd.baselines`, which this check does not import); optional: `flash-attn`, `deepspeed`, `vllm` (the kit pins
vllm 0.27.1, built for torch 2.13). The kit itself: run from the repository root (or `pip install --no-deps -e .`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import torch

from opsd.config import OPSDConfig, load_config
from opsd.data import synthetic_math
from opsd.models import LoRASettings, apply_lora, tiny_qwen3

REPO = Path(__file__).resolve().parents[1]
VOCAB = 151_936
DIVERGENCE_LENGTHS = (1024, 4096)
DIVERGENCE_PATHS = ("plain", "chunked", "fused")
ROW_TIMEOUT_S = 240


@dataclass
class Row:
    """One line of the table: `status` ok / skipped / failed, `detail` the result or the reason."""

    name: str
    status: str
    detail: str
    seconds: float | None = None


def missing_module(module: str) -> str | None:
    """None if `module` is installed, else the reason a row needing it is skipped."""
    return None if find_spec(module) is not None else f"{module} not installed"


def cuda_reason(devices: int, needed: int = 1) -> str | None:
    """None if `devices` >= `needed`, else why a row is skipped."""
    if devices >= needed:
        return None
    if devices == 0:
        return f"no CUDA device (torch {torch.__version__}{'' if torch.version.cuda else ', CPU build'})"
    return f"{devices} CUDA device(s), {needed} needed"


def run_row(name: str, reasons: list[str | None], check: Callable[[], str]) -> Row:
    """`check()` -> its result line, unless a reason says why not (skipped); an exception is a failed row."""
    why = [r for r in reasons if r]
    if why:
        return Row(name, "skipped", "; ".join(why))
    start = time.perf_counter()
    try:
        detail = check()
    except Exception as err:  # noqa: BLE001 - the table reports any failure and goes on
        return Row(name, "failed", f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
                   time.perf_counter() - start)
    return Row(name, "ok", detail, time.perf_counter() - start)


def format_table(rows: list[Row]) -> str:
    lines = ["| check | status | time (s) | result or reason |", "|---|---|---|---|"]
    for r in rows:
        seconds = "" if r.seconds is None else f"{r.seconds:.1f}"
        lines.append(f"| {r.name} | {r.status} | {seconds} | {r.detail} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- tiny offline model


def offline_tokenizer():
    """A byte-level tokenizer (256 byte tokens + <|endoftext|>, <|im_start|>, <|im_end|>) with a ChatML
    template, built in memory: every text encodes, nothing is read from disk."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_student(device: str, dtype: torch.dtype, attn: str = "sdpa", vocab: int = VOCAB):
    """Tiny random Qwen3 (2 layers, hidden 64) with LoRA r8 on every projection, on `device`."""
    model = tiny_qwen3(vocab_size=vocab, hidden_size=64, num_layers=2, seed=0, dtype=dtype, attn_implementation=attn)
    return apply_lora(model, LoRASettings(r=8, alpha=16)).to(device)


def step_config(out_dir: str, device: str, dtype: torch.dtype, **overrides) -> OPSDConfig:
    """cpu-tiny's objective (forward KL, fixed teacher, HF rollouts) for two steps of 2 problems x 16 tokens."""
    values = {"output_dir": out_dir, "max_steps": 2, "save_steps": 100, "per_device_train_batch_size": 2,
              "max_completion_length": 16, "max_length": 512, "lora_r": 8, "lora_alpha": 16,
              "torch_dtype": str(dtype).removeprefix("torch."), "bf16": device == "cuda" and dtype == torch.bfloat16,
              "use_cpu": device == "cpu", "log_rollouts_every": 0, "report_to": "none", **overrides}
    return load_config(OPSDConfig, "cpu-tiny", values)


def _peak_mib(device: str) -> str:
    return f", peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device == "cuda" else ""


def plain_steps(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, vocab: int = VOCAB) -> str:
    """Two optimizer steps of `opsd.loop.train_plain` -> a result line (losses, weights changed)."""
    from opsd.loop import train_plain

    with tempfile.TemporaryDirectory() as out:
        config = step_config(out, device, dtype)
        model = tiny_student(device, dtype, vocab=vocab)
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        model, history = train_plain(config, model=model, tokenizer=offline_tokenizer(), dataset=synthetic_math(16),
                                     log=None)
        changed = any(not torch.equal(a, p) for a, p in zip(before, [p for p in model.parameters() if p.requires_grad]))
    losses = [h["loss"] for h in history]
    if len(losses) != 2 or not all(torch.isfinite(torch.tensor(losses))) or not changed:
        raise RuntimeError(f"losses {losses}, LoRA weights changed: {changed}")
    return f"losses {losses[0]:.4f}, {losses[1]:.4f}; LoRA weights changed{_peak_mib(device)}"


def trainer_steps(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, attn: str = "sdpa",
                  vocab: int = VOCAB, out_dir: str | None = None, **overrides) -> dict:
    """Two optimizer steps of `OPSDTrainer` -> {losses, checksum of the LoRA weights, rank, world_size}."""
    from opsd.trainer import OPSDTrainer

    with tempfile.TemporaryDirectory() as tmp:
        out = out_dir or tmp
        if overrides.get("rollout_backend") == "vllm":  # vLLM loads the model from a folder
            folder = Path(out) / "tiny-qwen3"
            tiny_qwen3(vocab_size=vocab, hidden_size=64, num_layers=2, seed=0, dtype=dtype).save_pretrained(folder)
            offline_tokenizer().save_pretrained(folder)
            overrides = {"model_name": str(folder), "vllm_gpu_memory_utilization": 0.3, **overrides}
        config = step_config(out, device, dtype, **overrides)
        model = tiny_student(device, dtype, attn, vocab)
        trainer = OPSDTrainer(model, config, synthetic_math(16), offline_tokenizer())
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        lora = [p for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters() if "lora_" in n]
        return {"losses": losses, "checksum": float(sum(p.detach().double().sum() for p in lora)),
                "rank": trainer.accelerator.process_index, "world_size": trainer.accelerator.num_processes,
                "peak": _peak_mib(device)}


def _trainer_row(attn: str) -> Callable[[], str]:
    def check() -> str:
        result = trainer_steps(attn=attn)
        if len(result["losses"]) != 2 or not all(torch.isfinite(torch.tensor(result["losses"]))):
            raise RuntimeError(f"losses {result['losses']}")
        return f"losses {', '.join(f'{x:.4f}' for x in result['losses'])}{result['peak']}"

    return check


# ------------------------------------------------------------------------------------ subprocess rows


def divergence_rows() -> list[Row]:
    """Plain / chunked / fused at V 151,936, bf16, each in its own process (`benchmarks.divergence`)."""
    from benchmarks.divergence import _spawn, parse_args
    from opsd.divergence_chunked import CUDA_CHUNK_ELEMENTS, suggest_chunk_size

    args = parse_args(["--device", "cuda", "--dtype", "bfloat16", "--hidden", "2048", "--worker-timeout-s", "120"])
    args.chunk_size = suggest_chunk_size(args.vocab, device="cuda")
    args.fused_chunk_size = suggest_chunk_size(args.vocab, CUDA_CHUNK_ELEMENTS)
    rows = []
    for length in DIVERGENCE_LENGTHS:
        for path in DIVERGENCE_PATHS:
            start = time.perf_counter()
            result = _spawn(args, path, 1, length, 1, 0)
            name = f"divergence {path} T={length}"
            if result["status"] != "ok":
                rows.append(Row(name, "failed", result["status"], time.perf_counter() - start))
            else:
                rows.append(Row(name, "ok", f"{result['time_s'] * 1000:.0f} ms, peak {result['peak_bytes'] / 2**20:.0f} "
                                f"MiB above inputs, loss {result['loss']:.5f}", time.perf_counter() - start))
    return rows


def launch_row(name: str, launcher: list[str], worker_args: list[str], processes: int) -> Callable[[], str]:
    """A multi-process run of `--worker` under `launcher`: every rank's losses finite, the same LoRA checksum."""

    def check() -> str:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", *launcher, "-m", "benchmarks.gpu_check", "--worker", out, *worker_args]
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=ROW_TIMEOUT_S, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"exit code {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
            reports = [json.loads(p.read_text()) for p in sorted(Path(out).glob("rank*.json"))]
        sums = {round(r["checksum"], 4) for r in reports}
        if len(reports) != processes or len(sums) != 1:
            raise RuntimeError(f"{len(reports)} rank reports, LoRA checksums {sorted(sums)}")
        return f"{processes} ranks, losses {reports[0]['losses']}, same LoRA weights on every rank"

    return check


def worker(out: str, rollout: str) -> None:
    """One rank of a launched row: the trainer's two steps, its report in `out`/rank<i>.json."""
    report = trainer_steps(rollout_backend=rollout, out_dir=out)
    Path(out, f"rank{report['rank']}.json").write_text(json.dumps(report))


# ------------------------------------------------------------------------------------------------ main


def all_rows(skip_divergence: bool = False) -> list[Row]:
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    one, two = cuda_reason(devices), cuda_reason(devices, 2)
    trl, flash = missing_module("trl"), missing_module("flash_attn")
    accelerate_dir = REPO / "reproduce" / "accelerate"
    rows = [run_row("cuda", [one], lambda: f"{devices} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
                    f"CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}")]
    rows.append(run_row("train_plain", [one], plain_steps))
    rows.append(run_row("trainer-sdpa", [one, trl], _trainer_row("sdpa")))
    rows.append(run_row("trainer-flash", [one, trl, flash], _trainer_row("flash_attention_2")))
    if skip_divergence or one:
        rows.append(Row("divergence", "skipped", one or "--skip-divergence"))
    else:
        rows += divergence_rows()
    for name, config, extra in (("ddp", "ddp", None), ("zero2", "zero2-offload", missing_module("deepspeed"))):
        launcher = ["accelerate.commands.launch", "--config_file", str(accelerate_dir / f"{config}.yaml"),
                    "--num_processes", "2"]
        rows.append(run_row(f"{name} (2 GPUs)", [two, trl, extra], launch_row(name, launcher, ["hf"], 2)))
    vllm = ["torch.distributed.run", "--nproc_per_node", "1"]
    rows.append(run_row("vllm", [one, trl, missing_module("vllm")], launch_row("vllm", vllm, ["vllm"], 1)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--skip-divergence", action="store_true", help="leave out the divergence rows (~1 min)")
    parser.add_argument("--worker", nargs=2, metavar=("OUT", "ROLLOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    rows = all_rows(args.skip_divergence)
    print(format_table(rows))
    print(f"\n{sum(r.status == 'ok' for r in rows)} ok, {sum(r.status == 'skipped' for r in rows)} skipped, "
          f"{sum(r.status == 'failed' for r in rows)} failed in {time.perf_counter() - started:.0f} s")
    return 1 if any(r.status == "failed" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
