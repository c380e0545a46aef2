"""The CPU campaign behind ``make figures``: the runs every paper figure needs, trained and evaluated.

    python -m opsd.paper.campaign            # the CPU edition into runs/figures/<name>/ (< 60 min, 2 cores)
    python -m opsd.paper.campaign --steps 16 --save-every 8     # longer runs (a new campaign: add --fresh)
    python -m opsd.paper.campaign --quick    # 2 steps per run, 4 eval problems, into runs/figures-quick/
    python -m opsd.paper.campaign --plan     # print the runs, the equivalent commands and a time estimate

The runs (``campaign``; ``opsd.paper.records`` lists their names, figures/README.md which figure uses which)
start from the same model, ``START_MODEL`` (the embedded SmolLM2-135M-Instruct after a short SFT warm-up on
problems none of the runs trains or is evaluated on, ``opsd.baselines.warmstart``: the analogue of the paper starting
from Qwen3), and train on synthetic additions, one after the other, each into ``<root>/<name>/``. The data
variants hold the same problems with other references: ``synthetic-terse`` the sum and the boxed answer only;
``synthetic-verbose`` the worked steps inside a long-winded plan (~156 tokens, longer than the 64-token
answer budget). Imitating them (SFT) copies their style; the OPSD teacher reads them only as a hint.

Budget: the OPSD-type runs and GRPO take ``STEPS`` optimizer steps, a checkpoint every ``SAVE_EVERY``; the
SFT runs ``SFT_STEPS_PER_STEP`` times as many (each half as large and much cheaper), so that at each evaluated
checkpoint SFT and OPSD have trained on the same problems (GRPO, 2 prompts x 4 samples a step, is compared
per step, as in the paper's Fig 3). Every checkpoint and step 0 is evaluated with ``EVAL`` on the same 200
held-out problems of ``synthetic`` (``opsd.eval.evaluate.evaluate_run``, ``<run>/eval/synthetic/step-<N>.json``);
step 0 once, copied (marked ``copied_from``) into the other runs.

Resume-safe: a finished run is not trained again, an interrupted one resumes from its last complete
checkpoint (one cut by a crash is moved aside, ``<run>/incomplete/``), evaluations on disk with the same
settings are kept. Each run directory records its campaign entry in ``campaign.json``; a changed entry is an
error (``--fresh`` deletes and redoes those runs) and the commit that trained it in ``code_version.json``
(the campaign warns when its runs come from more than one). Timings go to ``<root>/timings.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from opsd.baselines.train import TRAIN_FUNCTIONS, load_baseline_config
from opsd.config import REPO_ROOT, OPSDConfig, load_config
from opsd.eval.evaluate import evaluate_run
from opsd.runs.atomic_io import write_json_atomic, write_text_atomic
from opsd.runs.checkpoints import checkpoint_steps
from opsd.runs.eval_results import eval_path
from opsd.trainer import run_training

logger = logging.getLogger(__name__)
DEFAULT_ROOT = REPO_ROOT / "runs" / "figures"
QUICK_ROOT = REPO_ROOT / "runs" / "figures-quick"
CAMPAIGN_FILE = "campaign.json"
VERSION_FILE = "code_version.json"
TIMINGS_FILE = "timings.json"
BENCHMARK = "synthetic"

#: The model every run starts from (``opsd.baselines.warmstart``), pinned here so that all runs share it.
START_MODEL = "smollm2-135m-opsd-start"
#: Optimizer steps and checkpoint interval of the OPSD-type runs and GRPO (tune these two; STEPS must be
#: a multiple of SAVE_EVERY so the last step is evaluated). 12 / 6 keeps the estimate under 60 minutes on
#: 2 cores (``--plan``); 16 / 8 is about 61 minutes.
STEPS, SAVE_EVERY = 12, 6
#: SFT steps per OPSD step: an SFT step of sft-cpu-tiny trains on 4 solutions, an OPSD step of cpu-tiny on
#: 8 problems, so 2 SFT steps see as many problems as 1 OPSD step (and cost ~6 s against ~15 s).
SFT_STEPS_PER_STEP = 2
#: Generation length of OPSD-long (cpu-tiny: 64).
LONG_COMPLETION_LENGTH = 128
#: The long OPSD run (collapse watch, token efficiency): steps and evaluation interval; and GRPO's longer run,
#: given 4x the steps OPSD needs to pass 60% here (12), with its own group size (2 prompts x 4 samples).
#: Checkpoints every 5 (GRPO: 6) steps; evaluated at LONG_EVAL_STEPS (every 25, and 5 and 10 for the start).
LONG_STEPS, LONG_SAVE_EVERY = 150, 5
LONG_EVAL_STEPS = (5, 10, 25, 50, 75, 100, 125, 150)
GRPO_LONG_STEPS, GRPO_LONG_SAVE_EVERY = 48, 6
GRPO_LONG_EVAL_STEPS = (6, 12, 24, 36, 48)
#: The paraphrased wordings of the held-out problems (training only ever reads the standard one): the
#: teacher-context ablation is evaluated on both.
PARAPHRASED = "synthetic-paraphrased"
#: Evaluation settings shared by every run (opsd.eval.evaluate.evaluate_run keyword arguments): 200 held-out
#: problems (95% intervals of about +-7 points), greedy, 64 new tokens (a worked two-digit addition of the
#: synthetic references is well under that), batches of 64 (faster than 32 on the packed CPU path, same
#: answers). The same for every run, OPSD-long included.
EVAL: dict[str, Any] = {"n_problems": 200, "k": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 64,
                        "batch_size": 64}
QUICK_EVAL: dict[str, Any] = {"n_problems": 4, "k": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 16,
                              "batch_size": 4}
#: Dataset of the data variant: the same problems with terse references (no worked derivation).
TERSE_DATASET = "synthetic-terse"
#: Dataset of the second data variant: the same problems with long-winded references (> 64 tokens).
VERBOSE_DATASET = "synthetic-verbose"

#: Wall seconds on 2 otherwise idle CPU cores with torch's default 2 threads, for the printed estimate.
#: Measured from the starting model on the fast CPU path (fast_inference, benchmarks/step.py): an OPSD
#: step of cpu-tiny (8 problems x <=64 tokens) ~10 s, a GRPO step of grpo-cpu-tiny ~20 s (TRL's own
#: sampling), an SFT step of sft-cpu-tiny ~3 s, an evaluation pass of EVAL (200 problems) ~35 s. An OPSD
#: step with a longer generation length is scaled by the length (an upper bound: rollouts that end early
#: cost less). figures/README.md has the measured campaign.
SECONDS_PER_STEP = {"train": 10.0, "sft": 3.0, "grpo": 20.0}
OPSD_STEP_LENGTH = 64  # the generation length SECONDS_PER_STEP["train"] was measured at
SECONDS_PER_EVAL = 35.0  # the 2026-12-02 campaign measured 32 s per evaluation (23 in 12.2 min)
SECONDS_PER_RUN_START = 15.0


@dataclass(frozen=True)
class CampaignRun:
    """One run of the campaign: ``kind`` is ``train`` (OPSD), ``sft`` or ``grpo``; ``profile`` a
    name in ``reproduce/configs/``; ``overrides`` config fields on top of it."""

    name: str
    kind: str
    profile: str
    overrides: dict = field(default_factory=dict)
    purpose: str = ""
    benchmarks: tuple[str, ...] = (BENCHMARK,)
    eval_steps: tuple[int, ...] | None = None   # checkpoints evaluated (None: every one), step 0 always

    def command(self, root: Path) -> str:
        """The equivalent command line (``python -m opsd train|sft|grpo --config ... key=value``)."""
        pairs = {**self.overrides, "output_dir": _rel(root / self.name)}
        args = " ".join(f"{k}={_cli_value(v)}" for k, v in pairs.items())
        return f"python -m opsd {self.kind} --config {self.profile} {args}"


def _cli_value(value) -> str:
    if value is None:
        return "null"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def campaign(quick: bool = False, *, steps: int = STEPS, save_every: int = SAVE_EVERY) -> list[CampaignRun]:
    """The runs of the CPU edition: ``steps`` optimizer steps each (SFT: ``SFT_STEPS_PER_STEP`` times as
    many, half as large), a checkpoint every ``save_every`` (``quick``: the same runs at 2 steps and toy
    sizes, for smoke tests). Every run starts from ``START_MODEL``."""
    if steps % save_every:
        raise ValueError(f"steps ({steps}) must be a multiple of save_every ({save_every}) so the last step is evaluated")
    start = {"model_name": START_MODEL}
    if quick:
        common = {**start, "max_steps": 2, "save_steps": 1, "save_total_limit": None, "logging_steps": 1,
                  "dataset_size": 8, "per_device_train_batch_size": 2, "lora_r": 4, "lora_alpha": 8}
        opsd = {**common, "max_completion_length": 8, "log_rollouts_every": 1}
        long = 16
        sft = dict(common)
        grpo = {**common, "per_device_train_batch_size": 4, "num_generations": 2, "max_completion_length": 8}
    else:
        common = {**start, "max_steps": steps, "save_steps": save_every, "save_total_limit": None, "logging_steps": 1}
        opsd, long, grpo = dict(common), LONG_COMPLETION_LENGTH, dict(common)
        sft = {**common, "max_steps": SFT_STEPS_PER_STEP * steps, "save_steps": SFT_STEPS_PER_STEP * save_every}
    terse = {"dataset": TERSE_DATASET}
    verbose = {"dataset": VERBOSE_DATASET}
    both = (BENCHMARK, PARAPHRASED)
    if quick:
        long_run = {**opsd, "max_steps": 4, "save_steps": 2, "collapse_watch": "warn", "collapse_baseline_steps": 1}
        grpo_long = {**grpo, "max_steps": 4, "save_steps": 2}
        long_steps, grpo_long_steps = (2, 4), (2, 4)
    else:
        long_run = {**opsd, "max_steps": LONG_STEPS, "save_steps": LONG_SAVE_EVERY, "collapse_watch": "warn",
                    "log_rollouts_every": LONG_SAVE_EVERY}
        grpo_long = {**grpo, "max_steps": GRPO_LONG_STEPS, "save_steps": GRPO_LONG_SAVE_EVERY}
        long_steps, grpo_long_steps = LONG_EVAL_STEPS, GRPO_LONG_EVAL_STEPS
    last = (int(opsd["max_steps"]),)   # the ablations compare the start with the last step
    controls = [CampaignRun(f"OPSD-context-{c}", "train", "cpu-tiny", {**opsd, "teacher_context": c},
                            f"teacher reads {what}: teacher-context ablation", both, eval_steps=last)
                for c, what in (("none", "no reference (the reworded prompt alone)"),
                                ("other", "another problem's reference"),
                                ("wrong", "its reference with the final answer changed"))]
    clip = {"clip": 0.05, "clip_mode": "pointwise"}
    return [
        CampaignRun("OPSD", "train", "cpu-tiny", dict(opsd), "forward KL, no clip (cpu-tiny): Fig 3, 5, Tables 2, 3, 5, "
                    "teacher-context ablation, layout x clip", both),
        CampaignRun("OPSD-clip", "train", "cpu-tiny", {**opsd, **clip},
                    "the paper's point-wise clip 0.05: Fig 4"),
        CampaignRun("OPSD-reverse-KL", "train", "cpu-tiny", {**opsd, "beta": 1.0}, "reverse KL: Table 3"),
        CampaignRun("OPSD-JSD", "train", "cpu-tiny", {**opsd, "beta": 0.5}, "JSD(0.5): Table 3"),
        CampaignRun("OPSD-long", "train", "cpu-tiny", {**opsd, "max_completion_length": long},
                    "longer generation length: Fig 5"),
        CampaignRun("SFT", "sft", "sft-cpu-tiny", sft, "SFT baseline on the worked references: Table 2, imitation figure"),
        CampaignRun("GRPO", "grpo", "grpo-cpu-tiny", grpo, "GRPO baseline: Fig 3, Table 2"),
        CampaignRun("OPSD-terse", "train", "cpu-tiny", {**opsd, **terse},
                    "OPSD with terse references (answer, no derivation): imitation figure"),
        CampaignRun("SFT-terse", "sft", "sft-cpu-tiny", {**sft, **terse},
                    "SFT on the terse references: imitation figure"),
        CampaignRun("OPSD-verbose", "train", "cpu-tiny", {**opsd, **verbose},
                    "OPSD with long-winded references (longer than the answer budget): imitation figure"),
        CampaignRun("SFT-verbose", "sft", "sft-cpu-tiny", {**sft, **verbose},
                    "SFT on the long-winded references: imitation figure"),
        *controls,
        CampaignRun("OPSD-layout-reference", "train", "cpu-tiny", {**opsd, "position_layout": "reference"},
                    "the reference's position layout, no clip: layout x clip", eval_steps=last),
        CampaignRun("OPSD-clip-layout-reference", "train", "cpu-tiny",
                    {**opsd, **clip, "position_layout": "reference"}, "the reference's layout and clip: layout x clip",
                    eval_steps=last),
        CampaignRun("OPSD-150", "train", "cpu-tiny", long_run,
                    "OPSD for 150 steps with the collapse watch (warn): long run, token efficiency",
                    eval_steps=long_steps),
        CampaignRun("GRPO-48", "grpo", "grpo-cpu-tiny", grpo_long, "GRPO for 48 steps: token efficiency",
                    eval_steps=grpo_long_steps),
    ]


def load_run_config(run: CampaignRun, root: Path):
    """The run's config dataclass (``OPSDConfig`` / ``SFTRunConfig`` / ``GRPORunConfig``), output in ``root/name``."""
    overrides = {**run.overrides, "output_dir": str(root / run.name)}
    if run.kind == "train":
        return load_config(OPSDConfig, run.profile, overrides)
    return load_baseline_config(run.kind, run.profile, overrides)


def step_seconds(run: CampaignRun) -> float:
    """Estimated wall seconds of one optimizer step of ``run`` on 2 idle CPU cores (``SECONDS_PER_STEP``;
    an OPSD step scaled up by its generation length over ``OPSD_STEP_LENGTH``)."""
    seconds = SECONDS_PER_STEP[run.kind]
    if run.kind == "train":
        seconds *= max(1.0, int(run.overrides.get("max_completion_length", OPSD_STEP_LENGTH)) / OPSD_STEP_LENGTH)
    return seconds


def estimate_seconds(runs: Sequence[CampaignRun], quick: bool = False) -> dict[str, float]:
    """Rough wall time per phase on 2 idle CPU cores: ``{"train": s, "eval": s}`` (``SECONDS_PER_STEP``,
    ``SECONDS_PER_EVAL`` per evaluated checkpoint, plus the starting model's evaluation once)."""
    if quick:
        return {"train": 25.0 * len(runs), "eval": 8.0 * len(runs)}
    train = evals = 0.0
    for run in runs:
        steps = int(run.overrides.get("max_steps", STEPS))
        train += SECONDS_PER_RUN_START + steps * step_seconds(run)
        n_evals = len(run.eval_steps) if run.eval_steps else steps // int(run.overrides.get("save_steps", SAVE_EVERY))
        evals += n_evals * SECONDS_PER_EVAL * len(run.benchmarks)
    return {"train": train, "eval": evals + 2 * SECONDS_PER_EVAL}  # + the starting model once per benchmark


def _finished(run_dir: Path, max_steps: int) -> bool:
    """The run's last checkpoint is there and complete (a save cut by a crash does not count)."""
    return max_steps in checkpoint_steps(run_dir, complete=True)


def _read_json(path: Path) -> Any:
    """``path``'s JSON; None when there is no such file, or when a crash cut it (logged; it is written again)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        logger.warning("%s is cut off or unreadable; it is written again", path)
        return None


def _check_campaign_entry(run: CampaignRun, run_dir: Path, fresh: bool) -> None:
    """Record the campaign entry in the run directory; a different recorded entry is an error."""
    entry = {"name": run.name, "kind": run.kind, "profile": run.profile, "overrides": run.overrides}
    path = run_dir / CAMPAIGN_FILE
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    if (recorded := _read_json(path)) is not None:
        if recorded != json.loads(json.dumps(entry)):
            raise RuntimeError(
                f"{run_dir} holds a run of another campaign entry ({recorded}); now {entry}. Delete it, or pass "
                "--fresh to redo the campaign's runs"
            )
    elif not path.is_file() and run_dir.exists() and any(run_dir.iterdir()):
        raise RuntimeError(f"{run_dir} exists but was not made by opsd.paper.campaign; delete it or pass --fresh")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, entry)


def code_version() -> str:
    """The repository's commit (``git rev-parse HEAD``), ``+dirty`` when tracked files differ from it;
    ``unknown`` outside a git checkout."""
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "opsd", "reproduce").strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def run_versions(run_dir: Path) -> list[str]:
    """The code versions that trained ``run_dir`` (``code_version.json``; more than one after a resume
    under newer code)."""
    return list((_read_json(run_dir / VERSION_FILE) or {}).get("versions", []))


def _record_version(run_dir: Path, version: str) -> None:
    versions = run_versions(run_dir)
    if version not in versions:
        write_json_atomic(run_dir / VERSION_FILE, {"versions": [*versions, version]})


def train_run(run: CampaignRun, root: Path, *, fresh: bool = False, version: str | None = None) -> str:
    """Train one run into ``root/name`` (resuming if interrupted); returns ``trained`` or ``done``. The
    code version that trains it (``version``, default ``code_version()`` now) is recorded (``run_versions``)."""
    run_dir = root / run.name
    _check_campaign_entry(run, run_dir, fresh)
    config = load_run_config(run, root)
    if _finished(run_dir, config.max_steps):
        return "done"
    _record_version(run_dir, version or code_version())
    if run.kind == "train":
        run_training(config, resume="auto")
    else:
        TRAIN_FUNCTIONS[run.kind](config, resume="auto")
    return "trained"


def share_base_eval(source: Path, target: Path, benchmark: str = BENCHMARK) -> bool:
    """Copy ``source``'s step-0 (base model) eval JSON into ``target`` unless it has one; the copy
    gets ``copied_from``. ``evaluate_run`` then keeps it when its settings match. Returns whether copied."""
    src, dst = eval_path(source, benchmark, 0), eval_path(target, benchmark, 0)
    if dst.is_file() or (data := _read_json(src)) is None:  # a cut one: evaluate_run moves it aside and redoes it
        return False
    data["copied_from"] = _rel(src)
    write_text_atomic(dst, json.dumps(data, indent=1, ensure_ascii=False))
    return True


def evaluate_campaign_run(run: CampaignRun, root: Path, eval_settings: dict, base_source: Path | None) -> int:
    """Evaluate step 0 and every checkpoint of one run; returns the number of eval files it now has."""
    run_dir = root / run.name
    if base_source is not None and base_source != run_dir:
        for benchmark in run.benchmarks:
            share_base_eval(base_source, run_dir, benchmark)
    results = evaluate_run(run_dir, list(run.benchmarks), include_base=True, progress=False,
                           steps=None if run.eval_steps is None else [0, *run.eval_steps], **eval_settings)
    return len(results)


def _base_eval_source(root: Path, runs: Sequence[CampaignRun]) -> Path | None:
    """A campaign run directory under ``root`` that already holds the base model's (step-0) eval."""
    for run in runs:
        if eval_path(root / run.name, BENCHMARK, 0).is_file():
            return root / run.name
    return None


def _fmt_s(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def run_campaign(root: str | Path = DEFAULT_ROOT, *, quick: bool = False, only: Sequence[str] | None = None,
                 skip_eval: bool = False, fresh: bool = False, steps: int = STEPS, save_every: int = SAVE_EVERY,
                 threads: int | None = None) -> dict[str, Any]:
    """Train (phase 1) then evaluate (phase 2) the campaign's runs into ``root``; returns the timings
    (also written to ``root/timings.json``). ``threads``: torch intra-op threads for this process
    (default: torch's choice, one per core)."""
    if threads:
        torch.set_num_threads(int(threads))
    root = Path(root)
    all_runs = campaign(quick, steps=steps, save_every=save_every)
    runs = all_runs
    if only:
        unknown = sorted(set(only) - {r.name for r in runs})
        if unknown:
            raise ValueError(f"unknown run(s) {unknown}; campaign runs: {[r.name for r in runs]}")
        runs = [r for r in runs if r.name in only]
    eval_settings = QUICK_EVAL if quick else EVAL
    estimate = estimate_seconds(runs, quick)
    print(f"[figure_runs] {len(runs)} runs into {_rel(root)}, {torch.get_num_threads()} torch threads; estimate on "
          f"2 idle CPU cores: training {_fmt_s(estimate['train'])}, evaluation {_fmt_s(estimate['eval'])}", flush=True)
    timings: dict[str, Any] = {"quick": quick, "steps": runs[0].overrides.get("max_steps") if runs else None,
                               "threads": torch.get_num_threads(), "eval_settings": eval_settings,
                               "train": {}, "eval": {}}
    start = time.perf_counter()
    version = code_version()  # the code this process imported, read once at the start
    for run in runs:
        t = time.perf_counter()
        print(f"[figure_runs] train {run.name}: {run.command(root)}", flush=True)
        status = train_run(run, root, fresh=fresh, version=version)
        timings["train"][run.name] = round(time.perf_counter() - t, 1)
        print(f"[figure_runs] train {run.name}: {status} in {_fmt_s(timings['train'][run.name])}", flush=True)
    timings["train_total_s"] = round(time.perf_counter() - start, 1)
    print(f"[figure_runs] phase 1 (training) took {_fmt_s(timings['train_total_s'])}", flush=True)
    if not skip_eval:
        t_eval = time.perf_counter()
        base_source = _base_eval_source(root, all_runs)
        for run in runs:
            t = time.perf_counter()
            n = evaluate_campaign_run(run, root, eval_settings, base_source)
            base_source = base_source or root / run.name
            timings["eval"][run.name] = round(time.perf_counter() - t, 1)
            print(f"[figure_runs] eval {run.name}: {n} evaluations on disk, {_fmt_s(timings['eval'][run.name])}",
                  flush=True)
        timings["eval_total_s"] = round(time.perf_counter() - t_eval, 1)
        print(f"[figure_runs] phase 2 (evaluation) took {_fmt_s(timings['eval_total_s'])}", flush=True)
    timings["total_s"] = round(time.perf_counter() - start, 1)
    print(f"[figure_runs] total {_fmt_s(timings['total_s'])}", flush=True)
    versions = {run.name: run_versions(root / run.name) for run in all_runs if (root / run.name).is_dir()}
    timings["code_versions"] = sorted({v for vs in versions.values() for v in vs})
    if len(timings["code_versions"]) > 1:
        print(f"[figure_runs] WARNING: the runs come from {len(timings['code_versions'])} code versions "
              f"{timings['code_versions']}; redo older ones with --fresh --only NAME", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / TIMINGS_FILE, {**(_read_json(root / TIMINGS_FILE) or {}), "last": timings})
    return timings


def print_plan(root: Path, quick: bool = False, *, steps: int = STEPS, save_every: int = SAVE_EVERY) -> None:
    runs = campaign(quick, steps=steps, save_every=save_every)
    for run in runs:
        print(f"{run.name:16s} {run.purpose}\n    {run.command(root)}")
    settings = QUICK_EVAL if quick else EVAL
    args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items()
                    if k not in ("n_problems",)) + f" --limit {settings['n_problems']}"
    print(f"then for each run: python -m opsd eval --run {_rel(root)}/<name> --benchmarks {BENCHMARK} {args}")
    print(f"  ({', '.join(r.name for r in runs if len(r.benchmarks) > 1)}: --benchmarks {BENCHMARK},{PARAPHRASED}; "
          + "; ".join(f"{r.name}: --steps 0,{','.join(map(str, r.eval_steps))}" for r in runs if r.eval_steps) + ")")
    est = estimate_seconds(runs, quick)
    print(f"estimate on 2 idle CPU cores: training {_fmt_s(est['train'])}, evaluation {_fmt_s(est['eval'])}, "
          f"total {_fmt_s(sum(est.values()))}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m opsd.paper.campaign [--quick] [--root DIR] [--only NAME ...] [--steps N --save-every M]
    [--threads T] [--skip-eval] [--fresh] [--plan]``."""
    p = argparse.ArgumentParser(prog="python -m opsd.paper.campaign", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 steps per run, 4 eval problems (smoke test)")
    p.add_argument("--root", default=None, help="runs go to ROOT/<name> (default runs/figures, or runs/figures-quick)")
    p.add_argument("--only", nargs="+", default=None, help="only these runs (names of the campaign)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"optimizer steps per run (default {STEPS})")
    p.add_argument("--save-every", type=int, default=SAVE_EVERY, help=f"checkpoint interval (default {SAVE_EVERY})")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for this process (default: one per core; 1 helps on a shared, busy machine)")
    p.add_argument("--skip-eval", action="store_true", help="train only")
    p.add_argument("--fresh", action="store_true", help="delete the runs' directories first")
    p.add_argument("--plan", action="store_true", help="print the runs, commands and time estimate, then exit")
    args = p.parse_args(argv)
    root = Path(args.root) if args.root else (QUICK_ROOT if args.quick else DEFAULT_ROOT)
    if args.plan:
        print_plan(root, args.quick, steps=args.steps, save_every=args.save_every)
        return 0
    run_campaign(root, quick=args.quick, only=args.only, skip_eval=args.skip_eval, fresh=args.fresh,
                 steps=args.steps, save_every=args.save_every, threads=args.threads)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
