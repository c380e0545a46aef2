"""Execute the teaching notebooks into ``notebooks/executed/`` so they read without running.

Each notebook runs top to bottom with papermill in the ``opsd-kit`` kernel (working directory
``notebooks/``, its defaults); the executed copy keeps its outputs and pictures, and its first cell gets one
line with the measured run time. The first picture of a code cell tagged ``figure:<name>`` is also
written to ``notebooks/executed/figures/<name>.png`` (README shows some of them). The sources stay committed with outputs cleared;
``tests/contracts/test_notebooks.py`` fails when a source's cells differ from its executed copy's.

    python -m opsd.notebook_runner [NAME ...]      # make notebooks: all of them
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
EXECUTED_DIR = NOTEBOOK_DIR / "executed"
KERNEL = "opsd-kit"
TEACHING_NOTEBOOKS = (
    "00_privilege_gap.ipynb",
    "01_dual_contexts.ipynb",
    "02_on_policy_rollout.ipynb",
    "03_token_divergence.ipynb",
    "04_clipping.ipynb",
    "05_one_training_step.ipynb",
    "06_reproduction_details.ipynb",
    "solutions.ipynb",
)
RUN_TIME_MARK = "**Executed by `make notebooks`**"
FIGURE_TAG = "figure:"


def cell_sources(notebook: dict) -> list[tuple[str, str]]:
    """(cell type, source text) of every cell; the executed copy's run-time line is left out."""
    out = []
    for i, cell in enumerate(notebook["cells"]):
        source = "".join(cell["source"])
        if i == 0 and RUN_TIME_MARK in source:
            source = source[: source.index(RUN_TIME_MARK)].rstrip("\n")
        out.append((cell["cell_type"], source))
    return out


def run_time_line(seconds: float) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{RUN_TIME_MARK} on {date.today().isoformat()}: top to bottom in {seconds:.0f} s "
            f"({cores} CPU cores, {platform.machine()}, no GPU).")


def tagged_figures(notebook: dict) -> dict[str, bytes]:
    """``{name: PNG bytes}``: the first picture of every code cell tagged ``figure:<name>``."""
    figures = {}
    for cell in notebook["cells"]:
        names = [t[len(FIGURE_TAG):] for t in cell.get("metadata", {}).get("tags", []) if t.startswith(FIGURE_TAG)]
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        if names and pngs:
            figures[names[0]] = base64.b64decode("".join(pngs[0]) if isinstance(pngs[0], list) else pngs[0])
    return figures


def execute(name: str, out_dir: Path = EXECUTED_DIR, *, kernel: str = KERNEL) -> float:
    """Run ``notebooks/<name>`` into ``out_dir/<name>`` (written only when every cell succeeded);
    returns the wall time in seconds."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f".partial.{name}"
    start = time.perf_counter()
    papermill.execute_notebook(str(NOTEBOOK_DIR / name), str(partial), kernel_name=kernel, cwd=str(NOTEBOOK_DIR),
                               progress_bar=False)
    seconds = time.perf_counter() - start
    notebook = json.loads(partial.read_text())
    first = notebook["cells"][0]
    first["source"] = "".join(first["source"]).rstrip("\n") + "\n\n" + run_time_line(seconds) + "\n"
    partial.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    partial.replace(out_dir / name)
    for figure, png in tagged_figures(notebook).items():
        (out_dir / "figures").mkdir(exist_ok=True)
        (out_dir / "figures" / f"{figure}.png").write_bytes(png)
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opsd.notebook_runner", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all teaching notebooks)")
    names = parser.parse_args(argv).names or list(TEACHING_NOTEBOOKS)
    unknown = sorted(set(names) - set(TEACHING_NOTEBOOKS))
    if unknown:
        parser.error(f"unknown notebook(s) {unknown}; choose from {list(TEACHING_NOTEBOOKS)}")
    total = 0.0
    for name in names:
        seconds = execute(name)
        total += seconds
        print(f"{name:34s} {seconds:6.0f} s", flush=True)
    print(f"{'all':34s} {total:6.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
