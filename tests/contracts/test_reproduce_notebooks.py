"""reproduce/train.ipynb and reproduce/eval.ipynb run headless through papermill (tiny settings): the eval
notebook's defaults on the train notebook's run reproduce its held-out check exactly."""

from __future__ import annotations

import json
from pathlib import Path

import papermill as pm
import pytest

pytestmark = [pytest.mark.notebook, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
KERNEL = "opsd-kit"


def run_notebook(name: str, out: Path, **parameters):
    return pm.execute_notebook(
        str(REPO / "reproduce" / name), str(out), parameters=parameters, kernel_name=KERNEL, cwd=str(REPO),
        progress_bar=False,
    )


#: Tiny training settings; 64 new tokens (cpu-tiny's max_completion_length), so that the starting model's greedy
#: answers reach their box (about 55 tokens) and the held-out counts are not all zero.
TINY_OVERRIDES = {"per_device_train_batch_size": 2, "max_completion_length": 64, "save_steps": 1, "lora_r": 4,
                  "lora_alpha": 8, "log_rollouts_every": 1, "dataset_size": 8}
HELDOUT_PROBLEMS = 4


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-step cpu-tiny run trained by reproduce/train.ipynb: (run directory, executed notebook path)."""
    root = tmp_path_factory.mktemp("tiny-run")
    run_dir = root / "run"
    run_notebook(
        "train.ipynb", root / "train.ipynb", overrides=TINY_OVERRIDES, output_dir=str(run_dir), max_steps=2,
        heldout_problems=HELDOUT_PROBLEMS, gap_problems=2,  # held-out answers: the run's 64 tokens (the default)
    )
    return run_dir, root / "train.ipynb"


def test_train_notebook_trains_and_reports(tiny_run):
    run_dir, notebook = tiny_run
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    heldout = json.loads((run_dir / "heldout_accuracy.json").read_text())
    assert heldout["steps"] == 2 and heldout["model_name"] == "smollm2-135m-opsd-start"
    for when in ("before", "after"):
        assert set(heldout[when]) == {"synthetic", "synthetic-paraphrased"}
        for result in heldout[when].values():
            assert result["n"] == 4 and result["interval"][0] <= result["accuracy"] <= result["interval"][1]
    assert heldout["gap"]["n"] == 2 and heldout["gap"]["teacher"]["n"] == 2
    executed = json.loads(notebook.read_text())
    text = "".join("".join(o["text"]) for c in executed["cells"] for o in c.get("outputs", []) if "text" in o)
    assert "step 2/2" in text  # StepPrinter's per-step line
    assert "privilege gap" in text and "self-teacher" in text
    assert "synthetic-paraphrased" in text and "  ->  after " in text  # the summary's before -> after lines
    assert "Warning" not in text, "library warnings in the notebook's outputs"
    assert (run_dir / "checkpoint-2").is_dir() and (run_dir / "config.yaml").exists()
    info = json.loads((run_dir / "run_info.json").read_text())  # make demo writes it as python -m opsd train does
    assert info["global_step"] == 2 and info["tokens_generated"] == metrics[-1]["tokens_generated"]


def test_eval_notebook_defaults_reproduce_the_demo_heldout_check(tiny_run, tmp_path):
    """reproduce/eval.ipynb with its defaults on the run train.ipynb wrote: the demo's protocol (greedy, the run's
    max_completion_length, the evaluation prompt, synthetic and synthetic-paraphrased), so its last step's
    correct counts are heldout_accuracy.json's "after" ones. Only the number of problems is set (the train
    notebook's heldout_problems), and the steps (0 and the last, to save time)."""
    run_dir, _ = tiny_run
    heldout = json.loads((run_dir / "heldout_accuracy.json").read_text())
    last = heldout["steps"]
    run_notebook("eval.ipynb", tmp_path / "eval.ipynb", run_dir=str(run_dir), n_problems=HELDOUT_PROBLEMS,
                 steps=[0, last])
    for name in ("synthetic", "synthetic-paraphrased"):
        for when, step in (("after", last), ("before", 0)):
            result = json.loads((run_dir / "eval" / name / f"step-{step}.json").read_text())
            s = result["settings"]
            assert (s["k"], s["temperature"], s["max_new_tokens"], s["prompt"], s["thinking"]) == (
                1, 0.0, TINY_OVERRIDES["max_completion_length"], "reference", False)
            assert s["n_problems"] == heldout[when][name]["n"] == HELDOUT_PROBLEMS
            correct = sum(bool(r["correct"]) for r in result["records"])
            assert correct == heldout[when][name]["correct"], (name, when)
    executed = json.loads((tmp_path / "eval.ipynb").read_text())
    text = "".join("".join(o["text"]) for c in executed["cells"] for o in c.get("outputs", []) if "text" in o)
    assert "(run config.yaml)" in text  # the settings printed with where they came from
    assert text.count("(the same)") == 4 and "different settings or results" not in text


def test_train_notebook_rejects_unknown_parameters(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="unknown notebook parameter.*learning_rate"):
        run_notebook("train.ipynb", tmp_path / "bad.ipynb", learning_rate=1e-3, output_dir=str(tmp_path / "x"))
    with pytest.raises(pm.PapermillExecutionError, match="unknown override key"):
        run_notebook("train.ipynb", tmp_path / "bad2.ipynb", overrides={"learning_rat": 1.0}, output_dir=str(tmp_path / "y"))
    with pytest.raises(pm.PapermillExecutionError, match="unknown profile"):
        run_notebook("train.ipynb", tmp_path / "bad3.ipynb", profile="qwen9")


@pytest.mark.parametrize("name", ["train.ipynb", "eval.ipynb", "figures.ipynb"])
def test_notebook_is_committed_clean(name):
    nb = json.loads((REPO / "reproduce" / name).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "clear the outputs"


def test_figures_notebook_types_no_campaign_number():
    """figures.ipynb's prose about the campaign is built from the runs (opsd.paper.tables.imitation_findings):
    no accuracy is typed into its markdown."""
    import re

    nb = json.loads((REPO / "reproduce" / "figures.ipynb").read_text())
    markdown = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert not re.findall(r"(?<![\d.])(?!95\s*%)\d+(?:\.\d+)?\s*%", markdown)  # 95%: the intervals' level
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "display(Markdown(findings))" in code and "imitation_findings(records, ti)" in code
