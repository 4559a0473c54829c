"""Reproducible measurements; each script writes its rows to benchmarks/RESULTS.md."""
