"""The step benchmark's machine report and its per-component clock (benchmarks/step.py)."""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks import kernels
from benchmarks.step import Clock, cpu_report, onednn_kernels, thread_report


def test_machine_report_names_the_cpu_the_libraries_and_the_threads():
    cpu, libraries = cpu_report()
    assert cpu.startswith("cpu: ") and "logical CPUs" in cpu and "flags:" in cpu
    assert f"torch {torch.__version__}" in libraries and "MKL takes its Intel code path: " in libraries
    threads, placed = thread_report()
    assert f"{torch.get_num_threads()} intra-op" in threads and "allowed CPUs" in threads
    assert "on CPU" in placed  # at least the main thread did work


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (torch CPU build)")
def test_onednn_kernel_lines_name_an_implementation_per_call_kind():
    lines = onednn_kernels(16, 32)
    assert [line.split(",")[1].split("[")[0].strip() for line in lines] == ["decode", "score", "backward dx"]
    assert all("?" not in line.rsplit(": ", 1)[1] for line in lines)  # oneDNN answered with a kernel name
    assert "[256, 32] -> [256, 16]" in lines[2]


def test_clock_sums_calls_per_component_and_counts_nested_parts_once():
    clock = Clock()
    sleep = clock.wrap("teacher", time.sleep)
    with clock.part("rollout"):
        sleep(0.02)  # inside another component: counted in the outer one only
    sleep(0.01)
    sleep(0.01)
    assert set(clock.wall) == {"rollout", "teacher"}
    assert 0.02 <= clock.wall["rollout"] < 0.2 and 0.02 <= clock.wall["teacher"] < 0.2
    assert clock.cpu["teacher"] < clock.wall["teacher"]  # sleeping takes no CPU time
    only_students = clock.wrap("student", lambda role: role, when=lambda role: role == "student")
    only_students("teacher")
    assert "student" not in clock.wall
    clock.reset()
    assert clock.wall == {} and clock.cpu == {}


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (torch CPU build)")
def test_kernel_timings_print_both_kernels_for_every_shape_and_kind(capsys):
    assert kernels.main(["--busy", "0", "--reps", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "--- 0 busy process(es) beside"
    assert len(lines) == 1 + 3 * len(kernels.SHAPES)
    assert all("standard" in line and "packed" in line and line.endswith(("-> packed", "-> standard"))
               for line in lines[1:])
