"""The data the plots draw, without matplotlib: (steps, values) series from what runs write.

- ``metric_series``: ``metrics.jsonl`` records -> (steps, values) of one metric.
- ``eval_curves``: eval results (``<run>/eval/<benchmark>/step-N.json`` dicts) -> {benchmark: (steps, values)}.
- ``CATEGORIES``: the token categories of ``opsd.diagnostics.token_category``, in the order they are drawn.

``opsd.viz.plots`` draws them; ``opsd.paper.records`` reads a run's curves with them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

#: The token categories of ``opsd.diagnostics.token_category`` (the paper's Table 5 columns), in drawing order.
CATEGORIES = ("style", "math", "other")


def summary_value(summary: Mapping, metric: str):
    """``summary[metric]``, dotted for nested keys (``pass_at_k.1``); None when a part is missing."""
    value: Any = summary
    for part in metric.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def eval_curves(results: Iterable[Mapping], metric: str = "avg_at_k",
                scale: float = 100.0) -> dict[str, tuple[list[int], list[float]]]:
    """{benchmark: (steps, summary value x ``scale``)} from eval results (``step-N.json`` dicts), ascending
    steps; ``metric``: a key of ``summary``, dotted for nested ones (``pass_at_k.1``)."""
    by_bench: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        value = summary_value(r.get("summary", {}), metric)
        if value is not None and r.get("step") is not None:
            by_bench.setdefault(str(r.get("benchmark")), []).append((int(r["step"]), float(value) * scale))
    return {b: tuple(map(list, zip(*sorted(points)))) for b, points in sorted(by_bench.items())}


def metric_series(records: Iterable[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric over ``metrics.jsonl`` records, skipping records without it (or NaN);
    a record without ``step`` counts by its position."""
    steps, values = [], []
    for i, r in enumerate(records):
        v = r.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        steps.append(r.get("step", i))
        values.append(float(v))
    return steps, values
