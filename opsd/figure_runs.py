"""The CPU campaign behind ``make figures``: the runs every paper figure needs, trained and evaluated.

    python -m opsd.figure_runs            # the CPU edition into runs/figures/<name>/ (< 60 min, 2 cores)
    python -m opsd.figure_runs --steps 30 --save-every 10    # longer runs (a new campaign: add --fresh)
    python -m opsd.figure_runs --quick    # 2 steps per run, 4 eval problems, into runs/figures-quick/
    python -m opsd.figure_runs --plan     # print the runs, the equivalent commands and a time estimate

Runs (``CAMPAIGN``), trained one after the other on the embedded SmolLM2-135M-Instruct and the
synthetic additions, each into ``<root>/<name>/``:

    OPSD              cpu-tiny (forward KL, no clip)                      Fig 3, 5, Tables 2, 3, 5
    OPSD-clip         cpu-tiny + point-wise clip 0.05 (the paper's)         Fig 4
    OPSD-reverse-KL   cpu-tiny + beta 1                                     Table 3
    OPSD-JSD          cpu-tiny + beta 0.5                                   Table 3
    OPSD-long         cpu-tiny + max_completion_length 128 (vs 64)          Fig 5
    SFT               sft-cpu-tiny                                          Table 2
    GRPO              grpo-cpu-tiny                                         Fig 3, Table 2

All with ``max_steps`` 12 and a checkpoint every 4 steps (SFT: its last step only). Then every
checkpoint (and step 0, the base model) is evaluated with the same settings (``EVAL``): 64 held-out
synthetic problems, greedy, at most 96 new tokens, Avg@1, written to
``<run>/eval/synthetic/step-<N>.json`` by ``opsd.evaluate.evaluate_run``. The
base model's evaluation is done once (in the first run) and copied, marked ``copied_from``, into the
others: same model, same settings, same file.

Resume-safe: a run whose last checkpoint is already there is not trained again, an interrupted one
resumes from its last checkpoint, and evaluations already on disk with the same settings are kept.
Crash-safe: a checkpoint whose save a crash cut is moved aside (``<run>/incomplete/``) and the run
resumes from its last complete one; a cut evaluation file is moved aside and evaluated again.
Each run directory records its campaign entry in ``campaign.json``; a changed entry is an error
(``--fresh`` deletes and redoes those runs). Timings go to ``<root>/timings.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsd.config import REPO_ROOT

logger = logging.getLogger(__name__)
DEFAULT_ROOT = REPO_ROOT / "runs" / "figures"
QUICK_ROOT = REPO_ROOT / "runs" / "figures-quick"
CAMPAIGN_FILE = "campaign.json"
TIMINGS_FILE = "timings.json"
BENCHMARK = "synthetic"

#: Steps per run and checkpoint interval of the full CPU edition (SFT keeps only its last checkpoint:
#: Table 2 reads its final accuracy, no figure draws its curve).
STEPS, SAVE_EVERY = 12, 4
#: Evaluation settings shared by every run (opsd.evaluate.evaluate_run keyword arguments): 96 new
#: tokens, room for the worked answer of every run (the base model's greedy answers average ~50 tokens,
#: trained ones ~90) at a cost the 60-minute budget allows; the same budget for OPSD and OPSD-long.
EVAL: dict[str, Any] = {"n_problems": 64, "k": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 96,
                        "batch_size": 64}
QUICK_EVAL: dict[str, Any] = {"n_problems": 4, "k": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 16,
                              "batch_size": 4}

#: Wall seconds on 2 otherwise idle CPU cores with torch's default 2 threads, for the printed estimate.
#: Measured: an OPSD step of cpu-tiny (8 problems x 64 tokens) ~19 s, an evaluation pass of EVAL ~50 s;
#: the others are scaled from those. figures/README.md has the measured campaign.
SECONDS_PER_STEP = {"train": 19.0, "train-long": 35.0, "sft": 4.0, "grpo": 25.0}
SECONDS_PER_EVAL = 50.0
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
    """The runs of the CPU edition: ``steps`` optimizer steps each, a checkpoint every ``save_every``
    (``quick``: the same runs at 2 steps and toy sizes, for smoke tests)."""
    if steps % save_every:
        raise ValueError(f"steps ({steps}) must be a multiple of save_every ({save_every}) so the last step is evaluated")
    if quick:
        common = {"max_steps": 2, "save_steps": 1, "save_total_limit": None, "logging_steps": 1, "dataset_size": 8,
                      "per_device_train_batch_size": 2, "lora_r": 4, "lora_alpha": 8}
        opsd = {**common, "max_completion_length": 8, "log_rollouts_every": 1}
        long = 16
        sft = dict(common)
        grpo = {**common, "per_device_train_batch_size": 4, "num_generations": 2, "max_completion_length": 8}
    else:
        common = {"max_steps": steps, "save_steps": save_every, "save_total_limit": None, "logging_steps": 1}
        opsd, long, sft, grpo = dict(common), 128, {**common, "save_steps": steps}, dict(common)
    return [
        CampaignRun("OPSD", "train", "cpu-tiny", dict(opsd), "forward KL, no clip (cpu-tiny): Fig 3, 5, Tables 2, 3, 5"),
        CampaignRun("OPSD-clip", "train", "cpu-tiny", {**opsd, "clip": 0.05, "clip_mode": "pointwise"},
                    "the paper's point-wise clip 0.05: Fig 4"),
        CampaignRun("OPSD-reverse-KL", "train", "cpu-tiny", {**opsd, "beta": 1.0}, "reverse KL: Table 3"),
        CampaignRun("OPSD-JSD", "train", "cpu-tiny", {**opsd, "beta": 0.5}, "JSD(0.5): Table 3"),
        CampaignRun("OPSD-long", "train", "cpu-tiny", {**opsd, "max_completion_length": long},
                    "longer generation length: Fig 5"),
        CampaignRun("SFT", "sft", "sft-cpu-tiny", sft, "SFT baseline: Table 2"),
        CampaignRun("GRPO", "grpo", "grpo-cpu-tiny", grpo, "GRPO baseline: Fig 3, Table 2"),
    ]


def load_run_config(run: CampaignRun, root: Path):
    """The run's config dataclass (``OPSDConfig`` / ``SFTRunConfig`` / ``GRPORunConfig``), output in ``root/name``."""
    overrides = {**run.overrides, "output_dir": str(root / run.name)}
    if run.kind == "train":
        from opsd.config import load_config
        from opsd.trainer import OPSDConfig

        return load_config(OPSDConfig, run.profile, overrides)
    from opsd.baselines import load_baseline_config

    return load_baseline_config(run.kind, run.profile, overrides)


def estimate_seconds(runs: Sequence[CampaignRun], quick: bool = False) -> dict[str, float]:
    """Rough wall time per phase on 2 idle CPU cores (``SECONDS_PER_STEP`` / ``SECONDS_PER_EVAL``)."""
    if quick:
        return {"train": 25.0 * len(runs), "eval": 8.0 * len(runs)}
    train = evals = 0.0
    for run in runs:
        key = "train-long" if run.kind == "train" and run.overrides.get("max_completion_length", 64) > 64 else run.kind
        steps = int(run.overrides.get("max_steps", STEPS))
        train += SECONDS_PER_RUN_START + steps * SECONDS_PER_STEP[key]
        evals += steps // int(run.overrides.get("save_steps", SAVE_EVERY)) * SECONDS_PER_EVAL
    return {"train": train, "eval": evals + SECONDS_PER_EVAL}  # + the base model once


def _finished(run_dir: Path, max_steps: int) -> bool:
    """The run's last checkpoint is there and complete (a save cut by a crash does not count)."""
    from opsd.runlog import checkpoint_steps

    return max_steps in checkpoint_steps(run_dir, complete=True)


def _check_campaign_entry(run: CampaignRun, run_dir: Path, fresh: bool) -> None:
    """Record the campaign entry in the run directory; a different recorded entry is an error."""
    entry = {"name": run.name, "kind": run.kind, "profile": run.profile, "overrides": run.overrides}
    path = run_dir / CAMPAIGN_FILE
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    recorded = None
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):  # cut by a crash while it was written
            logger.warning("%s is cut off or unreadable; writing it again", path)
    if recorded is not None:
        if recorded != json.loads(json.dumps(entry)):
            raise RuntimeError(
                f"{run_dir} holds a run of another campaign entry ({recorded}); now {entry}. Delete it, or pass "
                "--fresh to redo the campaign's runs"
            )
    elif not path.is_file() and run_dir.exists() and any(run_dir.iterdir()):
        raise RuntimeError(f"{run_dir} exists but was not made by opsd.figure_runs; delete it or pass --fresh")
    run_dir.mkdir(parents=True, exist_ok=True)
    from opsd.runlog import write_json_atomic

    write_json_atomic(path, entry)


def train_run(run: CampaignRun, root: Path, *, fresh: bool = False) -> str:
    """Train one run into ``root/name`` (resuming if interrupted); returns ``trained`` or ``done``."""
    run_dir = root / run.name
    _check_campaign_entry(run, run_dir, fresh)
    config = load_run_config(run, root)
    if _finished(run_dir, config.max_steps):
        return "done"
    if run.kind == "train":
        from opsd.trainer import run_training

        run_training(config, resume="auto")
    else:
        from opsd.baselines import TRAIN_FUNCTIONS

        TRAIN_FUNCTIONS[run.kind](config, resume="auto")
    return "trained"


def share_base_eval(source: Path, target: Path, benchmark: str = BENCHMARK) -> bool:
    """Copy ``source``'s step-0 (base model) eval JSON into ``target`` unless it has one; the copy
    gets ``copied_from``. ``evaluate_run`` then keeps it when its settings match. Returns whether copied."""
    from opsd.evaluate import eval_path

    src, dst = eval_path(source, benchmark, 0), eval_path(target, benchmark, 0)
    if not src.is_file() or dst.is_file():
        return False
    try:
        data = json.loads(src.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):  # cut by a crash: evaluate_run moves it aside and redoes it
        return False
    data["copied_from"] = _rel(src)
    from opsd.runlog import write_text_atomic

    write_text_atomic(dst, json.dumps(data, indent=1, ensure_ascii=False))
    return True


def evaluate_campaign_run(run: CampaignRun, root: Path, eval_settings: dict, base_source: Path | None) -> int:
    """Evaluate step 0 and every checkpoint of one run; returns the number of eval files it now has."""
    from opsd.evaluate import evaluate_run

    run_dir = root / run.name
    if base_source is not None and base_source != run_dir:
        share_base_eval(base_source, run_dir)
    results = evaluate_run(run_dir, BENCHMARK, include_base=True, progress=False, **eval_settings)
    return len(results)


def _base_eval_source(root: Path, runs: Sequence[CampaignRun]) -> Path | None:
    """A campaign run directory under ``root`` that already holds the base model's (step-0) eval."""
    from opsd.evaluate import eval_path

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
    import torch

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
    for run in runs:
        t = time.perf_counter()
        print(f"[figure_runs] train {run.name}: {run.command(root)}", flush=True)
        status = train_run(run, root, fresh=fresh)
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
    root.mkdir(parents=True, exist_ok=True)
    previous = {}
    if (root / TIMINGS_FILE).is_file():
        try:
            previous = json.loads((root / TIMINGS_FILE).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            logger.warning("%s is cut off or unreadable; starting it again", root / TIMINGS_FILE)
    from opsd.runlog import write_json_atomic

    write_json_atomic(root / TIMINGS_FILE, {**previous, "last": timings})
    return timings


def print_plan(root: Path, quick: bool = False, *, steps: int = STEPS, save_every: int = SAVE_EVERY) -> None:
    runs = campaign(quick, steps=steps, save_every=save_every)
    for run in runs:
        print(f"{run.name:16s} {run.purpose}\n    {run.command(root)}")
    settings = QUICK_EVAL if quick else EVAL
    args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items()
                    if k not in ("n_problems",)) + f" --limit {settings['n_problems']}"
    print(f"then for each run: python -m opsd eval --run {_rel(root)}/<name> --benchmarks {BENCHMARK} {args}")
    est = estimate_seconds(runs, quick)
    print(f"estimate on 2 idle CPU cores: training {_fmt_s(est['train'])}, evaluation {_fmt_s(est['eval'])}, "
          f"total {_fmt_s(sum(est.values()))}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m opsd.figure_runs [--quick] [--root DIR] [--only NAME ...] [--steps N --save-every M]
    [--threads T] [--skip-eval] [--fresh] [--plan]``."""
    p = argparse.ArgumentParser(prog="python -m opsd.figure_runs", description=__doc__.split("\n\n")[0],
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
