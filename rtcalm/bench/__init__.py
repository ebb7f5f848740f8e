"""Benchmarks behind ``rtcalm bench`` (never on the per-frame path): ``step`` (the bare model step),
``latency`` (the closed loop through a real daemon), ``stats`` (the running statistics),
``quality_cost`` (what live forecast quality and intervals add to a frame)."""
