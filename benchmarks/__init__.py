"""Benchmarks: each prints one JSON object comparing a measurement with a baseline from the same run."""
