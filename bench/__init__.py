"""Benchmarks (`make bench`): they measure the SPEC §10 targets and write results under bench/results/."""
