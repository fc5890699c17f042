"""Benchmarks: each script prints its figures as one JSON document on stdout."""
