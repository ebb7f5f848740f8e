"""Benchmarks behind ``rtcalm bench`` (never on the per-frame path), one module per sub-command: ``step``
(the bare model step), ``backends`` (the step on every backend against torch), ``stats`` (the running
statistics), ``latency`` (the closed loop through a real daemon), ``transport`` (the ZeroMQ floor against a
plain socket), ``soak`` (the daemon under a long steady load); ``quality_cost`` (what live forecast quality
and intervals add to a frame); ``timing`` (pacing, percentiles in ms) and ``record`` (the ``--json FILE``
record) serve all of them."""
