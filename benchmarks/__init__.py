"""Benchmarks of opsd components (run as modules: python -m benchmarks.divergence)."""
