"""The simulator's pure part: a scenario expanded into a plan (no I/O, deterministic)."""
