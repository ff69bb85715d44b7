#!/usr/bin/env bash
# Adapprox against AdamW on real text: d12 B 16 on the Brown shards (data/brown, `make
# data`), where the ranks settle low (~12-17) as they never do on bench_train's random
# tokens. Runs each optimizer $RUNS times, alternating, $STEPS steps (warmup 10, cosine
# to 0), and prints the median ms of the last 20 steps of each run and of their updates
# (the step line's update_ms: the update's time on the device), Adapprox's mean rank and
# S-RSIs at the last step, and the update's share of Adapprox's step.
# FIXED=k pins every matrix's rank at k (k0 = k_min = k_max = k, xi_thr 1: one S-RSI per
# matrix and step), so that two builds whose rounding differs do the same work: the rank
# loop's trajectory moves with any change of rounding (mean rank 12.34 or 15.12 at step
# 120 from the same code but for the order of a sum), and the update's time with it.
#   tools/bench_adapprox.sh                  BIN=build-gpu/train_gpt2 RUNS=2 STEPS=120 FIXED=16
set -euo pipefail
bin=${BIN:-build/train_gpt2}
runs=${RUNS:-2}
steps=${STEPS:-120}
fixed=()
if [[ -n ${FIXED:-} ]]; then
  for key in k0 k_min k_max; do fixed+=(--set optimizer.adapprox.$key="$FIXED"); done
  fixed+=(--set optimizer.adapprox.xi_thr=1)
fi
[[ -f data/brown/train_000000.bin ]] ||
  { echo "bench_adapprox: no data/brown shards (make data)" >&2; exit 1; }
log=$(mktemp) results=$(mktemp)
trap 'rm -f "$log" "$results"' EXIT
# One table row per run from its log (median of the last 20 steps, the last step's
# Adapprox stats), and "optimizer ms" into $results for the summary.
row() {
  python3 - "$log" "$steps" "$1" "$2" "$results" <<'PY'
import re, statistics, sys
path, steps, run, opt, results = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ms, upd, last = {}, {}, ''
for line in open(path, errors='replace').read().replace('\r', '\n').split('\n'):
    m = re.search(r'step +(\d+)/\d+ \|.*?\| ([0-9.]+) ms \|.*?\| update_ms ([0-9.]+)', line)
    if m:
        ms[int(m.group(1))], upd[int(m.group(1))] = float(m.group(2)), float(m.group(3))
        last = line[line.find('adapprox_rank'):] if 'adapprox_rank' in line else ''
last20 = [s for s in range(steps - 19, steps + 1) if s in ms]
if len(last20) < 20: sys.exit('bench_adapprox: the run printed %d of the last 20 steps' % len(last20))
step, update = statistics.median(ms[s] for s in last20), statistics.median(upd[s] for s in last20)
print('| %s | %s | %.2f | %.2f | %s |' % (run, opt, step, update, last))
open(results, 'a').write('%s %.2f %.3f\n' % (opt, step, update))
PY
}
printf '| run | optimizer | ms/step (median of the last 20) | update ms (median) | last step |\n'
printf '|---|---|---|---|---|\n'
for r in $(seq "$runs"); do
  for opt in adamw adapprox; do
    lr=6e-4; [[ $opt == adapprox ]] && lr=2e-3
    "$bin" train configs/gpt2-124m.json --set optimizer.name=$opt --set optimizer.lr=$lr \
      --set schedule.steps="$steps" --set schedule.warmup_steps=10 --set checkpoint.every=0 \
      --set eval.every=0 --set sample.every=0 "${fixed[@]}" > "$log" 2>&1 || { tail -5 "$log" >&2; exit 1; }
    row "$r" "$opt"
  done
done
python3 - "$results" <<'PY'
import sys
best = {}  # optimizer -> (step ms, update ms) of its fastest run
for opt, ms, update in (line.split() for line in open(sys.argv[1])):
    best[opt] = min(best.get(opt, (float('inf'), 0)), (float(ms), float(update)))
(a, ua), (p, up) = best['adamw'], best['adapprox']
print("best: AdamW %.2f ms (update %.2f), Adapprox %.2f ms (update %.2f): Adapprox's update "
      "is %.1f%% of its step (%.2fx AdamW's step)" % (a, ua, p, up, 100 * up / p, p / a))
PY
