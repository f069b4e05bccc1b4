"""Benchmarks: scripts that print figures (never asserted in tests)."""
