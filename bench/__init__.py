"""Benchmarks: they start their own servers and print figures."""
