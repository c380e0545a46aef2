"""Problem sets: the synthetic offline math set, local files, Hub datasets; column validation; the named
benchmarks (``BENCHMARKS``, ``load_benchmark``: rows with ``id``, ``problem``, ``answer``).

Every loader returns a ``datasets.Dataset`` with a ``problem`` column and, where the source has them,
``solution`` (the reference solution the OPSD teacher sees) and ``answer`` (a string, for grading).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets

from opsd.data_checks import as_string_columns, check_data_files, validate_rows
from opsd.eval.grading import extract_boxed
from opsd.validation import InputError, MissingInputError

logger = logging.getLogger(__name__)

SPLITS = ("train", "heldout", "warmup")
HELDOUT_EVERY = 8  # one problem in 8 (by a hash of its key) belongs to the held-out split
WARMUP_EVERY = 16  # of the others, one in 16 (another part of the hash) is the starting model's warm-up slice
#: Problem wordings: ``standard`` ("What is a + b?", the only one training ever uses) and ``paraphrased``
#: (other wordings, one per key, for held-out checks that learning is not tied to the template).
PHRASINGS = ("standard", "paraphrased")
#: Reference solutions: ``worked`` (place-value steps, then the boxed answer), ``terse`` (the equation and
#: the boxed answer only: the answer without a derivation the model could usefully imitate) and ``verbose``
#: (the worked steps wrapped in a long-winded plan, decomposition and check: correct, but longer than the
#: CPU answer budget of 64 tokens, so a model that imitates the style runs out of tokens before its answer).
REFERENCE_STYLES = ("worked", "terse", "verbose")

# ----------------------------------------------------------------------------------------------
# Synthetic arithmetic
# ----------------------------------------------------------------------------------------------


def _operands(kind: str, digits: int) -> Iterable[tuple[str, int, int]]:
    """All problem keys ``(op, a, b)`` of a kind; commutative ops list each unordered pair once."""
    lo, hi = 10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1
    if kind == "add":
        for a in range(lo, hi + 1):
            for b in range(a, hi + 1):
                yield ("+", a, b)
    elif kind == "sub":
        for a in range(lo, hi + 1):
            for b in range(lo, a + 1):
                yield ("-", a, b)
    elif kind == "mul_small":
        for a in range(2, 10):
            for b in range(lo, hi + 1):
                yield ("*", a, b)
    else:
        raise ValueError(f"unknown synthetic kind {kind!r}; choose from {SYNTHETIC_KINDS}")


SYNTHETIC_KINDS = ("add", "sub", "mul_small")


def _key_hash(op: str, a: int, b: int) -> int:
    """A stable 64-bit hash of a problem key (independent of PYTHONHASHSEED, n and seed)."""
    return int.from_bytes(hashlib.sha256(f"{op}|{a}|{b}".encode()).digest()[:8], "big")


def _split_of(op: str, a: int, b: int) -> str:
    h = _key_hash(op, a, b)
    if h % HELDOUT_EVERY == 0:
        return "heldout"
    return "warmup" if (h >> 24) % WARMUP_EVERY == 0 else "train"


_PARAPHRASES = {  # never used in training; "{x}" and "{y}" are the operands, "{o}" the operator as a word
    "+": ("Compute {x} plus {y}.", "Find the sum of {x} and {y}.", "Add {x} and {y}. What do you get?",
          "If you have {x} apples and get {y} more, how many apples do you have?", "Calculate: {x} + {y}",
          "What number do you get when {y} is added to {x}?"),
    "-": ("Compute {x} minus {y}.", "Find the difference {x} - {y}.", "Subtract {y} from {x}.",
          "If you have {x} apples and give away {y}, how many apples are left?", "Calculate: {x} - {y}",
          "What number do you get when {y} is taken away from {x}?"),
    "*": ("Compute {x} times {y}.", "Find the product of {x} and {y}.", "Multiply {x} by {y}.",
          "If {x} boxes hold {y} apples each, how many apples are there?", "Calculate: {x} \\times {y}",
          "What number do you get when {x} is multiplied by {y}?"),
}


def _problem_text(op: str, a: int, b: int, phrasing: str, key_hash: int) -> str:
    if phrasing == "standard":
        symbol = {"+": "+", "-": "-", "*": "\\times"}[op]
        return f"What is {a} {symbol} {b}?"
    templates = _PARAPHRASES[op]
    return templates[(key_hash >> 40) % len(templates)].format(x=a, y=b)


def _render(op: str, a: int, b: int, phrasing: str = "standard", reference: str = "worked") -> dict[str, str]:
    """Problem text, a reference solution ending in ``\\boxed{answer}``, the answer (see ``synthetic_math``)."""
    key_hash = _key_hash(op, a, b)
    if op == "+":
        if key_hash >> 8 & 1:  # show commutative pairs in either order, fixed per key
            a, b = b, a
        c = a + b
        ta, tb, oa, ob = a // 10 * 10, b // 10 * 10, a % 10, b % 10
        steps = f"Add the tens and the ones: {ta} + {tb} = {ta + tb} and {oa} + {ob} = {oa + ob}, so {a} + {b} = {c}."
    elif op == "-":
        c = a - b
        tb, ob = b // 10 * 10, b % 10
        steps = f"Subtract the tens, then the ones: {a} - {tb} = {a - tb} and {a - tb} - {ob} = {c}, so {a} - {b} = {c}."
    elif op == "*":
        c = a * b
        tb, ob = b // 10 * 10, b % 10
        steps = (f"Multiply the tens and the ones: {a} \\times {tb} = {a * tb} and {a} \\times {ob} = {a * ob}, "
                 f"so {a} \\times {b} = {a * tb} + {a * ob} = {c}.")
    else:  # pragma: no cover - keys come from _operands
        raise ValueError(op)
    if reference == "terse":
        symbol = "\\times" if op == "*" else op
        steps = f"{a} {symbol} {b} = {c}."
    elif reference == "verbose":
        steps = _verbose_steps(op, a, b, c, steps)
    return {"problem": _problem_text(op, a, b, phrasing, key_hash), "solution": f"{steps}\n\nThe answer is \\boxed{{{c}}}.", "answer": str(c)}


def _verbose_steps(op: str, a: int, b: int, c: int, worked: str) -> str:
    """The worked steps inside a plan, a place-value decomposition and an inverse-operation check."""
    check = {"+": f"To check, I subtract: {c} - {b} = {c - b}, which is {a}, as it should be.",
             "-": f"To check, I add back: {c} + {b} = {c + b}, which is {a}, as it should be.",
             "*": f"To check, I divide: {c} / {a} = {c // a}, which is {b}, as it should be."}[op]
    return (f"Let me solve this carefully, step by step, and check the result before I give the answer. "
            f"First I write each number by place value. The number {a} has tens digit {a // 10} and ones digit "
            f"{a % 10}, and the number {b} has tens digit {b // 10} and ones digit {b % 10}. {worked} {check} "
            f"The check works, so I am confident in the result.")


def synthetic_problem_keys(split: str = "train", *, kind: str = "add", digits: int = 2) -> list[tuple[str, int, int]]:
    """All ``(op, a, b)`` keys of one split, in a fixed order. Train and held-out never share a key."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [k for k in _operands(kind, digits) if _split_of(*k) == split]


def synthetic_math(n: int, seed: int = 0, split: str = "train", *, kind: str = "add",
                   digits: int = 2, phrasing: str = "standard", reference: str = "worked") -> datasets.Dataset:
    """``n`` arithmetic problems with string columns ``problem``, ``solution``, ``answer``.

    Default: additions of two 2-digit numbers: ``"What is 18 + 55?"``, a solution worked by place value
    (``"Add the tens and the ones: 10 + 50 = 60 and 8 + 5 = 13, so 18 + 55 = 73.\\n\\nThe answer is
    \\boxed{73}."``), answer ``"73"``. ``kind="sub"``: a - b with a >= b; ``"mul_small"``: a one-digit
    number times a ``digits``-digit one. ``phrasing``, ``reference``: see ``PHRASINGS``, ``REFERENCE_STYLES``.

    Deterministic for ``(n, seed, split, kind, digits)``. A problem's split comes from a hash of its key
    ``(op, a, b)`` alone (``18 + 55`` and ``55 + 18`` are one key): 1 key in 8 is ``"heldout"``, 1 in 16 of
    the others ``"warmup"`` (the CPU starting model's SFT warm-up, ``opsd.baselines.warmstart``), the rest ``"train"``;
    so the splits never share a problem, whatever ``n`` and ``seed``. Asking for more problems than a split
    holds raises (2-digit add: 3,338 train / 224 warmup / 533 held-out).

    Why this set: SmolLM2-135M-Instruct is poor at it as a student and much better when it sees the
    solution, the gap OPSD closes on a CPU. Measured on the embedded model (greedy, ``paper`` prompts,
    seed 0, assistant text forced to ``"The answer is \\boxed{"``, 64 problems): the student continues
    with the right number on 0/64 train and 1/64 held-out problems, the teacher on 64/64 and 64/64.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing must be one of {PHRASINGS}, got {phrasing!r}")
    if reference not in REFERENCE_STYLES:
        raise ValueError(f"reference must be one of {REFERENCE_STYLES}, got {reference!r}")
    keys = synthetic_problem_keys(split, kind=kind, digits=digits)
    if n > len(keys):
        raise ValueError(f"synthetic_math(kind={kind!r}, digits={digits}) has only {len(keys)} distinct "
                         f"{split!r} problems; asked for n={n}")
    chosen = random.Random(f"{seed}|{split}|{kind}|{digits}").sample(keys, n)
    rows = [_render(*k, phrasing=phrasing, reference=reference) for k in chosen]
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in ("problem", "solution", "answer")})


# ----------------------------------------------------------------------------------------------
# Files, folders and Hub datasets
# ----------------------------------------------------------------------------------------------

DEFAULT_SYNTHETIC_SIZES = {"train": 512, "heldout": 64, "warmup": 64}
#: Names of the synthetic sets (``dataset=`` values and benchmark names) -> ``synthetic_math`` options.
SYNTHETIC_SOURCES: dict[str, dict[str, str]] = {
    "synthetic": {},                                   # "What is a + b?", worked references
    "synthetic-terse": {"reference": "terse"},         # same problems, references without a derivation
    "synthetic-verbose": {"reference": "verbose"},     # same problems, long-winded references (> 64 tokens)
    "synthetic-paraphrased": {"phrasing": "paraphrased"},  # other wordings (held-out checks only)
}


def held_out_problems(source: str, n: int, seed: int = 0) -> datasets.Dataset:
    """``n`` problems a run never trains on: the held-out split of a synthetic set (in the set's own
    reference style); for any other source (no held-out split known), ``n`` of its rows, said in the log."""
    if str(source) in SYNTHETIC_SOURCES:
        return synthetic_math(n, seed=seed, split="heldout", **SYNTHETIC_SOURCES[str(source)])
    logger.warning("%s has no held-out split: using %d of its rows", source, n)
    return load_problems(source, n=n, seed=seed, require=("problem", "solution", "answer"))


DATA_FILE_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}  # preferred first
_COLUMN_ALIASES = {  # canonical name <- other spellings seen in public math sets
    "problem": ("Problem", "question", "Question"),
    "solution": ("Solution",),
    "answer": ("Answer", "final_answer", "expected_answer"),
}


def require_columns(dataset: datasets.Dataset, columns: Sequence[str], source: str = "dataset") -> datasets.Dataset:
    """Return ``dataset`` if it has every column in ``columns``, else raise InputError naming both sides."""
    found = list(dataset.column_names)
    missing = [c for c in columns if c not in found]
    if missing:
        raise InputError(f"{source}: missing columns {missing} (need {list(columns)}); found {found}")
    return dataset


def normalize_columns(dataset: datasets.Dataset, source: str = "dataset") -> datasets.Dataset:
    """Rename known spellings to ``problem`` / ``solution`` / ``answer``; answers become strings.

    Integer answers (AIME, HMMT sometimes store ints) become ``"70"``, integral floats ``27.0`` -> ``"27"``;
    an answer that is neither text nor a number (``true``, a list) is an InputError naming its row.
    """
    names = set(dataset.column_names)
    renames = {}
    for canonical, aliases in _COLUMN_ALIASES.items():
        if canonical in names:
            continue
        alias = next((a for a in aliases if a in names), None)
        if alias is not None:
            renames[alias] = canonical
    if renames:
        dataset = dataset.rename_columns(renames)
    if "answer" in dataset.column_names and dataset.features["answer"] != datasets.Value("string"):
        answers = dataset["answer"]
        bad = next((i for i, a in enumerate(answers) if a is not None and
                    (isinstance(a, bool) or not isinstance(a, (str, int, float)))), None)
        if bad is not None:
            raise InputError(f"{source}: row {bad}, column 'answer' is a {type(answers[bad]).__name__} "
                             f"({str(answers[bad])[:40]}), not a string or a number; write the answer as text")
        dataset = as_string_columns(dataset, ["answer"])
    return dataset


def _data_files(folder: Path, split: str | None) -> tuple[str, list[str]]:
    """The data files of a folder (recursively), all of one format; filtered by split name if given."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                            p.relative_to(folder).parts))
    by_format = {ext: [p for p in files if p.suffix == ext] for ext in DATA_FILE_FORMATS}
    ext = next((e for e, found in by_format.items() if found), None)
    if ext is None:
        raise MissingInputError(f"{folder}: no data files ({', '.join(DATA_FILE_FORMATS)}) found")
    chosen = by_format[ext]
    if split is not None:
        def in_split(p: Path) -> bool:
            return p.name.startswith((f"{split}-", f"{split}.", f"{split}_")) or split in p.relative_to(folder).parts[:-1]
        matching = [p for p in chosen if in_split(p)]
        split_named = [p for p in chosen if p.name.split("-")[0].split(".")[0] in {"train", "test", "validation", "dev"}]
        if matching:
            chosen = matching
        elif split_named:
            raise InputError(f"{folder}: no {split!r} files; found {[str(p.relative_to(folder)) for p in chosen]}")
    return DATA_FILE_FORMATS[ext], [str(p) for p in chosen]


def _load_local(path: Path, split: str | None) -> datasets.Dataset:
    if path.is_dir():
        builder, files = _data_files(path, split)
    elif path.suffix in DATA_FILE_FORMATS:
        builder, files = DATA_FILE_FORMATS[path.suffix], [str(path)]
    else:
        raise InputError(f"{path}: unsupported file type {path.suffix!r}; use one of {list(DATA_FILE_FORMATS)}")
    check_data_files(files, str(path))  # empty, not UTF-8, cut or invalid JSON lines: errors naming file and line
    try:
        return datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as err:  # whatever the reader says, name the file it could not read
        cause = err.__cause__ or err
        raise InputError(f"{path}: could not be read as {builder} rows ({type(cause).__name__}: "
                         f"{str(cause).splitlines()[0] if str(cause) else ''})") from err


def load_problems(source: str | os.PathLike, split: str | None = None, *, n: int | None = None, seed: int = 0,
                  require: Sequence[str] = ("problem",), on_invalid: str = "error") -> datasets.Dataset:
    """Problems from a synthetic set (``SYNTHETIC_SOURCES``), a local ``.parquet`` / ``.jsonl`` / ``.json``
    file or a folder of them (with ``split``: only the files named after it, as in the Hub's
    ``data/train-*.parquet``), or a Hub id (``datasets.load_dataset``, needs network).

    Synthetic: ``split`` "train" (default), "heldout" or "warmup"; ``n`` defaults to 512 / 64 / 64.
    Otherwise columns are normalised (``normalize_columns``), ``require`` is checked (an error naming the
    missing and found columns), then every row's ``require`` values (``opsd.data_checks.validate_rows``;
    ``on_invalid``: "error" or "drop"). With ``n``: the first ``n`` rows after a shuffle with ``seed``.
    """
    if str(source) in SYNTHETIC_SOURCES:
        split = split or "train"
        return synthetic_math(DEFAULT_SYNTHETIC_SIZES.get(split, 64) if n is None else n, seed=seed, split=split,
                              **SYNTHETIC_SOURCES[str(source)])
    path = Path(source).expanduser()
    if path.exists():
        dataset = _load_local(path, split)
    elif str(source).endswith(tuple(DATA_FILE_FORMATS)) or ("/" in str(source) and not looks_like_hub_dataset_id(str(source))):
        raise MissingInputError(f"no such data file or folder: {source}")
    else:
        dataset = datasets.load_dataset(str(source), split=split or "train")
    dataset = require_columns(normalize_columns(dataset, str(source)), require, str(source))
    dataset = validate_rows(dataset, require, str(source), on_invalid=on_invalid)
    if n is not None:
        dataset = dataset.shuffle(seed=seed).select(range(min(n, len(dataset))))
    return dataset


def looks_like_hub_dataset_id(source: str) -> bool:
    """``org/name`` (a Hub dataset id), not a path such as ``./x``, ``~/x`` or ``a/b/c``."""
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~"))


# ----------------------------------------------------------------------------------------------
# Named benchmarks: the synthetic held-out sets, and Hub sets (a local copy first, then the Hub)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkSource:
    """A Hub dataset, read from ``<data dir>/<local_name>`` when there is a local copy."""

    hub_id: str
    split: str
    local_name: str  # folder under a data dir, e.g. "eval/aime24"
    require: tuple[str, ...] = ("problem", "answer")  # the columns every row must have


#: Every named set ``load_benchmark`` knows. ``None``: a synthetic set (``SYNTHETIC_SOURCES``), evaluated on
#: its held-out split (``synthetic-terse`` and ``-verbose`` hold the same problems as ``synthetic``).
BENCHMARKS: dict[str, BenchmarkSource | None] = {
    "synthetic": None,
    "synthetic-paraphrased": None,
    "aime24": BenchmarkSource("HuggingFaceH4/aime_2024", "train", "eval/aime24"),
    "aime25": BenchmarkSource("yentinglin/aime_2025", "train", "eval/aime25"),
    "hmmt25": BenchmarkSource("MathArena/hmmt_feb_2025", "train", "eval/hmmt25"),
    "math500": BenchmarkSource("HuggingFaceH4/MATH-500", "test", "eval/math500"),
    # 40 AMC 2023 problems; a `question` column (normalised to `problem`) and float answers (cast to "27").
    "amc23": BenchmarkSource("math-ai/amc23", "test", "eval/amc23"),
    # the OPSD training set (problems and solutions; as a benchmark its answers are the solutions' boxes)
    "openthoughts": BenchmarkSource("siyanzhao/Openthoughts_math_30k_opsd", "train",
                                    "train/openthoughts_math_30k_opsd", require=("problem", "solution")),
}
#: Held-out synthetic problems when no ``n`` is given.
SYNTHETIC_EVAL_SIZE = 64
_ID_COLUMNS = ("id", "problem_idx", "unique_id", "idx", "problem_id")


def local_benchmark_dir(name: str, local_dir: str | os.PathLike | None = None) -> Path | None:
    """A local copy of Hub benchmark ``name`` under ``local_dir`` or ``$OPSD_DATA_DIR``, else None.

    Looked up as ``<dir>/<local_name>`` (``eval/aime24``) or ``<dir>/<name>``.
    Raises FileNotFoundError if ``local_dir`` was given explicitly and holds no copy.
    """
    source = BENCHMARKS.get(name)
    if source is None:
        raise ValueError(f"{name!r} is not a Hub benchmark; known: {[n for n, s in BENCHMARKS.items() if s]}")
    root = local_dir if local_dir is not None else os.environ.get("OPSD_DATA_DIR")
    if not root:
        return None
    root = Path(root).expanduser()
    candidates = [root / source.local_name, root / name, root / Path(source.local_name).name]
    for c in candidates:
        if c.is_dir():
            return c
    if local_dir is not None:
        raise FileNotFoundError(f"no local copy of {name!r}: tried {[str(c) for c in candidates]}")
    logger.info("no local copy of %s under $OPSD_DATA_DIR=%s; using the Hub", name, root)
    return None


def check_benchmark(name: str) -> str:
    """``name`` if it is a name of ``BENCHMARKS``, a local path or a Hub id, else a ValueError listing the names."""
    if name not in BENCHMARKS and not (Path(name).expanduser().exists() or "/" in name):
        raise ValueError(
            f"unknown benchmark {name!r}: use one of {list(BENCHMARKS)} or a path to a local "
            "parquet/jsonl file with `problem` and `answer` (or `solution`) columns"
        )
    return name


def benchmark_names(benchmarks: str | Sequence[str]) -> list[str]:
    """``"aime24,aime25"`` (or a list) -> the names, each checked by ``check_benchmark``; none is an error."""
    names = benchmarks.split(",") if isinstance(benchmarks, str) else list(benchmarks)
    names = [check_benchmark(b.strip()) for b in names if b and b.strip()]
    if not names:
        raise ValueError("no benchmark given")
    return names


def load_benchmark(name: str, *, n: int | None = None, seed: int = 0,
                   local_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    """A named benchmark, a local file or a Hub id as a ``Dataset`` with string columns ``id``, ``problem``,
    ``answer`` (the source's other columns kept).

    - ``synthetic`` / ``synthetic-paraphrased``: ``n`` (default 64) held-out problems, picked by ``seed``.
    - another name of ``BENCHMARKS``: the local copy under ``local_dir`` or ``$OPSD_DATA_DIR`` if there is
      one (``local_dir`` given and no copy: FileNotFoundError), else the Hub.
    - anything else ``load_problems`` reads: a local parquet/jsonl/json file or folder, a Hub id.

    ``n``: the first ``n`` problems, in file order, so a limit picks the same problems every time. ``id``
    comes from ``problem_idx`` / ``unique_id`` / ... or the row index; a source without ``answer`` takes
    the last ``\\boxed{}`` of its ``solution``. An unknown name is a ValueError listing the known ones.
    """
    source = BENCHMARKS.get(check_benchmark(name))
    if name in SYNTHETIC_SOURCES:
        ds = held_out_problems(name, n or SYNTHETIC_EVAL_SIZE, seed=seed)
    elif source is not None:
        folder = local_benchmark_dir(name, local_dir)
        ds = load_problems(folder if folder is not None else source.hub_id, source.split, require=source.require)
    else:
        ds = load_problems(name)
    ds = _with_id_and_answer(ds, name)
    return ds.select(range(n)) if n is not None and n < len(ds) else ds


def _with_id_and_answer(ds: datasets.Dataset, name: str) -> datasets.Dataset:
    """Add ``id`` (from ``problem_idx``/``unique_id``/... or the row index) and ``answer`` (as strings)."""

    cols = ds.column_names  # "problem" is there: every loader requires it
    if "answer" not in cols:
        if "solution" in cols:
            ds = ds.map(lambda row: {"answer": extract_boxed(row["solution"] or "") or ""})
        else:
            raise ValueError(f"benchmark {name!r}: missing column 'answer' or 'solution' (found {cols})")
    answers = ["" if a is None else str(a) for a in ds["answer"]]
    id_col = next((c for c in _ID_COLUMNS if c in ds.column_names), None)
    ids = [str(i) for i in ds[id_col]] if id_col is not None else [str(i) for i in range(len(ds))]
    ds = ds.remove_columns([c for c in ("answer", "id") if c in ds.column_names])
    return ds.add_column("answer", answers).add_column("id", ids)
