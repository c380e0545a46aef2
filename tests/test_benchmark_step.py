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


def test_decode_profile_puts_every_operator_in_one_category_and_the_rest_outside():
    from benchmarks.decode_profile import OTHER, OUTSIDE, categorize

    self_seconds = {"mkldnn::_linear_pointwise": 0.5, "aten::exponential_": 0.1, "aten::topk": 0.05,
                    "aten::mul": 0.02, "aten::index_copy_": 0.01}
    calls = {"mkldnn::_linear_pointwise": 210, "aten::exponential_": 1, "aten::topk": 1, "aten::mul": 280,
             "aten::index_copy_": 60}
    out = categorize(self_seconds, calls, wall=1.0)
    assert out["linear layers"] == (0.5, 210)
    assert out["sampling (full vocabulary)"] == (pytest.approx(0.15), 2)
    assert out["KV cache writes"] == (0.01, 60) and out[OTHER] == (0.02, 280)
    assert out[OUTSIDE] == (pytest.approx(0.32), 0)
    assert sum(s for s, _ in out.values()) == pytest.approx(1.0)  # every second counted once


def test_decode_profile_reads_self_times_and_calls_from_the_profiler():
    from benchmarks.decode_profile import profiled

    a = torch.randn(64, 64)
    result, wall, self_seconds, calls = profiled(lambda: torch.topk(a @ a, 3).values.sum())
    assert isinstance(result, torch.Tensor) and wall > 0
    assert calls["aten::topk"] == 1 and calls["aten::mm"] == 1
    assert 0 < sum(self_seconds.values()) <= wall * 1.5
