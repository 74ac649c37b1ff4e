"""The benchmark suite: `python -m benchmarks` runs every `bench_*.py` module's `run(device, dtype, quick)` and
writes benchmarks/README.md (the latest table) and benchmarks/results.json. See benchmarks/run.py."""
