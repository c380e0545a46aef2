"""Evaluation: generation, grading, Avg@k / pass@k with intervals, the privilege gap, comparisons."""
