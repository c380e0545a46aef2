"""The bad-input table: every bad input a user can hand in, through the public entry points, with the exit
code and the message it gets. No case loads a model (`no_model` makes loading one fail the test): every
check runs before that.

Entry points: the command line (`opsd.__main__.main`, exactly what `python -m opsd` runs, plus one real
subprocess), `opsd.config.load_config`, `opsd.data.load_problems`, `opsd.eval.evaluate.evaluate_run` and the
train notebook's parameter check (`opsd.runs.launch` + `load_config`, one case through papermill).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from opsd.__main__ import main as cli
from opsd.baselines.sft import SFTRunConfig
from opsd.baselines.train import load_baseline_config
from opsd.config import OPSDConfig, load_config, parse_overrides
from opsd.data import load_problems
from opsd.eval import evaluate as ev
from opsd.runs.eval_results import eval_path, write_eval_json
from opsd.runs.launch import check_notebook_parameters, resolve_train_overrides
from opsd.validation import InputError

REPO = Path(__file__).resolve().parents[2]
GOOD = {"problem": "What is 2 + 3?", "solution": "2 + 3 = 5. The answer is \\boxed{5}.", "answer": "5"}


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """Loading a model fails the test: every bad input must be caught before that."""
    import opsd.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(opsd.models, "load_model_and_tokenizer", refuse)


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------ data files

# (case id, file name, content (bytes or rows), columns required, message)
FILE_CASES = [
    ("empty-file", "rows.jsonl", b"", ("problem",), r"rows.jsonl is empty: no rows to read"),
    ("blank-file", "rows.jsonl", b"\n  \n", ("problem",), r"rows.jsonl is empty"),
    ("truncated-last-line", "rows.jsonl", (json.dumps(GOOD) + '\n{"problem": "What is').encode(), ("problem",),
     r"rows.jsonl: line 2 is cut off \(truncated JSON\)"),
    ("invalid-json-line", "rows.jsonl", ("{problem: 1}\n" + json.dumps(GOOD) + "\n").encode(), ("problem",),
     r"rows.jsonl: line 1 is not valid JSON"),
    ("latin-1-encoding", "rows.jsonl", '{"problem": "Caf\u00e9 costs 3 + 4?"}\n'.encode("latin-1"), ("problem",),
     r"rows.jsonl is not UTF-8 text \(byte 0xe9 on line 1\); save it as UTF-8"),
    ("row-is-a-list", "rows.jsonl", b'["What is 1 + 1?", "2"]\n', ("problem",),
     r"rows.jsonl: line 1 is a JSON list, expected an object"),
    ("json-file-of-a-number", "rows.json", b"42", ("problem",), r"rows.json holds a JSON int; expected a list of row objects"),
    ("json-empty-list", "rows.json", b"[]", ("problem",), r"rows.json holds no rows"),
    ("null-solution", "rows.jsonl", [GOOD, {**GOOD, "solution": None}], ("problem", "solution"),
     r"row 1, column 'solution' is null; every row needs a non-empty string there \(1 of 2 rows"),
    ("empty-problem", "rows.jsonl", [{**GOOD, "problem": ""}, GOOD], ("problem",),
     r"row 0, column 'problem' is an empty string"),
    ("blank-problem", "rows.jsonl", [GOOD, {**GOOD, "problem": "   "}], ("problem",),
     r"row 1, column 'problem' is an empty string"),
    ("problem-is-a-list", "rows.jsonl", [{**GOOD, "problem": ["a", "b"]}], ("problem",),
     r"row 0, column 'problem' is a list \(\['a', 'b'\]\), not a string"),
    ("solution-is-a-bool", "rows.jsonl", [{**GOOD, "solution": True}], ("problem", "solution"),
     r"row 0, column 'solution' is a bool"),
    ("answer-is-a-bool", "rows.jsonl", [{**GOOD, "answer": True}, {**GOOD, "answer": False}], ("problem",),
     r"rows.jsonl: row 0, column 'answer' is a bool \(True\), not a string or a number; write the answer as text"),
    ("missing-column", "rows.jsonl", [{"problem": "What is 1 + 1?"}], ("problem", "solution"),
     r"missing columns \['solution'\] \(need \['problem', 'solution'\]\); found \['problem'\]"),
    ("unsupported-extension", "rows.csv", b"problem,solution\n1,2\n", ("problem",), r"unsupported file type '.csv'"),
]


@pytest.mark.parametrize("name, content, require, message", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_data_file_is_an_error_naming_file_line_row_or_column(tmp_path, name, content, require, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_rows(path, content)
    with pytest.raises(InputError, match=message):
        load_problems(path, require=require)


def test_missing_data_file_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file or folder: .*nope.jsonl"):
        load_problems(tmp_path / "nope.jsonl")
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="folder: no data files"):
        load_problems(tmp_path / "folder")


def test_numbers_are_converted_and_said_so(tmp_path, caplog):
    path = write_rows(tmp_path / "rows.jsonl", [{**GOOD, "solution": 42}, GOOD])
    with caplog.at_level(logging.WARNING):
        ds = load_problems(path, require=("problem", "solution"))
    assert ds["solution"] == ["42", GOOD["solution"]]
    assert "column 'solution' holds 1 number(s) (first: row 0, 42); converted to strings" in caplog.text


def test_drop_policy_counts_the_dropped_rows(tmp_path, caplog):
    rows = [GOOD, {**GOOD, "problem": "What is 1 + 1?", "solution": None}, {**GOOD, "problem": "What is 2 + 2?"}]
    path = write_rows(tmp_path / "rows.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        ds = load_problems(path, require=("problem", "solution"), on_invalid="drop")
    assert len(ds) == 2 and "dropped 1 of 3 rows" in caplog.text and "row 1, column 'solution' is null" in caplog.text
    write_rows(path, [{**GOOD, "solution": None}, {**GOOD, "solution": ""}])
    with pytest.raises(InputError, match="all 2 rows are bad"):
        load_problems(path, require=("problem", "solution"), on_invalid="drop")


def test_duplicate_rows_are_counted(tmp_path, caplog):
    path = write_rows(tmp_path / "rows.jsonl", [GOOD, {**GOOD, "problem": "What is 7 + 1?"}, GOOD])
    with caplog.at_level(logging.WARNING):
        assert len(load_problems(path, require=("problem", "solution"))) == 3
    assert "1 duplicate row(s) (the same problem as an earlier row; first: row 2 = row 0); kept" in caplog.text


# ------------------------------------------------------------------------------------------ configs

# (case id, overrides, message): each through load_config, the function every entry point calls.
CONFIG_CASES = [
    ("unknown-key", ["learning_rat=1e-4"], r"unknown override key\(s\) \['learning_rat'\].*did you mean 'learning_rate'"),
    ("float-is-text", ["learning_rate=abc"], r"override learning_rate='abc': expected a number \(float\), got str"),
    ("int-is-float", ["max_steps=2.5"], r"override max_steps=2.5: expected an integer \(int\)"),
    ("int-is-text", ["per_device_train_batch_size=eight"], r"per_device_train_batch_size='eight': expected an integer"),
    ("bool-is-text", ["use_lora=maybe"], r"override use_lora='maybe': expected a boolean"),
    ("list-is-text", ["lora_target_modules=q_proj"], r"lora_target_modules='q_proj': expected a list"),
    ("mapping-is-text", ["student_chat_kwargs=thinking"], r"student_chat_kwargs='thinking': expected a mapping"),
    ("zero-batch", ["per_device_train_batch_size=0"], r"per_device_train_batch_size=0 is out of range: .* positive integer"),
    ("zero-steps", ["max_steps=0"], r"max_steps=0 is out of range"),
    ("negative-length", ["max_completion_length=-8"], r"max_completion_length=-8 is out of range"),
    ("zero-learning-rate", ["learning_rate=0"], r"learning_rate=0 is out of range"),
    ("zero-temperature", ["temperature=0"], r"temperature=0 is out of range"),
    ("beta-above-one", ["beta=1.5"], r"beta=1.5 is out of range: beta must be in \[0, 1\]"),
    ("zero-clip", ["clip=0"], r"clip=0 is out of range: clip must be a positive threshold or null"),
    ("negative-clip", ["clip=-0.05"], r"clip=-0.05 is out of range"),
    ("top-p-above-one", ["top_p=1.5"], r"top_p=1.5 is out of range: top_p must be in \(0, 1\]"),
    ("unknown-choice", ["on_invalid_row=skip"], r"on_invalid_row='skip': must be one of \['error', 'drop'\]"),
    ("unknown-dtype", ["torch_dtype=float64"], r"torch_dtype='float64': must be one of"),
    ("completion-longer-than-max", ["max_completion_length=600"], r"max_completion_length \(600\) must be below max_length \(512\)"),
    ("not-key-value", ["learning_rate"], r"override 'learning_rate' must look like key=value"),
    ("broken-yaml-value", ["lora_target_modules=[q_proj"], r"the value is not valid YAML"),
]


@pytest.mark.parametrize("pairs, message", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_value_names_key_value_and_expected(pairs, message):
    with pytest.raises(InputError, match=message):
        load_config(OPSDConfig, "cpu-tiny", parse_overrides(pairs))


def test_numbers_given_as_text_are_parsed_to_the_field_type():
    config = load_config(OPSDConfig, "cpu-tiny", parse_overrides(["learning_rate=1e-4", "max_steps=3", "clip=null"]))
    assert config.learning_rate == 1e-4 and config.max_steps == 3 and config.clip is None


def test_bad_profiles(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("learning_rate: 1e-3\nmax_steps: [3\nseed: 1\n")
    with pytest.raises(InputError, match=r"broken.yaml' is not valid YAML at line \d+, column \d+"):
        load_config(OPSDConfig, broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- learning_rate\n- max_steps\n")
    with pytest.raises(InputError, match="must be a mapping of config keys, got list"):
        load_config(OPSDConfig, listing)
    with pytest.raises(InputError, match=r"unknown profile 'cpu-tny'; valid profiles: \[.*'cpu-tiny'"):
        load_config(OPSDConfig, "cpu-tny")
    with pytest.raises(FileNotFoundError, match=r"profile file .*missing.yaml' does not exist"):
        load_config(OPSDConfig, tmp_path / "missing.yaml")
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("kind: train\nlearning_rate: fast\n")
    with pytest.raises(InputError, match=r"profile wrong.yaml: learning_rate='fast': expected a number"):
        load_config(OPSDConfig, wrong_type)
    with pytest.raises(InputError, match=r"'sft-cpu-tiny' is a 'sft' profile, not 'train'"):
        load_config(OPSDConfig, "sft-cpu-tiny")
    with pytest.raises(InputError, match=r"beta=-1 is out of range: beta must be 0 \(no KL term\)"):
        load_baseline_config("grpo", "grpo-cpu-tiny", {"beta": -1})
    with pytest.raises(InputError, match=r"learning_rate='abc': expected a number"):
        load_config(SFTRunConfig, "sft-cpu-tiny", parse_overrides(["learning_rate=abc"]))


# ------------------------------------------------------------------------------------------ command line


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli(list(argv))
    captured = capsys.readouterr()
    return code, captured.err + captured.out


CLI_CASES = [
    ("train-wrong-type", ["train", "learning_rate=abc"], r"^error: override learning_rate='abc': expected a number"),
    ("train-out-of-range", ["train", "beta=2"], r"^error: beta=2 is out of range"),
    ("train-unknown-key", ["train", "lerning_rate=1"], r"^error: unknown override key\(s\) \['lerning_rate'\]"),
    ("train-unknown-profile", ["train", "--config", "qwen9"], r"^error: unknown profile 'qwen9'"),
    ("train-with-sft-profile", ["train", "--config", "sft-cpu-tiny"], r"^error: profile 'sft-cpu-tiny' is a 'sft' profile"),
    ("sft-wrong-type", ["sft", "max_steps=abc"], r"^error: override max_steps='abc': expected an integer"),
    ("grpo-negative-beta", ["grpo", "beta=-0.1"], r"^error: beta=-0.1 is out of range"),
    ("grpo-completion-too-long", ["grpo", "max_completion_length=4096"], r"^error: max_completion_length \(4096\) must be below"),
]


@pytest.mark.parametrize("argv, message", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_config_errors_exit_2_with_one_line(capsys, tmp_path, argv, message):
    code, out = run_cli(capsys, *argv, f"output_dir={tmp_path / 'run'}")
    assert code == 2 and "Traceback" not in out
    assert re.search(message, out, flags=re.MULTILINE), out


def test_cli_bad_dataset_rows_stop_before_the_model(capsys, tmp_path):
    data = write_rows(tmp_path / "rows.jsonl", [GOOD, {**GOOD, "problem": "What is 1 + 1?", "solution": None}])
    code, out = run_cli(capsys, "train", f"dataset={data}", f"output_dir={tmp_path / 'run'}")
    assert code == 2 and "error: " in out and "row 1, column 'solution' is null" in out and "on_invalid_row=drop" in out
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, out = run_cli(capsys, "sft", f"dataset={empty}", f"output_dir={tmp_path / 'sft'}")
    assert code == 2 and "empty.jsonl is empty: no rows to read" in out


def test_cli_run_of_another_kind(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"kind": "sft", "model_name": "smollm2-135m-instruct"}))
    code, out = run_cli(capsys, "train", f"output_dir={run}")
    assert code == 2 and f"output_dir {run} holds a 'sft' run, not a 'train' run" in out
    (run / "config.yaml").unlink()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "run_kind": "opsd"}) + "\n")  # older runs: metrics say
    code, out = run_cli(capsys, "grpo", f"output_dir={run}")
    assert code == 2 and "holds a 'train' run, not a 'grpo' run" in out and "python -m opsd train" in out


def make_run(tmp_path: Path, steps=(2, 4)) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"kind": "train", "model_name": "smollm2-135m-instruct",
                                                     "profile": "cpu-tiny", "torch_dtype": "float32"}))
    for step in steps:
        folder = run / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")
        save_file({"w": torch.zeros(4)}, str(folder / "adapter_model.safetensors"))
    return run


def test_eval_cli_run_directory_errors(capsys, tmp_path):
    code, out = run_cli(capsys, "eval", "--run", str(tmp_path / "nope"))
    assert code == 2 and f"error: run directory {tmp_path / 'nope'} does not exist" in out
    (tmp_path / "campaign" / "OPSD").mkdir(parents=True)
    (tmp_path / "campaign" / "OPSD" / "config.yaml").write_text("kind: train\n")
    code, out = run_cli(capsys, "eval", "--run", str(tmp_path / "campaign"))
    assert code == 2 and "is not a training run directory (no config.yaml) but holds runs ['OPSD']" in out
    (tmp_path / "evals").mkdir()
    code, out = run_cli(capsys, "eval", "--run", str(tmp_path / "evals"))
    assert code == 2 and "is not a training run directory (no config.yaml): pass the output_dir" in out


def test_eval_cli_deleted_and_cut_checkpoints(capsys, tmp_path):
    run = make_run(tmp_path)
    code, out = run_cli(capsys, "eval", "--run", str(run), "--steps", "6")
    assert code == 2 and "error: no checkpoint for steps [6]" in out and "(found [2, 4])" in out
    data = (run / "checkpoint-4" / "adapter_model.safetensors").read_bytes()
    (run / "checkpoint-4" / "adapter_model.safetensors").write_bytes(data[:20])
    code, out = run_cli(capsys, "eval", "--run", str(run), "--steps", "4")
    assert code == 2 and "cannot evaluate" in out and "adapter_model.safetensors is cut off" in out


def test_eval_cli_benchmark_file_with_a_null_answer(capsys, tmp_path):
    bench = write_rows(tmp_path / "bench.jsonl", [GOOD, {"problem": "What is 9 + 9?", "answer": None}])
    code, out = run_cli(capsys, "eval", "--model", "smollm2-135m-instruct", "--benchmarks", str(bench),
                        "--output", str(tmp_path / "out"))
    assert code == 2 and "row 1, column 'answer' is an empty string" in out


def test_eval_json_from_other_settings_is_moved_aside_and_redone(tmp_path, monkeypatch, caplog):
    run = make_run(tmp_path, steps=())
    done = []

    def fake_models(model_name, checkpoints, plan, **kwargs):  # no model: every step of the plan, as is
        for step in plan:
            yield step, checkpoints.get(step), None, None, None

    def write(run_dir, benchmark, step, **kwargs):
        done.append((step, benchmark))
        return write_eval_json(run_dir, benchmark, step, **kwargs)

    monkeypatch.setattr(ev, "_hf_models", fake_models)
    monkeypatch.setattr(ev, "evaluate", lambda *args, **kwargs: ([], {"avg_at_k": 0.0}))
    monkeypatch.setattr(ev, "write_eval_json", write)
    ev.evaluate_run(run, "synthetic", k=1, n_problems=2, progress=False)
    assert done == [(0, "synthetic")]
    with caplog.at_level(logging.WARNING):
        ev.evaluate_run(run, "synthetic", k=2, n_problems=2, progress=False)
    assert done == [(0, "synthetic")] * 2
    assert "was evaluated with other settings (k: 1 -> 2)" in caplog.text
    assert len(list((run / "eval" / "synthetic" / "replaced").glob("step-0.*.json"))) == 1
    path = eval_path(run, "synthetic", 0)
    path.write_text(path.read_text()[:50])  # cut by a crash
    ev.evaluate_run(run, "synthetic", k=2, n_problems=2, progress=False)
    assert done == [(0, "synthetic")] * 3 and "is cut off or unreadable" in caplog.text


def test_real_process_exit_code_and_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "opsd", "train", "learning_rate=abc", f"output_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: override learning_rate='abc': expected a number")
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------ notebooks


def test_train_notebook_parameter_check():
    """What reproduce/train.ipynb's second cell runs on its parameters."""
    with pytest.raises(ValueError, match=r"unknown notebook parameter\(s\) \['learning_rate'\]"):
        check_notebook_parameters({"profile": "cpu-tiny", "learning_rate": 1e-3}, {"profile"}, ["profile", "overrides"])
    with pytest.raises(InputError, match="override learning_rate='abc': expected a number"):
        load_config(OPSDConfig, "cpu-tiny", resolve_train_overrides("cpu-tiny", {"learning_rate": "abc"}))
    with pytest.raises(InputError, match="max_steps=0 is out of range"):
        load_config(OPSDConfig, "cpu-tiny", resolve_train_overrides("cpu-tiny", {}, max_steps=0))
    with pytest.raises(ValueError, match="unknown profile 'qwen9'"):
        resolve_train_overrides("qwen9", {})


@pytest.mark.slow
@pytest.mark.notebook
def test_train_notebook_reports_an_out_of_range_override(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError, match=r"beta=2 is out of range"):
        pm.execute_notebook(str(REPO / "reproduce" / "train.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"overrides": {"beta": 2}, "output_dir": str(tmp_path / "run")},
                            kernel_name="opsd-kit", cwd=str(REPO), progress_bar=False)


@pytest.mark.parametrize("steps,message", [
    ("abc", "--steps must be comma-separated checkpoint steps such as 0,25,50; got 'abc'"),
    ("2,-4", "--steps must be >= 0; got '2,-4'"),
])
def test_eval_cli_bad_steps(capsys, tmp_path, steps, message):
    run = make_run(tmp_path)
    code, out = run_cli(capsys, "eval", "--run", str(run), "--steps", steps)
    assert code == 2 and f"error: {message}" in out
