"""DTMS benchmarks: each prints a fixed-width table (``python -m bench all``).

Benchmarks are measurements, never tests: nothing here asserts a timing. See bench/README.md.
"""
