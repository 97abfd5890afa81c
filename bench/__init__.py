"""Benchmarks of the tuner itself (search cost, quality, noise, overhead), run as ``python -m bench.NAME``
from the repository root; each writes its figures as JSON under bench/results/."""
