"""Benchmarks and their recorded results. Not installed: run from a checkout (the scripts
put its root on the path; `python -m bench.loadgen` from the root)."""
