"""One spelling per idea, and the old spellings still read: configs (profiles, overrides, old runs'
config.yaml) and metrics.jsonl of older runs.

    clip_mode: none    -> clip: null (no clipping), clip_mode: pointwise (the default)
    top_k_loss: K      -> teacher_top_k: K   (top_k stays the sampling top-k)
    metrics objective  -> loss               (the same number: the step's optimized loss)
    metrics divergence -> divergence_mean    (it was a copy)
"""

from __future__ import annotations

import json

import pytest
import yaml
from fake_runs import OPSD_CONFIG, opsd_metrics, write_run

from opsd.config import OPSDConfig, load_config, parse_overrides, save_config, upgrade_legacy_spellings
from opsd.paper import records as pdata
from opsd.runs.layout import read_metrics
from opsd.validation import InputError
from opsd.viz import plots as viz

# ------------------------------------------------------------------------------------------ option sets


# ------------------------------------------------------------------------------------------ configs


def test_cpu_tiny_says_no_clip_once(tmp_path):
    profile = yaml.safe_load((pdata.REPO_ROOT / "reproduce" / "configs" / "cpu-tiny.yaml").read_text())
    assert profile["clip"] is None and "clip_mode" not in profile
    config = load_config(OPSDConfig, "cpu-tiny", {"output_dir": str(tmp_path)})
    assert (config.clip, config.clip_mode, config.teacher_top_k, config.top_k) == (None, "pointwise", None, 0)
    assert config.divergence_kwargs()["teacher_top_k"] is None and "top_k" not in config.divergence_kwargs()


def test_an_old_profile_with_clip_mode_none_and_top_k_loss_loads(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("kind: train\nclip: 0.05\nclip_mode: none\ntop_k_loss: 7\ntop_k: 20\n"
                   f"output_dir: {tmp_path / 'run'}\n")
    config = load_config(OPSDConfig, old)
    assert (config.clip, config.clip_mode) == (None, "pointwise")  # clip_mode none meant: no clipping
    assert config.teacher_top_k == 7 and config.top_k == 20  # sampling top-k untouched
    assert config.divergence_kwargs() == {"beta": 0.0, "temperature": config.temperature, "teacher_top_k": 7,
                                          "clip": None, "clip_mode": "pointwise"}
    # the same profile with clip_mode none only (as cpu-tiny said both)
    old.write_text("kind: train\nclip: null\nclip_mode: none\n")
    assert load_config(OPSDConfig, old, {"output_dir": str(tmp_path)}).clip is None


def test_old_spellings_as_overrides(tmp_path):
    out = {"output_dir": str(tmp_path)}
    # the overrides are one source: clip_mode=none turns clipping off although the profile clips at 0.05
    config = load_config(OPSDConfig, "qwen3-1.7b-4xh100", {**out, "bf16": False,
                                                           **parse_overrides(["clip_mode=none", "top_k_loss=5"])})
    assert (config.clip, config.clip_mode, config.teacher_top_k) == (None, "pointwise", 5)
    clipped = load_config(OPSDConfig, "cpu-tiny", {**out, "clip": 0.05, "clip_mode": "token"})
    assert (clipped.clip, clipped.clip_mode) == (0.05, "token")
    with pytest.raises(InputError, match=r"sets both top_k_loss=5 .*teacher_top_k=6"):
        load_config(OPSDConfig, "cpu-tiny", {**out, "top_k_loss": 5, "teacher_top_k": 6})
    same = load_config(OPSDConfig, "cpu-tiny", {**out, "top_k_loss": 5, "teacher_top_k": 5})
    assert same.teacher_top_k == 5
    with pytest.raises(InputError, match="clip_mode must be one of"):
        load_config(OPSDConfig, "cpu-tiny", {**out, "clip_mode": "sometimes"})


def test_constructed_config_reads_clip_mode_none_as_no_clip(tmp_path):
    config = OPSDConfig(output_dir=str(tmp_path), clip=0.05, clip_mode="none")
    assert (config.clip, config.clip_mode) == (None, "pointwise")


def test_old_run_config_yaml_loads(tmp_path):
    config = load_config(OPSDConfig, "cpu-tiny", {"output_dir": str(tmp_path / "run"), "teacher_top_k": 4})
    save_config(config, tmp_path / "config.yaml", extra={"kind": "train"})
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert data["teacher_top_k"] == 4 and "top_k_loss" not in data and data["clip_mode"] == "pointwise"
    data["top_k_loss"] = data.pop("teacher_top_k")
    data["clip"], data["clip_mode"] = 0.05, "none"
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(data))
    again = load_config(OPSDConfig, tmp_path / "old.yaml")
    assert (again.clip, again.clip_mode, again.teacher_top_k) == (None, "pointwise", 4)


def test_upgrade_leaves_other_config_classes_alone():
    from opsd.baselines.train import SFTRunConfig

    assert upgrade_legacy_spellings({"top_k_loss": 3}, SFTRunConfig) == {"top_k_loss": 3}  # then: unknown key
    with pytest.raises(InputError, match="unknown override key"):
        load_config(SFTRunConfig, "sft-cpu-tiny", {"top_k_loss": 3})
    assert upgrade_legacy_spellings({"clip": 0.05, "clip_mode": "token"}) == {"clip": 0.05, "clip_mode": "token"}
    assert upgrade_legacy_spellings({"clip": 0.05, "clip_mode": "none", "top_k_loss": 2}) == {
        "clip": None, "clip_mode": "pointwise", "teacher_top_k": 2}


# ------------------------------------------------------------------------------------------ metrics


def _old_metrics(n: int = 3) -> list[dict]:
    """metrics.jsonl records as OPSD runs wrote them before: objective and divergence beside loss and
    divergence_mean (the same numbers)."""
    return [{**m, "objective": m["loss"], "divergence": m["divergence_mean"]} for m in opsd_metrics(n)]


def test_an_old_run_directory_reads_like_a_new_one(tmp_path):
    old_config = {**OPSD_CONFIG, "clip": 0.05, "clip_mode": "none", "top_k_loss": 3}
    write_run(tmp_path / "old", old_config, _old_metrics())
    write_run(tmp_path / "new", {**OPSD_CONFIG, "clip": None, "clip_mode": "pointwise", "teacher_top_k": 3},
              opsd_metrics(3))
    old_metrics, new_metrics = read_metrics(tmp_path / "old"), read_metrics(tmp_path / "new")
    assert old_metrics == new_metrics
    assert not any("objective" in m or "divergence" in m for m in old_metrics)
    old, new = pdata.read_run("old", tmp_path / "old"), pdata.read_run("new", tmp_path / "new")
    assert old.config == {**new.config} and old.config["teacher_top_k"] == 3 and "top_k_loss" not in old.config
    assert pdata.clip_label(old.config) == pdata.clip_label(new.config) == "no clip"
    assert old.metric("loss") == new.metric("loss") and old.metric("divergence_mean") == new.metric("divergence_mean")
    fig = viz.plot_training_diagnostics(tmp_path / "old")
    titles = [ax.get_title("left") or ax.get_title() for ax in fig.axes]  # the style titles on the left
    assert titles[:2] == ["loss", "divergence_mean"]


def test_old_metrics_file_written_by_hand(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in [{"step": 2, "objective": 0.2, "divergence": 0.1}, {"step": 1, "loss": 0.3}]))
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 0.3}, {"step": 2, "loss": 0.2, "divergence_mean": 0.1}]
    assert viz.runs_table({"old": tmp_path}, ["loss", "objective"])["metric"].tolist() == ["loss"]


def test_train_notebook_overrides_accept_the_old_spellings(tmp_path):
    from opsd.runs.launch import resolve_train_overrides

    merged = resolve_train_overrides("cpu-tiny", {"top_k_loss": 3, "clip": 0.05, "clip_mode": "none"},
                                     output_dir=str(tmp_path))
    assert merged == {"teacher_top_k": 3, "clip": None, "clip_mode": "pointwise", "output_dir": str(tmp_path)}
