"""The paper-scale OPSD run profiles (reproduce/configs/qwen3-*; the baselines' in test_sft.py, test_grpo.py)
load and say what the reference runs do. GPU-only settings (bf16) are switched off so the configs instantiate
on a CPU."""

from __future__ import annotations

import pytest

from opsd.config import load_config, read_profile

OPSD_PROFILES = ["qwen3-1.7b-4xh100", "qwen3-4b-8xh100", "qwen3-8b-8xh100",
                 "qwen3-4b-8xh100-nonthink", "qwen3-8b-8xh100-nonthink"]
CPU = {"bf16": False}


@pytest.mark.parametrize("name", OPSD_PROFILES)
def test_opsd_profiles_load(name, tmp_path):
    from opsd.config import OPSDConfig

    assert read_profile(name)["kind"] == "train"
    config = load_config(OPSDConfig, name, {**CPU, "output_dir": str(tmp_path)})
    assert config.model_name.startswith("Qwen/Qwen3-") and config.prompt_profile == "paper"
    assert config.max_length == 20000 and config.max_prompt_length == 20000 - 1024
    assert config.on_overflow == "error" and config.teacher_think_opener is False
    assert (config.beta, config.clip_mode, config.teacher_mode, config.learning_rate) == (0.0, "pointwise", "fixed", 5e-6)
    assert config.student_chat_kwargs == {"enable_thinking": False}
    if name.endswith("-nonthink"):
        assert config.teacher_chat_kwargs == {"enable_thinking": False}
    else:
        assert config.teacher_chat_kwargs == {"enable_thinking": True}


def test_nonthinking_profiles_are_the_8gpu_runs_with_their_clip():
    for size, clip in (("4b", 1e-6), ("8b", 1e-7)):
        thinking, nonthink = read_profile(f"qwen3-{size}-8xh100"), read_profile(f"qwen3-{size}-8xh100-nonthink")
        assert nonthink["clip"] == clip and nonthink["teacher_chat_kwargs"] == {"enable_thinking": False}
        differ = {k for k in thinking.keys() | nonthink.keys() if thinking.get(k) != nonthink.get(k)}
        # the reference's non-thinking 4B results run to step 150 (its README), the others to 100
        steps = {"max_steps"} if size == "4b" else set()
        assert differ == {"profile", "clip", "teacher_chat_kwargs", "output_dir"} | steps
    assert read_profile("qwen3-4b-8xh100-nonthink")["max_steps"] == 150


def test_cpu_tiny_says_no_clip_once(tmp_path):
    from opsd.config import CONFIG_DIR, OPSDConfig

    profile = read_profile(CONFIG_DIR / "cpu-tiny.yaml")
    assert profile["clip"] is None and "clip_mode" not in profile
    config = load_config(OPSDConfig, "cpu-tiny", {"output_dir": str(tmp_path)})
    assert (config.clip, config.clip_mode, config.teacher_top_k, config.top_k) == (None, "pointwise", None, 0)
