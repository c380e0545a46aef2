"""opsd.runs.preflight: what a profile needs on this machine, every missing piece listed at once (CPU only;
GPUs, packages, caches and disk are simulated with monkeypatch where a check's other branch is tested)."""

from __future__ import annotations

import pytest

from opsd.runs import preflight as pf
from opsd.validation import InputError


def _missing(problems) -> str:
    return "\n".join(p.missing for p in problems)


@pytest.fixture()
def bare_machine(monkeypatch):
    """A machine without GPUs, without flash-attn / vLLM / DeepSpeed, offline, with an empty Hub cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pf, "cuda_devices", lambda: 0)
    monkeypatch.setattr(pf, "hub_cached", lambda repo, kind: False)
    real = pf.import_problem
    monkeypatch.setattr(pf, "import_problem",
                        lambda m: "not installed" if m in ("flash_attn", "vllm", "deepspeed") else real(m))


def test_paper_profile_on_this_cpu_lists_every_missing_piece(bare_machine):
    problems = pf.profile_problems("qwen3-1.7b-4xh100", num_processes=4)
    text = _missing(problems)
    assert "CUDA devices: none found" in text and "needs 4" in text
    assert "bf16" in text and "flash_attn: not installed" in text and "vllm: not installed" in text
    assert "deepspeed: not installed" in text and "zero2-offload" in text
    assert "model 'Qwen/Qwen3-1.7B': not in the local Hub cache" in text
    assert "dataset 'siyanzhao/Openthoughts_math_30k_opsd': not in the local caches" in text
    assert len(problems) == 7 and all(p.fix for p in problems)
    with pytest.raises(pf.PreflightError) as err:  # an InputError: the command line exits with code 2
        pf.require_ready("qwen3-1.7b-4xh100", num_processes=4)
    assert isinstance(err.value, InputError) and len(err.value.problems) == 7
    assert str(err.value).count("\n     -> ") == 7


def test_cpu_tiny_is_ready_here():
    assert pf.profile_problems("cpu-tiny") == []
    pf.require_ready("cpu-tiny")


def test_bad_values_fail_as_load_config_fails(bare_machine):
    with pytest.raises(InputError, match="bf16"):
        pf.profile_problems("qwen3-1.7b-4xh100", {"bf16": "maybe"})
    with pytest.raises(InputError, match="unknown override"):
        pf.profile_problems("cpu-tiny", {"lerning_rate": 1e-3})


def test_gpu_count_and_bf16(monkeypatch, bare_machine):
    monkeypatch.setattr(pf, "cuda_devices", lambda: 2)
    monkeypatch.setattr(pf, "bf16_capable", lambda device: True)
    text = _missing(pf.profile_problems("qwen3-1.7b-4xh100", num_processes=4))
    assert "CUDA devices: 2 found, 4 needed" in text and "\nbf16" not in text
    assert "CUDA" not in _missing(pf.profile_problems("qwen3-1.7b-4xh100", num_processes=2))
    monkeypatch.setattr(pf, "bf16_capable", lambda device: False)
    monkeypatch.setattr(pf.torch.cuda, "get_device_name", lambda device: "Tesla V100")
    assert "bf16: CUDA device 0 (Tesla V100) does not support it" in _missing(
        pf.profile_problems("qwen3-1.7b-4xh100", num_processes=2))


def test_packages_follow_the_profile(bare_machine):
    one = _missing(pf.profile_problems("qwen3-1.7b-4xh100", num_processes=1))
    assert "deepspeed" not in one  # one process runs without accelerate launch
    hf = _missing(pf.profile_problems("qwen3-1.7b-4xh100", {"rollout_backend": "hf", "attn_implementation": "sdpa",
                                                           "accelerate_config": "ddp"}, num_processes=4))
    assert "vllm" not in hf and "flash_attn" not in hf and "deepspeed" not in hf and "CUDA devices" in hf


def test_broken_package_is_reported_with_its_error(monkeypatch):
    monkeypatch.setattr(pf, "find_spec", lambda name: object())
    monkeypatch.setattr(pf, "import_module", lambda name: (_ for _ in ()).throw(OSError("undefined symbol: x")))
    assert pf.import_problem("flash_attn").startswith("installed but fails to import (OSError: undefined symbol")


def test_cache_checks_only_offline(monkeypatch, bare_machine):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    text = _missing(pf.profile_problems("qwen3-1.7b-4xh100", num_processes=1))
    assert "model" not in text and "dataset" not in text
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pf, "hub_cached", lambda repo, kind: True)
    text = _missing(pf.profile_problems("qwen3-1.7b-4xh100", num_processes=1))
    assert "model" not in text and "dataset" not in text
    assert "no such folder" in _missing(pf.profile_problems("cpu-tiny", {"model_name": "./no/such/model"}))


def test_disk_estimate(monkeypatch, tmp_path):
    count, per = pf.checkpoint_bytes({"model_name": "Qwen/Qwen3-1.7B", "use_lora": True, "lora_r": 64,
                                      "max_steps": 100, "save_steps": 25})
    assert count == 4 and 0.5 * 2**30 < per < 1.5 * 2**30  # 70M adapter parameters x 12 bytes
    assert pf.checkpoint_bytes({"model_name": "x-8B", "use_lora": False, "max_steps": -1, "save_steps": 10,
                                "save_total_limit": 2}) == (2, int(16 * 8e9))
    monkeypatch.setattr(pf, "free_bytes", lambda path: 2**30)
    text = _missing(pf.profile_problems("cpu-tiny", {"output_dir": str(tmp_path / "run")}))
    assert "free disk: 1.0 GiB under" in text
    assert pf.free_bytes(tmp_path / "not" / "yet") > 0  # the nearest existing folder's disk


def test_eval_profiles(monkeypatch, bare_machine):
    text = _missing(pf.profile_problems("eval-paper"))
    assert "CUDA devices: none found" in text and "vllm: not installed" in text
    assert all(f"benchmark '{b}'" in text for b in ("aime24", "aime25", "hmmt25"))
    copies = monkeypatch.setattr(pf, "local_benchmark_dir", lambda name: "/data/" + name)
    assert copies is None and "benchmark" not in _missing(pf.profile_problems("eval-paper"))
    assert pf.eval_problems("hf", ["synthetic"], "smollm2-135m-opsd-start") == []
    with pytest.raises(pf.PreflightError, match="Qwen/Qwen3-8B"):
        pf.require_eval_ready("hf", ["synthetic"], "Qwen/Qwen3-8B")


def test_model_size_from_name():
    assert pf.model_parameters("Qwen/Qwen3-1.7B") == pytest.approx(1.7e9)
    assert pf.model_parameters("smollm2-135m-opsd-start") == pytest.approx(1.35e8)
    assert pf.model_parameters("/models/my-model") is None


def test_command_line_lists_all_and_exits_2(bare_machine, capsys):
    from opsd.__main__ import main as cli

    assert cli(["preflight", "--config", "qwen3-1.7b-4xh100", "--num-processes", "4"]) == 2
    out = capsys.readouterr().out
    assert "7 missing piece(s)" in out and out.count("->") == 7
    assert cli(["preflight", "--config", "cpu-tiny"]) == 0 and "ready" in capsys.readouterr().out
    assert cli(["preflight", "--config", "sft-qwen3-1.7b-4xh100", "--num-processes", "4"]) == 2
    assert "deepspeed" in capsys.readouterr().out


def test_train_entry_point_stops_before_loading(bare_machine, capsys, monkeypatch):
    import opsd.trainer

    # the name `python -m opsd train` calls (patching opsd.config's would leak into modules imported meanwhile)
    monkeypatch.setattr(opsd.trainer, "load_config", lambda *a, **k: pytest.fail("load_config ran"))
    from opsd.__main__ import main as cli

    assert cli(["train", "--config", "qwen3-1.7b-4xh100"]) == 2
    err = capsys.readouterr().err
    assert "CUDA devices" in err and "Qwen/Qwen3-1.7B" in err
