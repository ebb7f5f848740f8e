"""Trigger rules: turn what the daemon computes per frame (ΔF/F, forecasts, decoded values) into actions.

:mod:`rtcalm.triggers.rules` reads and checks rules files; :mod:`rtcalm.triggers.ruleset` compiles them
for a session and evaluates them per frame (numba kernels in :mod:`rtcalm.triggers.kernels`);
:mod:`rtcalm.triggers.serial_line` drives a serial TTL board. docs/triggers.md is the reference.
"""
