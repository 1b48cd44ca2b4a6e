"""Benchmarks (`make bench`); results go to BENCHMARKS.md by hand, with the machine and the date."""
