"""Tests for opsd.data: synthetic math set, local loaders, schema normalisation, benchmarks."""

import json
import re
from pathlib import Path

import datasets
import pytest

from opsd import data
from opsd.data import (
    BENCHMARKS,
    SYNTHETIC_KINDS,
    benchmark_names,
    load_benchmark,
    load_problems,
    require_columns,
    synthetic_math,
    synthetic_problem_keys,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "\\times": lambda a, b: a * b}


# ------------------------------------------------------------------ synthetic


def test_synthetic_columns_and_arithmetic():
    for kind in SYNTHETIC_KINDS:
        ds = synthetic_math(50, seed=3, kind=kind)
        assert ds.column_names == ["problem", "solution", "answer"] and len(ds) == 50
        for row in ds:
            a, op, b = re.fullmatch(r"What is (\d+) (\+|-|\\times) (\d+)\?", row["problem"]).groups()
            assert row["answer"] == str(OPS[op](int(a), int(b)))
            assert row["solution"].endswith(f"\\boxed{{{row['answer']}}}.")
            assert re.search(rf"so {a} {re.escape(op)} {b} = (.+ = )?{row['answer']}\.", row["solution"])


def test_synthetic_default_is_two_digit_addition_with_worked_solution():
    row = synthetic_math(1)[0]
    a, b = map(int, re.findall(r"\d+", row["problem"]))
    assert 10 <= a <= 99 and 10 <= b <= 99 and row["problem"] == f"What is {a} + {b}?"
    tens, ones = a // 10 * 10 + b // 10 * 10, a % 10 + b % 10
    assert f"= {tens} and" in row["solution"] and f"= {ones}, so" in row["solution"] and tens + ones == a + b
    assert row["solution"].endswith(f"{a} + {b} = {a + b}.\n\nThe answer is \\boxed{{{a + b}}}.")


def test_synthetic_worked_steps_are_true_equations():
    """Every equation chain `x op y = ... = z` in every solution holds (place-value steps included)."""
    for kind in SYNTHETIC_KINDS:
        for row in synthetic_math(100, seed=4, kind=kind):
            chains = re.findall(r"\d+(?: (?:\+|-|\\times|=) \d+)+", row["solution"])
            assert len(chains) >= 3, row["solution"]
            for chain in chains:
                values = {eval(side.replace("\\times", "*")) for side in chain.split(" = ")}  # digits/+/-/* only
                assert len(values) == 1 and " = " in chain, (row["solution"], chain)


def test_synthetic_is_deterministic_per_seed():
    assert synthetic_math(20, seed=5).to_dict() == synthetic_math(20, seed=5).to_dict()
    assert synthetic_math(20, seed=5)["problem"] != synthetic_math(20, seed=6)["problem"]
    assert len(set(synthetic_math(200, seed=1)["problem"])) == 200  # no repeats within a set


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_train_and_heldout_never_share_a_problem(kind):
    train_keys = synthetic_problem_keys("train", kind=kind)
    heldout_keys = synthetic_problem_keys("heldout", kind=kind)
    assert not set(train_keys) & set(heldout_keys)
    assert 0.08 < len(heldout_keys) / (len(train_keys) + len(heldout_keys)) < 0.17
    train = set(synthetic_math(len(train_keys), seed=0, kind=kind)["problem"])
    heldout = synthetic_math(len(heldout_keys), seed=9, split="heldout", kind=kind)
    assert not train & set(heldout["problem"])
    if kind == "add":  # 23 + 45 and 45 + 23 are one problem: the same sum must not be in both splits
        def pair(p):
            return frozenset(map(int, re.findall(r"\d+", p)))
        assert not {pair(p) for p in train} & {pair(p) for p in heldout["problem"]}


def test_synthetic_errors():
    n_heldout = len(synthetic_problem_keys("heldout"))
    with pytest.raises(ValueError, match=f"only {n_heldout} distinct 'heldout' problems"):
        synthetic_math(n_heldout + 1, split="heldout")
    with pytest.raises(ValueError, match="unknown synthetic kind"):
        synthetic_math(2, kind="div")
    with pytest.raises(ValueError, match="split must be one of"):
        synthetic_math(2, split="test")


def test_load_problems_synthetic():
    train = load_problems("synthetic")
    heldout = load_problems("synthetic", "heldout")
    assert (len(train), len(heldout)) == (512, 64)
    assert load_problems("synthetic", n=7, seed=2).to_dict() == synthetic_math(7, seed=2).to_dict()


# ------------------------------------------------------------------ local files: fixtures with public schemas

AIME = {"id": [60, 61], "problem": ["Find x.", "Find y."], "solution": ["x is 204.", "y is 25."],
        "answer": ["204", "025"], "url": ["u1", "u2"], "year": ["2024", "2024"]}
AIME25_INT = {"id": [0, 1], "problem": ["P1", "P2"], "answer": [70, 588], "solution": ["70", "588"], "year": [2025, 2025]}
HMMT = {"problem_idx": [1, 2], "problem": ["Compute 9!.", "Compute 2+2."], "answer": ["362880", "4"],
        "problem_type": [["Number Theory"], ["Algebra"]]}
OPENTHOUGHTS = [{"problem": "What is 1+1?", "solution": "It is \\boxed{2}."},
                {"problem": "What is 2+3?", "solution": "It is \\boxed{5}."}]


def _parquet(path: Path, columns: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns).to_parquet(str(path))
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_parquet_aime_schema(tmp_path):
    ds = load_problems(_parquet(tmp_path / "aime.parquet", AIME), require=("problem", "solution", "answer"))
    assert ds["answer"] == ["204", "025"] and ds["problem"] == AIME["problem"]


def test_int_answers_become_strings(tmp_path):
    ds = load_problems(_parquet(tmp_path / "aime25.parquet", AIME25_INT), require=("problem", "answer"))
    assert ds["answer"] == ["70", "588"] and ds.features["answer"] == datasets.Value("string")


def test_capitalised_and_question_columns_are_normalised(tmp_path):
    caps = _parquet(tmp_path / "caps.parquet", {"Problem": ["p"], "Solution": ["s"], "Answer": [27.0]})
    ds = load_problems(caps, require=("problem", "solution", "answer"))
    assert ds[0] == {"problem": "p", "solution": "s", "answer": "27"}
    amc = _jsonl(tmp_path / "amc.jsonl", [{"question": "q?", "answer": 1.5}])
    assert load_problems(amc, require=("problem", "answer"))[0] == {"problem": "q?", "answer": "1.5"}


def test_load_jsonl_and_json_openthoughts_schema(tmp_path):
    ds = load_problems(_jsonl(tmp_path / "ot.jsonl", OPENTHOUGHTS), require=("problem", "solution"))
    assert ds.column_names == ["problem", "solution"] and len(ds) == 2
    path = tmp_path / "ot.json"
    path.write_text(json.dumps(OPENTHOUGHTS))
    assert load_problems(path, require=("problem", "solution"))["solution"] == ds["solution"]


def test_load_folder_hub_layout_with_splits(tmp_path):
    root = tmp_path / "hmmt"
    _parquet(root / "data" / "train-00000-of-00002.parquet", HMMT)
    _parquet(root / "data" / "train-00001-of-00002.parquet", HMMT)
    _parquet(root / "data" / "test-00000-of-00001.parquet", {k: v[:1] for k, v in HMMT.items()})
    (root / "README.md").write_text("card")
    assert len(load_problems(root, "train")) == 4
    assert len(load_problems(root, "test")) == 1
    assert len(load_problems(root)) == 5
    with pytest.raises(ValueError, match="no 'validation' files"):
        load_problems(root, "validation")


def test_n_and_seed_select_a_deterministic_subset(tmp_path):
    rows = [{"problem": f"p{i}", "solution": f"s{i}"} for i in range(20)]
    path = _jsonl(tmp_path / "rows.jsonl", rows)
    a, b = load_problems(path, n=5, seed=1), load_problems(path, n=5, seed=1)
    assert a["problem"] == b["problem"] and len(set(a["problem"])) == 5
    assert len(load_problems(path, n=100)) == 20


def test_missing_columns_error_names_missing_and_found(tmp_path):
    bad = _parquet(tmp_path / "bad.parquet", {"problem": ["p"], "answer": ["1"]})
    with pytest.raises(ValueError) as err:
        load_problems(bad, require=("problem", "solution"))
    message = str(err.value)
    assert "missing columns ['solution']" in message and "found ['problem', 'answer']" in message
    assert "bad.parquet" in message
    nothing = _jsonl(tmp_path / "x.jsonl", [{"text": "t"}])
    with pytest.raises(ValueError, match=r"missing columns \['problem'\].*found \['text'\]"):
        load_problems(nothing)


def test_require_columns_helper():
    ds = datasets.Dataset.from_dict({"problem": ["p"], "answer": ["1"]})
    assert require_columns(ds, ["problem"]) is ds
    with pytest.raises(ValueError, match=r"my-set: missing columns \['solution'\].*found \['problem', 'answer'\]"):
        require_columns(ds, ["problem", "solution"], "my-set")


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_problems(tmp_path / "nope.parquet")
    with pytest.raises(FileNotFoundError, match="no data files"):
        load_problems(tmp_path)
    (tmp_path / "x.csv").write_text("problem\np\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_problems(tmp_path / "x.csv")


# ------------------------------------------------------------------ named benchmarks


def test_benchmark_table():
    assert BENCHMARKS["aime24"].hub_id == "HuggingFaceH4/aime_2024"
    assert BENCHMARKS["aime25"].hub_id == "yentinglin/aime_2025"
    assert BENCHMARKS["hmmt25"].hub_id == "MathArena/hmmt_feb_2025"
    assert (BENCHMARKS["math500"].hub_id, BENCHMARKS["math500"].split) == ("HuggingFaceH4/MATH-500", "test")
    assert BENCHMARKS["openthoughts"].hub_id == "siyanzhao/Openthoughts_math_30k_opsd"
    with pytest.raises(ValueError, match="unknown benchmark 'aime99'"):
        load_benchmark("aime99")


def test_load_benchmark_prefers_local_copy(tmp_path, monkeypatch):
    _parquet(tmp_path / "eval" / "aime24" / "data" / "train-00000-of-00001.parquet", AIME)
    _parquet(tmp_path / "eval" / "hmmt25" / "data" / "train-00000-of-00001.parquet", HMMT)
    rows = tmp_path / "train" / "openthoughts_math_30k_opsd" / "data"
    rows.mkdir(parents=True)
    _jsonl(rows / "train-00000-of-00001.jsonl", OPENTHOUGHTS)
    assert load_benchmark("aime24", local_dir=tmp_path)["answer"] == ["204", "025"]
    assert len(load_benchmark("openthoughts", local_dir=tmp_path)) == 2
    monkeypatch.setenv("OPSD_DATA_DIR", str(tmp_path))
    assert load_benchmark("hmmt25")["answer"] == HMMT["answer"]
    with pytest.raises(FileNotFoundError, match="no local copy of 'aime25'"):
        load_benchmark("aime25", local_dir=tmp_path)
    asked = []

    def from_hub(source, split, **kw):
        asked.append((source, split))
        return datasets.Dataset.from_dict({"problem": ["P"], "answer": ["1"]})

    monkeypatch.setattr(data, "load_problems", from_hub)
    load_benchmark("aime25")
    assert asked == [("yentinglin/aime_2025", "train")]  # no local copy -> the Hub id


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="no local copies of AIME24/25 and HMMT25 beside the repository")
@pytest.mark.parametrize("name", ["aime24", "aime25", "hmmt25"])
def test_shared_eval_copies_load(name):
    ds = load_benchmark(name, local_dir=SHARED_DATA)
    assert len(ds) == 30 and ds.features["answer"] == datasets.Value("string")
    assert all(p and a for p, a in zip(ds["problem"], ds["answer"]))
    if name != "hmmt25":
        assert "solution" in ds.column_names


AIME_ROWS = {
    "id": [60, 61],
    "problem": ["Find $x$ if $x + 1 = 3$.", "Compute $7 \\cdot 6$."],
    "solution": ["Subtract: $x = \\boxed{2}$.", "It is $42$."],
    "answer": ["2", "042"],
    "url": ["u1", "u2"],
    "year": ["2024", "2024"],
}
HMMT_ROWS = [
    {"problem_idx": 1, "problem": "Compute $1+1$.", "answer": "2", "problem_type": ["Algebra"]},
    {
        "problem_idx": 2,
        "problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.",
        "answer": "\\frac{3}{4}",
        "problem_type": ["Algebra", "Number Theory"],
    },
    {"problem_idx": 3, "problem": "Compute $2^3$.", "answer": "8", "problem_type": []},
]


def test_load_benchmark_from_aime_parquet(tmp_path):
    import pandas as pd

    path = tmp_path / "aime.parquet"
    pd.DataFrame(AIME_ROWS).to_parquet(path)
    ds = load_benchmark(str(path))
    assert len(ds) == 2
    assert list(ds["id"]) == ["60", "61"] and list(ds["answer"]) == ["2", "042"]
    assert ds["problem"][1] == "Compute $7 \\cdot 6$."
    assert len(load_benchmark(str(path), n=1)) == 1


def test_load_benchmark_from_hmmt_jsonl(tmp_path):
    path = tmp_path / "hmmt.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in HMMT_ROWS))
    ds = load_benchmark(str(path))
    assert list(ds["id"]) == ["1", "2", "3"]  # from problem_idx
    assert list(ds["answer"]) == ["2", "\\frac{3}{4}", "8"]


def test_load_benchmark_answer_from_solution_and_question_alias(tmp_path):
    rows = [
        {"question": "What is 3+4?", "solution": "So \\boxed{7}."},
        {"question": "2*2?", "solution": "\\boxed{4}"},
    ]
    path = tmp_path / "amc_like.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_benchmark(str(path))
    assert list(ds["problem"]) == ["What is 3+4?", "2*2?"]
    assert list(ds["answer"]) == ["7", "4"] and list(ds["id"]) == ["0", "1"]


def test_unknown_benchmark_names_the_valid_ones():
    with pytest.raises(ValueError, match="aime24"):
        load_benchmark("aime2099")
    with pytest.raises(ValueError, match="math500"):
        benchmark_names("synthetic,aime2099")


def test_synthetic_benchmark_is_the_heldout_split():
    ds = load_benchmark("synthetic", n=5)
    assert len(ds) == 5 and set(ds.column_names) >= {"id", "problem", "answer"}
    assert list(ds["problem"]) == list(data.synthetic_math(5, split="heldout")["problem"])


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_three_splits_partition_the_problems(kind):
    from opsd.data import _operands

    splits = {s: set(synthetic_problem_keys(s, kind=kind)) for s in ("train", "heldout", "warmup")}
    assert not splits["train"] & splits["warmup"] and not splits["heldout"] & splits["warmup"]
    assert splits["train"] | splits["heldout"] | splits["warmup"] == set(_operands(kind, 2))
    assert 0.03 < len(splits["warmup"]) / len(set(_operands(kind, 2))) < 0.1


def test_paraphrased_problems_keep_answers_and_never_use_the_training_wording():
    standard = synthetic_math(120, seed=3, split="heldout")
    para = synthetic_math(120, seed=3, split="heldout", phrasing="paraphrased")
    assert standard["answer"] == para["answer"] and standard["solution"] == para["solution"]
    assert all(p.startswith("What is ") for p in standard["problem"])
    assert not any(p.startswith("What is ") for p in para["problem"])
    assert len({re.sub(r"\d+", "#", p) for p in para["problem"]}) == 6  # six wordings, fixed per problem
    for std, alt in zip(standard["problem"], para["problem"]):
        assert sorted(map(int, re.findall(r"\d+", std))) == sorted(map(int, re.findall(r"\d+", alt)))
    assert para.to_dict() == synthetic_math(120, seed=3, split="heldout", phrasing="paraphrased").to_dict()


def test_terse_references_give_the_answer_without_a_derivation():
    worked = synthetic_math(30, seed=1)
    terse = synthetic_math(30, seed=1, reference="terse")
    assert worked["problem"] == terse["problem"] and worked["answer"] == terse["answer"]
    row = terse[0]
    a, b = map(int, re.findall(r"\d+", row["problem"]))
    assert row["solution"] == f"{a} + {b} = {a + b}.\n\nThe answer is \\boxed{{{a + b}}}."
    assert not any("tens" in s for s in terse["solution"])
    assert load_problems("synthetic-terse", n=5, seed=1).to_dict() == synthetic_math(5, seed=1, reference="terse").to_dict()
    with pytest.raises(ValueError, match="reference must be one of"):
        synthetic_math(2, reference="long")
    with pytest.raises(ValueError, match="phrasing must be one of"):
        synthetic_math(2, phrasing="odd")
