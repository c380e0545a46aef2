"""Worker for tests/test_trainer.py::test_two_process_run (started by `accelerate launch`)."""

import json
import sys

import torch
import torch.distributed as dist

from opsd.config import OPSDConfig, load_config
from opsd.data import synthetic_math
from opsd.models import load_model_and_tokenizer, tiny_qwen3
from opsd.trainer import OPSDTrainer


def main(out_dir: str) -> None:
    _, tok = load_model_and_tokenizer()
    torch.manual_seed(0)
    model = tiny_qwen3(vocab_size=len(tok), hidden_size=32, num_layers=1, seed=0)
    config = load_config(OPSDConfig, "cpu-tiny", {
        "output_dir": out_dir, "max_steps": 2, "save_steps": 2, "per_device_train_batch_size": 2, "max_completion_length": 4,
        "lora_r": 4, "lora_alpha": 8, "teacher_mode": "dynamic", "max_length": 256, "learning_rate": 1e-2, "report_to": "none",
    })
    from peft import get_peft_model

    model = get_peft_model(model, config.lora_settings().to_peft())
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = OPSDTrainer(model, config, synthetic_math(16), tok)
    trainer.train()
    rank, world = dist.get_rank(), dist.get_world_size()
    params = {n: p.detach() for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters() if p.requires_grad}
    report = {
        "rank": rank,
        "world_size": world,
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "seen_rows": trainer.seen_row_ids,
        "weights_changed": any(not torch.equal(params[n], before[n]) for n in before),
        "checksum": float(sum(p.double().sum() for p in params.values())),
    }
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
