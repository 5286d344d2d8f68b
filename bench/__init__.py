"""Benchmarks and their recorded results. Not installed: run from a checkout's root,
`python -m bench list` / `python -m bench run NAME [args]` (bench/__main__.py)."""
