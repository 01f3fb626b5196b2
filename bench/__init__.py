"""Benchmarks: each prints a table (p50/p99/throughput) and writes JSON to bench/results/."""
