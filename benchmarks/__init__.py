"""Benchmarks: not tests. See docs/benchmarks.md for how to run them and their latest figures."""
