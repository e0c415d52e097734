"""Benchmark stage: every backend timed alike, and whether each timing can be trusted."""
