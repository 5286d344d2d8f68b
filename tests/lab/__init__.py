"""The namespace lab the netns tests and the benchmarks share: topology, faults, traffic
peers. Not installed: run from a checkout, with its root on the path (the lab sets
PYTHONPATH for what it spawns)."""
