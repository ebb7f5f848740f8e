"""Benchmarks behind ``rtcalm bench`` (not used on the per-frame path)."""
