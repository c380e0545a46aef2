"""The collapse watch (opsd.collapse) on synthetic metric streams, and the per-step signals on hand values."""

import math
from types import SimpleNamespace

import pytest
import torch

from opsd.collapse import (
    DEFAULT_COLLAPSE_BOUNDS,
    WATCH_FILE,
    CollapseWatch,
    CollapseWatchCallback,
    mean_entropy,
    repetition_rate,
    rollout_signals,
)


def steady(n, **over):
    base = {"loss": 0.1, "rollout_length_mean": 50.0, "boxed_rate": 0.9, "student_entropy": 0.8, "repetition": 0.05}
    return [dict(base, **over) for _ in range(n)]


def run(watch, stream):
    warnings = []
    for step, metrics in enumerate(stream, start=1):
        warnings += [(step, w) for w in watch.update(step, metrics)]
    return warnings


def test_a_steady_run_never_warns():
    noisy = [dict(m, rollout_length_mean=50 + (-1) ** i * 10, boxed_rate=0.9 - 0.1 * (i % 3))
             for i, m in enumerate(steady(200))]
    assert run(CollapseWatch(), noisy) == []


@pytest.mark.parametrize("signal,value", [("rollout_length_mean", 80.0), ("rollout_length_mean", 30.0),
                                          ("student_entropy", 1.7), ("student_entropy", 0.3),
                                          ("boxed_rate", 0.5), ("repetition", 0.3)])
def test_a_drift_warns_once_after_patience_steps(signal, value):
    watch = CollapseWatch(baseline_steps=5, patience=3)
    warnings = run(watch, steady(20) + steady(10, **{signal: value}))
    assert [step for step, _ in warnings] == [23]   # steps 21, 22, 23 outside: warned at the third, once
    assert signal in warnings[0][1] and "collapsing" in warnings[0][1]
    assert watch.tripped == [(23, signal)]


def test_a_single_spike_does_not_warn_and_resets_the_count():
    stream = steady(10) + steady(2, boxed_rate=0.1) + steady(1) + steady(2, boxed_rate=0.1) + steady(5)
    assert run(CollapseWatch(patience=3), stream) == []


def test_within_bounds_at_the_edge():
    kind, factor = DEFAULT_COLLAPSE_BOUNDS["rollout_length_mean"]
    assert kind == "factor"
    assert run(CollapseWatch(patience=1), steady(5) + steady(5, rollout_length_mean=50.0 * factor)) == []
    assert run(CollapseWatch(patience=1), steady(5) + steady(1, rollout_length_mean=50.0 * factor + 0.1)) != []


def test_baseline_is_the_median_of_the_first_steps_and_nothing_is_judged_before():
    watch = CollapseWatch(baseline_steps=3, patience=1)
    assert run(watch, steady(2, boxed_rate=0.0)) == []   # no baseline yet
    watch.update(3, steady(1)[0])
    assert watch.baseline("boxed_rate") == 0.0
    assert watch.baseline("student_entropy") == 0.8


def test_missing_and_nan_signals_are_skipped():
    stream = [{"loss": 0.1, "boxed_rate": 0.9} for _ in range(10)] + [{"loss": 0.1, "boxed_rate": math.nan}] * 5
    assert run(CollapseWatch(patience=1), stream) == []


def test_bounds_override_and_their_checks():
    watch = CollapseWatch({"boxed_rate": ["drop", 0.05], "repetition": 0.5})
    assert watch.bounds["boxed_rate"] == ("drop", 0.05) and watch.bounds["repetition"] == ("rise", 0.5)
    assert run(CollapseWatch({"boxed_rate": ["drop", 0.05]}, patience=1), steady(5) + steady(1, boxed_rate=0.8))
    for bad, match in [({"length": 2}, "unknown signal"), ({"boxed_rate": ["fall", 0.1]}, "factor|drop|rise"),
                       ({"rollout_length_mean": 0.5}, "> 1"), ({"repetition": -1}, "positive")]:
        with pytest.raises(ValueError, match=match):
            CollapseWatch(bad)


def test_the_config_checks_the_bounds_once():
    from opsd.config import OPSDConfig, load_config
    from opsd.validation import InputError

    with pytest.raises(InputError, match="unknown signal"):
        load_config(OPSDConfig, "cpu-tiny", {"collapse_bounds": {"len": 2}}, output_dir="/tmp/x", report_to="none")
    with pytest.raises(InputError, match="collapse_watch"):
        load_config(OPSDConfig, "cpu-tiny", {"collapse_watch": "maybe"}, output_dir="/tmp/x", report_to="none")


def test_callback_writes_warnings_and_stops_only_in_stop_mode(tmp_path):
    for mode, stops in (("warn", False), ("stop", True)):
        out = tmp_path / mode
        out.mkdir()
        cb = CollapseWatchCallback(CollapseWatch(patience=2), mode)
        args = SimpleNamespace(output_dir=str(out))
        control = SimpleNamespace(should_training_stop=False)
        for step, logs in enumerate(steady(8) + steady(2, repetition=0.9), start=1):
            cb.on_log(args, SimpleNamespace(global_step=step, is_world_process_zero=True), control, logs=logs)
            assert control.should_training_stop == (stops and step == 10)
        lines = (out / WATCH_FILE).read_text().splitlines()
        assert len(lines) == 1 and '"step": 10' in lines[0] and mode in lines[0]


def test_repetition_rate_by_hand():
    assert repetition_rate([1, 2, 3]) == 0.0
    assert repetition_rate([1, 2, 3, 4, 5]) == 0.0
    assert repetition_rate([7] * 10) == 1 - 1 / 7           # 7 four-grams, one distinct
    assert repetition_rate([1, 2, 3, 4, 1, 2, 3, 4]) == 1 - 4 / 5   # 5 four-grams, 4 distinct


def test_mean_entropy_by_hand():
    logits = torch.zeros(1, 2, 4)                      # uniform over 4: log 4
    logits[0, 1] = torch.tensor([100.0, 0, 0, 0])      # one-hot: 0
    mask = torch.tensor([[True, True]])
    assert mean_entropy(logits, mask) == pytest.approx(math.log(4) / 2, abs=1e-6)
    assert mean_entropy(logits, torch.tensor([[True, False]])) == pytest.approx(math.log(4), abs=1e-6)
    assert math.isnan(mean_entropy(logits, torch.tensor([[False, False]])))


def test_rollout_signals_by_hand():
    ids = torch.tensor([[5, 5, 5, 5, 5, 0], [1, 2, 3, 4, 5, 6]])
    mask = torch.tensor([[True] * 5 + [False], [True] * 6])
    out = rollout_signals(ids, mask, ["so \\boxed{4}", "cut \\boxed{4"])
    assert out == {"boxed_rate": 0.5, "repetition": pytest.approx((1 - 1 / 2 + 0.0) / 2)}
