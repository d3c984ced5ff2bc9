"""Benchmarks: each prints its figures, measured side by side with a baseline in the same run."""
