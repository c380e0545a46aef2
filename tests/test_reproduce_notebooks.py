"""reproduce/train.ipynb and reproduce/eval.ipynb run headless through papermill (tiny settings)."""

from __future__ import annotations

import json
from pathlib import Path

import papermill as pm
import pytest

pytestmark = [pytest.mark.notebook, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
KERNEL = "opsd-kit"


def run_notebook(name: str, out: Path, **parameters):
    return pm.execute_notebook(
        str(REPO / "reproduce" / name), str(out), parameters=parameters, kernel_name=KERNEL, cwd=str(REPO),
        progress_bar=False,
    )


def test_train_notebook_trains_and_reports(tmp_path):
    run_dir = tmp_path / "run"
    run_notebook(
        "train.ipynb", tmp_path / "train.ipynb",
        overrides={"per_device_train_batch_size": 2, "max_completion_length": 8, "save_steps": 1,
                   "lora_r": 4, "lora_alpha": 8, "log_rollouts_every": 1, "dataset_size": 8},
        output_dir=str(run_dir), max_steps=2, heldout_problems=4, heldout_max_new_tokens=8, gap_problems=2,
    )
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    heldout = json.loads((run_dir / "heldout_accuracy.json").read_text())
    assert heldout["steps"] == 2 and heldout["model_name"] == "smollm2-135m-opsd-start"
    for when in ("before", "after"):
        assert set(heldout[when]) == {"synthetic", "synthetic-paraphrased"}
        for result in heldout[when].values():
            assert result["n"] == 4 and result["interval"][0] <= result["accuracy"] <= result["interval"][1]
    assert heldout["gap"]["n"] == 2 and heldout["gap"]["teacher"]["n"] == 2
    executed = json.loads((tmp_path / "train.ipynb").read_text())
    text = "".join("".join(o["text"]) for c in executed["cells"] for o in c.get("outputs", []) if "text" in o)
    assert "step 2/2" in text  # StepPrinter's per-step line
    assert "privilege gap" in text and "self-teacher" in text
    assert "synthetic-paraphrased" in text and "  ->  after " in text  # the summary's before -> after lines
    assert "Warning" not in text, "library warnings in the notebook's outputs"
    assert (run_dir / "checkpoint-2").is_dir() and (run_dir / "config.yaml").exists()
    info = json.loads((run_dir / "run_info.json").read_text())  # make demo writes it as python -m opsd train does
    assert info["global_step"] == 2 and info["tokens_generated"] == metrics[-1]["tokens_generated"]


def test_train_notebook_rejects_unknown_parameters(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="unknown notebook parameter.*learning_rate"):
        run_notebook("train.ipynb", tmp_path / "bad.ipynb", learning_rate=1e-3, output_dir=str(tmp_path / "x"))
    with pytest.raises(pm.PapermillExecutionError, match="unknown override key"):
        run_notebook("train.ipynb", tmp_path / "bad2.ipynb", overrides={"learning_rat": 1.0}, output_dir=str(tmp_path / "y"))
    with pytest.raises(pm.PapermillExecutionError, match="unknown profile"):
        run_notebook("train.ipynb", tmp_path / "bad3.ipynb", profile="qwen9")
