#!/usr/bin/env bash
# Every benchmark quoted in docs/benchmarks.md, one after another, each writing its record (command, commit,
# machine, result) to docs/results/bench/; then the stage-waterfall figure. Run from the repository root on a
# machine with nothing else running (about 30 minutes on 2 cores), commit the records, then
# `python docs/render.py` writes the tables.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=docs/results/bench
mkdir -p "$out"
run() { echo "== $*" >&2; "$@" >/dev/null; }

run rtcalm bench latency --neurons 512 --rate 30 --frames 1800 --transport tcp --json "$out/latency-512-tcp.json"
run rtcalm bench latency --neurons 512 --rate 30 --frames 1800 --transport ipc --json "$out/latency-512-ipc.json"
run rtcalm bench latency --neurons 4096 --rate 30 --frames 3600 --transport tcp --json "$out/latency-4096-tcp.json"
run rtcalm bench latency --neurons 512 --frames 1800 --no-references --rules configs/bench_rules.toml \
  --json "$out/latency-512-rules.json"
run rtcalm bench latency --neurons 4096 --frames 1800 --no-references --rules configs/bench_rules.toml \
  --json "$out/latency-4096-rules.json"
run rtcalm bench latency --neurons 512 --frames 1800 --no-references --config configs/bench_intervals.toml \
  --json "$out/latency-512-intervals.json"
# The heads against no head in one run, blocks of 5 s in rotating order (24 cycles of 4 blocks: 8 minutes;
# 12 cycles left the median's 25th-75th percentile band about 0.2 ms wide, twice the 0.1 ms limit)
run rtcalm bench latency --neurons 512 --frames 14400 --no-references --head raw --head backbone --head both \
  --interleave 150 --json "$out/latency-512-heads-interleaved.json"
run rtcalm bench quality --neurons 512 --json "$out/quality-512.json"
run rtcalm bench transport --neurons 512 --json "$out/transport-512.json"
run rtcalm bench step --model default --threads 1 --neurons 128,512,1024,4096 --history 32,1024 --steps 200 \
  --json "$out/step.json"
run rtcalm bench backends --model default --neurons 512,4096 --steps 300 --json "$out/backends.json"
run rtcalm bench soak --minutes 5 --neurons 512 --rate 30 --json "$out/soak.json"
python tools/plot_latency.py "$out/latency-512-tcp.json" "$out/latency-512-ipc.json" "$out/latency-4096-tcp.json" \
  --out docs/figures/latency_waterfall.png
