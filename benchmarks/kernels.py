"""The packed oneDNN kernel against ``F.linear`` per layer shape and call kind, idle and under load.

    python -m benchmarks.kernels                # cpu-tiny's shapes; idle, then beside 1 and 2 busy processes
    python -m benchmarks.kernels --busy 0

Times what ``opsd.packed_linear.measure_plan`` times (``--kernel-plan measured`` chooses from it) for the
embedded model's main layer shapes, first on the idle machine, then beside ``N`` processes that only loop
(``while True: pass``), to show how each kernel degrades when other work competes for the cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from opsd.packed_linear import measure_plan

#: SmolLM2-135M's q/o, gate/up, down and output projection ([out, in]).
SHAPES = ((576, 576), (1536, 576), (576, 1536), (49152, 576))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--busy", default="0,1,2", help="comma-separated numbers of busy-looping processes beside")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    for n in (int(b) for b in args.busy.split(",")):
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
        try:
            time.sleep(1 if n else 0)
            plan = measure_plan(SHAPES, reps=args.reps, budget_s=0.02)
        finally:
            for proc in busy:
                proc.kill()
        print(f"--- {n} busy process(es) beside")
        for line in plan.table():
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
