"""Benchmarks of storm_sc (see benchmarks/README.md); importable so that tests can reach their pieces."""
