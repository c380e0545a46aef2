"""Tests for opsd.runs.eval_results: evaluation file names, reuse of an evaluation file, the latest run, what an
evaluation evaluates (eval_target)."""

from __future__ import annotations

import json
import logging
import os

import pytest

from opsd.runs.eval_results import (
    benchmark_slug,
    eval_path,
    eval_target,
    find_latest_run,
    model_eval_dir,
    reusable_eval,
)
from opsd.validation import InputError, MissingInputError


def test_evaluation_file_names(tmp_path):
    assert benchmark_slug("aime24") == "aime24"  # a known benchmark: its name
    local = tmp_path / "my bench.jsonl"
    local.write_text("")
    assert benchmark_slug(str(local)) == "my_bench"  # a local file: its stem, other characters as _
    assert benchmark_slug("org/some set") == "org_some_set"
    assert eval_path(tmp_path, str(local), 0) == tmp_path / "eval" / "my_bench" / "step-0.json"
    assert model_eval_dir("HuggingFaceTB/SmolLM2 135M", tmp_path) == tmp_path / "eval-HuggingFaceTB_SmolLM2_135M"


def test_cut_eval_file_and_other_settings_are_moved_aside(tmp_path, caplog):
    path = tmp_path / "eval" / "synthetic" / "step-0.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"settings": {"k": 2, "batch_size": 8}, "records": []}))
    assert reusable_eval(path, {"k": 2, "batch_size": 1})  # the batch size does not change the results
    with caplog.at_level(logging.WARNING):
        assert not reusable_eval(path, {"k": 4, "batch_size": 8})
    assert "other settings (k: 2 -> 4)" in caplog.text and not path.exists()
    path.write_text('{"settings": {"k": 4}, "reco')
    assert not reusable_eval(path, {"k": 4}) and not path.exists()
    assert len(list((path.parent / "replaced").iterdir())) == 2


def test_find_latest_run_with_a_checkpoint_and_the_profile(tmp_path):
    assert find_latest_run(tmp_path) is None
    for age, (name, profile, step) in enumerate([("new-gpu", "gpu", 2), ("old", "cpu-tiny", 2),
                                                 ("newer", "cpu-tiny", 2), ("newest-no-ckpt", "cpu-tiny", None)]):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text(f"kind: train\nprofile: {profile}\n")
        if step:
            (run / f"checkpoint-{step}").mkdir()
        os.utime(run / "config.yaml", (1000 + age, 1000 + age))
    os.utime(tmp_path / "new-gpu" / "config.yaml", (2000, 2000))
    assert find_latest_run(tmp_path) == tmp_path / "newer"  # cpu-tiny, with a checkpoint, the latest
    assert find_latest_run(tmp_path, profile=None) == tmp_path / "new-gpu"
    assert find_latest_run(tmp_path, profile="sft-cpu-tiny") is None


# ------------------------------------------------------------------------------------------ what is evaluated


def test_eval_target_of_a_run_a_model_and_neither(tmp_path):
    run = tmp_path / "runs" / "cpu-tiny"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "config.yaml").write_text("kind: train\nprofile: cpu-tiny\nmodel_name: tiny-start\n")
    target = eval_target(run_dir=str(run))
    assert (target.run_dir, target.model, target.out_dir) == (run, None, run)
    assert target.run_config["model_name"] == "tiny-start" and target.note is None
    assert target.describe().splitlines() == [f"run {run} (profile cpu-tiny, model tiny-start)", "checkpoints: [2]"]
    assert eval_target(run_dir=run, output_dir=run).out_dir == run  # the run directory itself: allowed
    with pytest.raises(InputError, match="written into it, not to .*elsewhere"):
        eval_target(run_dir=run, output_dir=tmp_path / "elsewhere")
    with pytest.raises(InputError, match="not both"):
        eval_target(run_dir=run, model="tiny-start")
    with pytest.raises(MissingInputError, match="does not exist"):
        eval_target(run_dir=tmp_path / "nope")

    model = eval_target(model="org/My Model", runs_root=tmp_path / "runs")
    assert (model.run_dir, model.model, model.out_dir) == (None, "org/My Model", tmp_path / "runs" / "eval-org_My_Model")
    assert model.run_config is None and model.describe() == f"model org/My Model -> {model.out_dir}/eval/"
    assert eval_target(model="m", output_dir=tmp_path / "out").out_dir == tmp_path / "out"

    assert eval_target(runs_root=tmp_path / "runs").run_dir == run  # neither: the latest cpu-tiny run


def test_eval_target_without_a_run_is_the_profile_starting_model(tmp_path):
    target = eval_target(runs_root=tmp_path)
    assert target.run_dir is None and target.model == target.run_config["model_name"] == "smollm2-135m-opsd-start"
    assert target.out_dir == tmp_path / "eval-smollm2-135m-opsd-start"
    assert target.describe().splitlines()[0] == (
        f"no cpu-tiny run with checkpoints under {tmp_path}: evaluating its starting model smollm2-135m-opsd-start only")
