"""Benchmarks: `make bench` (results recorded in BENCHMARKS.md)."""
