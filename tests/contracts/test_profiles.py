"""The paper-scale OPSD run profiles (reproduce/configs/qwen3-*) build a config on a CPU (bf16 switched off), and
the config a run uses holds what the profile says: the values themselves are checked against the reference's
settings, written once, in tests/contracts/test_reference_settings.py (the baselines': tests/baselines/)."""

from __future__ import annotations

import pytest
import yaml

from opsd.config import REPO_ROOT, OPSDConfig, load_config, read_profile
from opsd.runs.preflight import config_values

OPSD_PROFILES = ["qwen3-1.7b-4xh100", "qwen3-4b-8xh100", "qwen3-8b-8xh100",
                 "qwen3-4b-8xh100-nonthink", "qwen3-8b-8xh100-nonthink"]
CPU = {"bf16": False}
REFERENCE = yaml.safe_load((REPO_ROOT / "reproduce" / "reference_settings.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", OPSD_PROFILES)
def test_opsd_profiles_build_the_config_the_reference_settings_check(name, tmp_path):
    assert read_profile(name)["kind"] == "train"
    config = load_config(OPSDConfig, name, {**CPU, "output_dir": str(tmp_path)})
    values = config_values(OPSDConfig, name, {**CPU, "output_dir": str(tmp_path)})
    differ = {key: (getattr(config, key), values[key]) for key in REFERENCE["opsd"]["settings"]
              if getattr(config, key) != values[key]}
    assert not differ  # what test_reference_settings reads is what the run gets
    assert config.max_prompt_length == config.max_length - config.max_completion_length
    objective = config.objective  # the one objective value the step receives
    assert (objective.beta, objective.clip, objective.clip_mode, objective.temperature) == (
        config.beta, config.clip, config.clip_mode, config.effective_loss_temperature)
    assert objective.dtype == config.objective_dtype


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
